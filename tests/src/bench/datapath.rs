//! `cargo xtask bench datapath [--json]`: nanoseconds per packet through the real programs, via
//! BPF_PROG_TEST_RUN, on a 64-byte TCP/IPv4 packet arriving at a pod (`zt_to_pod`).
//!
//! Cases (repeat mode: one packet run [`REPEAT`] times in the kernel, the kernel's mean):
//! - `baseline`: `zt_baseline` (parse and pass) — the floor;
//! - `ct_hit`, `ct_hit_ipv6`: a packet (ACK) of an established flow;
//! - `new_flow_1k`, `new_flow_100k`: a TCP SYN with 1k resp. 100k peer identities and as many
//!   policy entries loaded. A SYN opens a connection, so every run is a new flow: endpoint,
//!   identity and policy lookups, a conntrack write and a NEW_FLOW event (the bench checks that
//!   every run was admitted by policy); `new_flow_ipv6` the same over IPv6;
//! - `denied`: a SYN no policy allows (identity and policy lookups, DENIED event);
//! - `not_isolated`: an ACK to a pod no policy selects (conntrack misses, endpoint lookup).
//!
//! Repeat mode runs one packet on warm caches. What a flow costs on cold ones is measured apart:
//! `new_flow_100k_cold` and `new_flow_100k_cold_ack` run distinct flows from random peers among
//! the 100k, each once (`repeat = 1`), with the kernel timer's fixed cost for a single run —
//! the baseline's single-run time minus its repeat-mode time — subtracted. Every such flow touches
//! a never-used conntrack element and a peer's identity and policy entries not touched for a
//! while. The ACK case adds the two conntrack misses that a first UDP datagram, or a packet of a
//! connection conntrack forgot, pays (a SYN skips them).
//! Events are on (`event_mask = ALL`) and the ring buffer is drained between runs so that
//! reservations succeed, as they would with a reader attached. Every figure is the median of
//! [`RUNS`] runs.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use zt_common::{
    config::{Config, event_mask, flags},
    direction::INGRESS,
    endpoint::{EndpointValue, flags as ep},
    policy::{PolicyKey, tuple},
    proto, reason,
};

use crate::{
    kernel::{Datapath, Hook, TC_ACT_OK, TC_ACT_SHOT},
    packet::{Packet, TCP_ACK},
};

const RUNS: usize = 7;
const REPEAT: u32 = 200_000;
/// Per test_run call for cases that publish events: 1000 × 64 bytes fits the ring easily.
const EVENT_REPEAT: u32 = 1000;
/// test_run calls per run for cases that publish events.
const EVENT_BATCHES: usize = 20;
const COLD_SAMPLES: usize = 2000;
const PEERS_LARGE: u32 = 100_000;
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const POD_ID: u32 = 300;
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
const PEER6_ID: u32 = 999;
/// A pod no policy selects.
const OPEN_POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
/// The established flow's source port, above every port new flows use (1024..61024).
const ESTABLISHED_PORT: u16 = 65000;

struct Case {
    name: &'static str,
    ns: f64,
    method: &'static str,
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let mut cases = Vec::new();

    let mut small = seeded(1_000)?;
    let baseline = median(RUNS, || {
        repeat_ns(
            &mut small,
            Hook::Baseline,
            &tcp(peer(0), 40000, 80),
            REPEAT,
            TC_ACT_OK,
        )
    })?;
    cases.push(Case {
        name: "baseline",
        ns: baseline,
        method: "repeat mode",
    });

    for (name, from, to) in [
        ("ct_hit", IpAddr::from(peer(0)), IpAddr::from(POD)),
        ("ct_hit_ipv6", PEER6.into(), POD6.into()),
    ] {
        let packet = establish(&mut small, from, to)?;
        let ns = median(RUNS, || {
            repeat_ns(&mut small, Hook::ToPod, &packet, REPEAT, TC_ACT_OK)
        })?;
        cases.push(Case {
            name,
            ns,
            method: "repeat mode, TCP ACK",
        });
    }

    // The kernel timer's fixed cost around a single run.
    let single = median(RUNS, || {
        let p = tcp(peer(0), 40000, 80).build();
        let mut samples = (0..COLD_SAMPLES)
            .map(|_| small.run_repeat(Hook::Baseline, &p, 1).map(|(_, d)| d))
            .collect::<anyhow::Result<Vec<Duration>>>()?;
        Ok(median_duration(&mut samples))
    })?;
    let timer = (single - baseline).max(0.0);

