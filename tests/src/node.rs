//! A real single-node Kubernetes cluster on this machine, for `cargo xtask e2e node`.
//!
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback ports; containerd
//! with runc and the CNI `bridge` plugin; a kubelet. Everything it makes is its own:
//!
//! | what | where |
//! |---|---|
//! | state, logs, configs, containerd root | [`DIR`] (`/tmp/zt-node`) |
//! | containerd socket and state | [`RUN`] (`/run/zt-node`) |
//! | pod network | bridge [`BRIDGE`] with [`GATEWAY`]/24 of [`POD_CIDR`]: no masquerade, no default route in the pods — they reach the bridge's subnet and nothing else |
//! | node address | [`GATEWAY`] (on the bridge; the kubelet and the API server talk over it, inside this machine) |
//! | ports | etcd 23910/23911, API server 16543, kubelet 10450 (healthz 10448); controller-manager and scheduler serve nothing |
//!
//! Only one such cluster runs at a time on a machine (`/tmp/zt-node.lock`, held for the
//! cluster's life). [`Node::up`] first removes what a killed run left, and dropping the [`Node`]
//! tears everything down — pods, kubelet, containers, containerd, control plane, the pods'
//! network namespaces, veths and bridge, mounts, cgroups and directories — also when a test
//! panicked.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    os::unix::io::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub const DIR: &str = "/tmp/zt-node";
pub const RUN: &str = "/run/zt-node";
pub const BRIDGE: &str = "ztnode0";
pub const POD_CIDR: &str = "10.245.0.0/24";
pub const GATEWAY: &str = "10.245.0.1";
pub const NODE_NAME: &str = "zt-node";
pub const APISERVER_PORT: u16 = 16543;
const ETCD_PORTS: (u16, u16) = (23910, 23911);
const KUBELET_PORT: u16 = 10450;
const KUBELET_HEALTHZ_PORT: u16 = 10448;
/// The CNI network name (also the prefix of go-cni's cache files under /var/lib/cni/results).
const NETWORK: &str = "zt-node";
pub const PAUSE_IMAGE: &str = "k8s.local/pause:3.4";
const LOCK: &str = "/tmp/zt-node.lock";

/// The binaries the cluster runs (etcd, containerd and runc come from Debian packages).
#[derive(Clone, Debug)]
pub struct Bins {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubelet: PathBuf,
}

impl Bins {
    /// From `$ZT_KUBE_BIN_DIR/<name>-v1.20.2` (what deploy/build-kube.sh prints).
    pub fn from_env() -> anyhow::Result<Self> {
        let dir = PathBuf::from(
            std::env::var_os("ZT_KUBE_BIN_DIR").context("ZT_KUBE_BIN_DIR is not set")?,
        );
        let bin = |name: &str| {
            let path = dir.join(format!("{name}-v1.20.2"));
            if path.exists() {
                Ok(path)
            } else {
                bail!("{} missing (deploy/build-kube.sh {name})", path.display())
            }
        };
        Ok(Self {
            kube_apiserver: bin("kube-apiserver")?,
            kube_controller_manager: bin("kube-controller-manager")?,
            kube_scheduler: bin("kube-scheduler")?,
            kubelet: bin("kubelet")?,
        })
    }
}

/// A process of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
    Scheduler,
    Containerd,
    Kubelet,
}

impl Component {
    fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Containerd => "containerd",
            Component::Kubelet => "kubelet",
        }
    }
}

/// The running cluster; dropping it tears everything down.
pub struct Node {
    bins: Bins,
    procs: Vec<(Component, Child)>,
    /// Network namespaces that existed before the cluster: never removed.
    netns_before: BTreeSet<String>,
    token: String,
    _lock: fs::File,
}

fn dir(sub: &str) -> PathBuf {
    Path::new(DIR).join(sub)
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("{what}: not within {timeout:?}")
}

