//! The control socket: a Unix socket only root can open (mode 0600 and the peer's uid checked
//! with SO_PEERCRED), serving `zt-agent explain` (one JSON line each way, `explain::wire`).
//!
//! The socket task never touches the maps or the compiler: it hands each request to the
//! control loop, which answers between two turns from its index, its compiler and the maps
//! read back from the kernel. A socket that cannot be served is logged, never fatal:
//! enforcement does not depend on it.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::explain::wire::{Reply, Request};

/// A request and where its reply goes.
pub type Asked = (Request, oneshot::Sender<Reply>);

/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// Binds `path` (its directory created, a stale socket of a dead agent replaced, mode 0600).
/// An error when another process serves it.
pub async fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!("{}: another agent serves it", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(listener)
}

/// Accepts connections until the process ends; each is answered on its own task.
pub async fn serve(listener: UnixListener, path: PathBuf, to_control: mpsc::Sender<Asked>) {
    tracing::info!(socket = %path.display(), "serving explain on the control socket (root only)");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "control socket: accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid());
        if uid.as_ref().ok() != Some(&0) {
            tracing::warn!(?uid, "control socket: refused a client that is not root");
            continue; // dropping the stream closes it without an answer
        }
        tokio::spawn(answer(stream, to_control.clone()));
    }
}

async fn answer(stream: UnixStream, to_control: mpsc::Sender<Asked>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let reply = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Reply::Error("no request within 5 s".into()),
        Ok(Err(e)) => Reply::Error(format!("reading the request: {e}")),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply::Error(format!("not a request ({e})")),
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if to_control.send((request, tx)).await.is_err() {
                    Reply::Error("the agent is stopping".into())
                } else {
                    rx.await
                        .unwrap_or_else(|_| Reply::Error("the agent dropped the request".into()))
                }
            }
        },
    };
    let mut text = serde_json::to_string(&reply).expect("a reply serializes");
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}
