//! What to wire, without doing it: the names, MAC addresses and `ip` command lines of a node
//! namespace and its pods, for either layout. [`super::node`] runs them.
//!
//! Every command line is the argument list of one `ip` call joined by single spaces; no argument
//! holds a space, so splitting on whitespace gives the arguments back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;

/// The pods' IPv4 gateway in the routed layout: link-local, owned by no interface.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 gateway in the routed layout.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The most bytes an interface name may have (IFNAMSIZ less the NUL).
const IFNAME_MAX: usize = 15;
/// Set in the node namespace: it forwards between pods and drops nothing for asymmetry.
const NODE_SYSCTLS: &str = "net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
                            net.ipv4.conf.default.rp_filter=0 net.ipv6.conf.all.forwarding=1";

/// How pods reach each other through the node namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A /32 (/128) route per pod to its host-side veth and static neighbours on both sides; the
    /// pods' gateway is [`GATEWAY_V4`] ([`GATEWAY_V6`]), which no interface holds (Calico,
    /// kindnet). The node needs no address.
    Routed,
    /// Host-side veths enslaved to a bridge holding `gateway` (its address and subnet); pods get
    /// addresses in that subnet and a default route via it (the CNI bridge plugin, flannel).
    /// IPv4 only.
    Bridged { gateway: Ipv4Net },
}

/// Names and layout of one node. `prefix` makes a user's namespaces its own: put a process id or
/// run id in it, so concurrent users never collide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Namespaces are `<prefix>-node` and `<prefix>-p<n>`.
    pub prefix: String,
    /// Host-side veths are `<if_prefix><n>`, the bridge `<if_prefix>br`. They live in the node
    /// namespace, so they need not be unique on the machine.
    pub if_prefix: String,
    pub layout: Layout,
}

/// Pod number `n` of a node and its addresses. `n` (below 65536) names the pod's namespace, veth
/// and MAC addresses; a node's pods need distinct numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodAddrs {
    pub n: usize,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

impl Config {
    pub fn routed(prefix: impl Into<String>, if_prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            if_prefix: if_prefix.into(),
            layout: Layout::Routed,
        }
    }

    pub fn node_netns(&self) -> String {
        format!("{}-node", self.prefix)
    }

    pub fn pod_netns(&self, n: usize) -> String {
        format!("{}-p{n}", self.prefix)
    }

    pub fn host_if(&self, n: usize) -> String {
        format!("{}{n}", self.if_prefix)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.if_prefix)
    }

    /// What to run in the node namespace once it exists.
    pub fn node_commands(&self) -> Result<Vec<String>, String> {
        let node = self.node_netns();
        let mut cmds = vec![
            format!("-n {node} link set lo up"),
            format!("netns exec {node} sysctl -qw {NODE_SYSCTLS}"),
        ];
        if let Layout::Bridged { gateway } = self.layout {
            let br = checked_ifname(self.bridge())?;
            cmds.push(format!("-n {node} link add {br} type bridge"));
            cmds.push(format!("-n {node} addr add {gateway} dev {br}"));
            cmds.push(format!("-n {node} link set {br} up"));
        }
        Ok(cmds)
    }

    /// What to run once pod `pod.n`'s namespace exists: its veth, addresses, routes and
    /// neighbours on both sides.
    pub fn pod_commands(&self, pod: &PodAddrs) -> Result<Vec<String>, String> {
        if pod.n > 0xffff {
            return Err(format!("pod number {} is above 65535", pod.n));
        }
        let (node, netns) = (self.node_netns(), self.pod_netns(pod.n));
        let host_if = checked_ifname(self.host_if(pod.n))?;
        let (host_mac, pod_mac) = (host_mac(pod.n), pod_mac(pod.n));
        let v4 = pod.ipv4;
        let mut cmds = vec![
            format!("-n {netns} link set lo up"),
            format!(
                "-n {node} link add {host_if} address {host_mac} type veth \
                 peer name eth0 address {pod_mac} netns {netns}"
            ),
            format!("-n {node} link set {host_if} up"),
        ];
        match self.layout {
            Layout::Routed => cmds.extend([
                format!("-n {netns} addr add {v4}/32 dev eth0"),
                format!("-n {netns} link set eth0 up"),
                format!("-n {netns} route add {GATEWAY_V4} dev eth0"),
                format!("-n {netns} route add default via {GATEWAY_V4} dev eth0"),
                neigh(&netns, GATEWAY_V4.into(), &host_mac, "eth0"),
                format!("-n {node} route add {v4}/32 dev {host_if}"),
                neigh(&node, v4.into(), &pod_mac, &host_if),
            ]),
            Layout::Bridged { gateway } => {
                if !gateway.contains(&v4) {
                    return Err(format!(
                        "pod address {v4} is outside the bridge's {gateway}"
                    ));
                }
                let gw = gateway.addr();
                cmds.extend([
                    format!("-n {netns} addr add {v4}/{} dev eth0", gateway.prefix_len()),
                    format!("-n {netns} link set eth0 up"),
                    format!("-n {node} link set {host_if} master {}", self.bridge()),
                    format!("-n {netns} route add default via {gw} dev eth0"),
                ]);
            }
        }
        if let Some(v6) = pod.ipv6 {
            if self.layout != Layout::Routed {
                return Err("the bridged layout is IPv4 only".to_owned());
            }
            cmds.extend([
                format!("-n {netns} -6 addr add {v6}/128 dev eth0 nodad"),
                format!("-n {netns} -6 route add default via {GATEWAY_V6} dev eth0"),
                neigh(&netns, GATEWAY_V6.into(), &host_mac, "eth0"),
                format!("-n {node} -6 route add {v6}/128 dev {host_if}"),
                neigh(&node, v6.into(), &pod_mac, &host_if),
            ]);
        }
        Ok(cmds)
    }
}