fn netns_names() -> BTreeSet<String> {
    fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Node {
    /// Starts the cluster and imports `images` (docker-archive / OCI tarballs) into containerd.
    pub fn up(bins: Bins, images: &[PathBuf]) -> anyhow::Result<Node> {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)?;
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!("another zt-node cluster runs on this machine ({LOCK} is locked)");
        }
        // What a killed run left behind (its processes are found by their pid files).
        teardown(&BTreeSet::new(), None);
        let mut node = Node {
            bins,
            procs: Vec::new(),
            netns_before: netns_names(),
            token: format!("{:032x}", rand_u128()),
            _lock: lock,
        };
        node.start(images)?;
        Ok(node)
    }

    fn start(&mut self, images: &[PathBuf]) -> anyhow::Result<()> {
        let t0 = Instant::now();
        for sub in ["logs", "pki", "cni/net.d", "cni/ipam", "kubelet/pki"] {
            fs::create_dir_all(dir(sub))?;
        }
        fs::create_dir_all(RUN)?;
        self.write_configs()?;
        // The bridge exists before the kubelet, holding the node address it registers with.
        run(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]))?;
        run(Command::new("ip").args(["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE]))?;
        run(Command::new("ip").args(["link", "set", BRIDGE, "up"]))?;

        self.spawn(Component::Containerd)?;
        wait_for("containerd", Duration::from_secs(20), || {
            quiet(Command::new("ctr").args(["--address", &containerd_socket(), "version"]))
        })?;
        let mut all = vec![dir("pause.tar")];
        all.extend(images.iter().cloned());
        for image in &all {
            run(Command::new("ctr")
                .args([
                    "--address",
                    &containerd_socket(),
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                ])
                .arg(image))?;
        }
        eprintln!(
            "node: {:5.1} s containerd up, images imported",
            t0.elapsed().as_secs_f64()
        );

        self.spawn(Component::Etcd)?;
        self.spawn(Component::ApiServer)?;
        wait_for("kube-apiserver /readyz", Duration::from_secs(60), || {
            self.kubectl(&["get", "--raw", "/readyz"])
                .is_ok_and(|s| s.trim() == "ok")
        })?;
        eprintln!(
            "node: {:5.1} s etcd + kube-apiserver ready",
            t0.elapsed().as_secs_f64()
        );
        self.spawn(Component::ControllerManager)?;
        self.spawn(Component::Scheduler)?;
        self.spawn(Component::Kubelet)?;
        self.wait_node_ready(Duration::from_secs(90))?;
        // The default service account, which pods need before the API server admits them.
        wait_for("default service account", Duration::from_secs(60), || {
            self.kubectl(&["get", "serviceaccount", "default"]).is_ok()
        })?;
        eprintln!("node: {:5.1} s node Ready", t0.elapsed().as_secs_f64());
        Ok(())
    }

    fn write_configs(&self) -> anyhow::Result<()> {
        fs::write(
            dir("containerd.toml"),
            format!(
                r#"version = 2
root = "{DIR}/containerd/root"
state = "{RUN}/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{RUN}/containerd/ttrpc.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{DIR}/cni/net.d"
    max_conf_num = 1
"#,
                sock = containerd_socket()
            ),
        )?;
        // isGateway puts GATEWAY on the bridge (the node's route to its pods); no default route
        // and no masquerade: pods reach their subnet and nothing beyond it.
        fs::write(
            dir("cni/net.d/10-zt-node.conflist"),
            serde_json::to_string_pretty(&serde_json::json!({
                "cniVersion": "0.4.0",
                "name": NETWORK,
                "plugins": [{
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "isDefaultGateway": false,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": format!("{DIR}/cni/ipam"),
                        "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                        "routes": [],
                    },
                }],
            }))?,
        )?;
        fs::write(
            dir("tokens.csv"),
            format!("{},admin,admin-uid,\"system:masters\"\n", self.token),
        )?;
        if !dir("pki/sa.key").exists() {
            run(Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(dir("pki/sa.key"))
                .arg("2048"))?;
            run(Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(dir("pki/sa.key"))
                .arg("-out")
                .arg(dir("pki/sa.pub")))?;
        }
        fs::write(
            self.kubeconfig(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: zt-node, cluster: {{server: \"https://127.0.0.1:{APISERVER_PORT}\", certificate-authority: \"{DIR}/certs/apiserver.crt\"}}}}]\nusers: [{{name: admin, user: {{token: \"{}\"}}}}]\ncontexts: [{{name: zt-node, context: {{cluster: zt-node, user: admin}}}}]\ncurrent-context: zt-node\n",
                self.token
            ),
        )?;
        // The pause image, from the static pause binary.
        if !dir("pause.tar").exists() {
            let pause =
                std::env::var_os("ZT_NODE_PAUSE_TAR").context("ZT_NODE_PAUSE_TAR is not set")?;
            fs::copy(pause, dir("pause.tar"))?;
        }
        Ok(())
    }

    fn command(&self, component: Component) -> Command {
        let mut cmd;
        match component {
            Component::Containerd => {
                cmd = Command::new("containerd");
                cmd.arg("--config").arg(dir("containerd.toml"));
            }
            Component::Etcd => {
                let (client, peer) = ETCD_PORTS;
                cmd = Command::new("etcd");
                cmd.args(["--name", "zt-node", "--unsafe-no-fsync", "--data-dir"])
                    .arg(dir("etcd"))
                    .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                    .arg(format!(
                        "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                    ))
                    .arg(format!("--initial-cluster=zt-node=http://127.0.0.1:{peer}"));
            }
            Component::ApiServer => {
                cmd = Command::new(&self.bins.kube_apiserver);
                cmd.arg(format!("--etcd-servers=http://127.0.0.1:{}", ETCD_PORTS.0))
                    .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
                    .arg(format!("--secure-port={APISERVER_PORT}"))
                    .args(["--insecure-port=0", "--authorization-mode=Node,RBAC"])
                    .arg(format!("--cert-dir={DIR}/certs"))
                    .arg(format!("--token-auth-file={DIR}/tokens.csv"))
                    .args([
                        "--service-cluster-ip-range=10.96.0.0/24",
                        "--allow-privileged=false",
                    ])
                    .arg("--service-account-issuer=https://kubernetes.default.svc")
                    .arg(format!("--service-account-key-file={DIR}/pki/sa.pub"))
                    .arg(format!(
                        "--service-account-signing-key-file={DIR}/pki/sa.key"
                    ))
                    .arg("--kubelet-preferred-address-types=InternalIP");
            }
            Component::ControllerManager => {
                cmd = Command::new(&self.bins.kube_controller_manager);
                cmd.arg(format!("--kubeconfig={}", self.kubeconfig().display()))
                    .args(["--leader-elect=false", "--port=0", "--secure-port=0"])
                    .arg(format!(
                        "--service-account-private-key-file={DIR}/pki/sa.key"
                    ))
                    .arg(format!("--root-ca-file={DIR}/certs/apiserver.crt"))
                    .args([
                        "--use-service-account-credentials=false",
                        "--controllers=*,-nodeipam",
                    ]);
            }
            Component::Scheduler => {
                cmd = Command::new(&self.bins.kube_scheduler);
                cmd.arg(format!("--kubeconfig={}", self.kubeconfig().display()))
                    .args(["--leader-elect=false", "--port=0", "--secure-port=0"]);
            }
            Component::Kubelet => {
                cmd = Command::new(&self.bins.kubelet);
                cmd.arg(format!("--kubeconfig={}", self.kubeconfig().display()))
                    .arg(format!("--hostname-override={NODE_NAME}"))
                    .arg(format!("--node-ip={GATEWAY}"))
                    .arg(format!("--root-dir={DIR}/kubelet"))
                    .arg(format!("--cert-dir={DIR}/kubelet/pki"))
                    .arg(format!("--volume-plugin-dir={DIR}/kubelet/volume-plugins"))
                    .args(["--container-runtime=remote", "--runtime-request-timeout=2m"])
                    .arg(format!("--container-runtime-endpoint=unix://{}", containerd_socket()))
                    .arg(format!("--pod-infra-container-image={PAUSE_IMAGE}"))
                    .args(["--cgroup-driver=cgroupfs", "--fail-swap-on=false"])
                    .arg("--eviction-hard=memory.available<1Mi,nodefs.available<1%,imagefs.available<1%")
                    .args(["--image-gc-high-threshold=100", "--image-gc-low-threshold=99"])
                    .args(["--make-iptables-util-chains=false", "--read-only-port=0"])
                    .arg(format!("--port={KUBELET_PORT}"))
                    .arg(format!("--healthz-port={KUBELET_HEALTHZ_PORT}"))
                    .arg(format!("--pod-cidr={POD_CIDR}"))
                    .arg("--v=1");
            }
        }
        cmd
    }

    fn spawn(&mut self, component: Component) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir(&format!("logs/{}.log", component.name())))?;
        let child = self
            .command(component)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", component.name()))?;
        fs::write(
            dir(&format!("{}.pid", component.name())),
            child.id().to_string(),
        )?;
        self.procs.push((component, child));
        Ok(())
    }

    fn stop(&mut self, component: Component) {
        if let Some(i) = self.procs.iter().position(|(c, _)| *c == component) {
            let (_, mut child) = self.procs.remove(i);
            terminate(&mut child);
            let _ = fs::remove_file(dir(&format!("{}.pid", component.name())));
        }
    }

    /// Stops and starts one component (its state stays).
    pub fn restart(&mut self, component: Component) -> anyhow::Result<()> {
        self.stop(component);
        self.spawn(component)?;
        if component == Component::Containerd {
            wait_for("containerd", Duration::from_secs(20), || {
                quiet(Command::new("ctr").args(["--address", &containerd_socket(), "version"]))
            })?;
        }
        Ok(())
    }

    pub fn wait_node_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for("node Ready", timeout, || {
            self.kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .is_ok_and(|s| s.trim() == "True")
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        dir("kubeconfig")
    }

    /// `kubectl ARGS` as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(args))
    }

    /// `kubectl ARGS` with `stdin`.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        let mut child = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctr -n k8s.io ARGS` against the cluster's containerd.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ctr")
            .args(["--address", &containerd_socket(), "-n", "k8s.io"])
            .args(args))
    }

    /// The last lines of a component's log.
    pub fn log_tail(&self, component: Component, lines: usize) -> String {
        let text =
            fs::read_to_string(dir(&format!("logs/{}.log", component.name()))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let t0 = Instant::now();
        // The kubelet goes first (it would restart what is stopped below); containers, their
        // sandboxes' namespaces and mounts are removed directly, as after a killed run.
        let order = [
            Component::Kubelet,
            Component::Scheduler,
            Component::ControllerManager,
        ];
        for component in order {
            self.stop(component);
        }
        let procs = std::mem::take(&mut self.procs);
        teardown(&self.netns_before, Some(procs));
        eprintln!("node: torn down in {:.1} s", t0.elapsed().as_secs_f64());
    }
}

fn containerd_socket() -> String {
    format!("{RUN}/containerd/containerd.sock")
}

fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills a process named by a pid file of a previous run, if it still runs that binary.
fn kill_pidfile(path: &Path) {
    let Ok(pid) = fs::read_to_string(path) else {
        return;
    };
    if let Ok(pid) = pid.trim().parse::<i32>() {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = fs::remove_file(path);
}

/// Removes everything the cluster makes. `procs`: the live processes of this run (containerd
/// and the control plane); `None`: a previous run's, found by pid files.
fn teardown(netns_before: &BTreeSet<String>, procs: Option<Vec<(Component, Child)>>) {
    let sock = containerd_socket();
    let ctr = |args: &[&str]| {
        Command::new("ctr")
            .args(["--address", &sock, "-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let kubelet_pid = dir("kubelet.pid");
    kill_pidfile(&kubelet_pid);
    // Leftover containers (the kubelet normally stops them); their ids name go-cni's cache files.
    let mut ids: Vec<String> = Vec::new();
    if Path::new(&sock).exists() {
        ids = ctr(&["containers", "ls", "-q"])
            .lines()
            .map(str::to_owned)
            .collect();
        for task in ctr(&["tasks", "ls", "-q"]).lines() {
            ctr(&["tasks", "kill", "-s", "KILL", task]);
        }
        thread::sleep(Duration::from_millis(500));
        for task in ctr(&["tasks", "ls", "-q"]).lines() {
            ctr(&["tasks", "delete", "-f", task]);
        }
        for container in ctr(&["containers", "ls", "-q"]).lines() {
            ctr(&["containers", "rm", container]);
        }
    }
    match procs {
        Some(procs) => {
            // containerd, then the API server, then etcd.
            let mut procs = procs;
            procs.sort_by_key(|(c, _)| match c {
                Component::Containerd => 0,
                Component::ApiServer => 1,
                _ => 2,
            });
            for (component, mut child) in procs {
                terminate(&mut child);
                let _ = fs::remove_file(dir(&format!("{}.pid", component.name())));
            }
        }
        None => {
            for name in [
                "kube-scheduler",
                "kube-controller-manager",
                "containerd",
                "kube-apiserver",
                "etcd",
            ] {
                kill_pidfile(&dir(&format!("{name}.pid")));
            }
        }
    }
    // containerd-shim processes of our containerd (they outlive it).
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.starts_with("/usr/bin/containerd-shim")
                && cmdline.contains(&sock)
                && let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    // The pods' namespaces: CNI's cni-* that were not there before, whose veth is on our bridge
    // (or whose bridge is gone with a previous run: only cni-* namespaces with no peer left).
    let ours: BTreeSet<String> = netns_names()
        .into_iter()
        .filter(|n| n.starts_with("cni-") && !netns_before.contains(n))
        .collect();
    for ns in &ours {
        if netns_before.is_empty() && !netns_on_bridge(ns) {
            continue;
        }
        let _ = quiet(Command::new("ip").args(["netns", "delete", ns]));
    }
    if let Ok(out) = run(Command::new("ip").args(["-o", "link", "show", "master", BRIDGE])) {
        for line in out.lines() {
            if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) {
                let _ = quiet(Command::new("ip").args(["link", "delete", name]));
            }
        }
    }
    let _ = quiet(Command::new("ip").args(["link", "delete", BRIDGE]));
    // Mounts under our directories (sandbox shm, container rootfs, kubelet volumes), deepest first.
    if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(DIR) || p.starts_with(RUN))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    for root in ["/sys/fs/cgroup"] {
        if let Ok(controllers) = fs::read_dir(root) {
            for c in controllers.flatten() {
                remove_cgroup_tree(&c.path().join("kubepods"));
            }
        }
        remove_cgroup_tree(&Path::new(root).join("kubepods"));
    }
    if let Ok(results) = fs::read_dir("/var/lib/cni/results") {
        for r in results.flatten() {
            let name = r.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{NETWORK}-"))
                || ids.iter().any(|id| name.contains(id.as_str()))
            {
                let _ = fs::remove_file(r.path());
            }
        }
    }
    if let Ok(logs) = fs::read_dir("/var/log/pods") {
        for l in logs.flatten() {
            let name = l.file_name().to_string_lossy().into_owned();
            if ["x_", "y_", "z_", "zt-system_", "default_"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                let _ = fs::remove_dir_all(l.path());
            }
        }
    }
    let _ = fs::remove_dir_all(format!("/sys/fs/bpf/{NETWORK}"));
    let _ = fs::remove_dir_all(RUN);
    let _ = fs::remove_dir_all(DIR);
}

/// Whether a network namespace has a veth whose peer is on our bridge (a previous run's pod).
fn netns_on_bridge(ns: &str) -> bool {
    // A previous run's bridge may be gone already; its namespaces then hold a lone eth0 whose peer
    // vanished with it. Such a namespace is ours if its address is in our pod CIDR.
    run(Command::new("ip").args(["-n", ns, "-o", "-4", "addr", "show"]))
        .is_ok_and(|out| out.contains(&POD_CIDR[..POD_CIDR.len() - 4]))
}

fn remove_cgroup_tree(path: &Path) {
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = fs::remove_dir(path);
}

fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut bytes);
    }
    u128::from_le_bytes(bytes)
}
