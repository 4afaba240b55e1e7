//! A wired node: runs what [`super::wiring`] plans, keeps a handle on every namespace it made and
//! deletes them all on drop (their veths and the bridge go with them), also when a step failed.

use std::net::Ipv4Addr;

use super::{
    Netns, delete_netns, ip,
    wiring::{Config, PodAddrs, pod_mac},
};
use crate::error::{Error, Result};

/// One wired pod.
#[derive(Debug)]
pub struct PodNet {
    pub n: usize,
    pub ipv4: Ipv4Addr,
    pub netns: Netns,
    /// The host-side veth, in the node namespace.
    pub host_if: String,
    /// The MAC address of the pod's `eth0`.
    pub mac: String,
}

/// The node namespace and its pods; dropping it deletes every namespace it created.
#[derive(Debug)]
pub struct Node {
    pub netns: Netns,
    pub pods: Vec<PodNet>,
    config: Config,
}

impl Node {
    /// Creates the node namespace (forwarding on, no uplink; a bridge in the bridged layout). A
    /// namespace left under the same name by a dead user is deleted first.
    pub fn create(config: Config) -> Result<Self> {
        let commands = config.node_commands().map_err(Error::Other)?;
        let name = config.node_netns();
        delete_netns(&name);
        ip(&format!("netns add {name}"))?;
        let node = Self {
            netns: Netns::open(&name)?,
            pods: Vec::new(),
            config,
        };
        commands.iter().try_for_each(|c| ip(c))?;
        Ok(node)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Wires pod `pod.n`: its namespace, a veth to the node, addresses, routes and neighbours.
    pub fn add_pod(&mut self, pod: PodAddrs) -> Result<&PodNet> {
        let commands = self.config.pod_commands(&pod).map_err(Error::Other)?;
        let name = self.config.pod_netns(pod.n);
        delete_netns(&name);
        ip(&format!("netns add {name}"))?;
        self.pods.push(PodNet {
            n: pod.n,
            ipv4: pod.ipv4,
            netns: Netns::open(&name)?,
            host_if: self.config.host_if(pod.n),
            mac: pod_mac(pod.n),
        });
        commands.iter().try_for_each(|c| ip(c))?;
        Ok(self.pods.last().expect("just added"))
    }
}

impl Node {
    /// Deletes pod `n`'s namespace, and with it both ends of its veth, as a CNI DEL does.
    pub fn remove_pod(&mut self, n: usize) {
        if let Some(at) = self.pods.iter().position(|p| p.n == n) {
            let pod = self.pods.remove(at);
            delete_netns(&pod.netns.name);
        }
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
