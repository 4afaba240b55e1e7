//! `cargo xtask bench datapath [--json]`: nanoseconds per packet through the real programs, via
//! BPF_PROG_TEST_RUN, on a 64-byte TCP packet arriving at a pod (`zt_to_pod`).
//!
//! Three methods, each named in the output:
//! - *repeat mode*: one packet run [`REPEAT`] times in the kernel, the kernel's mean, for cases
//!   whose every run takes the same path with no lasting effect: `baseline` (`zt_baseline`,
//!   parse and pass — the floor), `ct_hit` / `ct_hit_ipv6` (an ACK of an established flow, hot
//!   caches), `denied` (a SYN no policy allows) and `not_isolated` (an ACK to a pod no policy
//!   selects).
//! - *repeat mode, a new flow every run*: `zt_bench_flow` is `zt_to_pod` after advancing the
//!   packet's source port by one, so each of a call's runs is a SYN of a flow no earlier run had,
//!   a real conntrack insert on warm program caches: `new_flow_1k` / `new_flow_ipv6` (1k
//!   identities and policy entries, conntrack holding ~1k flows) and `new_flow_100k` (100k of
//!   each, ~100k flows).
//! - *distinct*: every sample another packet, run once (`repeat = 1`), minus the single-run
//!   overhead (the kernel timer, and the program coming back into cache after the syscall:
//!   the hot established flow run once, minus `ct_hit`). `new_flow_100k_cold` (new flows from
//!   peers drawn at random among the 100k, so identity and policy entries are cold too),
//!   `new_flow_100k_cold_ack` (the same, first packet an ACK: the conntrack misses a first UDP
//!   datagram pays) and `ct_hit_100k_cold` (ACKs of flows drawn at random among 100k
//!   established ones: the established path when the entry is not in cache).
//!
//! The fill is held: conntrack is seeded with [`FILL_SMALL`] resp. [`FILL_LARGE`] established
//! flows, and the flows a call (or a batch of [`BATCH`] distinct samples) inserted are removed
//! from userspace, not timed, before the next.
//!
//! The bench fails loudly when a case did not take the path it claims: around every case it
//! reads the reason counters and requires that exactly the case's reason moved, by exactly the
//! number of runs; every new flow's conntrack entry must exist afterwards (removing it must
//! succeed) and publish one `NEW_FLOW` event.
//!
//! Events are on (`event_mask = ALL`) and the ring buffer is drained between batches so that
//! reservations succeed, as they would with a reader attached. Every figure is the median of
//! [`RUNS`] runs; `ratio` is the figure over the same run's baseline.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use zt_common::{
    config::{Config, event_mask, flags},
    direction::INGRESS,
    endpoint::{EndpointValue, flags as ep},
    event::kind,
    policy::{PolicyKey, tuple},
    proto, reason,
};

use crate::{
    kernel::{CtKey, Datapath, Hook, TC_ACT_OK, TC_ACT_SHOT, ct_key},
    packet::{Packet, TCP_ACK},
};

const RUNS: usize = 7;
const REPEAT: u32 = 200_000;
/// Per test_run call for repeat-mode cases that publish events: fits the ring buffer easily.
const EVENT_REPEAT: u32 = 1000;
/// test_run calls per run for those cases.
const EVENT_BATCHES: usize = 20;
/// Samples per run of a distinct-packet case.
const SAMPLES: usize = 2000;
/// Samples between two removals of what they inserted: the fill moves by at most this much.
const BATCH: usize = 100;
const FILL_SMALL: u32 = 1_000;
const FILL_LARGE: u32 = 100_000;
const PEERS_LARGE: u32 = 100_000;
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const POD_ID: u32 = 300;
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const PEER6_ID: u32 = 990;
/// IPv6 peers with an identity (new-flow calls rotate over them).
const PEERS6: u32 = 8;
/// A pod no policy selects.
const OPEN_POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
/// The hot established flow's source port, above every port new flows use (1024..61024).
const ESTABLISHED_PORT: u16 = 65000;
/// The port of the flows that fill conntrack; no new flow uses it.
const FILL_PORT: u16 = 8080;
/// Source ports of new flows: 1024 + (flow counter mod this).
const SPORTS: u64 = 60_000;

