//! The lab's network: a node namespace with no link to the machine, and one namespace per pod
//! behind it, wired the way a routed CNI (Calico-style) wires pods.
//!
//! ```text
//!  ztlab-<run>-p<n>: eth0 (pod IP/32, /128; default via 169.254.1.1 / fe80::1) ══veth══ ztlab<n>
//!                                                                                        │
//!  ztlab-<run>-node: one /32 (/128) route per pod to its host-side veth, forwarding on, no uplink
//! ```
//! Neighbours are static on both sides, so nothing waits for ARP/ND and the node needs no address.
//! The agent finds each pod's host-side veth by its route, as it does on a routed node.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
    thread,
};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

const GATEWAY_V4: &str = "169.254.1.1";
const GATEWAY_V6: &str = "fe80::1";

/// The prefix of every kernel object the lab creates (network namespaces, links, pin dirs).
pub const PREFIX: &str = "ztlab";

/// The network namespace names of run `run`.
pub fn node_netns(run: &str) -> String {
    format!("{PREFIX}-{run}-node")
}

fn pod_netns(run: &str, n: usize) -> String {
    format!("{PREFIX}-{run}-p{n}")
}

/// Runs `ip ARGS`; an error carries its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Other(format!("cannot run `ip` (install iproute2): {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Deletes a network namespace if it exists (its veths go with it).
pub fn delete_netns(name: &str) {
    if std::path::Path::new("/run/netns").join(name).exists() {
        let _ = ip(&["netns", "del", name]);
    }
}

/// A handle on a named network namespace that threads can enter.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    file: File,
}

impl Netns {
    pub fn open(name: &str) -> Result<Self> {
        let path = format!("/run/netns/{name}");
        let file = File::open(&path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }

    /// Moves the calling thread into this namespace; sockets it creates afterwards live here.
    pub fn enter(&self) -> Result<()> {
        setns(&self.file, CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::Other(format!("setns {}: {e}", self.name)))
    }

    /// Runs `f` on a fresh thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter()?;
                    Ok(f())
                })
                .join()
                .map_err(|_| Error::Other(format!("a thread in {} panicked", self.name)))?
        })
    }
}

/// One wired pod.
#[derive(Debug)]
pub struct PodNet {
    pub netns: Netns,
    pub host_if: String,
}

/// The node namespace and its pods; dropping it deletes every namespace it created.
#[derive(Debug)]
pub struct Node {
    pub netns: Netns,
    pub pods: Vec<PodNet>,
    run: String,
}

impl Node {
    /// Creates the node namespace of run `run` (forwarding on, no uplink). `created` is told each
    /// namespace name before it exists, so a crash in between still leaves a record to clean.
    pub fn create(run: &str, created: &mut dyn FnMut(&str)) -> Result<Self> {
        let name = node_netns(run);
        created(&name);
        delete_netns(&name);
        ip(&["netns", "add", &name])?;
        let netns = Netns::open(&name)?;
        let node = Self {
            netns,
            pods: Vec::new(),
            run: run.to_owned(),
        };
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        sysctl(
            &name,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        Ok(node)
    }

    /// Wires pod number `self.pods.len()`.
    pub fn add_pod(
        &mut self,
        ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
        created: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let n = self.pods.len();
        let netns = pod_netns(&self.run, n);
        let node = self.netns.name.clone();
        // Interface names live in the run's own node namespace, so they need no run id.
        let host_if = format!("{PREFIX}{n}");
        let host_mac = format!("02:7a:{:02x}:{:02x}:00:01", n >> 8, n & 0xff);
        let pod_mac = format!("02:7a:{:02x}:{:02x}:00:02", n >> 8, n & 0xff);
        created(&netns);
        delete_netns(&netns);
        ip(&["netns", "add", &netns])?;
        self.pods.push(PodNet {
            netns: Netns::open(&netns)?,
            host_if: host_if.clone(),
        });
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &node, "link", "add", &host_if, "address", &host_mac, "type", "veth", "peer",
            "name", "eth0", "address", &pod_mac, "netns", &netns,
        ])?;
        ip(&["-n", &node, "link", "set", &host_if, "up"])?;
        let v4 = ipv4.to_string();
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{v4}/32"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "route", "add", GATEWAY_V4, "dev", "eth0"])?;
        ip(&[
            "-n", &netns, "route", "add", "default", "via", GATEWAY_V4, "dev", "eth0",
        ])?;
        ip(&[
            "-n",
            &netns,
            "neigh",
            "replace",
            GATEWAY_V4,
            "lladdr",
            &host_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        ip(&[
            "-n",
            &node,
            "route",
            "add",
            &format!("{v4}/32"),
            "dev",
            &host_if,
        ])?;
        ip(&[
            "-n",
            &node,
            "neigh",
            "replace",
            &v4,
            "lladdr",
            &pod_mac,
            "dev",
            &host_if,
            "nud",
            "permanent",
        ])?;
        if let Some(v6) = ipv6 {
            let v6 = v6.to_string();
            ip(&[
                "-n",
                &netns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/128"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&[
                "-n", &netns, "-6", "route", "add", "default", "via", GATEWAY_V6, "dev", "eth0",
            ])?;
            ip(&[
                "-n",
                &netns,
                "-6",
                "neigh",
                "replace",
                GATEWAY_V6,
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
            ip(&[
                "-n",
                &node,
                "-6",
                "route",
                "add",
                &format!("{v6}/128"),
                "dev",
                &host_if,
            ])?;
            ip(&[
                "-n",
                &node,
                "-6",
                "neigh",
                "replace",
                &v6,
                "lladdr",
                &pod_mac,
                "dev",
                &host_if,
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for pod in &self.pods {
            delete_netns(&pod.netns.name);
        }
        delete_netns(&self.netns.name);
    }
}

fn sysctl(netns: &str, settings: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-qw"])
        .args(settings)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Other(format!("cannot run sysctl: {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "sysctl in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
