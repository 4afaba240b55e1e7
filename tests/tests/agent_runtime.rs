//! `zt-agent run --source dir:…` as the DaemonSet runs it, against real network namespaces and
//! real packets: a node namespace (the agent runs in it through `nsenter --net`) and three pods
//! `a`, `b`, `c`, each a namespace with a veth whose host end is in the node namespace.
//!
//! Layouts: **routed** (a /32 route per pod to its veth, as kindnet and Calico do) and **bridged**
//! (veths enslaved to a bridge with the pods' gateway address, as the CNI bridge plugin and
//! flannel do), both wired by `zt_agent::lab::net`, as the lab's are. `a` serves TCP echo on
//! 8080; the policy lets `b` in and keeps `c` out.
//!
//! Needs root and the agent binary: run `cargo build -p zt-agent` first (`cargo xtask test` does).
//! Every kernel object is named `ztrt*`, created by the test and removed on drop, also on failure.
//! Tests hold a lock, so they never overlap.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::{
    EbpfLoader,
    maps::{HashMap, Map, MapData},
    programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions},
};
use zt_agent::lab::{
    agent,
    net::{Config, Layout, Netns, Node, PodAddrs, PodNet, ip, wiring::GATEWAY_V4},
};
use zt_common::{
    endpoint::{EndpointKey, EndpointValue},
    names,
};

static SERIAL: Mutex<()> = Mutex::new(());
static SEQ: AtomicU32 = AtomicU32::new(0);

const PORT: u16 = 8080;
const CONNECT: Duration = Duration::from_millis(600);

struct Lab {
    /// The node and pod namespaces, deleted on drop (their veths with them, which detaches the
    /// programs).
    node: Node,
    // Declared last: dropped after the namespaces.
    cleanup: Cleanup,
}

/// The pods, numbered by their place here.
const PODS: [&str; 3] = ["a", "b", "c"];

/// A pin root and the manifests folder, removed on drop (removing the pins frees links and maps).
struct Cleanup {
    pin_root: PathBuf,
    manifests: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.manifests);
    }
}

