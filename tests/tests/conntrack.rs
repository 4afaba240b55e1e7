//! Conntrack's life cycle in the real datapath (BPF_PROG_TEST_RUN) and the agent's expiry:
//! the clock stamp and flow state every entry carries, a retransmitted SYN refreshed in place,
//! a full table (new flows dropped with a reason, established ones still passing), the sweep
//! that deletes only idle entries, and the open-interface hint that lets pods no policy selects
//! skip conntrack. Run as root, one test at a time (`--test-threads=1`).

use std::net::{IpAddr, SocketAddr};

use zt_agent::runtime::expiry;
use zt_common::{
    config::{Config, event_mask, flags as cfg_flags},
    conntrack::{CtValue, flags as ct, timeout},
    direction::INGRESS,
    endpoint::{EndpointValue, flags as ep},
    names::capacity,
    policy::{PolicyKey, tuple},
    proto, reason,
};
use zt_tests::{
    kernel::{CtKey, Datapath, Hook, ct_key},
    packet::{Packet, TCP_ACK, TCP_SYN},
};

const POD_ID: u32 = 300;
const PEER_ID: u32 = 400;
/// TCP FIN and RST flag bits.
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// An isolated IPv4 pod that accepts TCP/80 from one peer, and the conntrack clock at `clock`.
struct Fixture {
    dp: Datapath,
    pod: IpAddr,
    peer: IpAddr,
}

impl Fixture {
    fn new(clock: u32) -> Self {
        let mut dp = Datapath::load().unwrap_or_else(|e| panic!("{e:#}"));
        let (pod, peer) = (ip("10.0.0.2"), ip("10.0.1.5"));
        dp.set_config(Config {
            policy_revision: 1,
            event_mask: event_mask::ALL,
            flags: cfg_flags::FAIL_CLOSED,
            clock,
        })
        .unwrap();
        dp.set_endpoint(
            pod,
            EndpointValue {
                identity: POD_ID,
                flags: ep::INGRESS_ISOLATED | ep::EGRESS_ISOLATED,
                ingress_tuples: tuple::bit(false, 16),
                ..Default::default()
            },
        )
        .unwrap();
        dp.set_identity("10.0.1.5/32".parse().unwrap(), PEER_ID)
            .unwrap();
        dp.set_policy(
            PolicyKey {
                subject: POD_ID,
                peer: PEER_ID,
                port: 80,
                protocol: proto::TCP,
                tuple: tuple::key_byte(INGRESS, 16),
            },
            7,
        )
        .unwrap();
        Self { dp, pod, peer }
    }

    fn set_clock(&mut self, clock: u32) {
        let mut c = self.dp.config().unwrap();
        c.clock = clock;
        self.dp.set_config(c).unwrap();
    }

    fn key(&self, sport: u16) -> CtKey {
        ct_key(self.peer, sport, self.pod, 80, proto::TCP, INGRESS)
    }

    fn entry(&self, sport: u16) -> Option<CtValue> {
        self.dp.conntrack(&self.key(sport)).unwrap()
    }

    fn syn(&self, sport: u16) -> Packet {
        Packet::tcp(sa(self.peer, sport), sa(self.pod, 80))
    }

    fn run(&mut self, hook: Hook, p: &Packet) -> zt_tests::kernel::Run {
        self.dp.run(hook, &p.build()).unwrap()
    }
}

