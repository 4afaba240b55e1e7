//! `cargo xtask bench datapath [--json]`: nanoseconds per packet through the real programs, via
//! BPF_PROG_TEST_RUN, on a 64-byte TCP/IPv4 packet arriving at a pod (`zt_to_pod`).
//!
//! Cases:
//! - `baseline`: `zt_baseline` (parse and pass) — the floor;
//! - `ct_hit`: a packet of an established flow;
//! - `new_flow_1k`, `new_flow_100k`: a packet of a flow conntrack has never seen, with 1k resp.
//!   100k peer identities in the LPM trie and as many policy entries; it goes through the
//!   endpoint, conntrack (two misses), identity and policy lookups and the conntrack insert,
//!   and publishes a NEW_FLOW event; `new_flow_100k_hot_peers` draws the peers from 64 recently
//!   active ones (warm trie path and policy bucket) instead of all 100k;
//! - `denied`: a packet no policy allows (identity and policy lookups, DENIED event);
//! - `not_isolated`: a packet to a pod no policy selects (conntrack misses, endpoint lookup).
//!
//! Repeat mode re-runs one packet, which after the first run would be an established flow, and
//! there is no honest way around that: the program's own conntrack insert is what makes the next
//! run a hit. So each new-flow sample is a distinct flow (new peer and source port) run once
//! (`repeat = 1`), and the kernel timer's fixed cost for a single run — measured as the
//! baseline's single-run time minus its repeat-mode time — is subtracted. The `_paired` cases
//! measure the same flows differently: each new flow is followed by one single run of the
//! established packet, the pair's difference isolates what a new flow costs over a conntrack hit
//! under identical single-run conditions (syscall, skb set-up, timer, cache state of the program
//! and maps), and the repeat-mode `ct_hit` figure is added back. `new_flow_warm_paired` draws
//! every flow from one peer (distinct source ports), so the identity and policy lookups run on
//! warm cache lines; the conntrack insert still takes a never-used element and the event a fresh
//! ring slot, as every new flow does. The other cases use repeat mode directly.
//! Events are on (`event_mask = ALL`) and the ring buffer is drained between runs so that
//! reservations succeed, as they would with a reader attached. Every figure is the median of
//! [`RUNS`] runs.