struct Case {
    name: &'static str,
    ns: f64,
    method: &'static str,
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let mut cases = Vec::new();
    let mut flows = 0;

    let mut small = seeded(1_000)?;
    fill(&mut small, FILL_SMALL, false)?;
    fill(&mut small, FILL_SMALL, true)?;
    let baseline = repeat(
        &mut small,
        Hook::Baseline,
        &tcp(peer(0), 40000, 80),
        None,
        TC_ACT_OK,
    )?;
    cases.push(Case {
        name: "baseline",
        ns: baseline,
        method: "repeat mode",
    });

    let mut hot = None;
    for (name, from, to) in [
        ("ct_hit", IpAddr::from(peer(0)), IpAddr::from(POD)),
        ("ct_hit_ipv6", peer6(0).into(), POD6.into()),
    ] {
        let packet = establish(&mut small, from, to)?;
        let ns = repeat(
            &mut small,
            Hook::ToPod,
            &packet,
            Some(reason::ALLOW_CT_ESTABLISHED),
            TC_ACT_OK,
        )?;
        hot.get_or_insert((packet, ns));
        cases.push(Case {
            name,
            ns,
            method: "repeat mode, TCP ACK",
        });
    }
    let (hot, ct_hit) = hot.context("no established flow")?;
    let timer = timer_overhead(&mut small, &hot, ct_hit)?;

    cases.push(Case {
        name: "new_flow_1k",
        ns: new_flows(&mut small, |k| peer(500 + k).into(), POD.into())?,
        method: "repeat mode, a new flow every run (zt_bench_flow), 1k identities, ~1k flows tracked",
    });
    cases.push(Case {
        name: "new_flow_ipv6",
        ns: new_flows(&mut small, |k| peer6(k).into(), POD6.into())?,
        method: "as new_flow_1k, IPv6 (the peer's identity from the /128 host map)",
    });
    let denied = with_events(
        &mut small,
        &tcp(peer(1), 40000, 81),
        reason::DROP_POLICY_INGRESS,
        TC_ACT_SHOT,
    )?;
    cases.push(Case {
        name: "denied",
        ns: denied,
        method: "repeat mode, TCP SYN, events drained",
    });
    let open =
        Packet::tcp_flags((peer(1), 40000).into(), (OPEN_POD, 80).into(), TCP_ACK).payload(10);
    cases.push(Case {
        name: "not_isolated",
        ns: repeat(
            &mut small,
            Hook::ToPod,
            &open,
            Some(reason::ALLOW_NOT_ISOLATED),
            TC_ACT_OK,
        )?,
        method: "repeat mode, TCP ACK",
    });
    drop(small);

    let mut large = seeded(PEERS_LARGE)?;
    fill(&mut large, FILL_LARGE, false)?;
    let mut rng = Lcg(0x9e37_79b9);
    cases.push(Case {
        name: "ct_hit_100k_cold",
        ns: distinct(&mut large, timer, || {
            let i = rng.below(FILL_LARGE);
            let p = Packet::tcp_flags(
                (fill_peer(i, false), FILL_PORT).into(),
                (POD, FILL_PORT).into(),
                TCP_ACK,
            )
            .payload(10);
            (p, None)
        })?,
        method: "distinct TCP ACKs of flows drawn at random among 100k established",
    });
    cases.push(Case {
        name: "new_flow_100k",
        ns: new_flows(&mut large, |k| peer(PEERS_LARGE / 2 + k).into(), POD.into())?,
        method: "as new_flow_1k, 100k identities and policy entries, ~100k flows tracked",
    });
    for (name, ack, method) in [
        (
            "new_flow_100k_cold",
            false,
            "distinct new flows from random peers among 100k, ~100k flows tracked",
        ),
        (
            "new_flow_100k_cold_ack",
            true,
            "as new_flow_100k_cold, first packet an ACK: two conntrack misses first",
        ),
    ] {
        let ns = distinct(&mut large, timer, || {
            let from = IpAddr::from(peer(rng.below(PEERS_LARGE)));
            let (p, key) = new_flow(from, POD.into(), &mut flows, ack);
            (p, Some(key))
        })?;
        cases.push(Case { name, ns, method });
    }

