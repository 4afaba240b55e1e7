//! A minimal node for the API-server e2e: one network namespace per pod behind a node namespace with
//! no uplink, and real TCP between them. The wiring is `zt_agent::lab::net`'s routed layout, as in
//! the lab:
//!
//! ```text
//!  ztkube-<pid>-pN: eth0 (10.77.0.N/32, default via 169.254.1.1) ══veth══ ztkubeN ─┐
//!                                                     ztkube-<pid>-node: routes /32 per pod,
//!                                                                        forwarding, no uplink
//! ```
//! Neighbours are static, so nothing depends on ARP and the node needs no address of its own. Every
//! namespace is deleted on drop (the veths go with them), also when a test fails.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use zt_agent::lab::{
    net::{self, Config, Netns, PodAddrs},
    state,
};

/// Names carry the process id, so two runs at once never touch each other's namespaces;
/// [`Node::new`] first removes what killed runs left (namespaces and `/sys/fs/bpf/ztkube-PID…`).
fn config() -> Config {
    Config::routed(format!("ztkube-{}", std::process::id()), "ztkube")
}

/// The node namespace of this test process.
pub fn node_ns() -> String {
    config().node_netns()
}

/// Pod `n`'s namespace in this test process.
pub fn pod_ns(n: u8) -> String {
    config().pod_netns(n.into())
}

/// Runs `f` on a thread that has entered network namespace `netns`; sockets it creates stay there.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    Netns::open(netns)
        .and_then(|ns| ns.run(f))
        .unwrap_or_else(|e| panic!("in netns {netns}: {e}"))
}

/// The node namespace and its pods, and the switches of the pods' echo servers.
pub struct Node {
    // Dropped after `drop` has stopped the servers: deletes the namespaces.
    net: net::Node,
    stops: Vec<Arc<AtomicBool>>,
}

impl Node {
    pub fn new() -> Self {
        state::remove_orphans("ztkube");
        let net = net::Node::create(config()).expect("create the node namespace");
        Node {
            net,
            stops: Vec::new(),
        }
    }

    /// Wires pod number `n` (1..=250) at 10.77.0.n, serving TCP echo on `port`.
    pub fn add_pod(&mut self, n: u8, port: u16) {
        let addrs = PodAddrs {
            n: n.into(),
            ipv4: Ipv4Addr::new(10, 77, 0, n),
            ipv6: None,
        };
        let pod = self
            .net
            .add_pod(addrs)
            .unwrap_or_else(|e| panic!("wire pod {n}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        self.stops.push(Arc::clone(&stop));
        serve_echo(&pod.netns, port, stop);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for stop in &self.stops {
            stop.store(true, Ordering::SeqCst);
        }
    }
}

fn serve_echo(netns: &Netns, port: u16, stop: Arc<AtomicBool>) {
    let listener = netns
        .run(|| TcpListener::bind(("0.0.0.0", port)))
        .expect("enter the pod's namespace")
        .expect("bind the echo server");
    listener.set_nonblocking(true).expect("nonblocking");
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    thread::spawn(move || {
                        let _ = conn.set_nonblocking(false);
                        let mut buf = [0u8; 512];
                        while let Ok(n @ 1..) = conn.read(&mut buf) {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
}

/// Opens a TCP connection from `from`'s namespace and checks one echo; `false` if it does not get
/// through within `timeout` (a dropped SYN times out, a reset fails fast).
pub fn probe(from: &str, to: Ipv4Addr, port: u16, timeout: Duration) -> bool {
    in_netns(from, || {
        let Ok(mut conn) = TcpStream::connect_timeout(&SocketAddr::from((to, port)), timeout)
        else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(timeout));
        let mut buf = [0u8; 4];
        conn.write_all(b"ping").is_ok() && conn.read_exact(&mut buf).is_ok() && &buf == b"ping"
    })
}

/// A long-lived connection exchanging a message every 50 ms; any message not echoed within
/// `max_gap` is a failure. It starts established, so it checks conntrack and continuity.
pub struct Flow {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    exchanged: Arc<AtomicU64>,
    worst: Arc<Mutex<Duration>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Flow {
    pub fn open(from: &str, to: Ipv4Addr, port: u16, max_gap: Duration) -> Flow {
        let mut conn = in_netns(from, || {
            TcpStream::connect_timeout(&SocketAddr::from((to, port)), max_gap)
        })
        .unwrap_or_else(|e| panic!("open a flow {from} → {to}:{port}: {e}"));
        conn.set_read_timeout(Some(max_gap)).expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let (failures, exchanged) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let worst = Arc::new(Mutex::new(Duration::ZERO));
        let thread = thread::spawn({
            let (stop, failures, exchanged, worst) = (
                Arc::clone(&stop),
                Arc::clone(&failures),
                Arc::clone(&exchanged),
                Arc::clone(&worst),
            );
            move || {
                let mut buf = [0u8; 8];
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    seq += 1;
                    let ok = conn.write_all(&seq.to_be_bytes()).is_ok()
                        && conn.read_exact(&mut buf).is_ok()
                        && u64::from_be_bytes(buf) == seq;
                    if !ok {
                        failures.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    exchanged.fetch_add(1, Ordering::SeqCst);
                    let took = started.elapsed();
                    let mut worst = worst.lock().expect("not poisoned");
                    *worst = (*worst).max(took);
                    drop(worst);
                    thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Flow {
            stop,
            failures,
            exchanged,
            worst,
            thread: Some(thread),
        }
    }

    /// Messages echoed so far.
    pub fn exchanged(&self) -> u64 {
        self.exchanged.load(Ordering::SeqCst)
    }

    /// Panics if the flow has failed: a message was lost or took longer than `max_gap`.
    pub fn assert_alive(&self, what: &str) {
        assert_eq!(
            self.failures.load(Ordering::SeqCst),
            0,
            "the established flow broke: {what}"
        );
    }

    /// Stops the flow and returns (messages echoed, slowest round trip).
    pub fn finish(mut self, what: &str) -> (u64, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the flow thread does not panic");
        }
        self.assert_alive(what);
        (self.exchanged(), *self.worst.lock().expect("not poisoned"))
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
