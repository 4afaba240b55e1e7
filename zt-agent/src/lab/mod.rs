//! The hermetic lab: a node with pods in network namespaces, the real agent and datapath
//! enforcing a folder of manifests, and a prober that tries every pod pair on every port.
//!
//! ```text
//!  manifests ─▶ plan (pure: addresses, ports, probes) ─▶ net (node + pod namespaces, routed veths)
//!                                                     ─▶ serve (TCP accept / UDP echo per port)
//!                                                     ─▶ agent (zt-agent run --source dir:…, /readyz)
//!                                                     ─▶ probe (parallel, from each pod) ─▶ report
//!  state: everything made is recorded under /run/zt-lab first; Drop, Ctrl-C and the next run undo it
//! ```
//! `zt-agent lab probe` runs the whole cycle once; `lab up` keeps the lab until Ctrl-C;
//! `lab down` stops the caller's running labs and removes what killed ones left (`--all`: every
//! user's).

pub mod agent;
pub mod demo;
pub mod net;
pub mod plan;
pub mod probe;
pub mod report;
pub mod sctp;
pub mod serve;
pub mod state;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::signal::SigSet;

use self::{agent::Agent, net::Node, serve::Servers};
pub use self::{
    plan::{LabPod, Plan, Port, Protocol},
    probe::Timeouts,
    report::Report,
};
use crate::{
    cli::LabCommand,
    error::{Error, Result},
    resource::Resource,
};

