//! A real Kubernetes control plane for tests: etcd and kube-apiserver v1.20.2 on loopback ports.
//!
//! ```text
//!  etcd (private data dir) ◀── kube-apiserver (token auth, RBAC, SA keys, --insecure-port=0)
//!                                   ▲ https://127.0.0.1:PORT, its own self-signed serving cert
//!              kubeconfigs: admin (system:masters) and the agent (the DaemonSet's service account)
//! ```
//! There is no controller-manager, scheduler or kubelet: tests set pod status themselves with a
//! status patch, delete pods with a zero grace period, and never wait for a namespace to go away.
//! Everything lives in one temporary directory and is stopped and removed on drop, also when a
//! test fails.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

mod proxy;
pub use proxy::Proxy;

/// The server version the tests are written for (no `endPort`, no automatic
/// `kubernetes.io/metadata.name` namespace label).
pub const KUBE_VERSION: &str = "v1.20.2";

/// The identity the agent runs as in a cluster (deploy/zt-agent.yaml binds its ClusterRole to it).
/// The token file gives this user name to a token, so RBAC treats it as that service account.
pub const AGENT_USER: &str = "system:serviceaccount:zt-system:zt-agent";

const ADMIN_TOKEN: &str = "ztkube-admin-token";
const AGENT_TOKEN: &str = "ztkube-agent-token";
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Who a kubeconfig or client speaks as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum User {
    /// `system:masters`: may do anything.
    Admin,
    /// The agent's service account: only what deploy/zt-agent.yaml's ClusterRole grants.
    Agent,
}

/// etcd and kube-apiserver, running until dropped.
pub struct ApiServer {
    dir: tempfile::TempDir,
    binary: PathBuf,
    etcd: Option<Child>,
    etcd_port: u16,
    apiserver: Option<Child>,
    port: u16,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers `ok`.
    pub fn start() -> anyhow::Result<Self> {
        let binary = find_kube_apiserver()?;
        let dir = tempfile::Builder::new()
            .prefix("ztkube-apiserver.")
            .tempdir()?;
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd = spawn_logged(
            Command::new("etcd").args([
                "--name=ztkube",
                &format!("--data-dir={}", dir.path().join("etcd").display()),
                &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-cluster=ztkube=http://127.0.0.1:{peer_port}"),
                "--log-level=warn",
            ]),
            &dir.path().join("etcd.log"),
        )
        .context("starting etcd (Debian package etcd-server)")?;
        write_credentials(dir.path())?;
        let mut server = ApiServer {
            dir,
            binary,
            etcd: Some(etcd),
            etcd_port,
            apiserver: None,
            port: free_port()?,
        };
        for user in [User::Admin, User::Agent] {
            fs::write(
                server.kubeconfig(user),
                server.kubeconfig_yaml(user, &server.url()),
            )?;
        }
        server.start_apiserver()?;
        Ok(server)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The server's address on the machine's loopback.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Writes a kubeconfig for `user` that reaches the server through `127.0.0.1:port` (a
    /// [`Proxy`] in another network namespace; the serving certificate is valid for any port).
    pub fn kubeconfig_via(&self, user: User, port: u16) -> anyhow::Result<PathBuf> {
        let path = self
            .dir
            .path()
            .join(format!("{user:?}-via-{port}.kubeconfig").to_lowercase());
        fs::write(
            &path,
            self.kubeconfig_yaml(user, &format!("https://127.0.0.1:{port}")),
        )?;
        Ok(path)
    }

    /// A kubeconfig file for `user` (what `KUBECONFIG` points the agent at).
    pub fn kubeconfig(&self, user: User) -> PathBuf {
        self.dir.path().join(match user {
            User::Admin => "admin.kubeconfig",
            User::Agent => "agent.kubeconfig",
        })
    }

    /// A client speaking as `user`, configured from its kubeconfig file.
    pub async fn client(&self, user: User) -> anyhow::Result<kube::Client> {
        client_from(&self.kubeconfig(user)).await
    }

    /// A client speaking as `user` through `127.0.0.1:port` (a [`Proxy`] in this namespace).
    pub async fn client_via(&self, user: User, port: u16) -> anyhow::Result<kube::Client> {
        client_from(&self.kubeconfig_via(user, port)?).await
    }

    /// Runs `kubectl` as the admin and returns its stdout; fails with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs `kubectl` as the admin with `stdin` (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig(User::Admin))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl (Debian package kubernetes-client)")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin is piped")
                .write_all(input.as_bytes())?;
        }
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

    /// Stops kube-apiserver (etcd keeps the data); every watch on it breaks.
    pub fn stop_apiserver(&mut self) {
        if let Some(child) = self.apiserver.take() {
            stop(child);
        }
    }

    /// Starts kube-apiserver again on the same port, with the same certificate and credentials.
    pub fn start_apiserver(&mut self) -> anyhow::Result<()> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let dir = self.dir.path();
        let child = spawn_logged(
            Command::new(&self.binary).args(apiserver_args(dir, self.port, self.etcd_port)),
            &dir.join("kube-apiserver.log"),
        )
        .with_context(|| format!("starting {}", self.binary.display()))?;
        self.apiserver = Some(child);
        self.wait_ready()
    }

