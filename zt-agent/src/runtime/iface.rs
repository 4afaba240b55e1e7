//! Finding each local pod's host-side interface, the one the program pair goes on.
//!
//! Supported layouts (both tested in `tests/tests/agent_runtime.rs`):
//! - **Routed veth** (kindnet, Calico, the lab): the agent's namespace routes the pod address to
//!   the host end of the pod's veth. `ip route get <podIP>` names a `veth` device: that is it.
//! - **Bridge** (flannel, the CNI `bridge` plugin with `cni0`): the route names the bridge. The
//!   agent then looks for the pod address inside the other network namespaces (`/run/netns/*`,
//!   where the CNI plugins and `ip netns add` put them, and `/proc/*/ns/net`); the interface holding
//!   it is the pod end of a veth whose `link_index` (IFLA_LINK) is the host end's ifindex. The host
//!   end must be a `veth` enslaved to that bridge, or the answer is discarded.
//!
//! Anything else (an address routed to an uplink, to `lo`, or to a device of another kind) has no
//! local interface, and the pod stays unattached (and `/readyz` says so).
//!
//! The JSON of `ip -j` is parsed by pure functions; only [`Discovery`] runs commands.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::Deserialize;

use crate::error::{Error, Result};

/// A link of the agent's namespace, as `ip -j -d addr show` reports it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub ifname: String,
    /// For a veth: the peer's ifindex (in the peer's namespace).
    #[serde(default)]
    pub link_index: Option<u32>,
    /// The bridge (or other master) this link is enslaved to.
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub linkinfo: Option<LinkKind>,
    #[serde(default)]
    pub addr_info: Vec<Address>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct LinkKind {
    #[serde(default)]
    pub info_kind: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Address {
    #[serde(default)]
    pub local: Option<String>,
}

impl Link {
    pub fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }

    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addr_info
            .iter()
            .filter_map(|a| a.local.as_deref()?.parse().ok())
    }
}

/// A pod's host-side interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostIf {
    pub ifindex: u32,
    pub ifname: String,
}

/// Parses `ip -j [-d] addr show` / `ip -j link show`.
pub fn parse_links(json: &str) -> Result<Vec<Link>> {
    serde_json::from_str(json).map_err(|e| Error::Other(format!("parsing `ip -j` output: {e}")))
}

/// The device of `ip -j route get ADDR`'s first route.
pub fn parse_route_dev(json: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Route {
        dev: Option<String>,
    }
    let routes: Vec<Route> = serde_json::from_str(json).ok()?;
    routes.into_iter().next()?.dev
}

/// How the agent's namespace reaches an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// A veth: the host end of a routed pod.
    Veth(HostIf),
    /// A bridge: the host end is one of its veth ports.
    Bridge(String),
    /// Not a pod of this node's layouts.
    Elsewhere,
}

/// Classifies the device a route names.
pub fn classify(dev: &str, links: &[Link]) -> Route {
    let Some(link) = links.iter().find(|l| l.ifname == dev) else {
        return Route::Elsewhere;
    };
    match link.kind() {
        Some("veth") => Route::Veth(HostIf {
            ifindex: link.ifindex,
            ifname: link.ifname.clone(),
        }),
        Some("bridge") => Route::Bridge(link.ifname.clone()),
        _ => Route::Elsewhere,
    }
}

/// The host end of a bridged pod: `peer_ifindex` (the pod end's `link_index`) must be a veth of
/// the agent's namespace enslaved to `bridge`.
pub fn bridge_port(peer_ifindex: u32, bridge: &str, links: &[Link]) -> Option<HostIf> {
    links
        .iter()
        .find(|l| {
            l.ifindex == peer_ifindex
                && l.kind() == Some("veth")
                && l.master.as_deref() == Some(bridge)
        })
        .map(|l| HostIf {
            ifindex: l.ifindex,
            ifname: l.ifname.clone(),
        })
}

/// Finds host-side interfaces with `ip`, caching what it found as long as the interface lives.
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
                .find(|l| l.ifindex == ifindex && l.kind() == Some("veth"))
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
    /// current [`list_links`].
    pub fn resolve(
        &mut self,
        addrs: &BTreeSet<IpAddr>,
        links: &[Link],
    ) -> BTreeMap<IpAddr, HostIf> {
        self.cache.retain(|addr, host| {
            addrs.contains(addr)
                && links.iter().any(|l| {
                    l.ifindex == host.ifindex && l.ifname == host.ifname && l.kind() == Some("veth")
                })
        });
        let mut bridged: Vec<(IpAddr, String)> = Vec::new();
        let unknown: Vec<IpAddr> = addrs
            .iter()
            .filter(|a| !self.cache.contains_key(a))
            .copied()
            .collect();
        for addr in &unknown {
            let dev = match route_dev(*addr) {
                Ok(Some(dev)) => dev,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, %addr, "cannot ask the kernel for a route");
                    continue;
                }
            };
            match classify(&dev, links) {
                Route::Veth(host) => {
                    self.cache.insert(*addr, host);
                }
                Route::Bridge(bridge) => bridged.push((*addr, bridge)),
                Route::Elsewhere => {}
            }
        }
        if !bridged.is_empty() {
            let peers = scan_namespaces();
            for (addr, bridge) in bridged {
                let found = peers
                    .get(&addr)
                    .and_then(|peer| bridge_port(*peer, &bridge, links));
                if let Some(host) = found {
                    self.cache.insert(addr, host);
                }
            }
        }
        self.cache.clone()
    }
}

