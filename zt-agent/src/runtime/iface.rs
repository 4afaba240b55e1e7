//! Finding each local pod's host-side interface, the one the program pair goes on.
//!
//! Supported layouts (both tested in `tests/tests/agent_runtime.rs`):
//! - **Routed veth** (kindnet, Calico, the lab): the agent's namespace routes the pod address to
//!   the host end of the pod's veth. The route's output interface is a `veth`: that is it.
//! - **Bridge** (flannel, the CNI `bridge` plugin with `cni0`): the route names the bridge. The
//!   host end is then the bridge's `veth` port whose peer holds the pod address. A host-side veth
//!   knows its peer's ifindex (`IFLA_LINK`) and the peer's namespace by id (`IFLA_LINK_NETNSID`),
//!   so the agent asks the kernel for that one interface's addresses in that namespace
//!   (`IFA_TARGET_NETNSID`, Linux 4.20) — it never enters another namespace, and needs neither
//!   `/run/netns` nor the host's PID namespace.
//!
//! Anything else (an address routed to an uplink, to `lo`, or to a device of another kind) has no
//! local interface, and the pod stays unattached (and `/readyz` says so).
//!
//! The kernel is asked over rtnetlink ([`super::netlink`]); turning its messages into [`Link`]s
//! and choosing the interface are pure functions.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};

use super::netlink::Rtnl;
use crate::error::Result;

/// The kind of a link, as far as discovery cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Veth,
    Bridge,
    Other,
}

/// A link of the agent's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub ifname: String,
    pub kind: Kind,
    /// For a veth: the peer's ifindex (in the peer's namespace).
    pub link_index: Option<u32>,
    /// For a veth whose peer is in another namespace: that namespace's id, as this one knows it.
    pub link_netnsid: Option<i32>,
    /// The ifindex of the bridge (or other master) this link is enslaved to.
    pub master: Option<u32>,
    pub addrs: Vec<IpAddr>,
}

impl Link {
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.iter().copied()
    }
}

/// A pod's host-side interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostIf {
    pub ifindex: u32,
    pub ifname: String,
}

/// The addresses an address message carries (`IFA_LOCAL`, else `IFA_ADDRESS`, as `ip` shows).
fn message_addr(message: &AddressMessage) -> Option<IpAddr> {
    let attr = |local: bool| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    attr(true).or_else(|| attr(false))
}

/// Links as discovery sees them, from a link dump and an address dump of the same namespace.
/// Links without a name are skipped.
pub fn links_from(links: &[LinkMessage], addrs: &[AddressMessage]) -> Vec<Link> {
    let mut by_index: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
    for message in addrs {
        if let Some(ip) = message_addr(message) {
            by_index.entry(message.header.index).or_default().push(ip);
        }
    }
    links
        .iter()
        .filter_map(|message| {
            let mut link = Link {
                ifindex: message.header.index,
                ifname: String::new(),
                kind: Kind::Other,
                link_index: None,
                link_netnsid: None,
                master: None,
                addrs: by_index.remove(&message.header.index).unwrap_or_default(),
            };
            for attr in &message.attributes {
                match attr {
                    LinkAttribute::IfName(name) => link.ifname = name.clone(),
                    LinkAttribute::Link(peer) => link.link_index = Some(*peer),
                    LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
                    LinkAttribute::Controller(master) => link.master = Some(*master),
                    LinkAttribute::LinkInfo(infos) => {
                        for info in infos {
                            if let LinkInfo::Kind(kind) = info {
                                link.kind = match kind {
                                    InfoKind::Veth => Kind::Veth,
                                    InfoKind::Bridge => Kind::Bridge,
                                    _ => Kind::Other,
                                };
                            }
                        }
                    }
                    _ => {}
                }
            }
            (!link.ifname.is_empty()).then_some(link)
        })
        .collect()
}

/// How the agent's namespace reaches an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// A veth: the host end of a routed pod.
    Veth(HostIf),
    /// A bridge (its ifindex): the host end is one of its veth ports.
    Bridge(u32),
    /// Not a pod of this node's layouts.
    Elsewhere,
}

