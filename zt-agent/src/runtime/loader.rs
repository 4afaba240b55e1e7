//! Loads the kernel object with its maps pinned under `<pin_root>/maps`.
//!
//! Every map is declared pinned by name in `zt-ebpf`, so `EbpfLoader` reuses a pinned map of that
//! name when one exists and pins a new one otherwise. A restarted agent therefore works on the very
//! maps the running programs use: conntrack, policy and endpoints survive, and nothing is re-created.
//! Links live next to them under `<pin_root>/links` (see [`super::attach`]).

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapInfo, MapType},
    programs::{ProgramError, SchedClassifier},
};
use zt_common::{
    config::Config,
    conntrack::{CtKey4, CtKey6, CtValue, FragKey, FragValue},
    endpoint::{EndpointKey, EndpointValue},
    names::{self, capacity},
    policy::{PolicyKey, PolicyValue},
    reason,
};

use crate::error::{Error, Result};

pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps_dir: PathBuf,
    pub links_dir: PathBuf,
    /// Conntrack pinned by an older agent is being migrated (see [`super::migrate`]): call
    /// [`Loaded::finish_migration`] once every link runs the new programs.
    pub migrating: bool,
}

impl Loaded {
    /// Loads the object, pinning or reusing maps under `pin_root`, and verifies both programs.
    pub fn load(pin_root: &Path) -> Result<Self> {
        super::bpffs::ensure_pin_root(pin_root)?;
        let maps_dir = pin_root.join("maps");
        let links_dir = pin_root.join("links");
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let migrating = super::migrate::prepare(&maps_dir)?;
        check_pinned_maps(&maps_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(crate::datapath::object())
            .map_err(|e| {
                Error::Ebpf(format!(
                    "loading the object (maps in {}): {e}",
                    maps_dir.display()
                ))
            })?;
        for name in [names::PROG_FROM_POD, names::PROG_TO_POD] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|e| Error::Ebpf(format!("the verifier rejected {name}: {e}")))?;
        }
        if migrating {
            let clock = super::maps::read_config(&ebpf)?.clock;
            let copied = super::migrate::copy(&maps_dir, clock)?;
            tracing::info!(copied, "conntrack copied into the new maps (first pass)");
        }
        Ok(Self {
            ebpf,
            maps_dir,
            links_dir,
            migrating,
        })
    }

    /// Ends a conntrack migration: copies what the old programs admitted since the first pass
    /// and removes the old maps' pins.
    pub fn finish_migration(&mut self) -> Result<()> {
        if !self.migrating {
            return Ok(());
        }
        let clock = super::maps::read_config(&self.ebpf)?.clock;
        let copied = super::migrate::finish(&self.maps_dir, clock)?;
        tracing::info!(copied, "conntrack migration finished (second pass)");
        self.migrating = false;
        Ok(())
    }

    /// The kernel id of the pinned `zt_config` map: a program that does not use it runs on maps
    /// from another generation of pins.
    pub fn config_map_id(&self) -> Result<u32> {
        let path = self.maps_dir.join(names::MAP_CONFIG);
        MapInfo::from_pin(&path)
            .map(|info| info.id())
            .map_err(|e| Error::Ebpf(format!("{}: {e}", path.display())))
    }
}

pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Ebpf(format!("the object has no program {name}")))?
        .try_into()
        .map_err(|e: ProgramError| Error::Ebpf(format!("{name}: {e}")))
}

/// A map's shape: what must match for a pinned map to be reused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn shape(map_type: MapType, key_size: usize, value_size: usize, max_entries: u32) -> Shape {
    Shape {
        map_type,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
    }
}

