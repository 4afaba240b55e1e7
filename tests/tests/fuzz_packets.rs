//! Hostile packets through the real programs (BPF_PROG_TEST_RUN): generated clusters compiled by
//! zt, and for each probe a well-formed packet bent by a random mutation — cut at any length, a
//! bad IHL or total length, IPv4 options, IPv6 extension chains up to and past the parser's
//! limit, fragments in any order, unknown protocols, VLAN tags, ICMP errors quoting forged or
//! real flows, flipped header bytes. Every verdict of `zt_from_pod` and `zt_to_pod` is judged
//! against an independent reading of the frame (`zt_tests::wire`):
//!
//! - every packet is counted under exactly one named reason, and the TC action agrees with it;
//! - an allow by policy (or by "not isolated", "host", "audit") needs a frame that reads as a
//!   flow, and the userspace model must allow that flow in that direction; when both hooks allow
//!   by policy, the oracle (sharing no code with the compiler) must allow it too;
//! - an allow by conntrack needs a flow (or, for `related`, the flow an ICMP error quotes) that
//!   was allowed before; a later fragment passes only after its first fragment did;
//! - `allow_non_ip` only for non-IP ethertypes, `allow_ndp` only for neighbour discovery.
//!
//! Root only; `--test-threads=1`. `PROPTEST_CASES` scales the sample (default 16 clusters).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use proptest::{prelude::*, test_runner::TestCaseError};
use zt_agent::{
    compiler::Options,
    datapath::{DatapathState, model},
};
use zt_common::{
    config::{Config, flags},
    direction, reason,
};
use zt_tests::{
    kernel::{Datapath, Hook, Run, TC_ACT_OK, TC_ACT_SHOT},
    oracle::{
        self, Cluster,
        arbitrary::{cases, cluster, probes},
        compiled,
    },
    packet::Packet,
    wire::{self, Flow, FragmentKey, Frame, L4},
};

/// Probes per cluster, sampled evenly, so a run stays within seconds.
/// Policy revision 1, no events, fail-closed.
const CONFIG: Config = Config {
    policy_revision: 1,
    event_mask: 0,
    flags: flags::FAIL_CLOSED,
    clock: 0,
};

const PROBES_PER_CLUSTER: usize = 160;

/// A small xorshift generator: the mutation of each probe follows from the case's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn base(src: IpAddr, dst: IpAddr, sport: u16, port: u16, protocol: &str) -> Packet {
    let (s, d) = (SocketAddr::new(src, sport), SocketAddr::new(dst, port));
    match protocol {
        "TCP" => Packet::tcp(s, d),
        "UDP" => Packet::udp(s, d),
        "SCTP" => Packet::sctp(s, d),
        _ => Packet::icmp_echo(src, dst, sport, false),
    }
}

/// One random mutation of `packet`; `earlier` are packets sent before (for forged quotes).
fn mutate(rng: &mut Rng, packet: Packet, earlier: &[Packet]) -> Vec<u8> {
    let v4 = packet.build()[12..14] == [0x08, 0x00];
    match rng.below(11) {
        0 => packet.build(),
        1 => {
            let len = packet.build().len();
            packet.truncate(rng.below(len)).build()
        }
        2 => {
            let mut b = packet.build();
            if v4 {
                b[14] = 0x40 | (rng.below(16) as u8);
            } else {
                b[14] = (rng.below(16) as u8) << 4;
            }
            b
        }
        3 => {
            let mut b = packet.build();
            let at = if v4 { 16 } else { 18 };
            let len = (rng.next() % 2048) as u16;
            b[at..at + 2].copy_from_slice(&len.to_be_bytes());
            b
        }
        4 if v4 => {
            let n = rng.below(41);
            let options: Vec<u8> = (0..n).map(|_| [1, 0, 7, 68][rng.below(4)]).collect();
            packet.ipv4_options(&options).build()
        }
        4 => {
            let mut p = packet;
            for _ in 0..rng.below(10) {
                p = p.ext_header([0, 43, 60, 51][rng.below(4)], rng.below(3) as u8);
            }
            p.build()
        }
        5 => {
            let offset = [0, 8, 64, 1480][rng.below(4)];
            let id = rng.below(4) as u32;
            packet
                .fragment(id, offset, rng.below(2) == 0)
                .payload(rng.below(64))
                .build()
        }
        6 => {
            let built = packet.build();
            let Frame::Ip(ip) = wire::read(&built) else {
                return built;
            };
            let protocol = [0, 47, 50, 89, 103, 253, 255][rng.below(7)];
            let bytes = (0..rng.below(12)).map(|_| rng.next() as u8).collect();
            Packet::other(ip.src, ip.dst, protocol, bytes).build()
        }
        7 => packet
            .ethertype([0x8100, 0x88a8, 0x0806][rng.below(3)])
            .build(),
        8 => {
            let built = packet.build();
            let Frame::Ip(ip) = wire::read(&built) else {
                return built;
            };
            let quoted = if earlier.is_empty() || rng.below(3) == 0 {
                packet
            } else {
                earlier[rng.below(earlier.len())].clone()
            };
            let (src, dst) = if rng.below(2) == 0 {
                (ip.src, ip.dst)
            } else {
                (ip.dst, ip.src)
            };
            Packet::icmp_error(src, dst, &quoted).build()
        }
        9 => {
            let mut b = packet.build();
            let end = b.len().min(80);
            let at = 12 + rng.below(end - 12);
            b[at] ^= 1 << rng.below(8);
            b
        }
        _ => {
            let mut p = packet;
            if !v4 {
                for _ in 0..(6 + rng.below(4)) {
                    p = p.ext_header(60, 0);
                }
            }
            p.build()
        }
    }
}

