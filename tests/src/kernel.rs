//! The userspace half of kernel tests and benchmarks: load the real datapath object into a
//! private pin directory, seed its maps, run its programs through BPF_PROG_TEST_RUN, and read
//! back the verdict, the reason counters and the events.
//!
//! ```no_run
//! use zt_tests::kernel::{Datapath, Hook};
//! use zt_tests::packet::Packet;
//! let mut dp = Datapath::load().unwrap();
//! let run = dp.run(Hook::FromPod, &Packet::tcp(
//!     "10.0.0.1:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap()).build()).unwrap();
//! assert!(run.allowed());
//! ```
//!
//! Each [`Datapath`] pins its maps under its own `/sys/fs/bpf/ztdp-<pid>-<n>` (see [`PinDir`]),
//! removed when it is dropped, so tests never share maps with each other or with an agent.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
        tc::{NlOptions, TcAttachOptions, qdisc_add_clsact},
    },
};
use ipnet::IpNet;
use zt_agent::datapath::{DatapathState, MapWrite, Op};
use zt_common::{
    config::Config,
    conntrack::{CtKey4, CtKey6, CtValue},
    endpoint::{EndpointKey, EndpointValue},
    event::Event,
    names,
    policy::{PolicyKey, PolicyValue},
    reason,
};

/// TC verdicts the programs return.
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;

/// Which program to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `zt_from_pod`: the pod's egress.
    FromPod,
    /// `zt_to_pod`: the pod's ingress.
    ToPod,
    /// `zt_baseline`: parse and pass.
    Baseline,
    /// `zt_bench_flow`: `zt_to_pod` after advancing the source port (a new flow every run).
    BenchFlow,
}

impl Hook {
    pub fn program_name(self) -> &'static str {
        match self {
            Hook::FromPod => names::PROG_FROM_POD,
            Hook::ToPod => names::PROG_TO_POD,
            Hook::Baseline => names::PROG_BASELINE,
            Hook::BenchFlow => names::PROG_BENCH_FLOW,
        }
    }
}

/// How [`Datapath::attach_pair`] attached the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Tcx,
    Clsact,
}

