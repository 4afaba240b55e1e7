//! Continuous traffic across a chaos case, counted the way a user would notice a fault:
//!
//! - established allowed flows, `b → a` over TCP and UDP, a numbered echo every 10 ms: a probe
//!   is **lost** when its echo is not back within 150 ms (less than TCP's 200 ms minimum
//!   retransmission timeout, so a dropped segment shows even though TCP would repair it);
//! - new allowed connections `b → a:8080`, one after the other: **lost** when one does not open;
//! - denied attempts `c → a` over TCP and UDP, one after the other: **leaked** when one gets an
//!   answer.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use serde::Serialize;
use zt_agent::lab::net::Netns;

use super::node::{ChaosNode, TCP_PORT, UDP_PORT};

const ECHO_EVERY: Duration = Duration::from_millis(10);
const ECHO_TIMEOUT: Duration = Duration::from_millis(150);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const DENIED_TIMEOUT: Duration = Duration::from_millis(100);

/// What one kind of traffic saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub lost: u64,
    pub leaked: u64,
}

impl std::ops::Add for Counts {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            sent: self.sent + o.sent,
            lost: self.lost + o.lost,
            leaked: self.leaked + o.leaked,
        }
    }
}

/// The traffic threads of one case; [`Traffic::stop`] joins them and sums what they saw.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<(&'static str, JoinHandle<anyhow::Result<Counts>>)>,
}

impl Traffic {
    pub fn start(node: &ChaosNode) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let a = node.pod("a").ipv4;
        let (tcp, udp) = (
            SocketAddr::from((a, TCP_PORT)),
            SocketAddr::from((a, UDP_PORT)),
        );
        let (b, c) = (
            node.pod("b").netns.name.clone(),
            node.pod("c").netns.name.clone(),
        );
        let mut threads = Vec::new();
        let mut spawn = |kind: &'static str,
                         netns: &str,
                         body: fn(&AtomicBool, SocketAddr) -> anyhow::Result<Counts>,
                         to: SocketAddr| {
            let (stop, netns) = (stop.clone(), netns.to_owned());
            let handle = thread::spawn(move || {
                Netns::open(&netns)?.enter()?;
                body(&stop, to)
            });
            threads.push((kind, handle));
        };
        spawn("tcp_established", &b, tcp_established, tcp);
        spawn("udp_established", &b, udp_established, udp);
        spawn("tcp_new", &b, tcp_new, tcp);
        spawn("tcp_denied", &c, tcp_denied, tcp);
        spawn("udp_denied", &c, udp_denied, udp);
        Self { stop, threads }
    }

    /// Stops the threads; the sum of their counts, and each kind's.
    pub fn stop(self) -> anyhow::Result<(Counts, Vec<(&'static str, Counts)>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut kinds = Vec::new();
        for (kind, handle) in self.threads {
            let counts = handle
                .join()
                .map_err(|_| anyhow::anyhow!("the {kind} thread panicked"))??;
            kinds.push((kind, counts));
        }
        let total = kinds.iter().fold(Counts::default(), |t, (_, c)| t + *c);
        Ok((total, kinds))
    }
}

fn tcp_established(stop: &AtomicBool, to: SocketAddr) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let connect = || -> anyhow::Result<BufReader<TcpStream>> {
        let stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(ECHO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(BufReader::new(stream))
    };
    let mut conn = connect()?;
    let mut line = String::new();
    for seq in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        counts.sent += 1;
        let want = format!("{seq}\n");
        if conn.get_mut().write_all(want.as_bytes()).is_err() {
            counts.lost += 1;
            conn = connect()?;
            continue;
        }
        // Echoes of probes that timed out arrive late: skip them.
        let answered = loop {
            line.clear();
            match conn.read_line(&mut line) {
                Ok(0) => break false,
                Ok(_) if line == want => break true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break false;
                }
                Err(_) => break false,
            }
        };
        if !answered {
            counts.lost += 1;
        }
        thread::sleep(ECHO_EVERY);
    }
    Ok(counts)
}

fn udp_established(stop: &AtomicBool, to: SocketAddr) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let socket = UdpSocket::bind(("0.0.0.0", 0))?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(ECHO_TIMEOUT))?;
    let mut buf = [0u8; 16];
    for seq in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        counts.sent += 1;
        let _ = socket.send(&seq.to_be_bytes());
        let answered = loop {
            match socket.recv(&mut buf) {
                Ok(8) if buf[..8] == seq.to_be_bytes() => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        if !answered {
            counts.lost += 1;
        }
        thread::sleep(ECHO_EVERY);
    }
    Ok(counts)
}

fn tcp_new(stop: &AtomicBool, to: SocketAddr) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        counts.sent += 1;
        let echoed = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).is_ok_and(|mut s| {
            let _ = s.set_read_timeout(Some(CONNECT_TIMEOUT));
            let mut reader = BufReader::new(s.try_clone().expect("a socket clones"));
            let mut line = String::new();
            s.write_all(b"new\n").is_ok() && reader.read_line(&mut line).is_ok() && line == "new\n"
        });
        counts.lost += u64::from(!echoed);
        thread::sleep(ECHO_EVERY);
    }
    Ok(counts)
}

fn tcp_denied(stop: &AtomicBool, to: SocketAddr) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        counts.sent += 1;
        counts.leaked += u64::from(TcpStream::connect_timeout(&to, DENIED_TIMEOUT).is_ok());
    }
    Ok(counts)
}

fn udp_denied(stop: &AtomicBool, to: SocketAddr) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let socket = UdpSocket::bind(("0.0.0.0", 0))?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(DENIED_TIMEOUT))?;
    let mut buf = [0u8; 16];
    while !stop.load(Ordering::Relaxed) {
        counts.sent += 1;
        let _ = socket.send(b"denied?");
        counts.leaked += u64::from(socket.recv(&mut buf).is_ok());
    }
    Ok(counts)
}