/// Classifies the output interface of a route.
pub fn classify(oif: u32, links: &[Link]) -> Route {
    let Some(link) = links.iter().find(|l| l.ifindex == oif) else {
        return Route::Elsewhere;
    };
    match link.kind {
        Kind::Veth => Route::Veth(HostIf {
            ifindex: link.ifindex,
            ifname: link.ifname.clone(),
        }),
        Kind::Bridge => Route::Bridge(link.ifindex),
        Kind::Other => Route::Elsewhere,
    }
}

/// The veth ports of `bridge` whose peer sits in another namespace: (host end, peer's
/// namespace id, peer's ifindex).
pub fn bridge_ports(bridge: u32, links: &[Link]) -> Vec<(HostIf, i32, u32)> {
    links
        .iter()
        .filter(|l| l.kind == Kind::Veth && l.master == Some(bridge))
        .filter_map(|l| {
            Some((
                HostIf {
                    ifindex: l.ifindex,
                    ifname: l.ifname.clone(),
                },
                l.link_netnsid?,
                l.link_index?,
            ))
        })
        .collect()
}

/// What discovery asks the kernel; [`Kernel`] asks it over rtnetlink, tests answer themselves.
pub trait Ask {
    /// The output interface of the route to `addr`.
    fn route_oif(&mut self, addr: IpAddr) -> Result<Option<u32>>;
    /// The addresses of interface `ifindex` in the namespace known here as `netnsid`.
    fn peer_addresses(&mut self, netnsid: i32, ifindex: u32) -> Result<Vec<IpAddr>>;
}

/// The kernel of the agent's own namespace.
#[derive(Debug)]
pub struct Kernel(Rtnl);

impl Kernel {
    pub fn open() -> Result<Self> {
        Ok(Self(Rtnl::open()?))
    }

    /// Every link of the agent's namespace, with its addresses.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let links = self.0.links()?;
        let mut addrs = self.0.addresses(AddressFamily::Inet, None)?;
        addrs.extend(self.0.addresses(AddressFamily::Inet6, None)?);
        Ok(links_from(&links, &addrs))
    }
}

impl Ask for Kernel {
    fn route_oif(&mut self, addr: IpAddr) -> Result<Option<u32>> {
        self.0.route_oif(addr)
    }

    fn peer_addresses(&mut self, netnsid: i32, ifindex: u32) -> Result<Vec<IpAddr>> {
        let mut found = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let messages = self.0.addresses(family, Some((netnsid, ifindex)))?;
            found.extend(messages.iter().filter_map(message_addr));
        }
        Ok(found)
    }
}

/// Every link of the agent's network namespace (a fresh socket: for one-off callers).
pub fn list_links() -> Result<Vec<Link>> {
    Kernel::open()?.links()
}

/// Finds host-side interfaces, caching what it found as long as the interface lives.
#[derive(Debug, Default)]
pub struct Discovery {
    cache: BTreeMap<IpAddr, HostIf>,
}

impl Discovery {
    /// Starts from known (address, ifindex) pairs, such as the endpoints the maps hold; pairs
    /// whose ifindex is no veth in `links` are ignored.
    pub fn seed(&mut self, known: impl IntoIterator<Item = (IpAddr, u32)>, links: &[Link]) {
        for (addr, ifindex) in known {
            if let Some(link) = links
                .iter()
                .find(|l| l.ifindex == ifindex && l.kind == Kind::Veth)
            {
                self.cache.insert(
                    addr,
                    HostIf {
                        ifindex,
                        ifname: link.ifname.clone(),
                    },
                );
            }
        }
    }