/// A unique bpffs directory for one loaded object's pinned maps; removed (with its pins) on drop.
#[derive(Debug)]
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new() -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/sys/fs/bpf/ztdp-{}-{n}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        zt_agent::runtime::bpffs::ensure_pin_root(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One program run: the action, which reason counters moved, and the events published.
#[derive(Clone, Debug)]
pub struct Run {
    pub action: i32,
    /// Reason code → increase of its counter (summed over CPUs) during the run.
    pub reasons: BTreeMap<u8, u64>,
    pub events: Vec<Event>,
}

impl Run {
    pub fn allowed(&self) -> bool {
        self.action == TC_ACT_OK
    }

    /// The run's reason code. Panics unless exactly one counter moved, by one: every packet
    /// must be counted exactly once.
    pub fn reason(&self) -> u8 {
        match self.reasons.iter().collect::<Vec<_>>().as_slice() {
            [(r, 1)] => **r,
            other => panic!("expected exactly one reason counted once, got {other:?}"),
        }
    }

    /// Asserts the verdict and the reason agree with `expected`, with a readable message.
    #[track_caller]
    pub fn assert_reason(&self, expected: u8) {
        let got = self.reason();
        assert_eq!(
            reason::name(got),
            reason::name(expected),
            "reason (action {})",
            self.action
        );
        let want_action = if reason::is_drop(expected) {
            TC_ACT_SHOT
        } else {
            TC_ACT_OK
        };
        assert_eq!(
            self.action,
            want_action,
            "TC action for {}",
            reason::name(expected)
        );
    }
}

/// The datapath object loaded with its programs verified, and its maps pinned privately.
pub struct Datapath {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    ifindex: u32,
    // Dropped last: the maps' pins live here.
    pins: PinDir,
}

impl Datapath {
    /// Loads the embedded object and all three programs. A verifier rejection is an error whose
    /// message carries the verifier log.
    pub fn load() -> anyhow::Result<Self> {
        let pins = PinDir::new()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.path())
            .load(zt_agent::datapath::object())
            .context("loading the zt object")?;
        for hook in [Hook::FromPod, Hook::ToPod, Hook::Baseline, Hook::BenchFlow] {
            let name = hook.program_name();
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("object has no program {name}"))?
                .try_into()?;
            if let Err(e) = prog.load() {
                bail!("the verifier rejected {name}: {e}");
            }
        }
        let events = RingBuf::try_from(
            ebpf.take_map(names::MAP_EVENTS)
                .ok_or_else(|| anyhow!("object has no map {}", names::MAP_EVENTS))?,
        )?;
        let ifindex = nix::net::if_::if_nametoindex("lo")?;
        Ok(Self {
            ebpf,
            events,
            ifindex,
            pins,
        })
    }

    /// Loads a datapath under `config` whose maps hold `state`'s identities, policy and endpoints,
    /// as an agent would have written them.
    pub fn with_state(state: &DatapathState, config: Config) -> anyhow::Result<Self> {
        let mut dp = Self::load()?;
        dp.set_config(config)?;
        for (net, id) in &state.identities {
            dp.set_identity(*net, *id)?;
        }
        for (key, value) in &state.policy {
            dp.set_policy(*key, value.policy_ref)?;
        }
        for (addr, value) in &state.endpoints {
            dp.set_endpoint(*addr, *value)?;
        }
        Ok(dp)
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    /// The interface index BPF_PROG_TEST_RUN gives its packets (loopback).
    pub fn test_ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Attaches `zt_from_pod` at TC ingress and `zt_to_pod` at TC egress of `ifname` (resolved
    /// in the calling thread's network namespace): TCX links where the kernel has them (6.6+),
    /// a clsact qdisc and netlink filters otherwise. Detached when `self` is dropped.
    pub fn attach_pair(&mut self, ifname: &str) -> anyhow::Result<AttachMode> {
        let tcx = self.attach(ifname, Hook::FromPod, TcAttachType::Ingress, true);
        if tcx.is_ok() {
            self.attach(ifname, Hook::ToPod, TcAttachType::Egress, true)?;
            return Ok(AttachMode::Tcx);
        }
        // clsact may already exist (EEXIST): attaching below reports any real problem.
        let _ = qdisc_add_clsact(ifname);
        self.attach(ifname, Hook::FromPod, TcAttachType::Ingress, false)
            .with_context(|| format!("TCX failed too: {:#}", tcx.unwrap_err()))?;
        self.attach(ifname, Hook::ToPod, TcAttachType::Egress, false)?;
        Ok(AttachMode::Clsact)
    }

    fn attach(
        &mut self,
        ifname: &str,
        hook: Hook,
        at: TcAttachType,
        tcx: bool,
    ) -> anyhow::Result<()> {
        let options = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            TcAttachOptions::Netlink(NlOptions::default())
        };
        self.program(hook)
            .attach_with_options(ifname, at, options)
            .with_context(|| format!("attaching {} to {ifname} {at:?}", hook.program_name()))?;
        Ok(())
    }

    pub fn program(&mut self, hook: Hook) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(hook.program_name())
            .and_then(|p| p.try_into().ok())
            .expect("programs are checked at load")
    }

    fn map_mut(&mut self, name: &str) -> &mut Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("object has no map {name}"))
    }

    fn map(&self, name: &str) -> &Map {
        self.ebpf
            .map(name)
            .unwrap_or_else(|| panic!("object has no map {name}"))
    }

    pub fn set_config(&mut self, config: Config) -> anyhow::Result<()> {
        let mut m: Array<_, Config> = Array::try_from(self.map_mut(names::MAP_CONFIG))?;
        m.set(0, config, 0)?;
        Ok(())
    }

    pub fn config(&self) -> anyhow::Result<Config> {
        let m: Array<_, Config> = Array::try_from(self.map(names::MAP_CONFIG))?;
        Ok(m.get(&0, 0)?)
    }

    pub fn set_endpoint(&mut self, addr: IpAddr, value: EndpointValue) -> anyhow::Result<()> {
        let mut m: HashMap<_, EndpointKey, EndpointValue> =
            HashMap::try_from(self.map_mut(names::MAP_ENDPOINTS))?;
        m.insert(
            EndpointKey {
                addr: addr_of(addr),
            },
            value,
            0,
        )?;
        Ok(())
    }

    pub fn remove_endpoint(&mut self, addr: IpAddr) -> anyhow::Result<()> {
        let mut m: HashMap<_, EndpointKey, EndpointValue> =
            HashMap::try_from(self.map_mut(names::MAP_ENDPOINTS))?;
        m.remove(&EndpointKey {
            addr: addr_of(addr),
        })?;
        Ok(())
    }

    /// Maps a prefix to an identity, as the agent does: a single address in the family's host
    /// map, a shorter prefix in its trie.
    pub fn set_identity(&mut self, net: IpNet, identity: u32) -> anyhow::Result<()> {
        let write = MapWrite::Identity(net, Op::Upsert(identity));
        zt_agent::runtime::maps::apply(&mut self.ebpf, &[write])?;
        Ok(())
    }

    pub fn set_policy(&mut self, key: PolicyKey, policy_ref: u32) -> anyhow::Result<()> {
        let mut m: HashMap<_, PolicyKey, PolicyValue> =
            HashMap::try_from(self.map_mut(names::MAP_POLICY))?;
        m.insert(key, PolicyValue { policy_ref }, 0)?;
        Ok(())
    }

    pub fn remove_policy(&mut self, key: PolicyKey) -> anyhow::Result<()> {
        let mut m: HashMap<_, PolicyKey, PolicyValue> =
            HashMap::try_from(self.map_mut(names::MAP_POLICY))?;
        m.remove(&key)?;
        Ok(())
    }

    /// The conntrack entry for `key`, if any.
    pub fn conntrack(&self, key: &CtKey) -> anyhow::Result<Option<CtValue>> {
        let found = match key {
            CtKey::V4(k) => {
                let m: HashMap<_, CtKey4, CtValue> =
                    HashMap::try_from(self.map(names::MAP_CONNTRACK_V4))?;
                m.get(k, 0)
            }
            CtKey::V6(k) => {
                let m: HashMap<_, CtKey6, CtValue> =
                    HashMap::try_from(self.map(names::MAP_CONNTRACK_V6))?;
                m.get(k, 0)
            }
        };
        match found {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Plants a conntrack entry, as if the datapath had admitted the flow.
    pub fn set_conntrack(&mut self, key: CtKey, value: CtValue) -> anyhow::Result<()> {
        match key {
            CtKey::V4(k) => {
                let mut m: HashMap<_, CtKey4, CtValue> =
                    HashMap::try_from(self.map_mut(names::MAP_CONNTRACK_V4))?;
                m.insert(k, value, 0)?;
            }
            CtKey::V6(k) => {
                let mut m: HashMap<_, CtKey6, CtValue> =
                    HashMap::try_from(self.map_mut(names::MAP_CONNTRACK_V6))?;
                m.insert(k, value, 0)?;
            }
        }
        Ok(())
    }

    /// Removes the conntrack entry for `key`; `false` when there was none.
    pub fn remove_conntrack(&mut self, key: &CtKey) -> anyhow::Result<bool> {
        let removed = match key {
            CtKey::V4(k) => {
                let mut m: HashMap<_, CtKey4, CtValue> =
                    HashMap::try_from(self.map_mut(names::MAP_CONNTRACK_V4))?;
                m.remove(k)
            }
            CtKey::V6(k) => {
                let mut m: HashMap<_, CtKey6, CtValue> =
                    HashMap::try_from(self.map_mut(names::MAP_CONNTRACK_V6))?;
                m.remove(k)
            }
        };
        match removed {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Conntrack entries of both families.
    pub fn conntrack_len(&self) -> anyhow::Result<usize> {
        let v4: HashMap<_, CtKey4, CtValue> = HashMap::try_from(self.map(names::MAP_CONNTRACK_V4))?;
        let v6: HashMap<_, CtKey6, CtValue> = HashMap::try_from(self.map(names::MAP_CONNTRACK_V6))?;
        Ok(v4.keys().filter(Result::is_ok).count() + v6.keys().filter(Result::is_ok).count())
    }

    /// What the open-interface hint's slot for `ifindex` holds (`ifindex` itself when the hint
    /// is set for it).
    pub fn open_hint(&self, ifindex: u32) -> anyhow::Result<u32> {
        let m: Array<_, u32> = Array::try_from(self.map(names::MAP_OPEN_IFS))?;
        Ok(m.get(&(ifindex % names::capacity::OPEN_IFS), 0)?)
    }

    /// Every reason counter, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<[u64; reason::COUNT as usize]> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(names::MAP_COUNTERS))?;
        let mut out = [0; reason::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = m.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Takes every event published so far.
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: the kernel wrote an `Event` (plain integers) at the start of the item.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            }
        }
        out
    }

    /// Runs one packet through `hook` once.
    pub fn run(&mut self, hook: Hook, packet: &[u8]) -> anyhow::Result<Run> {
        self.drain_events();
        let before = self.counters()?;
        let result = self.program(hook).test_run(TestRunOptions {
            data_in: Some(packet),
            repeat: 1,
            ..Default::default()
        })?;
        let after = self.counters()?;
        let reasons = (0..reason::COUNT as usize)
            .filter(|&i| after[i] != before[i])
            .map(|i| (i as u8, after[i] - before[i]))
            .collect();
        Ok(Run {
            action: result.return_value as i32,
            reasons,
            events: self.drain_events(),
        })
    }

    /// Runs one packet `repeat` times in the kernel; the kernel's mean time per run.
    pub fn run_repeat(
        &mut self,
        hook: Hook,
        packet: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(i32, Duration)> {
        let result = self.program(hook).test_run(TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..Default::default()
        })?;
        Ok((result.return_value as i32, result.duration))
    }
}

/// An address as the maps store it (IPv4-mapped for IPv4).
pub use zt_common::addr_from_ip as addr_of;

/// A conntrack key of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtKey {
    V4(CtKey4),
    V6(CtKey6),
}

/// The conntrack key the datapath writes (ports in network byte order) for a flow admitted in
/// `direction`. Both addresses must be of one family.
pub fn ct_key(
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    protocol: u8,
    direction: u8,
) -> CtKey {
    let (sport, dport) = (sport.to_be(), dport.to_be());
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => CtKey::V4(CtKey4 {
            src: src.octets(),
            dst: dst.octets(),
            sport,
            dport,
            protocol,
            direction,
            _pad: [0; 2],
        }),
        _ => CtKey::V6(CtKey6 {
            src: addr_of(src),
            dst: addr_of(dst),
            sport,
            dport,
            protocol,
            direction,
            _pad: [0; 2],
        }),
    }
}