    /// Stops and starts kube-apiserver.
    pub fn restart_apiserver(&mut self) -> anyhow::Result<()> {
        self.stop_apiserver();
        self.start_apiserver()
    }

    /// Deletes one key straight from etcd (through its v3 JSON gateway), bypassing the API server:
    /// with the server stopped this is a delete no watch can see, only a re-list.
    /// `key` is the storage path, e.g. `/registry/pods/NAMESPACE/NAME`.
    pub fn etcd_delete(&self, key: &str) -> anyhow::Result<()> {
        let body = format!(r#"{{"key":"{}"}}"#, base64(key.as_bytes()));
        let mut stream = TcpStream::connect(("127.0.0.1", self.etcd_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "POST /v3/kv/deleterange HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 200") || !response.contains(r#""deleted":"1""#) {
            bail!("etcd did not delete {key}: {response}");
        }
        Ok(())
    }

    /// The last lines of kube-apiserver's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("kube-apiserver.log"), 20)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let ca = self.dir.path().join("pki/apiserver.crt");
        loop {
            if let Some(child) = self.apiserver.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("kube-apiserver exited ({status}):\n{}", self.log_tail());
            }
            // The serving certificate appears only once the server has generated it.
            if ca.exists()
                && self
                    .kubectl(&["get", "--raw", "/readyz", "--request-timeout=2s"])
                    .is_ok_and(|r| r == "ok")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn kubeconfig_yaml(&self, user: User, url: &str) -> String {
        let token = match user {
            User::Admin => ADMIN_TOKEN,
            User::Agent => AGENT_TOKEN,
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: ztkube\n  cluster:\n    server: {url}\n    \
             certificate-authority: {ca}\nusers:\n- name: ztkube\n  user:\n    token: {token}\ncontexts:\n\
             - name: ztkube\n  context:\n    cluster: ztkube\n    user: ztkube\ncurrent-context: ztkube\n",
            ca = self.dir.path().join("pki/apiserver.crt").display(),
        )
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(etcd) = self.etcd.take() {
            stop(etcd);
        }
    }
}

async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Where the kube-apiserver binary is, in this order: `KUBE_APISERVER`, the cache
/// (`~/.cache/zt/kube-apiserver-v1.20.2`), `ZT_KUBE_APISERVER_XZ` unpacked into the cache.
/// `cargo xtask e2e kube` builds it from Debian's source (deploy/build-kube-apiserver.sh) when
/// none of these has it; tests do not start a nine-minute build themselves.
pub fn find_kube_apiserver() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBE_APISERVER") {
        return Ok(PathBuf::from(path));
    }
    let cached = cache_path();
    if cached.exists() {
        return Ok(cached);
    }
    if let Some(xz) = std::env::var_os("ZT_KUBE_APISERVER_XZ") {
        unpack_xz(Path::new(&xz), &cached)?;
        return Ok(cached);
    }
    bail!(
        "no kube-apiserver {KUBE_VERSION}: set KUBE_APISERVER or ZT_KUBE_APISERVER_XZ, or run \
         `cargo xtask e2e kube` (it builds one into {})",
        cached.display()
    )
}

fn cache_path() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache
        .join("zt")
        .join(format!("kube-apiserver-{KUBE_VERSION}"))
}

fn unpack_xz(xz: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to.parent().expect("the cache path has a parent"))?;
    // Unpack beside the target and rename, so a concurrent or interrupted run never sees half a file.
    let partial = to.with_extension(format!("partial.{}", std::process::id()));
    let out = fs::File::create(&partial)?;
    let status = Command::new("xz")
        .arg("-dc")
        .arg(xz)
        .stdout(out)
        .status()
        .context("running xz")?;
    if !status.success() {
        let _ = fs::remove_file(&partial);
        bail!("xz -dc {} failed ({status})", xz.display());
    }
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))?;
    fs::rename(&partial, to)?;
    Ok(())
}

fn apiserver_args(dir: &Path, port: u16, etcd_port: u16) -> Vec<String> {
    let path = |name: &str| dir.join(name).display().to_string();
    vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        "--insecure-port=0".into(),
        format!("--cert-dir={}", path("pki")),
        format!("--token-auth-file={}", path("tokens.csv")),
        "--authorization-mode=RBAC".into(),
        format!("--service-account-key-file={}", path("sa.pub")),
        format!("--service-account-signing-key-file={}", path("sa.key")),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        // No controller-manager creates the `default` service accounts the admission plugin wants.
        "--disable-admission-plugins=ServiceAccount".into(),
        "--allow-privileged=true".into(),
        "--enable-priority-and-fairness=false".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

fn write_credentials(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir.join("pki"))?;
    fs::write(
        dir.join("tokens.csv"),
        format!(
            "{ADMIN_TOKEN},zt-admin,zt-admin,\"system:masters\"\n\
             {AGENT_TOKEN},{AGENT_USER},zt-agent,\"system:serviceaccounts,system:serviceaccounts:zt-system\"\n"
        ),
    )?;
    let key = dir.join("sa.key");
    run_quiet(
        Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048"),
    )?;
    run_quiet(
        Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(dir.join("sa.pub")),
    )
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    Ok(cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?)
}

fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// SIGTERM, then SIGKILL if it has not exited within five seconds.
fn stop(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
        }
    }
}
