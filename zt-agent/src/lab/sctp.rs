//! SCTP without an SCTP stack: this kernel has no SCTP module, so the lab speaks just enough SCTP
//! over raw IPv4 sockets (protocol 132) to tell whether the datapath lets a new association
//! through. The prober sends an INIT; each pod with SCTP ports runs a raw responder that answers
//! an INIT to one of its ports with an INIT-ACK carrying the INIT's tag. An INIT-ACK back means
//! the INIT passed the source's egress and the destination's ingress, and the reply passed as
//! part of the flow — the same test a real association's handshake makes. IPv4 only.
//!
//! Raw sockets see every SCTP packet of their namespace, so replies are matched by addresses,
//! ports and tag.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use nix::sys::{
    socket::{MsgFlags, SockaddrIn, recvfrom, sendto, setsockopt, sockopt},
    time::TimeVal,
};

const IPPROTO_SCTP: i32 = 132;
const INIT: u8 = 1;
const INIT_ACK: u8 = 2;
/// Common header (12) + an INIT / INIT-ACK chunk with no parameters (20).
const LEN: usize = 32;

/// A raw SCTP socket in the calling thread's network namespace.
pub fn socket(read_timeout: Duration) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the returned `OwnedFd` from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            IPPROTO_SCTP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = TimeVal::new(
        i64::try_from(read_timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(read_timeout.subsec_micros()),
    );
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    Ok(fd)
}

/// An SCTP packet holding one INIT or INIT-ACK chunk.
pub fn packet(sport: u16, dport: u16, vtag: u32, chunk: u8, initiate_tag: u32) -> [u8; LEN] {
    let mut p = [0u8; LEN];
    p[0..2].copy_from_slice(&sport.to_be_bytes());
    p[2..4].copy_from_slice(&dport.to_be_bytes());
    p[4..8].copy_from_slice(&vtag.to_be_bytes());
    p[12] = chunk;
    p[14..16].copy_from_slice(&20u16.to_be_bytes());
    p[16..20].copy_from_slice(&initiate_tag.to_be_bytes());
    p[20..24].copy_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p[24..26].copy_from_slice(&1u16.to_be_bytes()); // outbound streams
    p[26..28].copy_from_slice(&1u16.to_be_bytes()); // inbound streams
    p[28..32].copy_from_slice(&1u32.to_be_bytes()); // initial TSN
    let crc = crc32c(&p);
    // RFC 9260 appendix A: the CRC32c goes on the wire least significant byte first.
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// A received SCTP packet's (source, sport, dport, vtag, chunk type, initiate tag); the raw
/// socket hands over the IPv4 header too.
pub fn parse(datagram: &[u8]) -> Option<(Ipv4Addr, u16, u16, u32, u8, u32)> {
    let ihl = usize::from(*datagram.first()? & 0x0f) * 4;
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(datagram.get(12..16)?).ok()?);
    let s = datagram.get(ihl..ihl + LEN)?;
    let be16 = |i: usize| u16::from_be_bytes([s[i], s[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    Some((src, be16(0), be16(2), be32(4), s[12], be32(16)))
}

/// Answers INITs to `ports` with INIT-ACKs until `stop` says so.
pub fn respond(fd: &OwnedFd, ports: &[u16], stop: &std::sync::atomic::AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let Ok((n, _)) = recvfrom::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(fd), &mut buf)
        else {
            continue;
        };
        let Some((src, sport, dport, _, chunk, tag)) = parse(&buf[..n]) else {
            continue;
        };
        if chunk != INIT || !ports.contains(&dport) {
            continue;
        }
        let reply = packet(
            dport,
            sport,
            tag,
            INIT_ACK,
            tag.rotate_left(16) ^ 0x5a5a_5a5a,
        );
        let to = SockaddrIn::from(SocketAddrV4::new(src, 0));
        let _ = sendto(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            &reply,
            &to,
            MsgFlags::empty(),
        );
    }
}

/// From the calling thread's namespace: does an INIT to `dst:port` get its INIT-ACK?
pub fn probe(dst: Ipv4Addr, port: u16, sport: u16, reply: Duration, attempts: u32) -> bool {
    let Ok(fd) = socket(Duration::from_millis(20)) else {
        return false;
    };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let tag = u32::from(sport) << 16 | u32::from(port) | 0x8000_0000;
    let init = packet(sport, port, 0, INIT, tag);
    let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let mut buf = [0u8; 1500];
    for _ in 0..attempts {
        if sendto(raw, &init, &to, MsgFlags::empty()).is_err() {
            return false;
        }
        let deadline = Instant::now() + reply;
        while Instant::now() < deadline {
            let Ok((n, _)) = recvfrom::<SockaddrIn>(raw, &mut buf) else {
                continue;
            };
            if let Some((src, s, d, vtag, chunk, _)) = parse(&buf[..n])
                && src == dst
                && (s, d, vtag, chunk) == (port, sport, tag, INIT_ACK)
            {
                return true;
            }
        }
    }
    false
}

/// CRC32c (Castagnoli), bitwise: 32-byte packets do not need a table.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn an_init_round_trips_through_parse() {
        let p = packet(40000, 9, 0, INIT, 0xdead_beef);
        let mut datagram = vec![0x45u8; 1];
        datagram.extend([0u8; 11]);
        datagram.extend([10, 88, 0, 1, 10, 88, 0, 2]);
        datagram.extend(p);
        let parsed = parse(&datagram).unwrap();
        assert_eq!(
            parsed,
            (Ipv4Addr::new(10, 88, 0, 1), 40000, 9, 0, INIT, 0xdead_beef)
        );
        assert!(parse(&datagram[..30]).is_none());
    }
}