use std::{net::Ipv4Addr, time::Duration};

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
const NEW_FLOW_SAMPLES: usize = 2000;
/// Working set of `new_flow_100k_hot_peers`: new connections from peers seen recently, whose
/// trie path and policy bucket are in cache, against the same 100k-entry maps.
const HOT_PEERS: u32 = 64;
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const POD_ID: u32 = 300;
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

    let ct_packet = establish(&mut small)?;
    let ct_hit = median(RUNS, || {
        repeat_ns(&mut small, Hook::ToPod, &ct_packet, REPEAT, TC_ACT_OK)
    })?;
    cases.push(Case {
        name: "ct_hit",
        ns: ct_hit,
        method: "repeat mode",
    });

    // The kernel timer's fixed cost around a single run.
    let single = median(RUNS, || {
        let p = tcp(peer(0), 40000, 80).build();
        let mut samples = (0..NEW_FLOW_SAMPLES)
            .map(|_| small.run_repeat(Hook::Baseline, &p, 1).map(|(_, d)| d))
            .collect::<anyhow::Result<Vec<Duration>>>()?;
        Ok(median_duration(&mut samples))
    })?;
    let timer = (single - baseline).max(0.0);

    let mut small_flows = 0;
    cases.push(Case {
        name: "new_flow_1k",
        ns: new_flow(&mut small, 1_000, Cost::Timer(timer), &mut small_flows)?,
        method: "distinct flows, repeat 1, timer cost subtracted",
    });
    let paired = Cost::Paired {
        ct_packet: ct_packet.build(),
        ct_hit,
    };
    cases.push(Case {
        name: "new_flow_1k_paired",
        ns: new_flow(&mut small, 1_000, paired.clone(), &mut small_flows)?,
        method: "distinct flows, repeat 1, minus a paired ct_hit run, plus ct_hit",
    });
    cases.push(Case {
        name: "new_flow_warm_paired",
        ns: new_flow(&mut small, 1, paired, &mut small_flows)?,
        method: "as new_flow_1k_paired, every flow from one peer",
    });
    let denied = median(RUNS, || {
        let p = tcp(peer(1), 40000, 81);
        let mut total = 0.0;
        for _ in 0..20 {
            total += repeat_ns(&mut small, Hook::ToPod, &p, EVENT_REPEAT, TC_ACT_SHOT)?;
            small.drain_events();
        }
        Ok(total / 20.0)
    })?;
    cases.push(Case {
        name: "denied",
        ns: denied,
        method: "repeat mode, events drained",
    });
    let open = Packet::tcp((peer(1), 40000).into(), (OPEN_POD, 80).into()).payload(10);
    let not_isolated = median(RUNS, || {
        repeat_ns(&mut small, Hook::ToPod, &open, REPEAT, TC_ACT_OK)
    })?;
    cases.push(Case {
        name: "not_isolated",
        ns: not_isolated,
        method: "repeat mode",
    });
    drop(small);

    let mut large = seeded(100_000)?;
    let large_ct = establish(&mut large)?;
    let mut large_flows = 0;
    cases.push(Case {
        name: "new_flow_100k",
        ns: new_flow(&mut large, 100_000, Cost::Timer(timer), &mut large_flows)?,
        method: "distinct flows, repeat 1, timer cost subtracted",
    });
    cases.push(Case {
        name: "new_flow_100k_hot_peers",
        ns: new_flow(&mut large, HOT_PEERS, Cost::Timer(timer), &mut large_flows)?,
        method: "as new_flow_100k, peers drawn from 64 recently active ones",
    });
    cases.push(Case {
        name: "new_flow_100k_paired",
        ns: new_flow(
            &mut large,
            100_000,
            Cost::Paired {
                ct_packet: large_ct.build(),
                ct_hit,
            },
            &mut large_flows,
        )?,
        method: "as new_flow_1k_paired, with 100k identities and entries",
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
fn establish(dp: &mut Datapath) -> anyhow::Result<Packet> {
    dp.run(Hook::ToPod, &tcp(peer(0), ESTABLISHED_PORT, 80).build())?
        .assert_reason(reason::ALLOW_POLICY);
    Ok(Packet::tcp_flags(
        (peer(0), ESTABLISHED_PORT).into(),
        (POD, 80).into(),
        TCP_ACK,
    )
    .payload(10))
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
    dp.set_endpoint(
        POD.into(),
        EndpointValue {
            identity: POD_ID,
            flags: ep::INGRESS_ISOLATED | ep::EGRESS_ISOLATED,
            ingress_tuples: tuple::bit(false, 16),
            ..Default::default()
        },
    )?;
    dp.set_endpoint(
        OPEN_POD.into(),
        EndpointValue {
            identity: POD_ID + 1,
            ..Default::default()
        },
    )?;
    for i in 0..n {
        let identity = 1000 + i;
        dp.set_identity(ipnet::Ipv4Net::new(peer(i), 32)?.into(), identity)?;
        let key = PolicyKey {
            subject: POD_ID,
            peer: identity,
            port: 80,
            protocol: proto::TCP,
            tuple: tuple::key_byte(INGRESS, 16),
        };
        dp.set_policy(key, i)?;
    }
    Ok(dp)
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

/// How a new-flow sample's single-run overhead is taken out.
#[derive(Clone)]
enum Cost {
    /// Subtract the baseline's single-run overhead.
    Timer(f64),
    /// Subtract a single run of `ct_packet` (an established flow) right after the sample, add
    /// the repeat-mode `ct_hit` figure.
    Paired { ct_packet: Vec<u8>, ct_hit: f64 },
}

/// Median over runs of the median single-run time of distinct new flows from peers `0..peers`,
/// with the single-run overhead taken out as `cost` says.
fn new_flow(dp: &mut Datapath, peers: u32, cost: Cost, flows: &mut u64) -> anyhow::Result<f64> {
    let before = dp.counters()?[reason::ALLOW_POLICY as usize];
    let mut next: u64 = 0x9e37_79b9;
    let first = *flows;
    let ns = median(RUNS, || {
        let mut samples = Vec::with_capacity(NEW_FLOW_SAMPLES);
        for _ in 0..NEW_FLOW_SAMPLES {
            // A cheap LCG spreads the peers over the whole trie and policy map.
            next = next
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (next >> 33) as u32 % peers;
            // The source port comes from a flow counter shared by all cases on one datapath, so
            // no (peer, port) pair repeats while fewer than 60000 flows are run on it.
            let sport = 1024 + (*flows % 60000) as u16;
            let p = tcp(peer(i), sport, 80).build();
            *flows += 1;
            let (action, d) = dp.run_repeat(Hook::ToPod, &p, 1)?;
            ensure!(action == TC_ACT_OK, "new flow dropped");
            samples.push(match &cost {
                Cost::Timer(_) => d.as_nanos() as f64,
                Cost::Paired { ct_packet, .. } => {
                    let (action, ct) = dp.run_repeat(Hook::ToPod, ct_packet, 1)?;
                    ensure!(action == TC_ACT_OK, "established flow dropped");
                    d.as_nanos() as f64 - ct.as_nanos() as f64
                }
            });
        }
        dp.drain_events();
        let m = median_f64(&mut samples);
        Ok(match &cost {
            Cost::Timer(timer) => m - timer,
            Cost::Paired { ct_hit, .. } => m + ct_hit,
        })
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