    if json {
        let cases: Vec<_> = cases
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "ns_per_packet": round1(c.ns),
                    "ratio": (c.ns / baseline * 100.0).round() / 100.0,
                    "method": c.method,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "cases": cases, "runs": RUNS, "timer_overhead_ns": round1(timer) })
        );
    } else {
        println!(
            "datapath: ns per 64-byte TCP packet into zt_to_pod (median of {RUNS} runs; \
             ratio to this run's baseline)"
        );
        println!("{:<24} {:>10} {:>7}  method", "case", "ns/packet", "ratio");
        for c in &cases {
            println!(
                "{:<24} {:>10.1} {:>6.2}×  {}",
                c.name,
                c.ns,
                c.ns / baseline,
                c.method
            );
        }
        println!("(single-run timer overhead subtracted from distinct cases: {timer:.1} ns)");
    }
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
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

/// The i-th IPv6 peer (fd00:1::1 + i).
fn peer6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1)) + u128::from(i))
}

/// The source of the i-th flow that fills conntrack (10.128.0.0 + i, clear of the peers'
/// 10.1.0.0 + 100k; fd00:2::i): only the first has an identity, the rest only their entries.
fn fill_peer(i: u32, v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0)) + u128::from(i))
            .into()
    } else {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i).into()
    }
}

/// A 64-byte frame: Ethernet, IPv4, TCP SYN, 10 bytes of payload.
fn tcp(from: Ipv4Addr, sport: u16, dport: u16) -> Packet {
    Packet::tcp((from, sport).into(), (POD, dport).into()).payload(10)
}

/// The first packet of a flow never run before from `from` to `to`:80 (the source port comes
/// from a flow counter shared by every case, so no flow repeats within 60,000 of one peer), and
/// the conntrack key its admission writes.
fn new_flow(from: IpAddr, to: IpAddr, flows: &mut u64, ack: bool) -> (Packet, CtKey) {
    let sport = 1024 + (*flows % SPORTS) as u16;
    *flows += 1;
    let (src, dst) = ((from, sport).into(), (to, 80).into());
    let p = if ack {
        Packet::tcp_flags(src, dst, TCP_ACK)
    } else {
        Packet::tcp(src, dst)
    };
    (
        p.payload(10),
        ct_key(from, sport, to, 80, proto::TCP, INGRESS),
    )
}

