//! Loads the kernel object with its maps pinned under `<pin_root>/maps`.
//!
//! Every map is declared pinned by name in `zt-ebpf`, so `EbpfLoader` reuses a pinned map of that
//! name when one exists and pins a new one otherwise. A restarted agent therefore works on the very
//! maps the running programs use: conntrack, policy and endpoints survive, and nothing is re-created.
//! Links live next to them under `<pin_root>/links` (see [`super::attach`]).

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{ProgramError, SchedClassifier},
};
use zt_common::names;

use crate::error::{Error, Result};

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps_dir: PathBuf,
    pub links_dir: PathBuf,
}

impl Loaded {
    /// Loads the object, pinning or reusing maps under `pin_root`, and verifies both programs.
    pub fn load(pin_root: &Path) -> Result<Self> {
        let maps_dir = pin_root.join("maps");
        let links_dir = pin_root.join("links");
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        }
        check_bpffs(&maps_dir)?;
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
        Ok(Self {
            ebpf,
            maps_dir,
            links_dir,
        })
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

fn check_bpffs(dir: &Path) -> Result<()> {
    let stat = nix::sys::statfs::statfs(dir)
        .map_err(|e| Error::Other(format!("statfs {}: {e}", dir.display())))?;
    if stat.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        return Err(Error::Other(format!(
            "{} is not on a bpffs (mount one: `mount -t bpf bpf /sys/fs/bpf`)",
            dir.display()
        )));
    }
    Ok(())
}
