//! A TCP relay to the API server that listens inside a network namespace, so an agent running in a
//! lab's node namespace (which has no link to the machine) reaches the server on its own loopback.
//! It can also cut every open connection, which breaks every watch at once without touching the
//! server, and refuse new ones for a while (a partition).
//!
//! A socket belongs to the namespace of the thread that created it: the listener is made by a
//! short-lived thread that entered the namespace; the relay threads stay in the test's namespace,
//! so their upstream connections reach the server on the machine's loopback.

use std::{
    fs::File,
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::Context as _;
use nix::sched::{CloneFlags, setns};

pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    refuse: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 inside the named network namespace (`/run/netns/NAME`) and relays to
    /// `upstream` from the caller's namespace.
    pub fn start(netns: &str, upstream: SocketAddr) -> anyhow::Result<Self> {
        let path = format!("/run/netns/{netns}");
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        let listener = thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<TcpListener> {
                    setns(&ns, CloneFlags::CLONE_NEWNET)
                        .context("entering the network namespace")?;
                    Ok(TcpListener::bind("127.0.0.1:0")?)
                })
                .join()
                .expect("the bind thread does not panic")
        })?;
        Self::serve(listener, upstream)
    }

    /// Listens on 127.0.0.1 in the caller's own namespace (to cut an in-process client's watches).
    pub fn start_here(upstream: SocketAddr) -> anyhow::Result<Self> {
        Self::serve(TcpListener::bind("127.0.0.1:0")?, upstream)
    }

    fn serve(listener: TcpListener, upstream: SocketAddr) -> anyhow::Result<Self> {
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let accept = thread::spawn({
            let shared = Arc::clone(&shared);
            move || accept_loop(&listener, upstream, &shared)
        });
        Ok(Proxy {
            port,
            shared,
            accept: Some(accept),
        })
    }

    /// The port on 127.0.0.1 inside the namespace.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every relayed connection now: every watch through the proxy breaks.
    pub fn cut(&self) {
        for stream in self.shared.open.lock().expect("not poisoned").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// While set, new connections are accepted and closed at once.
    pub fn refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.refuse.load(Ordering::SeqCst) {
                    continue;
                }
                // A refused upstream is the server being down on purpose; the client sees a close.
                if let Err(error) = relay(client, upstream, shared)
                    && error.kind() != io::ErrorKind::ConnectionRefused
                {
                    eprintln!("apiserver proxy: {error}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(error) => eprintln!("apiserver proxy: accept: {error}"),
        }
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, shared: &Arc<Shared>) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    shared
        .open
        .lock()
        .expect("not poisoned")
        .extend([client.try_clone()?, server.try_clone()?]);
    for (mut from, mut to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        });
    }
    Ok(())
}