/// The shape of every map the object declares, from the shared contract. LPM trie keys carry a
/// 4-byte prefix length before the address; a ring buffer has no key or value.
pub fn expected_shapes() -> [(&'static str, Shape); 13] {
    use MapType::{Array, Hash, LpmTrie, LruHash, PerCpuArray, RingBuf};
    use std::mem::size_of;
    [
        (names::MAP_CONFIG, shape(Array, 4, size_of::<Config>(), 1)),
        (
            names::MAP_ENDPOINTS,
            shape(
                Hash,
                size_of::<EndpointKey>(),
                size_of::<EndpointValue>(),
                capacity::ENDPOINTS,
            ),
        ),
        (
            names::MAP_IDENTITY_V4,
            shape(LpmTrie, 4 + 4, 4, capacity::IDENTITY_V4),
        ),
        (
            names::MAP_IDENTITY_V6,
            shape(LpmTrie, 4 + 16, 4, capacity::IDENTITY_V6),
        ),
        (
            names::MAP_HOST_IDENTITY_V4,
            shape(Hash, 4, 4, capacity::HOST_IDENTITY_V4),
        ),
        (
            names::MAP_HOST_IDENTITY_V6,
            shape(Hash, 16, 4, capacity::HOST_IDENTITY_V6),
        ),
        (
            names::MAP_POLICY,
            shape(
                Hash,
                size_of::<PolicyKey>(),
                size_of::<PolicyValue>(),
                capacity::POLICY,
            ),
        ),
        (
            names::MAP_CONNTRACK_V4,
            shape(
                Hash,
                size_of::<CtKey4>(),
                size_of::<CtValue>(),
                capacity::CONNTRACK_V4,
            ),
        ),
        (
            names::MAP_CONNTRACK_V6,
            shape(
                Hash,
                size_of::<CtKey6>(),
                size_of::<CtValue>(),
                capacity::CONNTRACK_V6,
            ),
        ),
        (
            names::MAP_FRAGMENTS,
            shape(
                LruHash,
                size_of::<FragKey>(),
                size_of::<FragValue>(),
                capacity::FRAGMENTS,
            ),
        ),
        (names::MAP_COUNTERS, shape(PerCpuArray, 4, 8, reason::COUNT)),
        (names::MAP_EVENTS, shape(RingBuf, 0, 0, capacity::EVENTS)),
        (names::MAP_OPEN_IFS, shape(Array, 4, 4, capacity::OPEN_IFS)),
    ]
}

/// Why a pinned map cannot be reused, if it cannot.
pub fn incompatible(name: &str, pinned: Shape, expected: Shape) -> Option<String> {
    (pinned != expected).then(|| {
        format!("pinned map {name} has {pinned:?}, this agent's object needs {expected:?}")
    })
}

/// aya reuses a pinned map by name without comparing its definition, so a map pinned by an
/// agent built from another contract would be silently shared. Refuse instead: the running
/// programs keep enforcing with their maps until the pins are removed on purpose.
fn check_pinned_maps(dir: &Path) -> Result<()> {
    for (name, expected) in expected_shapes() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .map_err(|e| Error::Ebpf(format!("{}: {e}", path.display())))?;
        let pinned = Shape {
            map_type: info
                .map_type()
                .map_err(|e| Error::Ebpf(format!("{}: {e}", path.display())))?,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if let Some(why) = incompatible(name, pinned, expected) {
            return Err(Error::Ebpf(format!(
                "{why}; the pinned programs keep enforcing with the old maps. To upgrade, remove {} \
                 (and {}) so the maps are created anew",
                dir.display(),
                dir.with_file_name("links").display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_contract() {
        let shapes = expected_shapes();
        let names: Vec<&str> = shapes.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, names::PINNED_MAPS, "every pinned map has a shape");
        let policy = shapes
            .iter()
            .find(|(n, _)| *n == names::MAP_POLICY)
            .unwrap()
            .1;
        assert_eq!(policy, shape(MapType::Hash, 12, 4, capacity::POLICY));
    }

    #[test]
    fn any_difference_is_incompatible() {
        use MapType::{Hash, LruHash};
        let expected = shape(Hash, 16, 32, 4096);
        assert_eq!(incompatible("m", expected, expected), None);
        for pinned in [
            shape(Hash, 16, 24, 4096),
            shape(Hash, 20, 32, 4096),
            shape(Hash, 16, 32, 1024),
            shape(LruHash, 16, 32, 4096),
        ] {
            assert!(incompatible("m", pinned, expected).is_some(), "{pinned:?}");
        }
    }
}
