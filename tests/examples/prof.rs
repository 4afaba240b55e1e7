// scratch profiling driver (not committed)
use std::net::Ipv4Addr;
use zt_common::{
    config::{Config, event_mask, flags},
    direction::INGRESS,
    endpoint::{EndpointValue, flags as ep},
    policy::{PolicyKey, tuple},
    proto,
};
use zt_tests::{
    kernel::{Datapath, Hook},
    packet::{Packet, TCP_ACK},
};
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
fn peer(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i)
}
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let case = args[1].as_str();
    let n: u32 = args[2].parse()?;
    let mask: u32 = args
        .get(3)
        .map(|s| s.parse().unwrap())
        .unwrap_or(event_mask::ALL);
    let mut dp = Datapath::load()?;
    dp.set_config(Config {
        policy_revision: 1,
        event_mask: mask,
        flags: flags::FAIL_CLOSED,
        _pad: 0,
    })?;
    dp.set_endpoint(
        POD.into(),
        EndpointValue {
            identity: 300,
            flags: ep::INGRESS_ISOLATED | ep::EGRESS_ISOLATED,
            ingress_tuples: tuple::bit(false, 16),
            ..Default::default()
        },
    )?;
    dp.set_endpoint(
        Ipv4Addr::new(10, 0, 0, 3).into(),
        EndpointValue {
            identity: 301,
            ..Default::default()
        },
    )?;
    for i in 0..n {
        dp.set_identity(ipnet::Ipv4Net::new(peer(i), 32)?.into(), 1000 + i)?;
        dp.set_policy(
            PolicyKey {
                subject: 300,
                peer: 1000 + i,
                port: 80,
                protocol: proto::TCP,
                tuple: tuple::key_byte(INGRESS, 16),
            },
            i,
        )?;
    }
    let p = match case {
        "ct" => {
            dp.run(
                Hook::ToPod,
                &Packet::tcp((peer(0), 65000).into(), (POD, 80).into())
                    .payload(10)
                    .build(),
            )?;
            Packet::tcp_flags((peer(0), 65000).into(), (POD, 80).into(), TCP_ACK).payload(10)
        }
        "denied" => Packet::tcp((peer(1), 40000).into(), (POD, 81).into()).payload(10),
        "open" => Packet::tcp(
            (peer(1), 40000).into(),
            (Ipv4Addr::new(10, 0, 0, 3), 80).into(),
        )
        .payload(10),
        "syn" => Packet::tcp((peer(n / 2), 40000).into(), (POD, 80).into()).payload(10),
        _ => Packet::tcp((peer(0), 40000).into(), (POD, 80).into()).payload(10),
    };
    let hook = if case == "base" {
        Hook::Baseline
    } else {
        Hook::ToPod
    };
    let b = p.build();
    let mut best = f64::MAX;
    let rep: u32 = if mask != 0 { 1000 } else { 200_000 };
    for _ in 0..(if mask != 0 { 2000 } else { 50 }) {
        let (_, d) = dp.run_repeat(hook, &b, rep)?;
        best = best.min(d.as_nanos() as f64);
        dp.drain_events();
    }
    println!("{case} {n} mask={mask}: min {best:.1} ns");
    Ok(())
}