/// Every link of the agent's network namespace.
pub fn list_links() -> Result<Vec<Link>> {
    parse_links(&ip(None, &["-j", "-d", "addr", "show"])?)
}

fn route_dev(addr: IpAddr) -> Result<Option<String>> {
    Ok(parse_route_dev(&ip(
        None,
        &["-j", "route", "get", &addr.to_string()],
    )?))
}

/// Address → `link_index` of the interface holding it, over every other network namespace.
fn scan_namespaces() -> BTreeMap<IpAddr, u32> {
    let own = std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let mut seen: HashSet<(u64, u64)> = own.into_iter().collect();
    let mut found = BTreeMap::new();
    for path in namespace_paths() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let Ok(json) = ip(Some(&path), &["-j", "addr", "show"]) else {
            continue;
        };
        let Ok(links) = parse_links(&json) else {
            continue;
        };
        for link in links {
            let Some(peer) = link.link_index else {
                continue;
            };
            for addr in link.addresses() {
                found.insert(addr, peer);
            }
        }
    }
    found
}

/// Named namespaces first (cheap and where CNI plugins put them), then every process's.
fn namespace_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            paths.extend(entries.flatten().map(|e| e.path()));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        paths.extend(
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    paths
}

/// Runs `ip ARGS`, inside the namespace at `netns` when given.
fn ip(netns: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut cmd = match netns {
        Some(path) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", path.display())).arg("ip");
            cmd
        }
        None => Command::new("ip"),
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Other(format!("cannot run ip: {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    String::from_utf8(out.stdout).map_err(|e| Error::Other(format!("ip output: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINKS: &str = r#"[
      {"ifindex":1,"ifname":"lo","linkinfo":null,"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
      {"ifindex":4,"link_index":2,"ifname":"ztl0","link_netnsid":0,"linkinfo":{"info_kind":"veth"},"addr_info":[]},
      {"ifindex":5,"ifname":"cni0","linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0}},
       "addr_info":[{"family":"inet","local":"10.244.0.1","prefixlen":24}]},
      {"ifindex":7,"link_index":2,"ifname":"veth1a2b","master":"cni0","linkinfo":{"info_kind":"veth","info_slave_kind":"bridge"},"addr_info":[]},
      {"ifindex":8,"link_index":3,"ifname":"veth9","linkinfo":{"info_kind":"veth"},"addr_info":[]}
    ]"#;

    #[test]
    fn classifies_route_devices() {
        let links = parse_links(LINKS).unwrap();
        assert_eq!(
            classify("ztl0", &links),
            Route::Veth(HostIf {
                ifindex: 4,
                ifname: "ztl0".into()
            })
        );
        assert_eq!(classify("cni0", &links), Route::Bridge("cni0".into()));
        assert_eq!(classify("lo", &links), Route::Elsewhere);
        assert_eq!(classify("gone", &links), Route::Elsewhere);
    }

    #[test]
    fn bridge_port_must_be_a_veth_of_that_bridge() {
        let links = parse_links(LINKS).unwrap();
        assert_eq!(
            bridge_port(7, "cni0", &links),
            Some(HostIf {
                ifindex: 7,
                ifname: "veth1a2b".into()
            })
        );
        // A veth outside the bridge, the bridge itself, a missing index: no answer.
        assert_eq!(bridge_port(8, "cni0", &links), None);
        assert_eq!(bridge_port(5, "cni0", &links), None);
        assert_eq!(bridge_port(9, "cni0", &links), None);
        assert_eq!(bridge_port(7, "br1", &links), None);
    }

    #[test]
    fn seeds_only_veths_that_exist() {
        let links = parse_links(LINKS).unwrap();
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
            "10.0.0.4".parse().unwrap(),
        );
        let mut discovery = Discovery::default();
        discovery.seed([(a, 4), (b, 5), (c, 99)], &links);
        assert_eq!(
            discovery.cache,
            BTreeMap::from([(
                a,
                HostIf {
                    ifindex: 4,
                    ifname: "ztl0".into()
                }
            )])
        );
    }

    #[test]
    fn route_dev_of_ip_route_get() {
        let json = r#"[{"dst":"10.244.0.5","dev":"cni0","prefsrc":"10.244.0.1","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(parse_route_dev(json).as_deref(), Some("cni0"));
        assert_eq!(parse_route_dev("[]"), None);
        assert_eq!(parse_route_dev("not json"), None);
    }

    #[test]
    fn addresses_skip_unparsable() {
        let links = parse_links(
            r#"[{"ifindex":2,"ifname":"eth0","addr_info":[{"local":"10.0.0.2"},{"local":"bogus"},{}]}]"#,
        )
        .unwrap();
        let addrs: Vec<IpAddr> = links[0].addresses().collect();
        assert_eq!(addrs, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
    }
}
