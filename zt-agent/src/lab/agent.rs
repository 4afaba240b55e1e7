//! The real agent, `zt-agent run --source dir:…`, started in the lab's node namespace (network
//! namespace only, through `nsenter`, so it keeps the machine's bpffs) and asked over HTTP whether
//! it is ready.

use std::{
    fs::OpenOptions,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{net::Netns, state};
use crate::error::{Error, Result};

/// Where the agent serves /readyz and /metrics, inside the node namespace (private to the run).
pub const LISTEN: &str = "127.0.0.1:9990";

/// The agent binary: `$ZT_AGENT_BIN`, this executable when it is zt-agent, or `zt-agent` in the
/// cargo target dir this executable was built into (tests live in `target/<profile>/deps`).
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ZT_AGENT_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("current_exe: {e}")))?;
    if exe.file_name().is_some_and(|n| n == "zt-agent") {
        return Ok(exe);
    }
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("zt-agent"))
        .collect::<Vec<_>>();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            Error::Other(format!(
                "no zt-agent binary next to {} (run `cargo build -p zt-agent` or set ZT_AGENT_BIN)",
                exe.display()
            ))
        })
}

/// A running agent; dropping it stops it (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Agent {
    child: Child,
    pub log: PathBuf,
}

impl Agent {
    /// Starts the agent on `manifests` in `node`, logging to `log`.
    pub fn start(
        node: &Netns,
        manifests: &Path,
        pin_root: &Path,
        log: PathBuf,
        signals: Option<nix::sys::signal::SigSet>,
    ) -> Result<Self> {
        let binary = binary()?;
        let io = |source| Error::Io {
            path: log.clone(),
            source,
        };
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", node.name))
            .arg(&binary)
            .args(["run", "--source"])
            .arg(format!("dir:{}", manifests.display()))
            .arg("--pin-root")
            .arg(pin_root)
            .args(["--listen", LISTEN])
            .arg("--control-socket")
            .arg(control_socket(&log))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = state::with_signals_unblocked(signals, || cmd.spawn())
            .map_err(|e| Error::Other(format!("cannot start nsenter {}: {e}", binary.display())))?;
        Ok(Self { child, log })
    }

    /// The agent's control socket (next to its log, in the lab's workdir).
    pub fn control_socket(&self) -> PathBuf {
        control_socket(&self.log)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until /readyz answers 200; fails with the log's tail if the agent exits or times out.
    pub fn wait_ready(&mut self, node: &Netns, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if get(node, "/readyz").is_some_and(|(status, _)| status == 200) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Other(format!(
                    "the agent exited ({status}); its log ({}):\n{}",
                    self.log.display(),
                    self.log_tail(30)
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "the agent was not ready within {timeout:?}; its log ({}):\n{}",
                    self.log.display(),
                    self.log_tail(30)
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of the agent's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(process) = state::Process::of(self.child.id()) {
            state::stop_process(process);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on the agent from inside the node namespace: (status, body).
pub fn get(node: &Netns, path: &str) -> Option<(u16, String)> {
    node.run(|| {
        let addr: SocketAddr = LISTEN.parse().expect("a literal address");
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    })
    .ok()
    .flatten()
}

fn control_socket(log: &Path) -> PathBuf {
    log.with_file_name("control.sock")
}
