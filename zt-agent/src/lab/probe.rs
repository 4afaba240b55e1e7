//! Probing: from inside the source pod's namespace, a TCP connect (allowed when the handshake
//! completes) or a UDP datagram echoed back, all probes in parallel on a pool of threads.
//!
//! A denied TCP probe is a SYN the datapath dropped: it times out. A UDP probe is retried, as
//! datagrams may be lost. SCTP (this kernel has none) is an INIT over a raw IPv4 socket that must
//! get its INIT-ACK ([`super::sctp`]), retried like UDP; SCTP over IPv6 is not probed: its outcome
//! is `None`, never a guess.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use super::{
    net::Netns,
    plan::{LabPod, Probe, Protocol},
};

/// How long probes wait.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub tcp_connect: Duration,
    pub udp_reply: Duration,
    pub udp_attempts: u32,
    pub parallel: usize,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_connect: Duration::from_millis(500),
            udp_reply: Duration::from_millis(200),
            udp_attempts: 3,
            parallel: 128,
        }
    }
}

/// Runs every probe; `outcomes[i]` answers `probes[i]` (`None`: not probed).
pub fn run(
    pods: &[LabPod],
    netns: &[&Netns],
    probes: &[Probe],
    timeouts: Timeouts,
) -> Vec<Option<bool>> {
    let outcomes = Mutex::new(vec![None; probes.len()]);
    let next = AtomicUsize::new(0);
    let workers = timeouts.parallel.clamp(1, probes.len().max(1));
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(probe) = probes.get(i) else { break };
                    // Each probe enters its source namespace: the thread is ours to move.
                    if netns[probe.from].enter().is_err() {
                        continue;
                    }
                    let dst = &pods[probe.to];
                    let ip = match (probe.ipv6, dst.ipv6) {
                        (true, Some(v6)) => IpAddr::V6(v6),
                        _ => IpAddr::V4(dst.ipv4),
                    };
                    let to = SocketAddr::new(ip, probe.port.port);
                    let outcome = match probe.port.protocol {
                        Protocol::Tcp => Some(tcp(to, timeouts)),
                        Protocol::Udp => Some(udp(to, timeouts)),
                        Protocol::Sctp => match ip {
                            IpAddr::V4(v4) => Some(super::sctp::probe(
                                v4,
                                probe.port.port,
                                32768 + (i % 28000) as u16,
                                timeouts.udp_reply,
                                timeouts.udp_attempts,
                            )),
                            IpAddr::V6(_) => None,
                        },
                    };
                    outcomes.lock().expect("no probe panics holding it")[i] = outcome;
                }
            });
        }
    });
    outcomes.into_inner().expect("no probe panics holding it")
}

fn tcp(to: SocketAddr, timeouts: Timeouts) -> bool {
    TcpStream::connect_timeout(&to, timeouts.tcp_connect).is_ok()
}

fn udp(to: SocketAddr, timeouts: Timeouts) -> bool {
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let Ok(socket) = UdpSocket::bind(any) else {
        return false;
    };
    if socket.connect(to).is_err() || socket.set_read_timeout(Some(timeouts.udp_reply)).is_err() {
        return false;
    }
    let token = format!("zt-lab-probe {to}");
    let mut buf = [0u8; 128];
    for _ in 0..timeouts.udp_attempts {
        if socket.send(token.as_bytes()).is_err() {
            return false;
        }
        match socket.recv(&mut buf) {
            Ok(n) if &buf[..n] == token.as_bytes() => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // An ICMP error (port unreachable) is an answer: nothing served there.
            Err(_) => return false,
        }
    }
    false
}