/// A datapath with one isolated pod and `n` peers, each with its own identity and an entry
/// allowing it TCP port 80 into the pod.
fn seeded(n: u32) -> anyhow::Result<Datapath> {
    let mut dp = Datapath::load()?;
    dp.set_config(Config {
        policy_revision: 1,
        event_mask: event_mask::ALL,
        flags: flags::FAIL_CLOSED,
        clock: 0,
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
    // One IPv6 pod with a few allowed peers, for the `_ipv6` cases.
    dp.set_endpoint(POD6.into(), pod)?;
    for i in 0..PEERS6 {
        dp.set_identity(ipnet::Ipv6Net::new(peer6(i), 128)?.into(), PEER6_ID + i)?;
        dp.set_policy(allow(PEER6_ID + i), PEER6_ID + i)?;
    }
    for i in 0..n {
        let identity = 1000 + i;
        dp.set_identity(ipnet::Ipv4Net::new(peer(i), 32)?.into(), identity)?;
        dp.set_policy(allow(identity), i)?;
    }
    Ok(dp)
}

/// Seeds `n` established flows into the pod (from [`fill_peer`]s to [`FILL_PORT`]), as the
/// datapath admits them: the program admits the first one, and the rest copy its entry.
fn fill(dp: &mut Datapath, n: u32, v6: bool) -> anyhow::Result<()> {
    let pod = if v6 { IpAddr::from(POD6) } else { POD.into() };
    let peer_id = if v6 { 900 } else { 901 };
    let first = fill_peer(0, v6);
    dp.set_identity(
        ipnet::IpNet::new(first, if v6 { 128 } else { 32 })?,
        peer_id,
    )?;
    let mut key = allow(peer_id);
    key.port = FILL_PORT;
    dp.set_policy(key, peer_id)?;
    dp.run(
        Hook::ToPod,
        &Packet::tcp((first, FILL_PORT).into(), (pod, FILL_PORT).into())
            .payload(10)
            .build(),
    )?
    .assert_reason(reason::ALLOW_POLICY);
    let entry = |i| {
        ct_key(
            fill_peer(i, v6),
            FILL_PORT,
            pod,
            FILL_PORT,
            proto::TCP,
            INGRESS,
        )
    };
    let value = dp
        .conntrack(&entry(0))?
        .context("the admitted fill flow has no conntrack entry")?;
    for i in 1..n {
        dp.set_conntrack(entry(i), value)?;
    }
    Ok(())
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

/// Runs `f` and requires that it counted exactly `runs` packets, all under `reason` (`None`:
/// nothing counted, as for `zt_baseline`).
fn counted<T>(
    dp: &mut Datapath,
    reason: Option<u8>,
    runs: u64,
    f: impl FnOnce(&mut Datapath) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let before = dp.counters()?;
    let out = f(dp)?;
    let after = dp.counters()?;
    for (r, (a, b)) in after.iter().zip(before.iter()).enumerate() {
        let moved = a - b;
        let want = if reason == Some(r as u8) { runs } else { 0 };
        if moved != want {
            bail!(
                "{moved} packets counted as {} where {want} were expected: the case did not take \
                 the path it measures",
                reason::name(r as u8)
            );
        }
    }
    Ok(out)
}

/// Median over [`RUNS`] of the kernel's mean over [`REPEAT`] runs of `p`.
fn repeat(
    dp: &mut Datapath,
    hook: Hook,
    p: &Packet,
    reason: Option<u8>,
    want: i32,
) -> anyhow::Result<f64> {
    let bytes = p.build();
    counted(dp, reason, (RUNS as u64) * u64::from(REPEAT), |dp| {
        median(RUNS, || {
            let (action, d) = dp.run_repeat(hook, &bytes, REPEAT)?;
            ensure!(
                action == want,
                "{hook:?} returned {action}, expected {want}"
            );
            Ok(d.as_nanos() as f64)
        })
    })
}

/// `p` in repeat mode with events on: batches small enough for the ring buffer, drained between.
fn with_events(dp: &mut Datapath, p: &Packet, reason: u8, want: i32) -> anyhow::Result<f64> {
    let bytes = p.build();
    let runs = (RUNS * EVENT_BATCHES) as u64 * u64::from(EVENT_REPEAT);
    counted(dp, Some(reason), runs, |dp| {
        median(RUNS, || {
            let mut total = 0.0;
            for _ in 0..EVENT_BATCHES {
                let (action, d) = dp.run_repeat(Hook::ToPod, &bytes, EVENT_REPEAT)?;
                ensure!(action == want, "returned {action}, expected {want}");
                total += d.as_nanos() as f64;
                dp.drain_events();
            }
            Ok(total / EVENT_BATCHES as f64)
        })
    })
}

/// What a single run costs beyond the program's own work on warm caches: the kernel timer
/// around it, and the program's code and stack coming back into cache after the syscall. Measured
/// on the hot established flow (`hot`, whose repeat-mode time is `ct_hit`) run once, minus
/// `ct_hit`.
fn timer_overhead(dp: &mut Datapath, hot: &Packet, ct_hit: f64) -> anyhow::Result<f64> {
    let p = hot.build();
    let runs = (RUNS * SAMPLES) as u64;
    let single = counted(dp, Some(reason::ALLOW_CT_ESTABLISHED), runs, |dp| {
        median(RUNS, || {
            let mut samples = (0..SAMPLES)
                .map(|_| dp.run_repeat(Hook::ToPod, &p, 1).map(|(_, d)| d))
                .collect::<anyhow::Result<Vec<Duration>>>()?;
            samples.sort();
            Ok(samples[samples.len() / 2].as_nanos() as f64)
        })
    })?;
    Ok((single - ct_hit).max(0.0))
}

/// New flows in repeat mode: `zt_bench_flow` advances the source port on every run, so each of
/// the [`EVENT_REPEAT`] runs of a call is a flow from `from(k)` to `to`:80 that no earlier call
/// had (calls rotate the base port over 60 blocks of 1000, then the peer `k`). Every run must be
/// admitted by policy, publish a `NEW_FLOW` event and leave its entry; the entries are removed
/// between calls, so the fill is held.
fn new_flows(dp: &mut Datapath, from: impl Fn(u32) -> IpAddr, to: IpAddr) -> anyhow::Result<f64> {
    const BLOCKS: u32 = 60;
    let mut call = 0u32;
    let runs = (RUNS * EVENT_BATCHES) as u64 * u64::from(EVENT_REPEAT);
    counted(dp, Some(reason::ALLOW_POLICY), runs, |dp| {
        median(RUNS, || {
            let mut total = 0.0;
            for _ in 0..EVENT_BATCHES {
                let peer = from(call / BLOCKS);
                let base = 1024 + (call % BLOCKS) as u16 * EVENT_REPEAT as u16;
                call += 1;
                let p = Packet::tcp((peer, base).into(), (to, 80).into()).payload(10);
                let (action, d) = dp.run_repeat(Hook::BenchFlow, &p.build(), EVENT_REPEAT)?;
                ensure!(action == TC_ACT_OK, "a new flow was dropped");
                total += d.as_nanos() as f64;
                let events = dp.drain_events();
                let new = events.iter().filter(|e| e.kind == kind::NEW_FLOW).count();
                ensure!(
                    new == EVENT_REPEAT as usize && events.len() == new,
                    "{new} NEW_FLOW events of {} for {EVENT_REPEAT} runs",
                    events.len()
                );
                for sport in base + 1..=base + EVENT_REPEAT as u16 {
                    let key = ct_key(peer, sport, to, 80, proto::TCP, INGRESS);
                    ensure!(
                        dp.remove_conntrack(&key)?,
                        "run with source port {sport} left no conntrack entry: not a new flow"
                    );
                }
            }
            Ok(total / EVENT_BATCHES as f64)
        })
    })
}

/// Median over [`RUNS`] of the median single-run time of [`SAMPLES`] distinct packets from
/// `sample`, timer cost subtracted. A sample with a key is a new flow: it must be admitted by
/// policy, publish a `NEW_FLOW` event and leave its entry, which is removed after its batch so
/// the fill is held. A sample without one must be an established-flow hit.
fn distinct(
    dp: &mut Datapath,
    timer: f64,
    mut sample: impl FnMut() -> (Packet, Option<CtKey>),
) -> anyhow::Result<f64> {
    let mut new_flows = 0u64;
    let mut hits = 0u64;
    let before = dp.counters()?;
    let ns = median(RUNS, || {
        let mut times = Vec::with_capacity(SAMPLES);
        let mut inserted = Vec::with_capacity(BATCH);
        for i in 0..SAMPLES {
            let (p, key) = sample();
            let (action, d) = dp.run_repeat(Hook::ToPod, &p.build(), 1)?;
            if action != TC_ACT_OK {
                let run = dp.run(Hook::ToPod, &p.build())?;
                bail!(
                    "sample {i} was dropped (run again: {:?})",
                    run.reasons
                        .keys()
                        .map(|r| reason::name(*r))
                        .collect::<Vec<_>>()
                );
            }
            times.push(d.as_nanos() as f64);
            match key {
                Some(k) => inserted.push(k),
                None => hits += 1,
            }
            if inserted.len() == BATCH || i + 1 == SAMPLES {
                let events = dp.drain_events();
                let new = events.iter().filter(|e| e.kind == kind::NEW_FLOW).count();
                ensure!(
                    new == inserted.len() && events.len() == new,
                    "{new} NEW_FLOW events of {} for {} new flows",
                    events.len(),
                    inserted.len()
                );
                for k in inserted.drain(..) {
                    ensure!(
                        dp.remove_conntrack(&k)?,
                        "a new flow left no conntrack entry {k:?}: it was not inserted"
                    );
                    new_flows += 1;
                }
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2] - timer)
    })?;
    let after = dp.counters()?;
    for (r, (a, b)) in after.iter().zip(before.iter()).enumerate() {
        let want = match r as u8 {
            reason::ALLOW_POLICY => new_flows,
            reason::ALLOW_CT_ESTABLISHED => hits,
            _ => 0,
        };
        ensure!(
            a - b == want,
            "{} samples counted as {} where {want} were expected",
            a - b,
            reason::name(r as u8)
        );
    }
    Ok(ns)
}

/// A cheap LCG: spreads draws over the whole identity, policy and conntrack maps.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32 % n
    }
}

fn median(runs: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut v = (0..runs)
        .map(|_| f())
        .collect::<anyhow::Result<Vec<f64>>>()
        .context("benchmark run")?;
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}
