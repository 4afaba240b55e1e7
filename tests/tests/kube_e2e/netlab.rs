//! A minimal node for the API-server e2e: one network namespace per pod behind a node namespace with
//! no uplink, and real TCP between them.
//!
//! ```text
//!  ztkube-pN: eth0 (10.77.0.N/32, default via 169.254.1.1) ══veth══ ztkubeNh ─┐
//!                                                                ztkube-node: routes /32 per pod,
//!                                                                             forwarding, no uplink
//! ```
//! Neighbours are static, so nothing depends on ARP and the node needs no address of its own. Every
//! namespace is deleted on drop (the veths go with them), also when a test fails.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

/// The node namespace of this test process. Names carry the process id, so two runs at once
/// never touch each other's namespaces; [`reap_dead_runs`] removes what killed runs left.
pub fn node_ns() -> String {
    format!("ztkube-{}-node", std::process::id())
}

/// Pod `n`'s namespace in this test process.
pub fn pod_ns(n: u8) -> String {
    format!("ztkube-{}-p{n}", std::process::id())
}

/// Deletes the namespaces and bpffs pin dirs (`/sys/fs/bpf/ztkube-PID…`) of runs whose process is
/// gone.
pub fn reap_dead_runs() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix("ztkube-") else {
            return false;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !pid.is_empty() && !Path::new("/proc").join(&pid).exists()
    };
    for (dir, is_netns) in [("/run/netns", true), ("/sys/fs/bpf", false)] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
            if dead(&name) {
                if is_netns {
                    ip_quiet(&["netns", "del", &name]);
                } else {
                    let _ = std::fs::remove_dir_all(Path::new(dir).join(&name));
                }
            }
        }
    }
}
const GATEWAY: &str = "169.254.1.1";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `f` on a thread that has entered network namespace `netns`; sockets it creates stay there.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(format!("/run/netns/{netns}"))
        .unwrap_or_else(|e| panic!("open netns {netns}: {e}"));
    thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("the netns thread does not panic")
    })
}

/// One pod's namespace and the switch of its echo server.
struct PodNet {
    netns: String,
    stop: Arc<AtomicBool>,
}

/// The node namespace and its pods.
pub struct Node {
    pods: Vec<PodNet>,
}

impl Node {
    pub fn new() -> Self {
        reap_dead_runs();
        let node = node_ns();
        ip_quiet(&["netns", "del", &node]);
        ip(&["netns", "add", &node]);
        ip(&["-n", &node, "link", "set", "lo", "up"]);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .args([
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ])
            .output()
            .expect("sysctl");
        assert!(
            out.status.success(),
            "sysctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Node { pods: Vec::new() }
    }

    /// Wires pod number `n` (1..=250) at 10.77.0.n, serving TCP echo on `port`.
    pub fn add_pod(&mut self, n: u8, port: u16) {
        let node = node_ns();
        let netns = pod_ns(n);
        let host_if = format!("ztkube{n}h");
        let ip4 = Ipv4Addr::new(10, 77, 0, n);
        let (host_mac, pod_mac) = (
            format!("02:7a:6b:00:{n:02x}:01"),
            format!("02:7a:6b:00:{n:02x}:02"),
        );
        ip_quiet(&["netns", "del", &netns]);
        ip(&["netns", "add", &netns]);
        let stop = Arc::new(AtomicBool::new(false));
        self.pods.push(PodNet {
            netns: netns.clone(),
            stop: Arc::clone(&stop),
        });
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &node, "link", "add", &host_if, "address", &host_mac, "type", "veth", "peer",
            "name", "eth0", "address", &pod_mac, "netns", &netns,
        ]);
        ip(&["-n", &node, "link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip4}/32"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "route", "add", GATEWAY, "dev", "eth0"]);
        ip(&[
            "-n", &netns, "route", "add", "default", "via", GATEWAY, "dev", "eth0",
        ]);
        ip(&[
            "-n",
            &netns,
            "neigh",
            "replace",
            GATEWAY,
            "lladdr",
            &host_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            &node,
            "route",
            "add",
            &format!("{ip4}/32"),
            "dev",
            &host_if,
        ]);
        ip(&[
            "-n",
            &node,
            "neigh",
            "replace",
            &ip4.to_string(),
            "lladdr",
            &pod_mac,
            "dev",
            &host_if,
            "nud",
            "permanent",
        ]);
        serve_echo(&netns, port, stop);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for pod in &self.pods {
            pod.stop.store(true, Ordering::SeqCst);
            ip_quiet(&["netns", "del", &pod.netns]);
        }
        ip_quiet(&["netns", "del", &node_ns()]);
    }
}

fn serve_echo(netns: &str, port: u16, stop: Arc<AtomicBool>) {
    let listener = in_netns(netns, || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind the echo server")
    });
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
