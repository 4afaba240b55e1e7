//! Network namespaces wired the way a CNI wires pods: a node namespace with no link to the
//! machine, and one namespace per pod behind it. The lab uses it, and so do the tests that run the
//! agent against real packets (`tests/tests/agent_runtime.rs`, `tests/tests/kube_e2e`).
//!
//! ```text
//!  <prefix>-p<n>: eth0 (pod IP) ══veth══ <if_prefix><n> ─┬─ routed: a /32 (/128) route per pod,
//!                                                         │  static neighbours, gw 169.254.1.1
//!                                                         └─ bridged: a port of <if_prefix>br,
//!  <prefix>-node: forwarding on, no uplink                   which holds the pods' gateway
//! ```
//! [`wiring`] plans names and `ip` command lines (pure); [`node`] runs them and deletes every
//! namespace on drop; [`Netns`] lets threads enter a namespace. The agent finds each pod's
//! host-side veth by its route (routed) or as a bridge port (bridged), as on a real node.

pub mod node;
pub mod wiring;

use std::{
    fs::File,
    process::{Command, Stdio},
    thread,
};

use nix::sched::{CloneFlags, setns};

pub use self::{
    node::{Node, PodNet},
    wiring::{Config, Layout, PodAddrs},
};
use crate::error::{Error, Result};

/// The prefix of every kernel object the lab creates (network namespaces, links, pin dirs).
pub const PREFIX: &str = "ztlab";

/// The wiring of lab run `run`: namespaces `ztlab-<run>-node` and `ztlab-<run>-p<n>`, routed.
pub fn lab_config(run: &str) -> Config {
    Config::routed(format!("{PREFIX}-{run}"), PREFIX)
}

/// Runs `ip` with `args` split on whitespace (no argument may hold a space); an error carries
/// its stderr.
pub fn ip(args: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Other(format!("cannot run `ip` (install iproute2): {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Deletes a network namespace if it exists (its veths go with it).
pub fn delete_netns(name: &str) {
    if std::path::Path::new("/run/netns").join(name).exists() {
        let _ = ip(&format!("netns del {name}"));
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
