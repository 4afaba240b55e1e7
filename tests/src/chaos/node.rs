//! The node the chaos cases break: a node namespace (no uplink) with pods `a` (TCP echo on 8080,
//! UDP echo on 8081), `b` (allowed to reach `a`) and `c` (denied), plus pods added and removed on
//! the way, and the real agent following a folder of manifests. Everything is named
//! `ztch-<pid>-<seq>` and removed on drop, also when a case fails.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Pod,
    maps::{HashMap, Map, MapData},
};
use zt_agent::lab::{
    agent,
    net::{Config, Node, PodAddrs, PodNet},
};
use zt_common::{
    endpoint::{EndpointKey, EndpointValue},
    names,
    policy::{PolicyKey, PolicyValue},
};

pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 8081;
/// The node's name: the agent enforces the pods with this `spec.nodeName`.
pub const NODE_NAME: &str = "ztch-node";
/// The pods every case starts with: the server, the allowed client, the denied client.
pub const PODS: [&str; 3] = ["a", "b", "c"];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Pod `n`'s address.
pub fn pod_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 233, (n / 200) as u8, 2 + (n % 200) as u8)
}

pub struct ChaosNode {
    pub node: Node,
    /// Names of the pods by number (`a`, `b`, `c`, then `p3`, `p4`, …).
    names: Vec<(usize, String)>,
    pub pin_root: PathBuf,
    pub dir: PathBuf,
    /// Flags every start of the agent gets besides the node's own.
    pub agent_flags: Vec<&'static str>,
    agent: Option<Child>,
}

impl Drop for ChaosNode {
    fn drop(&mut self) {
        self.kill_agent();
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ChaosNode {
    /// The node with pods a, b, c and the servers in a; the agent is not started.
    pub fn new() -> anyhow::Result<Self> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("ztch-{id}"));
        std::fs::create_dir_all(dir.join("manifests"))?;
        let mut node = Self {
            node: Node::create(Config::routed(format!("ztch-{id}"), "ztch"))?,
            names: Vec::new(),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/ztch-{id}")),
            dir,
            agent_flags: Vec::new(),
            agent: None,
        };
        for name in PODS {
            node.add_pod(name)?;
        }
        node.serve("a")?;
        Ok(node)
    }

    pub fn pod(&self, name: &str) -> &PodNet {
        let (n, _) = self
            .names
            .iter()
            .find(|(_, p)| p == name)
            .unwrap_or_else(|| panic!("no pod {name}"));
        self.node
            .pods
            .iter()
            .find(|p| p.n == *n)
            .expect("named pods are wired")
    }

    /// Wires a pod (a namespace, a veth, a route) named `name`; returns its number.
    pub fn add_pod(&mut self, name: &str) -> anyhow::Result<usize> {
        let n = self.names.iter().map(|(n, _)| n + 1).max().unwrap_or(0);
        self.node.add_pod(PodAddrs {
            n,
            ipv4: pod_ip(n),
            ipv6: None,
        })?;
        self.names.push((n, name.to_owned()));
        Ok(n)
    }

    /// Deletes a pod's namespace and veth, as a CNI DEL does.
    pub fn remove_pod(&mut self, name: &str) {
        if let Some(at) = self.names.iter().position(|(_, p)| p == name) {
            let (n, _) = self.names.remove(at);
            self.node.remove_pod(n);
        }
    }

    /// Whether `from` opens a TCP connection to `to`'s echo server.
    pub fn connects(&self, from: &str, to: &str) -> anyhow::Result<bool> {
        let to = std::net::SocketAddr::from((self.pod(to).ipv4, TCP_PORT));
        Ok(self
            .pod(from)
            .netns
            .run(|| TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_ok())?)
    }

