//! The differential through the real kernel program: a sample of generated clusters, compiled
//! by zt, loaded into a fresh datapath's maps, and every probe run through `zt_from_pod` (the
//! source's egress) and `zt_to_pod` (the destination's ingress) with BPF_PROG_TEST_RUN. The
//! kernel's verdict must equal the oracle's and the userspace model's. Needs root.
//!
//! Each probe is a new flow: a fresh source port (or ICMP echo id), so conntrack never answers.
//! `PROPTEST_CASES` scales the sample (default 24 clusters).

use std::net::{IpAddr, SocketAddr};

use proptest::{prelude::*, test_runner::TestCaseError};
use zt_agent::compiler::Options;
use zt_common::config::Config;
use zt_tests::{
    kernel::{Datapath, Hook},
    oracle::{
        self,
        arbitrary::{cases, cluster, probes},
        compiled,
    },
    packet::Packet,
};

/// Policy revision 1, no events.
const CONFIG: Config = Config {
    policy_revision: 1,
    event_mask: 0,
    flags: 0,
    clock: 0,
};

fn packet(src: IpAddr, dst: IpAddr, sport: u16, port: u16, protocol: &str) -> Vec<u8> {
    let (s, d) = (SocketAddr::new(src, sport), SocketAddr::new(dst, port));
    match protocol {
        "TCP" => Packet::tcp(s, d),
        "UDP" => Packet::udp(s, d),
        "SCTP" => Packet::sctp(s, d),
        _ => Packet::icmp_echo(src, dst, sport, false),
    }
    .build()
}

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    fn kernel_agrees_with_the_oracle_and_the_model(cluster in cluster()) {
        let compiler = compiled::compile(&cluster, Options::default());
        let mut dp = Datapath::with_state(compiler.state(), CONFIG).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let mut bad = vec![];
        for (i, (src, dst, port, protocol)) in probes(&cluster).into_iter().enumerate() {
            let bytes = packet(src, dst, 20_000 + (i % 40_000) as u16, port, protocol);
            let egress = dp.run(Hook::FromPod, &bytes).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            let ingress = dp.run(Hook::ToPod, &bytes).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            let kernel = egress.allowed() && ingress.allowed();
            let want = oracle::allowed(&cluster, src, dst, port, protocol);
            let model = compiled::allowed(&[compiler.state()], src, dst, port, protocol);
            if kernel != want || model != want {
                bad.push(format!("{src} -> {dst} {protocol}/{port}: oracle {want}, model {model}, kernel {kernel}"));
            }
        }
        prop_assert!(bad.is_empty(), "{} disagreements, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    }
}
