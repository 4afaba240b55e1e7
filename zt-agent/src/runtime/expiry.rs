//! Conntrack expiry: the clock the datapath stamps into entries, and the sweeps that delete
//! entries idle past their timeout (`zt_common::conntrack::{timeout, expired}`).
//!
//! The conntrack maps are preallocated hash maps: the kernel never evicts, so the agent must.
//! - [`Clock`] advances `zt_config.clock` once a second from the control loop (the one task that
//!   writes `zt_config`, so the read-modify-write never races another writer). It counts agent
//!   time: a turn that comes late advances it by at most [`MAX_STEP`] seconds, and it stands still
//!   while no agent runs, so a stalled or absent agent can never make a live flow look idle.
//! - [`sweep`] walks both conntrack maps through their pins (its own file descriptors, so it runs
//!   on its own thread without touching the control loop's state), collects the expired keys, and
//!   deletes each after reading it again: an entry a packet used since the walk is kept.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, Map, MapData, MapError},
};
use zt_common::{
    config::Config,
    conntrack::{CtKey4, CtKey6, CtValue, expired},
    names,
};

use super::maps;
use crate::error::{Error, Result};

/// The most one turn advances the clock, however late it comes.
pub const MAX_STEP: u32 = 2;
/// Time between two sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The conntrack clock, advanced by the control loop.
#[derive(Debug)]
pub struct Clock {
    last: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            last: Instant::now(),
        }
    }
}

impl Clock {
    /// Whole seconds to add at `now`, and the instant they were counted up to. At most
    /// [`MAX_STEP`]; a partial second is carried to the next turn.
    pub fn step(&self, now: Instant) -> (u32, Instant) {
        let whole = now.saturating_duration_since(self.last).as_secs();
        if whole == 0 {
            return (0, self.last);
        }
        if whole > u64::from(MAX_STEP) {
            return (MAX_STEP, now);
        }
        (whole as u32, self.last + Duration::from_secs(whole))
    }

    /// Advances `zt_config.clock` by the seconds elapsed since the last tick.
    pub fn tick(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        let (secs, counted) = self.step(Instant::now());
        if secs == 0 {
            return Ok(());
        }
        let mut config = maps::read_config(ebpf)?;
        config.clock = config.clock.wrapping_add(secs);
        maps::write_config(ebpf, config)?;
        self.last = counted;
        Ok(())
    }
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Entries found in both maps.
    pub entries: u64,
    /// Entries deleted as expired.
    pub expired: u64,
}

/// Deletes the expired entries of both conntrack maps pinned in `maps_dir`.
pub fn sweep(maps_dir: &Path) -> Result<Swept> {
    let clock = read_clock(maps_dir)?;
    let mut swept = Swept::default();
    sweep_map::<CtKey4>(
        &maps_dir.join(names::MAP_CONNTRACK_V4),
        clock,
        |k| k.protocol,
        &mut swept,
    )?;
    sweep_map::<CtKey6>(
        &maps_dir.join(names::MAP_CONNTRACK_V6),
        clock,
        |k| k.protocol,
        &mut swept,
    )?;
    Ok(swept)
}

/// Sweeps every [`SWEEP_EVERY`], forever (a thread of its own).
pub fn follow(maps_dir: PathBuf, expired_total: prometheus_client::metrics::counter::Counter) {
    loop {
        std::thread::sleep(SWEEP_EVERY);
        match sweep(&maps_dir) {
            Ok(s) => {
                expired_total.inc_by(s.expired);
                if s.expired > 0 {
                    tracing::debug!(entries = s.entries, expired = s.expired, "conntrack sweep");
                }
            }
            Err(error) => tracing::warn!(%error, "conntrack sweep failed; retrying"),
        }
    }
}

fn read_clock(maps_dir: &Path) -> Result<u32> {
    let m = open(&maps_dir.join(names::MAP_CONFIG))?;
    let config: Array<_, Config> = Array::try_from(m).map_err(err(names::MAP_CONFIG))?;
    Ok(config.get(&0, 0).map_err(err(names::MAP_CONFIG))?.clock)
}

fn sweep_map<K: Pod>(
    path: &Path,
    clock: u32,
    protocol: impl Fn(&K) -> u8,
    swept: &mut Swept,
) -> Result<()> {
    let name = path.display().to_string();
    let mut m: HashMap<_, K, CtValue> =
        HashMap::try_from(open(path)?).map_err(|e| Error::Ebpf(format!("{name}: {e}")))?;
    let mut stale = Vec::new();
    for item in m.iter() {
        let (key, value) = match item {
            Ok(kv) => kv,
            // Deleted under the walk (by the datapath or a concurrent sweep): nothing to do.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(Error::Ebpf(format!("{name}: {e}"))),
        };
        swept.entries += 1;
        if expired(protocol(&key), &value, clock) {
            stale.push(key);
        }
    }
    for key in stale {
        // Read again: a packet may have used the entry since the walk.
        let Ok(value) = m.get(&key, 0) else { continue };
        if !expired(protocol(&key), &value, clock) {
            continue;
        }
        match m.remove(&key) {
            Ok(()) => swept.expired += 1,
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(Error::Ebpf(format!("{name}: {e}"))),
        }
    }
    Ok(())
}

fn open(path: &Path) -> Result<Map> {
    let data =
        MapData::from_pin(path).map_err(|e| Error::Ebpf(format!("{}: {e}", path.display())))?;
    Map::from_map_data(data).map_err(|e| Error::Ebpf(format!("{}: {e}", path.display())))
}

fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => {
            e.io_error.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32)
        }
        _ => false,
    }
}

fn err(name: &'static str) -> impl Fn(MapError) -> Error {
    move |e| Error::Ebpf(format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_counts_whole_seconds_and_carries_the_rest() {
        let start = Instant::now();
        let c = Clock { last: start };
        assert_eq!(c.step(start + Duration::from_millis(999)), (0, start));
        assert_eq!(
            c.step(start + Duration::from_millis(1500)),
            (1, start + Duration::from_secs(1))
        );
        assert_eq!(
            c.step(start + Duration::from_millis(2200)),
            (2, start + Duration::from_secs(2))
        );
    }

    #[test]
    fn a_late_turn_advances_the_clock_by_at_most_max_step() {
        let start = Instant::now();
        let c = Clock { last: start };
        let late = start + Duration::from_secs(600);
        assert_eq!(c.step(late), (MAX_STEP, late));
    }
}