impl Lab {
    /// Namespaces `ztrt-<pid>-<seq>-node` and `…-p0` (a) to `…-p2` (c); routed pods in
    /// 10.231.0.0/24, bridged ones in 10.232.0.0/24 behind the bridge's 10.232.0.1.
    fn new(layout: Layout) -> anyhow::Result<Self> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let cleanup = Cleanup {
            pin_root: PathBuf::from(format!("/sys/fs/bpf/ztrt-{id}")),
            manifests: std::env::temp_dir().join(format!("ztrt-m-{id}")),
        };
        std::fs::create_dir_all(&cleanup.manifests)?;
        let subnet = match layout {
            Layout::Routed => [10, 231, 0],
            Layout::Bridged { .. } => [10, 232, 0],
        };
        let config = Config {
            layout,
            ..Config::routed(format!("ztrt-{id}"), "ztrt")
        };
        let mut lab = Self {
            node: Node::create(config)?,
            cleanup,
        };
        for n in 0..PODS.len() {
            let ipv4 = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 2 + n as u8);
            lab.node.add_pod(PodAddrs {
                n,
                ipv4,
                ipv6: None,
            })?;
        }
        Ok(lab)
    }

    fn bridged() -> Layout {
        Layout::Bridged {
            gateway: "10.232.0.1/24".parse().expect("a prefix"),
        }
    }

    fn pod(&self, name: &str) -> &PodNet {
        let n = PODS
            .iter()
            .position(|p| *p == name)
            .expect("a pod of the lab");
        &self.node.pods[n]
    }

    /// Writes the manifests: the namespace, the pods `present`, and a policy on `a` letting in
    /// the pods labelled `app=<allowed>` on TCP 8080.
    fn write(&self, present: &[&str], allowed: &str) -> anyhow::Result<()> {
        let mut text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ztrt}\n".to_owned();
        for (name, pod) in PODS.iter().zip(&self.node.pods) {
            if !present.contains(name) {
                continue;
            }
            text += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {n}, namespace: ztrt, labels: {{app: {n}}}}}\n\
                 spec: {{containers: [{{name: c, image: x, ports: [{{containerPort: {PORT}}}]}}]}}\n\
                 status: {{phase: Running, podIP: {a}}}\n",
                n = name,
                a = pod.ipv4
            );
        }
        text += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a-in, namespace: ztrt}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  policyTypes: [Ingress]\n  ingress:\n\
             \x20 - from: [{{podSelector: {{matchLabels: {{app: {allowed}}}}}}}]\n    ports: [{{protocol: TCP, port: {PORT}}}]\n"
        );
        // Write then rename, as a ConfigMap update or an editor does.
        let tmp = self.cleanup.manifests.join(".lab.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.cleanup.manifests.join("lab.yaml"))?;
        Ok(())
    }

    fn start_agent(&self) -> anyhow::Result<AgentProcess> {
        self.start_agent_with(&[])
    }

    fn start_agent_with(&self, extra: &[&str]) -> anyhow::Result<AgentProcess> {
        let binary = agent::binary()?;
        let log = self.cleanup.manifests.join("agent.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node.netns.name))
            .arg(binary)
            .args(["run", "--source"])
            .arg(format!("dir:{}", self.cleanup.manifests.display()))
            .arg("--pin-root")
            .arg(&self.cleanup.pin_root)
            .args(["--listen", agent::LISTEN])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting the agent")?;
        let mut agent = AgentProcess { child, log };
        let started = Instant::now();
        agent.wait_ready(&self.node.netns)?;
        eprintln!("agent ready {:?} after its start", started.elapsed());
        Ok(agent)
    }

    /// Starts a TCP echo server in `a`; it runs until the test process ends.
    fn serve(&self) -> anyhow::Result<()> {
        self.serve_on("a")
    }

    fn serve_on(&self, pod: &str) -> anyhow::Result<()> {
        let listener = self
            .pod(pod)
            .netns
            .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))??;
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = BufReader::new(conn);
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        if reader.get_mut().write_all(line.as_bytes()).is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        Ok(())
    }

    /// A connection from `from` to `a`'s echo server, if the handshake completes.
    fn connect(&self, from: &str) -> Option<Echo> {
        self.connect_to(from, "a")
    }

    fn connect_to(&self, from: &str, to: &str) -> Option<Echo> {
        let to = SocketAddr::new(IpAddr::V4(self.pod(to).ipv4), PORT);
        let stream = self
            .pod(from)
            .netns
            .run(|| TcpStream::connect_timeout(&to, CONNECT))
            .ok()?
            .ok()?;
        stream.set_read_timeout(Some(CONNECT)).ok()?;
        Some(Echo(BufReader::new(stream)))
    }

    /// Whether `from` can open a connection to `a` and get an echo back.
    fn reaches(&self, from: &str) -> bool {
        self.connect(from).is_some_and(|mut e| e.echo())
    }

    /// Polls until `from` reaching `a` is `expected`.
    fn wait_reach(&self, from: &str, expected: bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.reaches(from) == expected {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn pinned_endpoints(&self) -> anyhow::Result<Vec<(IpAddr, EndpointValue)>> {
        let path = self
            .cleanup
            .pin_root
            .join("maps")
            .join(names::MAP_ENDPOINTS);
        let map = Map::HashMap(MapData::from_pin(&path)?);
        let map: HashMap<_, EndpointKey, EndpointValue> = HashMap::try_from(map)?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, v) = entry?;
            let addr = std::net::Ipv6Addr::from(k.addr);
            out.push((
                addr.to_ipv4_mapped().map_or(IpAddr::V6(addr), IpAddr::V4),
                v,
            ));
        }
        Ok(out)
    }

    fn link_pins(&self) -> Vec<String> {
        let mut pins: Vec<String> = std::fs::read_dir(self.cleanup.pin_root.join("links"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        pins.sort();
        pins
    }

    /// Pins, where the agent keeps `pod`'s links, a TCX pair running `zt_baseline` (parse and
    /// pass): what an older agent's program would look like to a new one.
    fn pin_foreign_pair(&self, pod: &str) -> anyhow::Result<()> {
        let ifindex = self.ifindex(pod)?;
        let (maps, links) = (
            self.cleanup.pin_root.join("maps"),
            self.cleanup.pin_root.join("links"),
        );
        std::fs::create_dir_all(&maps)?;
        std::fs::create_dir_all(&links)?;
        let host_if = self.pod(pod).host_if.clone();
        self.node.netns.run(|| -> anyhow::Result<()> {
            let mut ebpf = EbpfLoader::new()
                .default_map_pin_directory(&maps)
                .load(zt_agent::datapath::object())?;
            let prog: &mut SchedClassifier = ebpf
                .program_mut(names::PROG_BASELINE)
                .context("no baseline program")?
                .try_into()?;
            prog.load()?;
            for (at, suffix) in [
                (TcAttachType::Ingress, "from"),
                (TcAttachType::Egress, "to"),
            ] {
                let id = prog.attach_with_options(
                    &host_if,
                    at,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )?;
                FdLink::try_from(prog.take_link(id)?)?
                    .pin(links.join(format!("{ifindex}-{suffix}")))?;
            }
            Ok(())
        })?
    }

    fn ifindex(&self, pod: &str) -> anyhow::Result<u32> {
        let host_if = &self.pod(pod).host_if;
        Ok(self
            .node
            .netns
            .run(|| nix::net::if_::if_nametoindex(host_if.as_str()))??)
    }
}

struct Echo(BufReader<TcpStream>);

impl Echo {
    fn echo(&mut self) -> bool {
        if self.0.get_mut().write_all(b"ping\n").is_err() {
            return false;
        }
        let mut line = String::new();
        self.0.read_line(&mut line).is_ok() && line == "ping\n"
    }
}

/// The agent process (`nsenter` execs it, so the pid is the agent's); killed on drop.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn wait_ready(&mut self, node: &Netns) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent::get(node, "/readyz").is_some_and(|(status, _)| status == 200) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the agent exited ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("the agent was not ready in 30 s:\n{}", self.log_tail());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            ensure!(Instant::now() < deadline, "the agent ignored SIGTERM");
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(node: &Netns, name: &str) -> Option<f64> {
    let (_, body) = agent::get(node, "/metrics")?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits (up to 3 s: counters are read every second) for a metric to reach `at_least`.
fn wait_metric(node: &Netns, name: &str, at_least: f64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if metric(node, name).is_some_and(|n| n >= at_least) {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn enforces_and_follows_changes(layout: Layout) -> anyhow::Result<()> {
    let lab = Lab::new(layout)?;
    lab.serve()?;
    lab.write(&["a", "b", "c"], "b")?;
    ensure!(
        lab.reaches("c"),
        "without the agent, the network lets c reach a"
    );
    let agent = lab.start_agent()?;
    ensure!(
        metric(&lab.node.netns, "zt_attached_interfaces") == Some(3.0),
        "three pods attached"
    );
    ensure!(lab.reaches("b"), "b is allowed to a");
    ensure!(!lab.reaches("c"), "c is denied to a");
    let denied = r#"zt_datapath_events_total{kind="denied",reason="drop_policy_ingress"}"#;
    ensure!(
        wait_metric(&lab.node.netns, denied, 1.0),
        "c's denied packets are counted as events"
    );
    let dropped = r#"zt_datapath_packets_total{reason="drop_policy_ingress"}"#;
    ensure!(
        wait_metric(&lab.node.netns, dropped, 1.0),
        "the kernel's drop counter is exported"
    );

    // The policy now lets c in instead of b.
    let mut established = lab.connect("b").context("b connects before the change")?;
    let syncs = metric(&lab.node.netns, "zt_syncs_total").context("zt_syncs_total")?;
    let written = Instant::now();
    lab.write(&["a", "b", "c"], "c")?;
    ensure!(
        wait_metric(&lab.node.netns, "zt_syncs_total", syncs + 1.0),
        "the change is synced to the maps"
    );
    eprintln!(
        "policy change synced to the maps {:?} after the file was written",
        written.elapsed()
    );
    ensure!(
        lab.wait_reach("c", true, Duration::from_secs(10)),
        "c allowed after the change"
    );
    eprintln!(
        "policy change enforced {:?} after the file was written",
        written.elapsed()
    );
    ensure!(!lab.reaches("b"), "b denied after the change");
    ensure!(
        !established.echo(),
        "b's established flow is cut when its access is revoked"
    );

    // Graceful shutdown leaves enforcement in place.
    let pins = lab.link_pins();
    ensure!(pins.len() == 6, "a pinned pair per pod: {pins:?}");
    agent.terminate()?;
    ensure!(lab.link_pins() == pins, "shutdown keeps the link pins");
    ensure!(
        lab.reaches("c") && !lab.reaches("b"),
        "enforcement goes on without the agent"
    );
    Ok(())
}

#[test]
fn routed_layout_enforces_and_follows_policy_changes() {
    let _serial = lock();
    enforces_and_follows_changes(Layout::Routed).unwrap();
}

#[test]
fn bridged_layout_enforces_and_follows_policy_changes() {
    let _serial = lock();
    enforces_and_follows_changes(Lab::bridged()).unwrap();
}

#[test]
fn restart_keeps_flows_and_denials_and_removes_only_stale_state() {
    let _serial = lock();
    restart(Layout::Routed, Attach::Tcx).unwrap();
}

#[test]
fn restart_in_tc_mode_keeps_flows_and_denials_and_removes_only_stale_state() {
    let _serial = lock();
    restart(Layout::Routed, Attach::Tc).unwrap();
}

/// The agent's `--attach` mode, and what it leaves under `links/` per pod.
#[derive(Clone, Copy)]
enum Attach {
    /// Two pinned TCX links.
    Tcx,
    /// One marker directory; the filters live on the interface.
    Tc,
}

impl Attach {
    fn args(self) -> [&'static str; 2] {
        match self {
            Attach::Tcx => ["--attach", "tcx"],
            Attach::Tc => ["--attach", "tc"],
        }
    }

    fn files_per_pod(self) -> usize {
        match self {
            Attach::Tcx => 2,
            Attach::Tc => 1,
        }
    }
}

fn restart(layout: Layout, attach: Attach) -> anyhow::Result<()> {
    let lab = Lab::new(layout)?;
    lab.serve()?;
    lab.write(&["a", "b", "c"], "b")?;
    let agent = lab.start_agent_with(&attach.args())?;
    let attached = lab.link_pins();
    ensure!(
        attached.len() == 3 * attach.files_per_pod(),
        "each pod attached in the mode asked for: {attached:?}"
    );
    let mut established = lab.connect("b").context("b connects")?;
    ensure!(established.echo(), "b's flow works");
    ensure!(!lab.reaches("c"), "c is denied");
    let c_ifindex = lab.ifindex("c")?;
    let c_addr = IpAddr::V4(lab.pod("c").ipv4);
    ensure!(
        lab.pinned_endpoints()?.iter().any(|(ip, _)| *ip == c_addr),
        "c is an endpoint"
    );

    // From the kill until well after the restart: one thread echoes on the established flow every
    // 20 ms, another keeps trying c → a. Neither may see a single change of verdict.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (failures, mut established, c_got_through, agent) = thread::scope(|scope| {
        let stop = &stop;
        let echo = scope.spawn(move || {
            let mut failures = 0;
            while !stop.load(Ordering::Relaxed) {
                if !established.echo() {
                    failures += 1;
                }
                thread::sleep(Duration::from_millis(20));
            }
            (failures, established)
        });
        let deny = scope.spawn(|| {
            let mut through = 0;
            while !stop.load(Ordering::Relaxed) {
                through += u32::from(lab.reaches("c"));
            }
            through
        });
        let restarted = (|| -> anyhow::Result<AgentProcess> {
            agent.kill9();
            ensure!(
                lab.reaches("b"),
                "new allowed flows open while no agent runs"
            );
            // While the agent is down, pod c goes away (its interface stays, as a slow CNI DEL
            // would leave it): its endpoint, identity and links are stale.
            lab.write(&["a", "b"], "b")?;
            thread::sleep(Duration::from_millis(500));
            let agent = lab.start_agent_with(&attach.args())?;
            thread::sleep(Duration::from_millis(500));
            Ok(agent)
        })();
        stop.store(true, Ordering::Relaxed);
        let (failures, established) = echo.join().expect("the echo thread");
        let through = deny.join().expect("the deny thread");
        (failures, established, through, restarted)
    });
    let agent = agent?;
    ensure!(
        failures == 0,
        "{failures} echoes failed across the kill and restart"
    );
    ensure!(
        c_got_through == 0,
        "c reached a {c_got_through} times across the kill and restart"
    );
    ensure!(
        established.echo(),
        "the established flow survives the restart"
    );
    ensure!(!lab.reaches("c"), "c stays denied after the restart");

    let endpoints = lab.pinned_endpoints()?;
    ensure!(
        !endpoints.iter().any(|(ip, _)| *ip == c_addr),
        "c's stale endpoint is removed: {endpoints:?}"
    );
    ensure!(
        endpoints.len() == 2,
        "a and b stay endpoints: {endpoints:?}"
    );
    let a_ifindex = lab.ifindex("a")?;
    ensure!(
        endpoints
            .iter()
            .any(|(ip, v)| *ip == IpAddr::V4(lab.pod("a").ipv4) && v.ifindex == a_ifindex),
        "a's endpoint names its interface"
    );
    // The agent detaches an interface after it has been unneeded for three turns (~3 s).
    let kept = 2 * attach.files_per_pod();
    let deadline = Instant::now() + Duration::from_secs(6);
    while lab.link_pins().len() > kept && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let pins = lab.link_pins();
    ensure!(
        !pins.iter().any(|p| p.starts_with(&format!("{c_ifindex}-"))),
        "c's links are unpinned: {pins:?}"
    );
    ensure!(
        pins.len() == kept,
        "a's and b's pairs stay attached: {pins:?}"
    );
    ensure!(
        lab.reaches("b") && !lab.reaches("c"),
        "a's and b's enforcement is unchanged by c's detach"
    );
    drop(agent);
    Ok(())
}

#[test]
fn adopted_links_running_another_program_are_swapped_in_place() {
    let _serial = lock();
    swap_foreign_program().unwrap();
}

fn swap_foreign_program() -> anyhow::Result<()> {
    let lab = Lab::new(Layout::Routed)?;
    lab.serve()?;
    lab.write(&["a", "b", "c"], "b")?;
    lab.pin_foreign_pair("a")?;
    let before = lab.link_pins();
    ensure!(before.len() == 2, "the foreign pair is pinned: {before:?}");
    ensure!(lab.reaches("c"), "a pass-everything program lets c reach a");
    let _agent = lab.start_agent()?;
    // Were a's links kept as they were, c would still reach a: a's ingress is checked only there.
    ensure!(
        !lab.reaches("c"),
        "a's adopted links now run the agent's program"
    );
    ensure!(lab.reaches("b"), "b is allowed");
    let after = lab.link_pins();
    ensure!(
        before.iter().all(|p| after.contains(p)) && after.len() == 6,
        "a's pins are kept (the same links), b's and c's added: {after:?}"
    );
    Ok(())
}

#[test]
fn fail_closed_drops_unknown_local_addresses_and_fail_open_passes_them() {
    let _serial = lock();
    fail_modes().unwrap();
}

/// `b` gets a second address no manifest knows and uses it towards `c` (not isolated): an
/// attached interface carrying an address that is no endpoint.
fn fail_modes() -> anyhow::Result<()> {
    let lab = Lab::new(Layout::Routed)?;
    lab.serve_on("c")?;
    lab.write(&["a", "b", "c"], "b")?;
    let (b, c) = (lab.pod("b"), lab.pod("c"));
    let unknown = "10.231.0.99";
    let (b_ns, node) = (&b.netns.name, &lab.node.netns.name);
    ip(&format!("-n {b_ns} addr add {unknown}/32 dev eth0"))?;
    ip(&format!(
        "-n {b_ns} route add {}/32 via {GATEWAY_V4} dev eth0 src {unknown}",
        c.ipv4
    ))?;
    ip(&format!(
        "-n {node} route add {unknown}/32 dev {}",
        b.host_if
    ))?;
    ip(&format!(
        "-n {node} neigh replace {unknown} lladdr {} dev {} nud permanent",
        b.mac, b.host_if
    ))?;
    let b_reaches_c = || lab.connect_to("b", "c").is_some_and(|mut e| e.echo());
    ensure!(
        b_reaches_c(),
        "without the agent, b's extra address reaches c"
    );

    let agent = lab.start_agent()?;
    ensure!(
        !b_reaches_c(),
        "fail-closed: an unknown address on an attached interface is dropped"
    );
    ensure!(
        wait_metric(
            &lab.node.netns,
            r#"zt_datapath_packets_total{reason="drop_unknown_endpoint"}"#,
            1.0
        ),
        "counted as drop_unknown_endpoint"
    );
    agent.terminate()?;

    let _agent = lab.start_agent_with(&["--fail-open"])?;
    ensure!(b_reaches_c(), "fail-open: the unknown address passes");
    Ok(())
}

// ── Holes a new user found (issue 15): typos, two agents, drift, uninstall ──────────────────

impl Lab {
    /// Rewrites the followed manifests through `edit` (write + rename, as an editor does).
    fn edit(&self, edit: impl FnOnce(String) -> String) -> anyhow::Result<()> {
        let path = self.cleanup.manifests.join("lab.yaml");
        let text = edit(std::fs::read_to_string(&path)?);
        let tmp = self.cleanup.manifests.join(".lab.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// `zt-agent <args>` run to completion in the node namespace: (success, stdout, stderr).
    /// Killed after 15 s, which counts as a failure (a second agent that does not refuse runs
    /// forever).
    fn agent_command(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let out_path = self.cleanup.manifests.join("command.out");
        let err_path = self.cleanup.manifests.join("command.err");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node.netns.name))
            .arg(agent::binary()?)
            .args(args)
            .arg("--pin-root")
            .arg(&self.cleanup.pin_root)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        Ok((
            status.is_some_and(|s| s.success()),
            std::fs::read_to_string(out_path)?,
            std::fs::read_to_string(err_path)?,
        ))
    }
}

fn readyz(node: &Netns) -> (u16, String) {
    agent::get(node, "/readyz").unwrap_or((0, String::new()))
}

/// Polls `/metrics` (up to `timeout`) until `name` is at least `at_least`.
fn wait_metric_for(node: &Netns, name: &str, at_least: f64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if metric(node, name).is_some_and(|n| n >= at_least) {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_misspelt_rule_is_rejected_and_the_last_good_state_stays_visibly_enforced() {
    let _serial = lock();
    rejected_folder().unwrap();
}

/// `fromm:` for `from:` used to be dropped, leaving a rule that admits everyone. Now the folder
/// is rejected: the last good policy stays enforced, `/readyz` stays 200 and says why, and the
/// load metrics move.
fn rejected_folder() -> anyhow::Result<()> {
    let lab = Lab::new(Layout::Routed)?;
    lab.serve()?;
    lab.write(&["a", "b", "c"], "b")?;
    let _agent = lab.start_agent()?;
    let node = &lab.node.netns;
    ensure!(lab.reaches("b") && !lab.reaches("c"), "b in, c out");
    let applied_at = metric(node, "zt_manifest_last_applied_timestamp_seconds").unwrap_or(0.0);
    ensure!(applied_at > 1.7e9, "the first read is recorded as applied");

    lab.edit(|text| text.replace("  - from:", "  - fromm:"))?;
    ensure!(
        wait_metric(node, "zt_manifest_rejected", 1.0),
        "the misspelt folder is rejected"
    );
    ensure!(
        metric(node, r#"zt_manifest_loads_total{result="rejected"}"#) == Some(1.0),
        "one rejected load"
    );
    ensure!(
        metric(node, "zt_manifest_last_rejected_timestamp_seconds").is_some_and(|t| t > 1.7e9),
        "the rejection's time"
    );
    let (status, body) = readyz(node);
    ensure!(
        status == 200,
        "still ready: the last good state is enforced ({body})"
    );
    ensure!(
        body.contains("source rejected") && body.contains("spec.ingress[0].fromm: unknown field"),
        "/readyz names the field: {body}"
    );
    thread::sleep(Duration::from_millis(600));
    ensure!(
        !lab.reaches("c"),
        "the unreadable rule did not become allow-all"
    );
    ensure!(lab.reaches("b"), "the last good policy stays");

    lab.edit(|text| text.replace("  - fromm:", "  - from:"))?;
    ensure!(
        wait_metric(node, r#"zt_manifest_loads_total{result="applied"}"#, 2.0),
        "the fixed folder is applied"
    );
    ensure!(
        metric(node, "zt_manifest_rejected") == Some(0.0),
        "no longer rejected"
    );
    ensure!(!readyz(node).1.contains("rejected"), "the note is gone");
    Ok(())
}

#[test]
fn a_second_agent_on_one_pin_root_is_refused() {
    let _serial = lock();
    second_agent().unwrap();
}

fn second_agent() -> anyhow::Result<()> {
    let lab = Lab::new(Layout::Routed)?;
    lab.write(&["a", "b", "c"], "b")?;
    let first = lab.start_agent()?;
    let started = Instant::now();
    let (ok, _, stderr) = lab.agent_command(&[
        "run",
        "--source",
        &format!("dir:{}", lab.cleanup.manifests.display()),
        "--listen",
        "127.0.0.1:9991",
    ])?;
    ensure!(!ok, "the second agent must exit with an error");
    ensure!(
        stderr.contains("another zt-agent holds the pin root")
            && stderr.contains(&format!("pid {}", first.child.id())),
        "a clear error naming the first agent: {stderr}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "it exits at once, before loading anything"
    );
    ensure!(
        readyz(&lab.node.netns).0 == 200,
        "the first agent is untouched"
    );
    first.terminate()?;
    // The lock went with the first agent: a new one starts.
    let _second = lab.start_agent()?;
    Ok(())
}

#[test]
fn map_entries_changed_behind_the_agent_are_found_and_repaired() {
    let _serial = lock();
    drift().unwrap();
}

/// Another writer (what a second agent did before the lock) clears `a`'s ingress isolation in
/// the pinned endpoints map: `c` gets in, until the read-back finds it, counts it and puts the
/// entry back.
fn drift() -> anyhow::Result<()> {
    let lab = Lab::new(Layout::Routed)?;
    lab.serve()?;
    lab.write(&["a", "b", "c"], "b")?;
    let _agent = lab.start_agent_with(&["--verify-interval", "2"])?;
    let node = &lab.node.netns;
    ensure!(!lab.reaches("c"), "c is denied");

    let path = lab.cleanup.pin_root.join("maps").join(names::MAP_ENDPOINTS);
    let mut endpoints: HashMap<MapData, EndpointKey, EndpointValue> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(&path)?))?;
    let key = EndpointKey {
        addr: zt_common::addr_from_ip(IpAddr::V4(lab.pod("a").ipv4)),
    };
    let good = endpoints.get(&key, 0)?;
    let open = EndpointValue {
        flags: good.flags & !zt_common::endpoint::flags::INGRESS_ISOLATED,
        ..good
    };
    endpoints.insert(key, open, 0)?;
    ensure!(lab.reaches("c"), "the tampered entry opens a to c");
    ensure!(
        wait_metric_for(
            node,
            r#"zt_map_drift_total{map="endpoints"}"#,
            1.0,
            Duration::from_secs(6)
        ),
        "the read-back finds the changed entry"
    );
    ensure!(
        lab.wait_reach("c", false, Duration::from_secs(3)),
        "the repair closes a again"
    );
    ensure!(
        endpoints.get(&key, 0)? == good,
        "the entry is back as it was"
    );
    ensure!(
        metric(node, "zt_drift_repairs_total").is_some_and(|n| n >= 1.0),
        "the repair is counted"
    );
    ensure!(lab.reaches("b"), "b still gets in");
    Ok(())
}

#[test]
fn uninstall_detaches_and_unpins_everything_in_tcx_mode() {
    let _serial = lock();
    uninstall(Attach::Tcx).unwrap();
}

#[test]
fn uninstall_detaches_and_unpins_everything_in_tc_mode() {
    let _serial = lock();
    uninstall(Attach::Tc).unwrap();
}

fn uninstall(attach: Attach) -> anyhow::Result<()> {
    let lab = Lab::new(Layout::Routed)?;
    lab.serve()?;
    lab.write(&["a", "b", "c"], "b")?;
    let agent = lab.start_agent_with(&attach.args())?;
    ensure!(!lab.reaches("c"), "c is denied");
    let (ok, _, stderr) = lab.agent_command(&["uninstall"])?;
    ensure!(
        !ok && stderr.contains("another zt-agent holds the pin root"),
        "uninstall refuses while the agent runs: {stderr}"
    );
    agent.terminate()?;
    ensure!(
        !lab.reaches("c"),
        "the pins keep enforcing without the agent"
    );
    let link_ids: Vec<u32> = std::fs::read_dir(lab.cleanup.pin_root.join("links"))?
        .flatten()
        .filter_map(|e| aya::programs::links::PinnedLink::from_pin(e.path()).ok())
        .filter_map(|l| FdLink::from(l).info().ok().map(|i| i.id()))
        .collect();
    ensure!(
        link_ids.len() == if matches!(attach, Attach::Tcx) { 6 } else { 0 },
        "three pods' TCX pairs pinned: {link_ids:?}"
    );

    let (ok, stdout, stderr) = lab.agent_command(&["uninstall"])?;
    ensure!(ok, "uninstall succeeds:\n{stdout}\n{stderr}");
    let expected = match attach {
        Attach::Tcx => "removed TCX link of zt_from_pod on",
        Attach::Tc => "removed tc filter of zt_from_pod on",
    };
    ensure!(
        stdout.matches(expected).count() == 3,
        "one pair per pod reported:\n{stdout}"
    );
    ensure!(
        stdout.contains(&format!(
            "removed map pin {}",
            lab.cleanup
                .pin_root
                .join("maps")
                .join(names::MAP_POLICY)
                .display()
        )),
        "map pins reported:\n{stdout}"
    );
    ensure!(!lab.cleanup.pin_root.exists(), "the pin root is gone");
    let alive: Vec<u32> = aya::programs::loaded_links()
        .flatten()
        .map(|l| l.id())
        .filter(|id| link_ids.contains(id))
        .collect();
    ensure!(alive.is_empty(), "no zt link left in the kernel: {alive:?}");
    for pod in PODS {
        let dev = &lab.pod(pod).host_if;
        for hook in ["ingress", "egress"] {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.node.netns.name,
                    "tc",
                    "filter",
                    "show",
                    "dev",
                    dev,
                    hook,
                ])
                .output()?;
            let filters = String::from_utf8_lossy(&out.stdout);
            ensure!(
                filters.trim().is_empty(),
                "no tc filter left on {dev} {hook}: {filters}"
            );
        }
    }
    ensure!(lab.reaches("c"), "traffic flows unfiltered");
    let (ok, stdout, _) = lab.agent_command(&["uninstall"])?;
    ensure!(
        ok && stdout.contains("nothing to remove"),
        "a second uninstall finds nothing: {stdout}"
    );
    Ok(())
}
