//! The command line: `zt-agent run` for the DaemonSet, `zt-agent lab` for the hermetic lab.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "zt-agent",
    version,
    about = "zt: zero-trust NetworkPolicy enforcement in eBPF"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enforce NetworkPolicies on this node's pods (what the DaemonSet runs).
    Run(RunArgs),
    /// A hermetic one-machine lab: pods in network namespaces, the real agent and datapath.
    #[command(subcommand)]
    Lab(LabCommand),
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Where policies, pods and namespaces come from: `kube` (the API server: in-cluster config or
    /// KUBECONFIG) or `dir:PATH` (a folder of YAML manifests, followed as files change).
    #[arg(long, default_value = "kube", env = "ZT_SOURCE")]
    pub source: String,
    /// This node's name: pods with `spec.nodeName` equal to it are the local endpoints.
    /// With a `dir:` source and no node name, every pod with an address is local.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Where maps and links are pinned, so enforcement survives agent restarts.
    #[arg(long, default_value = zt_common::names::PIN_ROOT)]
    pub pin_root: PathBuf,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9990")]
    pub listen: SocketAddr,
    /// Let traffic of pods the agent does not know yet pass instead of dropping it.
    /// The default (fail-closed) is the safe one.
    #[arg(long)]
    pub fail_open: bool,
    /// Audit mode: policy denies are allowed and reported as `audited` events instead.
    #[arg(long)]
    pub audit: bool,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab from manifests, enforce, probe every pod pair and port, tear it down.
    Probe(LabProbeArgs),
    /// Build the lab and keep it until Ctrl-C, to poke at it by hand (`ip netns exec …`).
    Up(LabUpArgs),
    /// Stop every running lab and remove what killed ones left behind.
    Down,
    /// The demo: an app with no policy, then zero trust, and one denied flow explained.
    Demo(LabDemoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LabDemoArgs {
    /// Folder with `app/` (namespaces, pods) and `zero-trust/` (policies).
    #[arg(long, default_value = "deploy/demo")]
    pub dir: PathBuf,
    /// The denied flow to explain, as `FROM:TO:PORT/PROTOCOL` (e.g.
    /// `default/toolbox:shop/db:5432/TCP`); the first denied flow if absent or not denied.
    #[arg(long)]
    pub explain: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct LabUpArgs {
    /// Folder of `*.yaml` manifests (Namespaces, Pods, NetworkPolicies).
    #[arg(long)]
    pub manifests: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct LabProbeArgs {
    /// Folder of `*.yaml` manifests (Namespaces, Pods, NetworkPolicies).
    #[arg(long)]
    pub manifests: PathBuf,
    /// Print `{"results":[...]}` instead of a truth table.
    #[arg(long)]
    pub json: bool,
}
