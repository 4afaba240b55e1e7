//! Upgrading conntrack pinned by an older agent: LRU hash maps (before the preallocated hash
//! maps of `zt_common::conntrack`) of the same key, value and capacity.
//!
//! Every other map shape change still makes the loader refuse to start (see `loader`). Conntrack
//! is the one map whose contents cannot be recomputed from the cluster: losing it would drop the
//! replies of every established flow into an isolated direction. So a pinned LRU conntrack map
//! is moved aside (its pin renamed to `<name>_lru`: bpffs allows no dot in a name), the loader creates and pins the new map,
//! and its entries are copied in twice: once before the programs are swapped (the old programs
//! keep using the old map meanwhile) and once right after every link was adopted (what the old
//! programs admitted in between), each entry stamped with the current clock. Then the old pin is
//! removed and the kernel frees the old map with its last program. A flow admitted between the
//! second copy's read of its entry and the swap (a few milliseconds) may need its first reply
//! retransmitted — the price of an upgrade without a restart of enforcement. An interrupted
//! migration resumes at the next start (the `_lru` pin is still there).

use std::path::{Path, PathBuf};

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, MapInfo, MapType},
};
use zt_common::{
    conntrack::{CtKey4, CtKey6, CtValue},
    names,
};

use crate::error::{Error, Result};

/// The conntrack maps this version migrates.
const MAPS: [&str; 2] = [names::MAP_CONNTRACK_V4, names::MAP_CONNTRACK_V6];

/// The path an old map is moved to.
fn old_path(maps_dir: &Path, name: &str) -> PathBuf {
    maps_dir.join(format!("{name}_lru"))
}

/// Before the object is loaded: moves every pinned LRU conntrack map aside so the loader
/// creates the new one. Returns whether any migration is under way (moved now or before).
pub fn prepare(maps_dir: &Path) -> Result<bool> {
    let mut any = false;
    for name in MAPS {
        let pinned = maps_dir.join(name);
        if pinned.exists() && map_type(&pinned)? == MapType::LruHash {
            let old = old_path(maps_dir, name);
            std::fs::rename(&pinned, &old).map_err(|source| Error::Io {
                path: pinned.clone(),
                source,
            })?;
            tracing::info!(
                map = name,
                "moving an LRU conntrack map aside to migrate it"
            );
        }
        any |= old_path(maps_dir, name).exists();
    }
    Ok(any)
}

/// Copies what the old maps hold into the new ones (entries already there are kept), stamped
/// with `clock`. Returns the entries copied.
pub fn copy(maps_dir: &Path, clock: u32) -> Result<u64> {
    let mut copied = 0;
    for name in MAPS {
        let old = old_path(maps_dir, name);
        if !old.exists() {
            continue;
        }
        let new = maps_dir.join(name);
        copied += if name == names::MAP_CONNTRACK_V4 {
            copy_map::<CtKey4>(&old, &new, clock)?
        } else {
            copy_map::<CtKey6>(&old, &new, clock)?
        };
    }
    Ok(copied)
}

/// After every link runs the new programs: the last copy, then the old pins go.
pub fn finish(maps_dir: &Path, clock: u32) -> Result<u64> {
    let copied = copy(maps_dir, clock)?;
    for name in MAPS {
        let old = old_path(maps_dir, name);
        if old.exists() {
            std::fs::remove_file(&old).map_err(|source| Error::Io { path: old, source })?;
        }
    }
    Ok(copied)
}

fn copy_map<K: Pod>(old: &Path, new: &Path, clock: u32) -> Result<u64> {
    let from: HashMap<_, K, CtValue> = HashMap::try_from(open(old)?).map_err(ebpf(old))?;
    let mut to: HashMap<_, K, CtValue> = HashMap::try_from(open(new)?).map_err(ebpf(new))?;
    let mut copied = 0;
    for item in from.iter() {
        let Ok((key, mut value)) = item else { continue };
        value.seen = clock;
        // BPF_NOEXIST: an entry the new programs already wrote is newer than the old one.
        if to.insert(key, value, 1).is_ok() {
            copied += 1;
        }
    }
    Ok(copied)
}

fn map_type(path: &Path) -> Result<MapType> {
    MapInfo::from_pin(path)
        .and_then(|info| info.map_type())
        .map_err(ebpf(path))
}

fn open(path: &Path) -> Result<Map> {
    let data = MapData::from_pin(path).map_err(ebpf(path))?;
    Map::from_map_data(data).map_err(ebpf(path))
}

fn ebpf<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Ebpf(format!("{}: {e}", path.display()))
}