    /// The host-side interface of each of `addrs` that has one now. `links` is the namespace's
    /// current link list.
    pub fn resolve(
        &mut self,
        kernel: &mut impl Ask,
        addrs: &BTreeSet<IpAddr>,
        links: &[Link],
    ) -> BTreeMap<IpAddr, HostIf> {
        self.cache.retain(|addr, host| {
            addrs.contains(addr)
                && links.iter().any(|l| {
                    l.ifindex == host.ifindex && l.ifname == host.ifname && l.kind == Kind::Veth
                })
        });
        let mut bridged: BTreeMap<u32, BTreeSet<IpAddr>> = BTreeMap::new();
        let unknown: Vec<IpAddr> = addrs
            .iter()
            .filter(|a| !self.cache.contains_key(a))
            .copied()
            .collect();
        for addr in &unknown {
            let oif = match kernel.route_oif(*addr) {
                Ok(Some(oif)) => oif,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, %addr, "cannot ask the kernel for a route");
                    continue;
                }
            };
            match classify(oif, links) {
                Route::Veth(host) => {
                    self.cache.insert(*addr, host);
                }
                Route::Bridge(bridge) => {
                    bridged.entry(bridge).or_default().insert(*addr);
                }
                Route::Elsewhere => {}
            }
        }
        for (bridge, mut wanted) in bridged {
            for (host, netnsid, peer) in bridge_ports(bridge, links) {
                if wanted.is_empty() {
                    break;
                }
                let held = match kernel.peer_addresses(netnsid, peer) {
                    Ok(held) => held,
                    Err(error) => {
                        tracing::debug!(%error, ifname = host.ifname, "cannot read a bridge port's peer");
                        continue;
                    }
                };
                for addr in held {
                    if wanted.remove(&addr) {
                        self.cache.insert(addr, host.clone());
                    }
                }
            }
        }
        self.cache.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn link(ifindex: u32, name: &str, attrs: Vec<LinkAttribute>) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header.index = ifindex;
        message.attributes.push(LinkAttribute::IfName(name.into()));
        message.attributes.extend(attrs);
        message
    }

    fn kind(kind: InfoKind) -> LinkAttribute {
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)])
    }

    fn addr(ifindex: u32, ip: &str) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.index = ifindex;
        message
            .attributes
            .push(AddressAttribute::Local(ip.parse().unwrap()));
        message
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// lo; a routed veth ztl0; bridge cni0 with two veth ports (peers in namespaces 0 and 1) and
    /// one veth outside it; a veth in cni0 whose peer is in this namespace (no netnsid).
    fn links() -> Vec<Link> {
        let messages = vec![
            link(1, "lo", vec![]),
            link(
                4,
                "ztl0",
                vec![
                    kind(InfoKind::Veth),
                    LinkAttribute::Link(2),
                    LinkAttribute::LinkNetNsId(3),
                ],
            ),
            link(5, "cni0", vec![kind(InfoKind::Bridge)]),
            link(
                7,
                "veth1a2b",
                vec![
                    kind(InfoKind::Veth),
                    LinkAttribute::Link(2),
                    LinkAttribute::LinkNetNsId(0),
                    LinkAttribute::Controller(5),
                ],
            ),
            link(
                8,
                "veth9",
                vec![
                    kind(InfoKind::Veth),
                    LinkAttribute::Link(3),
                    LinkAttribute::LinkNetNsId(1),
                ],
            ),
            link(
                9,
                "vethc",
                vec![
                    kind(InfoKind::Veth),
                    LinkAttribute::Link(2),
                    LinkAttribute::LinkNetNsId(1),
                    LinkAttribute::Controller(5),
                ],
            ),
            link(
                10,
                "vethlocal",
                vec![
                    kind(InfoKind::Veth),
                    LinkAttribute::Link(11),
                    LinkAttribute::Controller(5),
                ],
            ),
            link(12, "", vec![kind(InfoKind::Veth)]),
        ];
        let addrs = vec![
            addr(1, "127.0.0.1"),
            addr(5, "10.244.0.1"),
            addr(5, "fd00::1"),
        ];
        links_from(&messages, &addrs)
    }

    /// Answers as a kernel would: routes by table, peer addresses by (netnsid, ifindex).
    #[derive(Default)]
    struct FakeKernel {
        routes: BTreeMap<IpAddr, u32>,
        peers: BTreeMap<(i32, u32), Vec<IpAddr>>,
        route_calls: usize,
        peer_calls: usize,
    }

    impl Ask for FakeKernel {
        fn route_oif(&mut self, addr: IpAddr) -> Result<Option<u32>> {
            self.route_calls += 1;
            Ok(self.routes.get(&addr).copied())
        }
        fn peer_addresses(&mut self, netnsid: i32, ifindex: u32) -> Result<Vec<IpAddr>> {
            self.peer_calls += 1;
            self.peers
                .get(&(netnsid, ifindex))
                .cloned()
                .ok_or_else(|| Error::Other("no such netnsid".into()))
        }
    }

    fn host(ifindex: u32, name: &str) -> HostIf {
        HostIf {
            ifindex,
            ifname: name.into(),
        }
    }

    #[test]
    fn links_from_netlink_messages() {
        let links = links();
        assert_eq!(links.len(), 7, "the nameless link is skipped");
        let cni0 = links.iter().find(|l| l.ifname == "cni0").unwrap();
        assert_eq!(cni0.kind, Kind::Bridge);
        assert_eq!(
            cni0.addresses().collect::<Vec<_>>(),
            vec![ip("10.244.0.1"), ip("fd00::1")]
        );
        let port = links.iter().find(|l| l.ifname == "veth1a2b").unwrap();
        assert_eq!(
            (port.kind, port.link_index, port.link_netnsid, port.master),
            (Kind::Veth, Some(2), Some(0), Some(5))
        );
        assert_eq!(links[0].kind, Kind::Other);
    }

    #[test]
    fn ifa_address_when_no_local() {
        let mut message = AddressMessage::default();
        message.header.index = 3;
        message
            .attributes
            .push(AddressAttribute::Address(ip("fd00::5")));
        assert_eq!(message_addr(&message), Some(ip("fd00::5")));
        assert_eq!(message_addr(&AddressMessage::default()), None);
    }

    #[test]
    fn classifies_route_devices() {
        let links = links();
        assert_eq!(classify(4, &links), Route::Veth(host(4, "ztl0")));
        assert_eq!(classify(5, &links), Route::Bridge(5));
        assert_eq!(classify(1, &links), Route::Elsewhere);
        assert_eq!(classify(99, &links), Route::Elsewhere);
    }

    #[test]
    fn bridge_ports_are_its_veths_with_a_peer_namespace() {
        let links = links();
        assert_eq!(
            bridge_ports(5, &links),
            vec![(host(7, "veth1a2b"), 0, 2), (host(9, "vethc"), 1, 2)]
        );
        assert_eq!(bridge_ports(4, &links), vec![]);
    }

    #[test]
    fn resolves_routed_and_bridged_pods() {
        let links = links();
        let (routed, bridged, bridged_v6, other, unrouted) = (
            ip("10.0.0.2"),
            ip("10.244.0.7"),
            ip("fd00::7"),
            ip("10.244.0.9"),
            ip("192.0.2.1"),
        );
        let mut kernel = FakeKernel::default();
        kernel.routes.insert(routed, 4);
        kernel.routes.insert(bridged, 5);
        kernel.routes.insert(bridged_v6, 5);
        kernel.routes.insert(other, 5);
        kernel.routes.insert(ip("127.0.0.2"), 1);
        // vethc's peer holds the dual-stack pod; veth1a2b's peer holds nothing we look for.
        kernel.peers.insert((0, 2), vec![ip("10.244.0.3")]);
        kernel.peers.insert((1, 2), vec![bridged, bridged_v6]);
        let wanted = BTreeSet::from([
            routed,
            bridged,
            bridged_v6,
            other,
            unrouted,
            ip("127.0.0.2"),
        ]);
        let mut discovery = Discovery::default();
        let found = discovery.resolve(&mut kernel, &wanted, &links);
        assert_eq!(
            found,
            BTreeMap::from([
                (routed, host(4, "ztl0")),
                (bridged, host(9, "vethc")),
                (bridged_v6, host(9, "vethc")),
            ])
        );
        // Cached: the next turn asks only about what is still unknown.
        let (routes, peers) = (kernel.route_calls, kernel.peer_calls);
        discovery.resolve(&mut kernel, &wanted, &links);
        assert_eq!(
            kernel.route_calls - routes,
            3,
            "other, unrouted, loopback again"
        );
        assert_eq!(kernel.peer_calls - peers, 2, "other: both ports again");
        // A vanished interface leaves the cache.
        let without: Vec<Link> = links.iter().filter(|l| l.ifindex != 9).cloned().collect();
        kernel.peers.remove(&(1, 2));
        let found = discovery.resolve(&mut kernel, &wanted, &without);
        assert_eq!(found, BTreeMap::from([(routed, host(4, "ztl0"))]));
    }

    #[test]
    fn seeds_only_veths_that_exist() {
        let links = links();
        let (a, b, c) = (ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.4"));
        let mut discovery = Discovery::default();
        discovery.seed([(a, 4), (b, 5), (c, 99)], &links);
        assert_eq!(discovery.cache, BTreeMap::from([(a, host(4, "ztl0"))]));
    }
}