    /// Starts the TCP and UDP echo servers in pod `name`.
    pub fn serve(&self, name: &str) -> anyhow::Result<()> {
        let a = &self.pod(name).netns;
        let tcp = a.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT)))??;
        let udp = a.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT)))??;
        thread::spawn(move || {
            for conn in tcp.incoming().flatten() {
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
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        });
        Ok(())
    }

    /// Writes the manifests (write + rename): every pod present, a policy on `a` admitting
    /// `app=b` on both ports, and `extra` YAML documents appended.
    pub fn write(&self, extra: &str) -> anyhow::Result<()> {
        let mut text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ztch}\n".to_owned();
        for (n, name) in &self.names {
            text += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ztch, labels: {{app: {name}}}}}\n\
                 spec: {{nodeName: {NODE_NAME}, containers: [{{name: c, image: x, ports: [{{containerPort: {TCP_PORT}}}, {{containerPort: {UDP_PORT}, protocol: UDP}}]}}]}}\n\
                 status: {{phase: Running, podIP: {ip}}}\n",
                ip = pod_ip(*n)
            );
        }
        text += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a-in, namespace: ztch}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  policyTypes: [Ingress]\n  ingress:\n\
             \x20 - from: [{{podSelector: {{matchLabels: {{app: b}}}}}}]\n    ports: [{{protocol: TCP, port: {TCP_PORT}}}, {{protocol: UDP, port: {UDP_PORT}}}]\n"
        );
        text += extra;
        let manifests = self.dir.join("manifests");
        let tmp = manifests.join(".cluster.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, manifests.join("cluster.yaml"))?;
        Ok(())
    }

    /// Starts the agent (`--agent-bin` or the build next to this executable) without waiting.
    pub fn start_agent(&mut self, binary: &Path) -> anyhow::Result<()> {
        self.kill_agent();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node.netns.name))
            .arg(binary)
            .args(["run", "--source"])
            .arg(format!("dir:{}", self.dir.join("manifests").display()))
            .arg("--pin-root")
            .arg(&self.pin_root)
            .args(["--node-name", NODE_NAME])
            .args(&self.agent_flags)
            .args(["--listen", agent::LISTEN])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        self.agent = Some(child);
        Ok(())
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// SIGKILL, as the OOM killer or a node drain's force does.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if agent::get(&self.node.netns, "/readyz").is_some_and(|(status, _)| status == 200) {
                return Ok(());
            }
            if let Some(child) = &mut self.agent
                && let Some(status) = child.try_wait()?
            {
                bail!("the agent exited ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready in {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/readyz`'s status and body (0 and empty when the agent does not answer).
    pub fn readyz(&self) -> (u16, String) {
        agent::get(&self.node.netns, "/readyz").unwrap_or_default()
    }

    /// A metric of the agent's `/metrics`, summed over its label sets.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = agent::get(&self.node.netns, "/metrics")?;
        let values: Vec<f64> = body
            .lines()
            .filter(|l| {
                l.split(['{', ' '])
                    .next()
                    .is_some_and(|metric| metric == name)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// The agent's resident memory in KiB.
    pub fn agent_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.agent_pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Entries of the pinned endpoint, policy and single-address identity maps: what a fresh
    /// agent writes for this node must equal what a long-broken one leaves.
    pub fn pinned_entries(&self) -> anyhow::Result<BTreeMap<&'static str, usize>> {
        let maps = self.pin_root.join("maps");
        Ok(BTreeMap::from([
            (
                names::MAP_ENDPOINTS,
                count::<EndpointKey, EndpointValue>(&maps, names::MAP_ENDPOINTS)?,
            ),
            (
                names::MAP_POLICY,
                count::<PolicyKey, PolicyValue>(&maps, names::MAP_POLICY)?,
            ),
            (
                names::MAP_HOST_IDENTITY_V4,
                count::<[u8; 4], u32>(&maps, names::MAP_HOST_IDENTITY_V4)?,
            ),
        ]))
    }

    /// The names of the link pins (`<ifindex>-from|to`, or `<ifindex>-tc`).
    pub fn link_pins(&self) -> Vec<String> {
        std::fs::read_dir(self.pin_root.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Entries of the pinned hash map `name` in `maps`.
fn count<K: Pod, V: Pod>(maps: &Path, name: &str) -> anyhow::Result<usize> {
    let map = Map::HashMap(MapData::from_pin(maps.join(name))?);
    Ok(HashMap::<_, K, V>::try_from(map)?.keys().count())
}
