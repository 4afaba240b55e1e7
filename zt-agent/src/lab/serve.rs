//! What runs "in" each pod: a TCP listener (accept and close) and a UDP echo per declared port.
//!
//! Sockets are created by a thread that entered the pod's namespace and keep that namespace, so
//! the serving threads themselves live anywhere. They bind the IPv6 wildcard (dual stack) and fall
//! back to IPv4 only when IPv6 is off. SCTP ports get one raw responder per pod ([`super::sctp`]):
//! this kernel has no SCTP.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use super::{
    net::Netns,
    plan::{Port, Protocol},
};
use crate::error::{Error, Result};

/// How often idle serving threads look at the stop switch.
const POLL: Duration = Duration::from_millis(50);

/// The servers of every pod; dropping it stops them.
#[derive(Debug, Default)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    /// Serves `ports` in `netns`.
    pub fn serve(&mut self, netns: &Netns, ports: &[Port]) -> Result<()> {
        for &port in ports {
            let stop = Arc::clone(&self.stop);
            let what = format!("{} {}/{}", netns.name, port.protocol.as_str(), port.port);
            let handle = match port.protocol {
                Protocol::Tcp => {
                    let listener = netns
                        .run(|| bind(port.port, TcpListener::bind))?
                        .map_err(|e| Error::Other(format!("serve {what}: {e}")))?;
                    listener
                        .set_nonblocking(true)
                        .map_err(|e| Error::Other(format!("serve {what}: {e}")))?;
                    thread::spawn(move || accept_loop(&listener, &stop))
                }
                Protocol::Udp => {
                    let socket = netns
                        .run(|| bind(port.port, UdpSocket::bind))?
                        .map_err(|e| Error::Other(format!("serve {what}: {e}")))?;
                    socket
                        .set_read_timeout(Some(POLL))
                        .map_err(|e| Error::Other(format!("serve {what}: {e}")))?;
                    thread::spawn(move || echo_loop(&socket, &stop))
                }
                Protocol::Sctp => continue,
            };
            self.threads.push(handle);
        }
        let sctp: Vec<u16> = ports
            .iter()
            .filter(|p| p.protocol == Protocol::Sctp)
            .map(|p| p.port)
            .collect();
        if !sctp.is_empty() {
            let fd = netns
                .run(|| super::sctp::socket(POLL))?
                .map_err(|e| Error::Other(format!("serve {} SCTP (raw): {e}", netns.name)))?;
            let stop = Arc::clone(&self.stop);
            self.threads.push(thread::spawn(move || {
                super::sctp::respond(&fd, &sctp, &stop)
            }));
        }
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

fn bind<S>(port: u16, bind: impl Fn(SocketAddr) -> std::io::Result<S>) -> std::io::Result<S> {
    bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
}

/// The handshake is the kernel's; accepting only drains the backlog.
fn accept_loop(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => drop(conn),
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL / 5),
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn echo_loop(socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], peer);
        }
    }
}