    cases.push(Case {
        name: "new_flow_1k",
        ns: new_flow(&mut small, &tcp(peer(500), 40000, 80))?,
        method: "repeat mode, TCP SYN, events drained",
    });
    let syn6 = Packet::tcp((PEER6, 40000).into(), (POD6, 80).into()).payload(10);
    cases.push(Case {
        name: "new_flow_ipv6",
        ns: new_flow(&mut small, &syn6)?,
        method: "as new_flow_1k, IPv6 (the peer's identity from the /128 host map)",
    });
    let denied = with_events(&mut small, &tcp(peer(1), 40000, 81), TC_ACT_SHOT)?;
    cases.push(Case {
        name: "denied",
        ns: denied,
        method: "repeat mode, TCP SYN, events drained",
    });
    let open =
        Packet::tcp_flags((peer(1), 40000).into(), (OPEN_POD, 80).into(), TCP_ACK).payload(10);
    let not_isolated = median(RUNS, || {
        repeat_ns(&mut small, Hook::ToPod, &open, REPEAT, TC_ACT_OK)
    })?;
    cases.push(Case {
        name: "not_isolated",
        ns: not_isolated,
        method: "repeat mode, TCP ACK",
    });
    drop(small);

    let mut large = seeded(100_000)?;
    cases.push(Case {
        name: "new_flow_100k",
        ns: new_flow(&mut large, &tcp(peer(PEERS_LARGE / 2), 40000, 80))?,
        method: "repeat mode, TCP SYN, events drained",
    });
    let mut flows = 0;
    cases.push(Case {
        name: "new_flow_100k_cold",
        ns: cold_flows(&mut large, Flow::TcpSyn, timer, &mut flows)?,
        method: "distinct TCP flows from random peers, repeat 1, timer cost subtracted",
    });
    cases.push(Case {
        name: "new_flow_100k_cold_ack",
        ns: cold_flows(&mut large, Flow::TcpAck, timer, &mut flows)?,
        method: "as new_flow_100k_cold, first packet an ACK: two conntrack misses first",
    });

    if json {
        let cases: Vec<_> = cases
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "ns_per_packet": (c.ns * 10.0).round() / 10.0, "method": c.method}))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "cases": cases, "runs": RUNS, "timer_overhead_ns": timer })
        );
    } else {
        println!(
            "datapath: ns per packet, 64-byte TCP/IPv4 into zt_to_pod (median of {RUNS} runs)"
        );
        println!("{:<24} {:>10}  method", "case", "ns/packet");
        for c in &cases {
            println!("{:<24} {:>10.1}  {}", c.name, c.ns, c.method);
        }
        println!("(single-run timer overhead subtracted from new_flow: {timer:.1} ns)");
    }
    Ok(())
}

/// Admits the flow `ct_hit` measures and returns a packet of it (a 64-byte TCP ACK).
fn establish(dp: &mut Datapath, from: IpAddr, to: IpAddr) -> anyhow::Result<Packet> {
    let (client, server) = ((from, ESTABLISHED_PORT).into(), (to, 80).into());
    dp.run(
        Hook::ToPod,
        &Packet::tcp(client, server).payload(10).build(),
    )?
    .assert_reason(reason::ALLOW_POLICY);
    Ok(Packet::tcp_flags(client, server, TCP_ACK).payload(10))
}

/// The i-th peer address (10.1.0.0 + i).
fn peer(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i)
}

/// A 64-byte frame: Ethernet, IPv4, TCP SYN, 10 bytes of payload.
fn tcp(from: Ipv4Addr, sport: u16, dport: u16) -> Packet {
    Packet::tcp((from, sport).into(), (POD, dport).into()).payload(10)
}

/// A datapath with one isolated pod and `n` peers, each with its own identity and an entry
/// allowing it TCP port 80 into the pod.
fn seeded(n: u32) -> anyhow::Result<Datapath> {
    let mut dp = Datapath::load()?;
    dp.set_config(Config {
        policy_revision: 1,
        event_mask: event_mask::ALL,
        flags: flags::FAIL_CLOSED,
        _pad: 0,
    })?;
    let pod = EndpointValue {
        identity: POD_ID,
        flags: ep::INGRESS_ISOLATED | ep::EGRESS_ISOLATED,
        ingress_tuples: tuple::bit(false, 16),
        ..Default::default()
    };
    dp.set_endpoint(POD.into(), pod)?;
    dp.set_endpoint(
        OPEN_POD.into(),
        EndpointValue {
            identity: POD_ID + 1,
            ..Default::default()
        },
    )?;
    // One IPv6 pod with one allowed peer, for the `_ipv6` cases.
    dp.set_endpoint(POD6.into(), pod)?;
    dp.set_identity(ipnet::Ipv6Net::new(PEER6, 128)?.into(), PEER6_ID)?;
    dp.set_policy(allow(PEER6_ID), PEER6_ID)?;
    for i in 0..n {
        let identity = 1000 + i;
        dp.set_identity(ipnet::Ipv4Net::new(peer(i), 32)?.into(), identity)?;
        dp.set_policy(allow(identity), i)?;
    }
    Ok(dp)
}