#[test]
fn entries_carry_the_clock_and_the_flow_state() {
    let mut f = Fixture::new(100);
    f.run(Hook::ToPod, &f.syn(40000))
        .assert_reason(reason::ALLOW_POLICY);
    let e = f.entry(40000).expect("admitted");
    assert_eq!((e.seen, e.flags, e.revision), (100, 0, 1));

    // The reply, a microsecond later, passes on the entry and marks the flow two-way.
    let reply = Packet::tcp_flags(sa(f.pod, 80), sa(f.peer, 40000), TCP_SYN | TCP_ACK);
    f.run(Hook::FromPod, &reply)
        .assert_reason(reason::ALLOW_CT_REPLY);
    assert_eq!(f.entry(40000).unwrap().flags, ct::REPLIED);

    // A packet of the flow after the clock moved stamps the new time.
    f.set_clock(107);
    let ack = Packet::tcp_flags(sa(f.peer, 40000), sa(f.pod, 80), TCP_ACK);
    f.run(Hook::ToPod, &ack)
        .assert_reason(reason::ALLOW_CT_ESTABLISHED);
    assert_eq!(f.entry(40000).unwrap().seen, 107);

    // A FIN marks it closing, and it keeps passing.
    let fin = Packet::tcp_flags(sa(f.peer, 40000), sa(f.pod, 80), TCP_FIN | TCP_ACK);
    f.run(Hook::ToPod, &fin)
        .assert_reason(reason::ALLOW_CT_ESTABLISHED);
    assert_eq!(f.entry(40000).unwrap().flags, ct::REPLIED | ct::CLOSING);
    f.run(Hook::ToPod, &ack)
        .assert_reason(reason::ALLOW_CT_ESTABLISHED);

    // So does an RST of another flow, from the pod's side.
    f.run(Hook::ToPod, &f.syn(40001))
        .assert_reason(reason::ALLOW_POLICY);
    let rst = Packet::tcp_flags(sa(f.pod, 80), sa(f.peer, 40001), TCP_RST | TCP_ACK);
    f.run(Hook::FromPod, &rst)
        .assert_reason(reason::ALLOW_CT_REPLY);
    assert_eq!(f.entry(40001).unwrap().flags, ct::REPLIED | ct::CLOSING);
}

#[test]
fn a_retransmitted_syn_refreshes_its_entry_in_place() {
    let mut f = Fixture::new(5);
    f.run(Hook::ToPod, &f.syn(40000))
        .assert_reason(reason::ALLOW_POLICY);
    // The entry goes stale and is flagged; the SYN again (BPF_NOEXIST finds it) rewrites it.
    let stale = CtValue {
        revision: 0,
        flags: ct::REPLIED | ct::AUDITED,
        ifindex: f.dp.test_ifindex(),
        seen: 1,
    };
    f.dp.set_conntrack(f.key(40000), stale).unwrap();
    f.set_clock(9);
    let run = f.run(Hook::ToPod, &f.syn(40000));
    run.assert_reason(reason::ALLOW_POLICY);
    assert_eq!(
        f.entry(40000),
        Some(CtValue {
            revision: 1,
            flags: 0,
            ifindex: f.dp.test_ifindex(),
            seen: 9,
        })
    );
    assert_eq!(f.dp.conntrack_len().unwrap(), 1);
}

#[test]
fn a_full_table_drops_new_flows_and_keeps_established_ones() {
    let mut f = Fixture::new(1);
    f.run(Hook::ToPod, &f.syn(40000))
        .assert_reason(reason::ALLOW_POLICY);
    let value = f.entry(40000).unwrap();
    // Fill the IPv4 table with flows from other sources.
    let filler = |i: u32| {
        let src = IpAddr::from(std::net::Ipv4Addr::from(0x0a80_0000 + i));
        ct_key(src, 1000, ip("10.0.0.2"), 8080, proto::TCP, INGRESS)
    };
    for i in 1..capacity::CONNTRACK_V4 {
        f.dp.set_conntrack(filler(i), value).unwrap();
    }
    assert_eq!(
        f.dp.conntrack_len().unwrap(),
        capacity::CONNTRACK_V4 as usize
    );

    // A new flow policy allows cannot be recorded: dropped, with its own reason and event.
    let run = f.run(Hook::ToPod, &f.syn(40001));
    run.assert_reason(reason::DROP_CT_FULL);
    assert_eq!(run.events.len(), 1);
    assert_eq!(run.events[0].reason, reason::DROP_CT_FULL);
    // The established flow and its replies pass; a retransmitted SYN of it too (in place).
    let ack = Packet::tcp_flags(sa(f.peer, 40000), sa(f.pod, 80), TCP_ACK);
    f.run(Hook::ToPod, &ack)
        .assert_reason(reason::ALLOW_CT_ESTABLISHED);
    let reply = Packet::tcp_flags(sa(f.pod, 80), sa(f.peer, 40000), TCP_ACK);
    f.run(Hook::FromPod, &reply)
        .assert_reason(reason::ALLOW_CT_REPLY);
    f.run(Hook::ToPod, &f.syn(40000))
        .assert_reason(reason::ALLOW_POLICY);

    // One entry freed: the new flow starts.
    assert!(f.dp.remove_conntrack(&filler(1)).unwrap());
    f.run(Hook::ToPod, &f.syn(40001))
        .assert_reason(reason::ALLOW_POLICY);
}