/// How long the agent may take to load, sync and attach.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to apply a changed folder.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// `zt-agent lab …`.
pub fn main(command: LabCommand) -> Result<()> {
    match command {
        LabCommand::Probe(args) => {
            let signals = state::handle_signals()?;
            let resources = crate::manifests::load_dir(&args.manifests)?;
            plan::require_probes(&plan::plan(resources.clone())?.pods)?;
            let lab = Lab::build(resources, Some(signals))?;
            let report = lab.probe(Timeouts::default());
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        LabCommand::Up(args) => {
            let signals = state::handle_signals()?;
            let resources = crate::manifests::load_dir(&args.manifests)?;
            let lab = Lab::build(resources, Some(signals))?;
            print!("{}", lab.describe());
            eprintln!("the lab is up; Ctrl-C (or `zt-agent lab down`) tears it down");
            // The signal thread tears the lab down and exits.
            loop {
                std::thread::park();
            }
        }
        LabCommand::Demo(args) => demo::run(args),
        LabCommand::Down(args) => {
            require_root()?;
            let whose = if args.all {
                state::Whose::All
            } else {
                state::Whose::User(state::caller())
            };
            let removed = state::stop(whose);
            for what in &removed {
                eprintln!("removed {what}");
            }
            if removed.is_empty() {
                eprintln!("no lab of yours runs or was left behind (`--all`: every user's)");
            }
            Ok(())
        }
    }
}

/// A built lab; dropping it tears everything down. Fields drop in order: servers, agent, node,
/// then the record (which removes whatever is left, pins included).
#[derive(Debug)]
pub struct Lab {
    _servers: Servers,
    agent: Agent,
    node: Node,
    pods: Vec<LabPod>,
    manifests: PathBuf,
    run: Run,
}

/// The run's record; dropping it tears down whatever it lists.
#[derive(Debug)]
struct Run(String);

impl Drop for Run {
    fn drop(&mut self) {
        state::finish(&self.0);
    }
}

impl Lab {
    /// Builds the lab for `resources` and waits until the agent enforces them. `signals` is the
    /// mask from [`state::handle_signals`], if the caller installed it.
    pub fn build(resources: Vec<Resource>, signals: Option<SigSet>) -> Result<Self> {
        require_root()?;
        for tool in ["ip", "nsenter", "sysctl"] {
            if !on_path(tool) {
                return Err(Error::Other(format!(
                    "`{tool}` is not installed (the lab needs iproute2, util-linux and procps)"
                )));
            }
        }
        crate::runtime::kmod::ensure(crate::runtime::kmod::LAB)?;
        let plan = plan::plan(resources)?;
        for what in state::reap_leftovers() {
            eprintln!("zt-agent lab: removed leftover {what}");
        }
        let run = Run(state::new_run());
        state::begin(&run.0)?;
        let workdir = Path::new(state::STATE_DIR).join(&run.0);
        let pin_root = Path::new("/sys/fs/bpf").join(format!("{}-{}", net::PREFIX, run.0));
        state::update(&run.0, |r| {
            r.workdir = Some(workdir.clone());
            r.pin_root = Some(pin_root.clone());
        })?;
        crate::runtime::bpffs::ensure_pin_root(&pin_root)?;
        let manifests = workdir.join("manifests");
        std::fs::create_dir_all(&manifests).map_err(|source| Error::Io {
            path: manifests.clone(),
            source,
        })?;
        write_manifests(&manifests, &plan.resources)?;

        // Each namespace is recorded before it exists, so a crash in between leaves a record.
        let record_netns = |name: String| state::update(&run.0, |r| r.netns.push(name));
        let config = net::lab_config(&run.0);
        let _ = record_netns(config.node_netns());
        let mut node = Node::create(config)?;
        let mut servers = Servers::default();
        for (n, pod) in plan.pods.iter().enumerate() {
            let _ = record_netns(node.config().pod_netns(n));
            let addrs = net::PodAddrs {
                n,
                ipv4: pod.ipv4,
                ipv6: pod.ipv6,
            };
            servers.serve(&node.add_pod(addrs)?.netns, &pod.ports)?;
        }
        let mut agent = state::spawn_recorded(
            &run.0,
            || {
                Agent::start(
                    &node.netns,
                    &manifests,
                    &pin_root,
                    workdir.join("agent.log"),
                    signals,
                )
            },
            Agent::pid,
        )?;
        agent.wait_ready(&node.netns, READY_TIMEOUT)?;
        report_notes(&node.netns);
        Ok(Self {
            _servers: servers,
            agent,
            node,
            pods: plan.pods,
            manifests,
            run,
        })
    }

    pub fn pods(&self) -> &[LabPod] {
        &self.pods
    }

    /// Probes every ordered pair of distinct pods on every port the destination declares.
    pub fn probe(&self, timeouts: Timeouts) -> Report {
        let probes = plan::probes(&self.pods);
        let netns: Vec<_> = self.node.pods.iter().map(|p| &p.netns).collect();
        let outcomes = probe::run(&self.pods, &netns, &probes, timeouts);
        Report::new(&self.pods, &probes, &outcomes)
    }

    /// Replaces what the agent follows and waits until the agent has compiled and synced it:
    /// its `zt_source_changes_total` (bumped after each sync of a changed cluster state) moves
    /// past its value before the write. The pods must stay the same (names, addresses, ports);
    /// labels, namespaces and policies may change. A change the agent sees as no change never
    /// moves the counter and ends in a timeout error.
    pub fn apply(&self, resources: Vec<Resource>) -> Result<()> {
        let plan = plan::plan(resources)?;
        if plan.pods != self.pods {
            return Err(Error::Other(
                "the lab cannot add, remove, readdress or re-port pods after it is built".into(),
            ));
        }
        let before = self.source_changes();
        write_manifests(&self.manifests, &plan.resources)?;
        let deadline = std::time::Instant::now() + APPLY_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if self.source_changes() > before {
                report_notes(&self.node.netns);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::Other(format!(
            "the agent did not apply the change within {APPLY_TIMEOUT:?}; its log ({}):\n{}",
            self.agent.log.display(),
            self.agent.log_tail(20)
        )))
    }

    /// The agent's `zt_source_changes_total`, 0 if it does not answer.
    fn source_changes(&self) -> u64 {
        let Some((200, body)) = self.agent_get("/metrics") else {
            return 0;
        };
        body.lines()
            .find_map(|l| l.strip_prefix("zt_source_changes_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// A pod's labels as the agent currently sees them.
    pub fn labels(&self, id: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let text = std::fs::read_to_string(self.manifests.join("lab.yaml")).ok()?;
        let resources = crate::manifests::parse(&self.manifests, &text).ok()?;
        resources.into_iter().find_map(|r| match r {
            Resource::Pod(p) => {
                let pid = format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref().unwrap_or_default()
                );
                (pid == id).then(|| p.metadata.labels.unwrap_or_default())
            }
            _ => None,
        })
    }

    /// `GET path` on the agent (e.g. `/metrics`), from the node namespace.
    pub fn agent_get(&self, path: &str) -> Option<(u16, String)> {
        agent::get(&self.node.netns, path)
    }

    /// The folder of manifests the agent follows (one `lab.yaml`, addresses filled in): what
    /// `zt-agent explain --manifests` reads to answer without packets.
    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    /// The agent's control socket (`zt-agent explain` without `--manifests` asks it).
    pub fn control_socket(&self) -> PathBuf {
        self.agent.control_socket()
    }

    /// The agent's log file.
    pub fn agent_log(&self) -> &Path {
        &self.agent.log
    }

    /// The run id (`<pid>-<seq>`) that names the lab's namespaces and pin dir.
    pub fn run_id(&self) -> &str {
        &self.run.0
    }

    /// How to reach the pods by hand.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "node namespace {} (agent log {}, /metrics at {} inside it)\n",
            self.node.netns.name,
            self.agent.log.display(),
            agent::LISTEN
        );
        for (pod, net) in self.pods.iter().zip(&self.node.pods) {
            let ports: Vec<String> = pod
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.protocol.as_str(), p.port))
                .collect();
            out.push_str(&format!(
                "  {:<24} {:<15} netns {:<22} host veth {:<9} {}\n",
                pod.id(),
                pod.ipv4,
                net.netns.name,
                net.host_if,
                ports.join(" ")
            ));
        }
        out
    }
}

/// Prints what the agent's `/readyz` notes (compiler warnings, a rejected folder) on stderr: the
/// lab's user must see a rule the compiler skipped.
fn report_notes(node: &net::Netns) {
    if let Some((_, body)) = agent::get(node, "/readyz") {
        for note in body.lines().skip(1) {
            eprintln!("zt-agent lab: agent: {note}");
        }
    }
}

/// Writes `resources` as the one file the agent follows, atomically (a hidden temporary, renamed),
/// so the agent never reads half a file. What the agent would reject is an error here, at once.
fn write_manifests(dir: &Path, resources: &[Resource]) -> Result<()> {
    let mut text = String::new();
    for resource in resources {
        let doc = match resource {
            Resource::Namespace(o) => serde_yaml::to_string(o),
            Resource::Pod(o) => serde_yaml::to_string(o),
            Resource::NetworkPolicy(o) => serde_yaml::to_string(o),
        }
        .map_err(|e| Error::Other(format!("serializing the lab's manifests: {e}")))?;
        text.push_str("---\n");
        text.push_str(&doc);
    }
    let (tmp, path) = (dir.join(".lab.yaml.tmp"), dir.join("lab.yaml"));
    crate::manifests::parse(&path, &text)?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| Error::Io { path, source })
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Other(
            "the lab needs root (it creates network namespaces and loads eBPF programs); run it with sudo"
                .into(),
        ));
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
