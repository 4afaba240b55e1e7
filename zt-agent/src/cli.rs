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
    #[command(long_about = RUN_HELP)]
    Run(RunArgs),
    /// A hermetic one-machine lab: pods in network namespaces, the real agent and datapath.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Why is a flow allowed or denied: the verdict, the isolating policies and the admitting
    /// rule, per direction, offline from manifests or from the running agent.
    #[command(long_about = EXPLAIN_HELP)]
    Explain(ExplainArgs),
    /// Take zt off this node: detach every program pair the pin root records, remove its pins.
    #[command(long_about = UNINSTALL_HELP)]
    Uninstall(UninstallArgs),
}

const UNINSTALL_HELP: &str =
    "Take zt off this node: detach every program pair the pin root records \
(TCX links and tc filters), remove every pin (links, maps) and the pin root, and print what was \
removed. Pinned programs keep enforcing when the agent is gone; this is how they stop.

Run it after the agent stopped (it refuses while an agent holds the pin root's lock), in the \
agent's network namespace (the host's). Exit status 1 if anything could not be removed. In a \
cluster: delete the zt DaemonSet, then apply deploy/zt-uninstall.yaml (docs/operations.md).";

const EXPLAIN_HELP: &str = "Why is a flow allowed or denied?

For each probe: the verdict a new flow gets, then the egress of the source and the ingress of \
the destination: isolated or not and by which policies, and which rule (index within the policy) \
admits it, or that none does. A filter left out means every value: every ordered pair of distinct \
pods, every port/protocol the destination declares (as `lab probe` chooses them).

With --manifests DIR (the lab's folder format): offline, no root, no kernel, no cluster. Without \
it: asks the running agent over its root-only socket; the verdict then comes from the maps as the \
kernel holds them. --json prints the contract shape of docs/explain.md.

Examples:
  zt-agent explain --manifests ./manifests --to shop/db --port 5432
  zt-agent explain --manifests ./manifests --from default/toolbox --to 203.0.113.7 --port 443 --json";

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Folder of `*.yaml` manifests to explain offline; without it, ask the running agent.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Source: `NS/POD` or an IP address (default: every pod).
    #[arg(long, value_name = "NS/POD|IP")]
    pub from: Option<String>,
    /// Destination: `NS/POD` or an IP address (default: every pod).
    #[arg(long, value_name = "NS/POD|IP")]
    pub to: Option<String>,
    /// Destination port (default: every port the destination declares).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Protocol (default: every protocol the destination declares).
    #[arg(long, value_name = "TCP|UDP|SCTP")]
    pub protocol: Option<String>,
    /// Print `{"results":[...]}` (docs/explain.md) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The running agent's control socket.
    #[arg(long, default_value = crate::explain::CONTROL_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    /// The agent's bpffs directory.
    #[arg(long, default_value = zt_common::names::PIN_ROOT)]
    pub pin_root: PathBuf,
    /// The agent's lock directory.
    #[arg(long, default_value = crate::runtime::lock::LOCK_DIR)]
    pub lock_dir: PathBuf,
}

/// `zt-agent run --help`: what a newcomer needs before starting the agent.
const RUN_HELP: &str = "Enforce NetworkPolicies on this node's pods (what the DaemonSet runs).

The agent reads Namespaces, Pods and NetworkPolicies from a source, compiles them into the eBPF \
maps, and attaches the zt program pair (TCX) to the host-side interface of every local pod. Maps \
and links are pinned under --pin-root: when the agent stops, crashes or restarts, enforcement goes \
on unchanged, and a restarted agent adopts the pins and removes only what became stale.

Pods created while no agent runs have no program on their interface until the agent is back: \
their own traffic is not filtered, but isolated pods see them as unknown peers (only ipBlock \
rules or rules for any peer admit them). See README.md, section The agent.

Examples:
  zt-agent run --source kube --node-name \"$NODE_NAME\"
  zt-agent run --source dir:./manifests --pin-root /sys/fs/bpf/zt-dev --listen 127.0.0.1:9990

Logs: RUST_LOG (default info; denied packets are logged at info), ZT_LOG_FORMAT=json for JSON.";

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Where Namespaces, Pods and NetworkPolicies come from: `kube` (the API server, through the
    /// in-cluster config or KUBECONFIG) or `dir:PATH` (a folder of YAML manifests, re-read when
    /// its files change; a folder that does not parse is not applied, the last good one stays).
    #[arg(
        long,
        default_value = "kube",
        env = "ZT_SOURCE",
        value_name = "kube|dir:PATH"
    )]
    pub source: String,
    /// This node's name: pods with `spec.nodeName` equal to it are the local endpoints (required
    /// with `--source kube`). With a `dir:` source and no node name, every pod with an address is
    /// local.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// bpffs directory for the pinned maps (`maps/`) and links (`links/`); enforcement survives
    /// agent restarts through it. Use a directory of your own for tests and labs.
    #[arg(long, default_value = zt_common::names::PIN_ROOT)]
    pub pin_root: PathBuf,
    /// Address for /healthz, /readyz and /metrics (localhost only by default).
    #[arg(long, default_value = "127.0.0.1:9990")]
    pub listen: SocketAddr,
    /// Fail open: on an interface carrying the programs, let through packets of local addresses
    /// the agent has not (yet) programmed, instead of dropping them. The default, fail-closed,
    /// is the safe one.
    #[arg(long)]
    pub fail_open: bool,
    /// Audit mode: policy denies are allowed and reported as `audited` events instead.
    #[arg(long)]
    pub audit: bool,
    /// How the program pair is attached to pod interfaces: `tcx` (bpf_link, Linux 6.6+) or `tc`
    /// (clsact qdisc and netlink filters). Default: tcx where the kernel has it, tc otherwise.
    #[arg(long, value_enum, value_name = "tcx|tc")]
    pub attach: Option<crate::runtime::attach::AttachMode>,
    /// Directory of the per-pin-root locks (one agent per pin root; a second one exits with an
    /// error naming the first). Not on bpffs. In a DaemonSet, a hostPath.
    #[arg(long, default_value = crate::runtime::lock::LOCK_DIR)]
    pub lock_dir: PathBuf,
    /// Seconds between read-backs of the maps, which find entries changed behind the agent's
    /// back (`zt_map_drift_total`) and repair them.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub verify_interval: u64,
    /// The control socket `zt-agent explain` asks (mode 0600, root peers only).
    #[arg(long, default_value = crate::explain::CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

impl RunArgs {
    pub fn verify_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.verify_interval)
    }
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab from manifests, enforce, probe every pod pair and port, tear it down.
    Probe(LabProbeArgs),
    /// Build the lab and keep it until Ctrl-C, to poke at it by hand (`ip netns exec …`).
    Up(LabUpArgs),
    /// Stop your running labs and remove what your killed ones left behind.
    Down(LabDownArgs),
    /// The demo: an app with no policy, then zero trust, and one denied flow explained.
    Demo(LabDemoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LabDownArgs {
    /// Every user's labs, not only yours (yours: started by your login user, `SUDO_UID` under
    /// sudo), and every `ztlab-…` namespace or pin dir of a dead process.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LabDemoArgs {
    /// Folder with `app/` (namespaces, pods) and `zero-trust/` (policies).
    #[arg(long, default_value = "deploy/demo")]
    pub dir: PathBuf,
    /// The flow to explain, as `FROM:TO:PORT/PROTOCOL` (e.g.
    /// `default/toolbox:shop/db:5432/TCP`): why it is denied, or that and why it is allowed.
    /// Without it, the first denied flow. A flow that does not parse or that the lab does not
    /// probe (unknown pod, port not served) is an error before the lab is built.
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
