//! The node tier's client inside test pods (busybox's `nc` has no UDP), put in the agnhost image
//! by `cargo xtask e2e node`.
//!
//! - `zt-netprobe probe tcp|udp IP PORT`: prints `ok` when a TCP connection opens, or when a UDP
//!   datagram is answered (agnhost `serve-hostname --udp` answers every datagram), else `no`;
//!   2 s timeout, one UDP retry.
//! - `zt-netprobe stream IP PORT SPORT OUT STOP`: from one source port (one 5-tuple: an
//!   established flow), a numbered datagram every 50 ms until the file STOP exists, then 3 s for
//!   the last answers; writes `sent received` to OUT (atomically, every 20 datagrams and at the end).

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

fn probe(proto: &str, addr: SocketAddr) -> bool {
    let timeout = Duration::from_secs(2);
    match proto {
        "tcp" => TcpStream::connect_timeout(&addr, timeout).is_ok(),
        "udp" => {
            let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            let _ = socket.set_read_timeout(Some(timeout / 2));
            let mut buf = [0u8; 512];
            (0..2).any(|_| {
                socket.send_to(b"probe", addr).is_ok() && socket.recv_from(&mut buf).is_ok()
            })
        }
        _ => false,
    }
}

fn write_counts(out: &Path, sent: u64, received: u64) {
    let partial = out.with_extension("partial");
    if std::fs::write(&partial, format!("{sent} {received}\n")).is_ok() {
        let _ = std::fs::rename(&partial, out);
    }
}

fn stream(addr: SocketAddr, sport: u16, out: &Path, stop: &Path) -> std::io::Result<()> {
    let socket = UdpSocket::bind(("0.0.0.0", sport))?;
    socket.set_nonblocking(true)?;
    let (mut sent, mut received) = (0u64, 0u64);
    let mut buf = [0u8; 512];
    let mut drain = |received: &mut u64| loop {
        match socket.recv_from(&mut buf) {
            Ok(_) => *received += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => break,
        }
    };
    while !stop.exists() {
        if socket.send_to(sent.to_string().as_bytes(), addr).is_ok() {
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
        drain(&mut received);
        if sent % 20 == 0 {
            write_counts(out, sent, received);
        }
    }
    let end = Instant::now();
    while end.elapsed() < Duration::from_secs(3) {
        drain(&mut received);
        std::thread::sleep(Duration::from_millis(20));
    }
    write_counts(out, sent, received);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = |ip: &str, port: &str| -> SocketAddr {
        format!("{ip}:{port}").parse().unwrap_or_else(|e| {
            eprintln!("bad address {ip}:{port}: {e}");
            std::process::exit(2)
        })
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["probe", proto, ip, port] => {
            println!(
                "{}",
                if probe(proto, addr(ip, port)) {
                    "ok"
                } else {
                    "no"
                }
            );
        }
        ["stream", ip, port, sport, out, stop] => {
            let sport: u16 = sport.parse().expect("source port");
            if let Err(e) = stream(addr(ip, port), sport, Path::new(out), Path::new(stop)) {
                eprintln!("stream: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: zt-netprobe probe tcp|udp IP PORT | stream IP PORT SPORT OUT STOP");
            std::process::exit(2);
        }
    }
}