#[test]
fn the_sweep_deletes_only_entries_idle_past_their_timeout() {
    let mut f = Fixture::new(0);
    let now = 100_000;
    f.set_clock(now);
    let ifindex = f.dp.test_ifindex();
    let at = |seen: u32, flags: u32| CtValue {
        revision: 1,
        flags,
        ifindex,
        seen,
    };
    let udp = |sport| ct_key(f.peer, sport, f.pod, 53, proto::UDP, INGRESS);
    let replied = ct::REPLIED;
    let closing = ct::REPLIED | ct::CLOSING;
    // (key, value, kept by the sweep)
    let cases = [
        (f.key(1), at(now - timeout::UNREPLIED, 0), true),
        (f.key(2), at(now - timeout::UNREPLIED - 1, 0), false),
        (f.key(3), at(now - timeout::TCP, replied), true),
        (f.key(4), at(now - timeout::TCP - 1, replied), false),
        (f.key(5), at(now - timeout::CLOSING - 1, closing), false),
        (f.key(6), at(now - timeout::CLOSING, closing), true),
        (udp(7), at(now - timeout::OTHER - 1, replied), false),
        (udp(8), at(now - timeout::OTHER, replied), true),
        // Stamped after the sweep's clock was read.
        (udp(9), at(now + 1, 0), true),
    ];
    for (key, value, _) in &cases {
        f.dp.set_conntrack(*key, *value).unwrap();
    }
    let swept = expiry::sweep(f.dp.pin_dir()).unwrap();
    assert_eq!(swept.entries, cases.len() as u64);
    assert_eq!(
        swept.expired,
        cases.iter().filter(|(_, _, kept)| !kept).count() as u64
    );
    for (key, value, kept) in &cases {
        let found = f.dp.conntrack(key).unwrap();
        assert_eq!(found.is_some(), *kept, "{key:?} {value:?}");
    }
    // A flow that passes a packet is fresh again: its entry survives the next sweeps.
    let ack = Packet::tcp_flags(sa(f.peer, 3), sa(f.pod, 80), TCP_ACK);
    f.set_clock(now + 10);
    f.run(Hook::ToPod, &ack)
        .assert_reason(reason::ALLOW_CT_ESTABLISHED);
    f.set_clock(now + 10 + timeout::TCP);
    expiry::sweep(f.dp.pin_dir()).unwrap();
    assert!(f.dp.conntrack(&f.key(3)).unwrap().is_some());
}

#[test]
fn open_interfaces_skip_conntrack_and_lose_the_hint_when_isolated() {
    let mut f = Fixture::new(1);
    let ifindex = f.dp.test_ifindex();
    let open = ip("10.0.0.3");
    let open_ep = EndpointValue {
        identity: POD_ID + 1,
        ifindex,
        ..Default::default()
    };
    f.dp.set_endpoint(open, open_ep).unwrap();
    assert_ne!(f.dp.open_hint(ifindex).unwrap(), ifindex);
    let ack = Packet::tcp_flags(sa(f.peer, 40000), sa(open, 80), TCP_ACK);
    f.run(Hook::ToPod, &ack)
        .assert_reason(reason::ALLOW_NOT_ISOLATED);
    // Learned: the next packets take the hinted path, with the same verdict.
    assert_eq!(f.dp.open_hint(ifindex).unwrap(), ifindex);
    let run = f.run(Hook::ToPod, &ack);
    run.assert_reason(reason::ALLOW_NOT_ISOLATED);
    assert!(run.events.is_empty());
    assert_eq!(f.dp.conntrack_len().unwrap(), 0);

    // A hint never stands in for the checks: a spoofed source on the hinted interface drops.
    let mut elsewhere = open_ep;
    elsewhere.ifindex = ifindex + 1000;
    let other = ip("10.0.0.4");
    f.dp.set_endpoint(other, elsewhere).unwrap();
    let spoofed = Packet::udp(sa(other, 1), sa(f.peer, 2));
    f.run(Hook::FromPod, &spoofed)
        .assert_reason(reason::DROP_SPOOFED);
    // Nor does an unknown local address pass a fail-closed interface.
    let stranger = Packet::udp(sa(ip("10.9.9.9"), 1), sa(f.peer, 2));
    f.run(Hook::FromPod, &stranger)
        .assert_reason(reason::DROP_UNKNOWN_ENDPOINT);

    // The pod becomes isolated (with no egress rule): the hint is stale, the full procedure
    // drops, and the hint is cleared.
    f.dp.set_endpoint(
        open,
        EndpointValue {
            flags: ep::INGRESS_ISOLATED | ep::EGRESS_ISOLATED,
            ..open_ep
        },
    )
    .unwrap();
    let out = Packet::udp(sa(open, 1), sa(f.peer, 2));
    f.run(Hook::FromPod, &out)
        .assert_reason(reason::DROP_POLICY_EGRESS);
    assert_eq!(f.dp.open_hint(ifindex).unwrap(), 0);
}