/// The entry allowing `peer` TCP port 80 into the pod.
fn allow(peer: u32) -> PolicyKey {
    PolicyKey {
        subject: POD_ID,
        peer,
        port: 80,
        protocol: proto::TCP,
        tuple: tuple::key_byte(INGRESS, 16),
    }
}

fn repeat_ns(
    dp: &mut Datapath,
    hook: Hook,
    p: &Packet,
    repeat: u32,
    want: i32,
) -> anyhow::Result<f64> {
    let (action, d) = dp.run_repeat(hook, &p.build(), repeat)?;
    ensure!(
        action == want,
        "{hook:?} returned {action}, expected {want}"
    );
    Ok(d.as_nanos() as f64)
}

/// `p` in repeat mode with events on: batches small enough for the ring buffer, drained between.
fn with_events(dp: &mut Datapath, p: &Packet, want: i32) -> anyhow::Result<f64> {
    median(RUNS, || {
        let mut total = 0.0;
        for _ in 0..EVENT_BATCHES {
            total += repeat_ns(dp, Hook::ToPod, p, EVENT_REPEAT, want)?;
            dp.drain_events();
        }
        Ok(total / EVENT_BATCHES as f64)
    })
}

/// `syn` in repeat mode: every run must be a new flow admitted by policy.
fn new_flow(dp: &mut Datapath, syn: &Packet) -> anyhow::Result<f64> {
    let before = dp.counters()?[reason::ALLOW_POLICY as usize];
    let ns = with_events(dp, syn, TC_ACT_OK)?;
    let admitted = dp.counters()?[reason::ALLOW_POLICY as usize] - before;
    let runs = (RUNS * EVENT_BATCHES) as u64 * u64::from(EVENT_REPEAT);
    ensure!(
        admitted == runs,
        "{admitted} of {runs} runs went through policy"
    );
    Ok(ns)
}

/// The first packet of a cold flow.
#[derive(Clone, Copy)]
enum Flow {
    /// Skips the conntrack lookups.
    TcpSyn,
    /// Pays both conntrack misses first, as a first UDP datagram or a connection conntrack
    /// forgot does.
    TcpAck,
}

/// Median over runs of the median single-run time of distinct new flows from random peers, with
/// the single-run timer cost taken out.
fn cold_flows(dp: &mut Datapath, flow: Flow, timer: f64, flows: &mut u64) -> anyhow::Result<f64> {
    let before = dp.counters()?[reason::ALLOW_POLICY as usize];
    let mut next: u64 = 0x9e37_79b9;
    let first = *flows;
    let ns = median(RUNS, || {
        let mut samples = Vec::with_capacity(COLD_SAMPLES);
        for _ in 0..COLD_SAMPLES {
            // A cheap LCG spreads the peers over the whole identity and policy maps.
            next = next
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (next >> 33) as u32 % PEERS_LARGE;
            // The source port comes from a flow counter shared by all cases on one datapath, so
            // no (peer, port) pair repeats while fewer than 60000 flows are run on it.
            let sport = 1024 + (*flows % 60000) as u16;
            let p = match flow {
                Flow::TcpSyn => tcp(peer(i), sport, 80),
                Flow::TcpAck => {
                    Packet::tcp_flags((peer(i), sport).into(), (POD, 80).into(), TCP_ACK)
                        .payload(10)
                }
            };
            *flows += 1;
            let (action, d) = dp.run_repeat(Hook::ToPod, &p.build(), 1)?;
            ensure!(action == TC_ACT_OK, "new flow dropped");
            samples.push(d.as_nanos() as f64);
        }
        dp.drain_events();
        Ok(median_f64(&mut samples) - timer)
    })?;
    // Every sample must have been a new flow admitted by policy, not a conntrack hit.
    let admitted = dp.counters()?[reason::ALLOW_POLICY as usize] - before;
    let n = *flows - first;
    ensure!(
        admitted == n,
        "{admitted} of {n} samples went through policy"
    );
    Ok(ns)
}

fn median_duration(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_nanos() as f64
}

fn median_f64(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn median(runs: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut v = (0..runs)
        .map(|_| f())
        .collect::<anyhow::Result<Vec<f64>>>()
        .context("benchmark run")?;
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}
