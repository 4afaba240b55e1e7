//! A small synchronous rtnetlink client: the three questions interface discovery asks the kernel.
//!
//! - [`Rtnl::links`]: every link of the caller's network namespace (`RTM_GETLINK` dump);
//! - [`Rtnl::addresses`]: addresses, optionally of one interface of *another* namespace named by
//!   its id as this namespace knows it (`IFA_TARGET_NETNSID`, Linux 4.20; needs `CAP_NET_ADMIN`
//!   over that namespace, nothing else — no `setns`, no mount of `/run/netns`);
//! - [`Rtnl::route_oif`]: the output interface of the route to an address (`ip route get`).
//!
//! Requests are answered on the calling thread; the socket is blocking, and every answer ends
//! with `NLMSG_DONE` or an ack, so a call never waits for anything but the kernel. The agent owns
//! no tokio netlink task: discovery runs once a turn from the control loop.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::LinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{Error, Result};

/// An rtnetlink socket of the namespace it was opened in.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl")
            .field("sequence", &self.sequence)
            .finish()
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("netlink {what}: {e}"))
}

impl Rtnl {
    /// Opens a socket with strict checking on (`NETLINK_GET_STRICT_CHK`): the kernel filters dumps
    /// by the header's index and honours `IFA_TARGET_NETNSID` only in strict mode.
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| err("socket", e))?;
        socket.bind_auto().map_err(|e| err("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| err("connect", e))?;
        socket
            .set_netlink_get_strict_chk(true)
            .map_err(|e| err("strict check", e))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Every link of this namespace.
    pub fn links(&mut self) -> Result<Vec<LinkMessage>> {
        let answers = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .collect())
    }

    /// Addresses of `family`: of every interface of this namespace (`target: None`), or of
    /// interface `ifindex` of the namespace this one knows as `netnsid`.
    pub fn addresses(
        &mut self,
        family: AddressFamily,
        target: Option<(i32, u32)>,
    ) -> Result<Vec<AddressMessage>> {
        let mut request = AddressMessage::default();
        request.header.family = family;
        if let Some((netnsid, ifindex)) = target {
            request.header.index = ifindex;
            request
                .attributes
                .push(AddressAttribute::TargetNetNsId(netnsid));
        }
        let answers = self.request(RouteNetlinkMessage::GetAddress(request), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(addr) => Some(addr),
                _ => None,
            })
            .filter(|a| target.is_none_or(|(_, ifindex)| a.header.index == ifindex))
            .collect())
    }

    /// The output interface of the route to `addr`, or `None` when there is none (unreachable,
    /// prohibited, a blackhole).
    pub fn route_oif(&mut self, addr: IpAddr) -> Result<Option<u32>> {
        let mut request = RouteMessage::default();
        let (family, len, dst) = match addr {
            IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
        };
        request.header.address_family = family;
        request.header.destination_prefix_length = len;
        request.attributes.push(RouteAttribute::Destination(dst));
        let answers = match self.request(RouteNetlinkMessage::GetRoute(request), 0) {
            Ok(answers) => answers,
            Err(Error::Io { source, .. }) if no_route(&source) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(answers.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(route) => route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(oif) => Some(*oif),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Sends one request and collects its answers until `NLMSG_DONE` (dumps) or the single
    /// answer (plain requests). A kernel error comes back as [`Error::Io`] with the errno.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| err("send", e))?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(|e| err("recv", e))?;
            let mut offset = 0;
            while offset < datagram.len() {
                let message: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&datagram[offset..])
                        .map_err(|e| err("decode", e))?;
                let length = message.header.length as usize;
                if length == 0 {
                    return Err(err("decode", "zero-length message"));
                }
                offset += length;
                if message.header.sequence_number != self.sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        answers.push(inner);
                        if !dump {
                            return Ok(answers);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(Error::Io {
                            path: "rtnetlink".into(),
                            source: e.to_io(),
                        });
                    }
                    NetlinkPayload::Error(_) => return Ok(answers),
                    _ => {}
                }
            }
        }
    }
}

/// The errors of a route lookup that mean "no route", not "broken".
fn no_route(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL | libc::ESRCH)
    )
}