fn oracle_protocol(protocol: u8) -> &'static str {
    match protocol {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        1 | 58 => "ICMP",
        _ => "OTHER",
    }
}

/// What the test knows the datapath has admitted so far.
#[derive(Default)]
struct Admitted {
    flows: BTreeSet<Flow>,
    first_fragments: BTreeMap<FragmentKey, Flow>,
}

impl Admitted {
    fn knows(&self, flow: &Flow) -> bool {
        self.flows.contains(flow) || self.flows.contains(&flow.reversed())
    }
}

/// Judges one hook's verdict on `frame`; `Ok(Some(flow))` when it allowed by policy.
fn judge(
    state: &DatapathState,
    admitted: &Admitted,
    hook: Hook,
    bytes: &[u8],
    frame: &Frame,
    run: &Run,
) -> Result<Option<Flow>, String> {
    let counted: Vec<(u8, u64)> = run.reasons.iter().map(|(r, n)| (*r, *n)).collect();
    let [(code, 1)] = counted[..] else {
        return Err(format!("expected one reason counted once, got {counted:?}"));
    };
    if reason::name(code) == "unknown" {
        return Err(format!("reason {code} has no name"));
    }
    let want_action = if reason::is_drop(code) {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    };
    if run.action != want_action {
        return Err(format!("{} with action {}", reason::name(code), run.action));
    }
    if reason::is_drop(code) {
        return Ok(None);
    }
    let direction_of = |src, dst| match hook {
        Hook::FromPod => (direction::EGRESS, src, dst),
        _ => (direction::INGRESS, dst, src),
    };
    // A pod no policy isolates in this direction may receive or send anything, malformed or
    // not: Kubernetes' default. Only its address has to read right.
    if code == reason::ALLOW_NOT_ISOLATED {
        let Some((src, dst)) = wire::addresses(bytes) else {
            return Err(format!(
                "allow_not_isolated for a frame without addresses: {frame:?}"
            ));
        };
        let (direction, local, peer) = direction_of(src, dst);
        let packet = model::Packet {
            direction,
            local,
            peer,
            protocol: 0,
            port: 0,
        };
        if model::decide(state, true, &packet).reason != reason::ALLOW_NOT_ISOLATED {
            return Err(format!("allow_not_isolated, but {local} is isolated there"));
        }
        return Ok(match frame {
            Frame::Ip(ip) if !ip.is_later_fragment() => ip.flow(),
            _ => None,
        });
    }
    let ip = match frame {
        Frame::NonIp if code == reason::ALLOW_NON_IP => return Ok(None),
        Frame::Ip(ip) => ip,
        _ => {
            return Err(format!(
                "{} for a frame read as {frame:?}",
                reason::name(code)
            ));
        }
    };
    if code == reason::ALLOW_NON_IP {
        return Err("allow_non_ip for an IP packet".into());
    }
    if code == reason::ALLOW_NDP {
        return match ip.l4 {
            L4::Icmp { ty: 133..=137, .. } if ip.protocol == 58 => Ok(None),
            _ => Err(format!("allow_ndp for {ip:?}")),
        };
    }
    // A later fragment carries no ports: it stands for the flow of its first fragment.
    let flow = match (&ip.fragment, ip.flow()) {
        (Some((key, false)), _) => match admitted.first_fragments.get(key) {
            Some(flow) => *flow,
            None => {
                return Err(format!(
                    "{} for a later fragment whose first never passed: {ip:?}",
                    reason::name(code)
                ));
            }
        },
        (_, Some(flow)) => flow,
        (_, None) => {
            return Err(format!(
                "{} for a packet that reads as no flow: {ip:?}",
                reason::name(code)
            ));
        }
    };
    match code {
        reason::ALLOW_CT_ESTABLISHED | reason::ALLOW_CT_REPLY => admitted
            .knows(&flow)
            .then_some(None)
            .ok_or_else(|| format!("{} for a flow never admitted: {flow:?}", reason::name(code))),
        reason::ALLOW_CT_RELATED => match ip.l4 {
            L4::Icmp {
                quoted: Some(quoted),
                ..
            } if admitted.knows(&quoted) => Ok(None),
            _ => Err(format!("allow_ct_related for {ip:?}")),
        },
        _ => {
            let (dir, local, peer) = direction_of(flow.src, flow.dst);
            let verdict = model::decide(
                state,
                true,
                &model::Packet {
                    direction: dir,
                    local,
                    peer,
                    protocol: flow.protocol,
                    port: flow.dport,
                },
            );
            if !verdict.allowed() {
                return Err(format!(
                    "{} for {flow:?}, which the model denies ({})",
                    reason::name(code),
                    reason::name(verdict.reason)
                ));
            }
            Ok(Some(flow))
        }
    }
}