/// The MAC address of pod `n`'s host-side veth.
pub fn host_mac(n: usize) -> String {
    format!("02:7a:{:02x}:{:02x}:00:01", n >> 8, n & 0xff)
}

/// The MAC address of pod `n`'s `eth0`.
pub fn pod_mac(n: usize) -> String {
    format!("02:7a:{:02x}:{:02x}:00:02", n >> 8, n & 0xff)
}

/// A static neighbour entry in `netns`, so nothing waits for ARP or ND.
fn neigh(netns: &str, addr: IpAddr, mac: &str, dev: &str) -> String {
    let family = if addr.is_ipv6() { "-6 " } else { "" };
    format!("-n {netns} {family}neigh replace {addr} lladdr {mac} dev {dev} nud permanent")
}

fn checked_ifname(name: String) -> Result<String, String> {
    if name.len() > IFNAME_MAX || name.contains(char::is_whitespace) {
        return Err(format!(
            "interface name {name:?} is longer than {IFNAME_MAX} bytes or holds a space"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(n: usize, ipv4: [u8; 4]) -> PodAddrs {
        PodAddrs {
            n,
            ipv4: ipv4.into(),
            ipv6: None,
        }
    }

    fn assert_has(cmds: &[String], expected: &[&str]) {
        for line in expected {
            assert!(cmds.iter().any(|c| c == line), "{line} in {cmds:#?}");
        }
    }

    #[test]
    fn names_carry_the_prefix_and_the_pod_number() {
        let config = Config::routed("ztlab-12-0", "ztlab");
        assert_eq!(config.node_netns(), "ztlab-12-0-node");
        assert_eq!(config.pod_netns(3), "ztlab-12-0-p3");
        assert_eq!(config.host_if(3), "ztlab3");
        assert_eq!(
            (host_mac(258), pod_mac(258)),
            ("02:7a:01:02:00:01".into(), "02:7a:01:02:00:02".into())
        );
    }

    #[test]
    fn routed_pods_get_a_host_route_and_static_neighbours() {
        let config = Config::routed("x-1", "x");
        let mut addrs = pod(2, [10, 0, 0, 7]);
        addrs.ipv6 = Some("fd00::7".parse().unwrap());
        let cmds = config.pod_commands(&addrs).unwrap();
        assert_has(
            &cmds,
            &[
                "-n x-1-node route add 10.0.0.7/32 dev x2",
                "-n x-1-node neigh replace 10.0.0.7 lladdr 02:7a:00:02:00:02 dev x2 nud permanent",
                "-n x-1-p2 route add default via 169.254.1.1 dev eth0",
                "-n x-1-node -6 route add fd00::7/128 dev x2",
            ],
        );
        assert!(!cmds.iter().any(|c| c.contains("master")));
    }

    #[test]
    fn bridged_pods_join_the_bridge_and_route_via_its_address() {
        let config = Config {
            layout: Layout::Bridged {
                gateway: "10.232.0.1/24".parse().unwrap(),
            },
            ..Config::routed("x-1", "x")
        };
        let node = config.node_commands().unwrap();
        assert!(node.contains(&"-n x-1-node addr add 10.232.0.1/24 dev xbr".to_owned()));
        let cmds = config.pod_commands(&pod(0, [10, 232, 0, 2])).unwrap();
        assert_has(
            &cmds,
            &[
                "-n x-1-p0 addr add 10.232.0.2/24 dev eth0",
                "-n x-1-node link set x0 master xbr",
                "-n x-1-p0 route add default via 10.232.0.1 dev eth0",
            ],
        );
        assert!(!cmds.iter().any(|c| c.contains("neigh")));
        assert!(config.pod_commands(&pod(1, [10, 9, 0, 2])).is_err());
    }

    #[test]
    fn arguments_never_hold_spaces_and_bad_names_are_refused() {
        let config = Config::routed("x-1", "x");
        for cmd in config.pod_commands(&pod(1, [10, 0, 0, 1])).unwrap() {
            assert!(!cmd.contains("  ") && cmd.trim() == cmd, "{cmd:?}");
        }
        assert!(
            Config::routed("x", "averylongprefix")
                .pod_commands(&pod(1, [10, 0, 0, 1]))
                .is_err()
        );
        assert!(config.pod_commands(&pod(70_000, [10, 0, 0, 1])).is_err());
    }
}