/// Creates and pins an LRU hash map as an agent before the hash-map conntrack did (aya creates
/// maps only from an object).
fn pin_lru_map(path: &std::path::Path, name: &str, key: u32, value: u32, entries: u32) {
    #[repr(C)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
        rest: [u8; 92],
    }
    #[repr(C)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        rest: [u8; 112],
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let mut map_name = [0u8; 16];
    map_name[..name.len()].copy_from_slice(name.as_bytes());
    let create = Create {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: key,
        value_size: value,
        max_entries: entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
        rest: [0; 92],
    };
    // SAFETY: BPF_MAP_CREATE reads a `bpf_attr` of the given size; every byte is initialised.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &create as *const Create,
            size_of::<Create>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = Pin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
        rest: [0; 112],
    };
    // SAFETY: as above; `c_path` outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const Pin,
            size_of::<Pin>(),
        )
    };
    assert!(r == 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: our descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn an_lru_conntrack_pinned_by_an_older_agent_is_migrated() {
    use aya::maps::{HashMap, Map, MapData, MapInfo, MapType};
    use zt_common::conntrack::CtKey4;

    let root = zt_tests::kernel::PinDir::new().unwrap();
    let maps = root.path().join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let old_pin = maps.join(zt_common::names::MAP_CONNTRACK_V4);
    pin_lru_map(
        &old_pin,
        zt_common::names::MAP_CONNTRACK_V4,
        size_of::<CtKey4>() as u32,
        size_of::<CtValue>() as u32,
        capacity::CONNTRACK_V4,
    );
    let open = |p: &std::path::Path| {
        let m = Map::from_map_data(MapData::from_pin(p).unwrap()).unwrap();
        HashMap::<_, CtKey4, CtValue>::try_from(m).unwrap()
    };
    let key = |sport: u16| match ct_key(ip("10.0.1.5"), sport, ip("10.0.0.2"), 80, 6, INGRESS) {
        CtKey::V4(k) => k,
        CtKey::V6(_) => unreachable!(),
    };
    let admitted = CtValue {
        revision: 1,
        flags: ct::REPLIED,
        ifindex: 7,
        seen: 0,
    };
    open(&old_pin).insert(key(1), admitted, 0).unwrap();

    let mut loaded = zt_agent::runtime::loader::Loaded::load(root.path()).unwrap();
    assert!(loaded.migrating);
    let new = MapInfo::from_pin(&old_pin).unwrap();
    assert_eq!(new.map_type().unwrap(), MapType::Hash);
    assert_eq!(open(&old_pin).get(&key(1), 0).unwrap(), admitted);
    // The old programs admit one more flow before they are swapped: the second pass brings it.
    let moved = maps.join(format!("{}_lru", zt_common::names::MAP_CONNTRACK_V4));
    open(&moved).insert(key(2), admitted, 0).unwrap();
    loaded.finish_migration().unwrap();
    assert_eq!(open(&old_pin).get(&key(2), 0).unwrap(), admitted);
    assert!(!moved.exists(), "the old map's pin is removed");
    drop(loaded);
    // A later start finds nothing to migrate and reuses the new map.
    let again = zt_agent::runtime::loader::Loaded::load(root.path()).unwrap();
    assert!(!again.migrating);
    assert_eq!(open(&old_pin).get(&key(1), 0).unwrap(), admitted);
}