fn fuzz(cluster: &Cluster, seed: u64) -> Result<(), TestCaseError> {
    let fail = |e: anyhow::Error| TestCaseError::fail(format!("{e:#}"));
    let compiler = compiled::compile(cluster, Options::default());
    let state = compiler.state();
    let mut dp = Datapath::with_state(state, CONFIG).map_err(fail)?;
    let mut rng = Rng(seed | 1);
    let mut admitted = Admitted::default();
    let mut sent: Vec<Packet> = Vec::new();
    let all = probes(cluster);
    let step = all.len().div_ceil(PROBES_PER_CLUSTER).max(1);
    let mut bad = Vec::new();
    let (mut tested, mut untestable) = (0usize, 0usize);
    for (i, (src, dst, port, protocol)) in all.into_iter().enumerate().step_by(step) {
        let sport = 20_000 + (i % 40_000) as u16;
        let packet = base(src, dst, sport, port, protocol);
        let bytes = mutate(&mut rng, packet.clone(), &sent);
        sent.push(packet);
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header plus the IP header
        // its ethertype names (EINVAL): those cannot be run, only the datapath's bounds checks
        // stand for them.
        let (egress, ingress) = match (dp.run(Hook::FromPod, &bytes), dp.run(Hook::ToPod, &bytes)) {
            (Ok(e), Ok(i)) => (e, i),
            (Err(e), _) | (_, Err(e)) if bytes.len() < 14 + 40 => {
                untestable += 1;
                let _ = e;
                continue;
            }
            (Err(e), _) | (_, Err(e)) => return Err(fail(e.context(format!("{bytes:02x?}")))),
        };
        tested += 1;
        let frame = wire::read(&bytes);
        let verdicts = [
            judge(state, &admitted, Hook::FromPod, &bytes, &frame, &egress),
            judge(state, &admitted, Hook::ToPod, &bytes, &frame, &ingress),
        ];
        for (hook, verdict) in ["egress", "ingress"].iter().zip(&verdicts) {
            if let Err(why) = verdict {
                bad.push(format!("{hook}: {why} (frame {bytes:02x?})"));
            }
        }
        if let [Ok(Some(flow)), Ok(Some(_))] = verdicts {
            let port = if wire::has_ports(flow.protocol) {
                flow.dport
            } else {
                0
            };
            if !oracle::allowed(
                cluster,
                flow.src,
                flow.dst,
                port,
                oracle_protocol(flow.protocol),
            ) {
                bad.push(format!("both hooks allowed {flow:?}, the oracle denies it"));
            }
        }
        // Whatever the kernel admitted of this packet, it may have recorded under the tuple the
        // packet was built with, before any mutation: replies and errors to it are related.
        if egress.allowed() || ingress.allowed() {
            let protocol = compiled::protocol_number(protocol);
            let v6_icmp = if src.is_ipv6() && protocol == 1 {
                58
            } else {
                protocol
            };
            let (sport, dport) = if wire::has_ports(protocol) {
                (sport, port)
            } else {
                (sport, 0)
            };
            admitted.flows.insert(Flow {
                src,
                dst,
                protocol: v6_icmp,
                sport,
                dport,
            });
        }
        for (verdict, run) in verdicts.iter().zip([&egress, &ingress]) {
            if let (Ok(Some(flow)), true) = (verdict, run.allowed()) {
                admitted.flows.insert(*flow);
                if let Frame::Ip(ip) = &frame
                    && let Some((key, true)) = ip.fragment
                {
                    admitted.first_fragments.insert(key, *flow);
                }
            }
        }
    }
    prop_assert!(
        tested > 4 * untestable,
        "{tested} frames run, {untestable} refused by the kernel"
    );
    prop_assert!(
        bad.is_empty(),
        "{} bad verdicts, first: {:#?}",
        bad.len(),
        &bad[..bad.len().min(4)]
    );
    Ok(())
}

proptest! {
    #![proptest_config(cases(16))]

    #[test]
    fn hostile_packets_never_open_a_hole(cluster in cluster(), seed in any::<u64>()) {
        fuzz(&cluster, seed)?;
    }
}
