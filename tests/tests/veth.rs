//! The real datapath on real interfaces: two network namespaces joined by a veth pair, the
//! program pair attached (TCX) to one end as if it were a pod's host-side interface, and a TCP
//! connection and a UDP exchange allowed, then denied, by nothing but map contents.
//!
//! Namespace "pod" (10.200.0.1) plays the pod, namespace "peer" (10.200.0.2) holds the pod's
//! host-side interface with the programs and plays the peer. Packets only travel between these
//! two namespaces, which the test creates and deletes.

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use nix::sched::{CloneFlags, setns};
use zt_common::{
    config::{Config, event_mask, flags},
    direction::INGRESS,
    endpoint::{EndpointValue, flags as ep},
    policy::{PolicyKey, tuple},
    proto, reason,
};
use zt_tests::kernel::{AttachMode, Datapath};

const POD: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const POD_ID: u32 = 300;
const PEER_ID: u32 = 400;
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9090;
const TIMEOUT: Duration = Duration::from_millis(700);

/// A network namespace created for the test, deleted (with its interfaces) on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> anyhow::Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name])?;
        Ok(Self(name))
    }

    /// Moves the calling thread into this namespace.
    fn enter(&self) -> anyhow::Result<()> {
        let f = File::open(format!("/var/run/netns/{}", self.0))?;
        setns(f, CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(())
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn tcp_exchange(to: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&to, TIMEOUT) else {
        return false;
    };
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

fn udp_exchange(sock: &UdpSocket, to: SocketAddr) -> bool {
    sock.send_to(b"ping", to).unwrap();
    let mut buf = [0u8; 16];
    matches!(sock.recv_from(&mut buf), Ok((4, from)) if from == to && &buf[..4] == b"ping")
}

#[test]
fn tcp_and_udp_follow_the_maps_on_real_veths() {
    // Namespaces are per thread: do everything on a dedicated one.
    thread::spawn(|| scenario().unwrap_or_else(|e| panic!("{e:#}")))
        .join()
        .unwrap();
}

fn scenario() -> anyhow::Result<()> {
    let id = std::process::id() % 100_000;
    let pod_ns = Netns::new(format!("ztdp-pod-{id}"))?;
    let peer_ns = Netns::new(format!("ztdp-peer-{id}"))?;
    let (pod_if, host_if) = (format!("ztdpp{id}"), format!("ztdph{id}"));
    pod_ns.ip(&[
        "link", "add", &pod_if, "type", "veth", "peer", "name", &host_if, "netns", &peer_ns.0,
    ])?;
    pod_ns.ip(&["addr", "add", &format!("{POD}/24"), "dev", &pod_if])?;
    pod_ns.ip(&["link", "set", &pod_if, "up"])?;
    pod_ns.ip(&["link", "set", "lo", "up"])?;
    peer_ns.ip(&["addr", "add", &format!("{PEER}/24"), "dev", &host_if])?;
    peer_ns.ip(&["link", "set", &host_if, "up"])?;
    peer_ns.ip(&["link", "set", "lo", "up"])?;

    // The pod's servers: a TCP echo and a UDP echo, created inside the pod namespace.
    pod_ns.enter()?;
    let listener = TcpListener::bind((POD, TCP_PORT))?;
    let udp_server = UdpSocket::bind((POD, UDP_PORT))?;
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = udp_server.recv_from(&mut buf) {
            let _ = udp_server.send_to(&buf[..n], from);
        }
    });

    // The datapath on the host side; everything else happens from the peer namespace.
    peer_ns.enter()?;
    let mut dp = Datapath::load()?;
    let host_ifindex = nix::net::if_::if_nametoindex(host_if.as_str())?;
    dp.set_config(Config {
        policy_revision: 1,
        event_mask: event_mask::ALL,
        flags: flags::FAIL_CLOSED,
        clock: 0,
    })?;
    let tcp_key = PolicyKey {
        subject: POD_ID,
        peer: PEER_ID,
        port: TCP_PORT,
        protocol: proto::TCP,
        tuple: tuple::key_byte(INGRESS, 16),
    };
    let udp_key = PolicyKey {
        port: UDP_PORT,
        protocol: proto::UDP,
        ..tcp_key
    };
    dp.set_policy(tcp_key, 1)?;
    dp.set_policy(udp_key, 2)?;
    dp.set_identity(format!("{PEER}/32").parse()?, PEER_ID)?;
    dp.set_endpoint(
        IpAddr::V4(POD),
        EndpointValue {
            identity: POD_ID,
            flags: ep::INGRESS_ISOLATED | ep::EGRESS_ISOLATED,
            ifindex: host_ifindex,
            ingress_tuples: tuple::bit(false, 16),
            ..Default::default()
        },
    )?;
    assert_eq!(
        dp.attach_pair(&host_if)?,
        AttachMode::Tcx,
        "this kernel has TCX"
    );

    let udp = UdpSocket::bind((PEER, 0))?;
    udp.set_read_timeout(Some(TIMEOUT))?;
    let tcp_to = SocketAddr::from((POD, TCP_PORT));
    let udp_to = SocketAddr::from((POD, UDP_PORT));

    // Allowed: the peer's requests by policy, the pod's answers by conntrack (egress is
    // isolated with no egress rule).
    let established =
        TcpStream::connect_timeout(&tcp_to, TIMEOUT).context("allowed TCP connect")?;
    assert!(tcp_exchange(tcp_to), "TCP allowed by policy");
    assert!(udp_exchange(&udp, udp_to), "UDP allowed by policy");
    let c = dp.counters()?;
    assert!(
        c[reason::ALLOW_POLICY as usize] >= 3,
        "new flows admitted by policy: {c:?}"
    );
    assert!(
        c[reason::ALLOW_CT_REPLY as usize] > 0,
        "answers passed as replies: {c:?}"
    );
    assert_eq!(c[reason::DROP_POLICY_INGRESS as usize], 0);

    // Another port of the same pod: denied.
    assert!(
        !tcp_exchange(SocketAddr::from((POD, TCP_PORT + 1))),
        "TCP to an unlisted port"
    );

    // Revoke both entries and publish a new revision: new flows and established ones stop.
    dp.remove_policy(tcp_key)?;
    dp.remove_policy(udp_key)?;
    let mut cfg = dp.config()?;
    cfg.policy_revision += 1;
    dp.set_config(cfg)?;
    assert!(!tcp_exchange(tcp_to), "TCP after revocation");
    assert!(!udp_exchange(&udp, udp_to), "UDP after revocation");
    let mut established = established;
    established.set_read_timeout(Some(TIMEOUT))?;
    let _ = established.write_all(b"ping");
    let mut buf = [0u8; 4];
    assert!(
        established.read_exact(&mut buf).is_err(),
        "established TCP after revocation"
    );
    let c = dp.counters()?;
    assert!(
        c[reason::DROP_POLICY_INGRESS as usize] > 0,
        "new flows denied: {c:?}"
    );
    assert!(
        c[reason::DROP_REVOKED as usize] > 0,
        "established flow revoked: {c:?}"
    );

    // Restore the entries: allowed again.
    dp.set_policy(tcp_key, 1)?;
    dp.set_policy(udp_key, 2)?;
    assert!(tcp_exchange(tcp_to), "TCP after restoring");
    assert!(udp_exchange(&udp, udp_to), "UDP after restoring");
    Ok(())
}
