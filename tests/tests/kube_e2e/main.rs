//! The agent with `--source kube` against a real kube-apiserver, checked with real packets between
//! pods in network namespaces: policies created, edited and deleted take effect; pods added, removed
//! and relabelled take effect; an API-server restart and a cut watch heal with no enforcement gap;
//! an agent restart under traffic loses no established allowed flow.
//!
//! The agent runs in the node namespace (which has no link to the machine) and reaches the API
//! server through a [`Proxy`]; the test drives the API server directly as the admin. Root only.

mod netlab;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use netlab::{Flow, Node, in_netns, node_ns, pod_ns, probe};
use serde_json::json;
use zt_tests::apiserver::{ApiServer, Proxy, User};

const NS: &str = "ztkube-e2e";
const PORT: u16 = 80;
/// This process's bpffs pin dir (reaped with the namespaces when a killed run left it).
fn pin_root() -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/ztkube-{}", std::process::id()))
}
const AGENT_LISTEN: &str = "127.0.0.1:9990";
/// How long a change may take to be enforced (watch delivery + compile + map writes).
const CONVERGE: Duration = Duration::from_secs(20);
/// A denied probe is a SYN nobody answers: this is how long we wait to call it denied.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// Polling for a change uses shorter probes, so the figures resolve to about this much; a denial
/// seen this way is confirmed with a full-length probe before it counts.
const POLL_TIMEOUT: Duration = Duration::from_millis(250);

/// The agent process, in the node namespace; killed and unpinned on drop.
struct Agent {
    child: Option<Child>,
    kubeconfig: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(kubeconfig: PathBuf, log: PathBuf) -> Agent {
        let mut agent = Agent {
            child: None,
            kubeconfig,
            log,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        // nsenter switches only the network namespace: the agent keeps the machine's bpffs.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node_ns()))
            .arg(zt_agent::lab::agent::binary().expect("the zt-agent binary"))
            .args([
                "run",
                "--source",
                "kube",
                "--node-name",
                "ztkube-node",
                "--pin-root",
                &pin_root().display().to_string(),
            ])
            .args(["--listen", AGENT_LISTEN])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start zt-agent");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !readyz() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("zt-agent exited ({status}):\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "zt-agent not ready in 60 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM (what a rolling update sends), waits for the exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(pin_root());
        // A failed test keeps the log (its tail is in the panic message; the rest is on disk).
        if !std::thread::panicking() {
            let _ = fs::remove_file(&self.log);
        }
    }
}

/// `GET /readyz` on the agent, from inside the node namespace.
fn readyz() -> bool {
    in_netns(&node_ns(), || {
        let Ok(mut conn) =
            TcpStream::connect_timeout(&AGENT_LISTEN.parse().unwrap(), Duration::from_millis(200))
        else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut response = String::new();
        conn.write_all(request.as_bytes()).is_ok()
            && conn.read_to_string(&mut response).is_ok()
            && response.starts_with("HTTP/1.1 200")
    })
}

/// Everything one test needs: the API server, the node with its pods, the proxy and the agent.
/// Field order is drop order: the agent goes first, the API server last.
struct E2e {
    agent: Agent,
    proxy: Proxy,
    node: Node,
    pods: Api<Pod>,
    policies: Api<NetworkPolicy>,
    server: ApiServer,
}

/// Pod number → (name, label app=…). Pod n sits at 10.77.0.n.
const WEB: (u8, &str, &str) = (1, "web", "web");
const CLIENT: (u8, &str, &str) = (2, "client", "client");
const OTHER: (u8, &str, &str) = (3, "other", "other");

fn pod_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, n)
}

impl E2e {
    async fn start(pods: &[(u8, &str, &str)]) -> E2e {
        assert!(
            nix::unistd::geteuid().is_root(),
            "kube_e2e needs root (eBPF, network namespaces)"
        );
        let server = ApiServer::start().expect("start the API server");
        let manifest = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/zt-agent.yaml"),
        )
        .expect("read deploy/zt-agent.yaml");
        server
            .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest))
            .expect("apply the agent's RBAC");
        let admin = server.client(User::Admin).await.expect("admin client");
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": NS, "labels": {"name": NS}}}))
                .unwrap();
        Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let mut node = Node::new();
        let proxy = Proxy::start(&node_ns(), server.addr()).expect("start the proxy");
        let kubeconfig = server
            .kubeconfig_via(User::Agent, proxy.port())
            .expect("agent kubeconfig");
        let _ = fs::remove_dir_all(pin_root());
        let pods_api = Api::namespaced(admin.clone(), NS);
        for &(n, name, app) in pods {
            node.add_pod(n, PORT);
            create_pod(&pods_api, n, name, app).await;
        }
        let log = std::env::temp_dir().join(format!("ztkube-agent-{}.log", std::process::id()));
        let _ = fs::remove_file(&log);
        let agent = Agent::start(kubeconfig, log);
        E2e {
            agent,
            proxy,
            node,
            pods: pods_api,
            policies: Api::namespaced(admin, NS),
            server,
        }
    }

    async fn apply_policy(&self, name: &str, target_app: &str, from_app: &str) {
        let policy: NetworkPolicy = serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name},
            "spec": {"podSelector": {"matchLabels": {"app": target_app}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from_app}}}],
                                  "ports": [{"port": PORT, "protocol": "TCP"}]}]},
        }))
        .unwrap();
        let params = PatchParams::apply("ztkube-e2e").force();
        self.policies
            .patch(name, &params, &Patch::Apply(&policy))
            .await
            .expect("apply policy");
    }

    /// Waits until `from → to` is `allowed`, and returns how long that took (to within
    /// [`POLL_TIMEOUT`]).
    fn eventually(&self, from: (u8, &str, &str), to: (u8, &str, &str), allowed: bool) -> Duration {
        let started = Instant::now();
        loop {
            if probe(&pod_ns(from.0), pod_ip(to.0), PORT, POLL_TIMEOUT) == allowed {
                let took = started.elapsed();
                if allowed || !probe(&pod_ns(from.0), pod_ip(to.0), PORT, PROBE_TIMEOUT) {
                    return took;
                }
            }
            if started.elapsed() > CONVERGE {
                panic!(
                    "{} → {} still {} after {CONVERGE:?}; agent log:\n{}",
                    from.1,
                    to.1,
                    if allowed { "denied" } else { "allowed" },
                    self.agent.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `from → to` is `allowed` right now (no waiting for convergence).
    fn now(&self, from: (u8, &str, &str), to: (u8, &str, &str), allowed: bool, when: &str) {
        let got = probe(&pod_ns(from.0), pod_ip(to.0), PORT, PROBE_TIMEOUT);
        assert_eq!(
            got,
            allowed,
            "{} → {} {when}; agent log:\n{}",
            from.1,
            to.1,
            self.agent.log_tail()
        );
    }
}

/// A pod bound to the lab's node, with the address its namespace has (set as a kubelet would).
async fn create_pod(pods: &Api<Pod>, n: u8, name: &str, app: &str) {
    create_pod_on(pods, "ztkube-node", n, name, app).await;
}

/// A pod bound to `node`: another node's pods are peers only (this agent enforces none of their rules).
async fn create_pod_on(pods: &Api<Pod>, node: &str, n: u8, name: &str, app: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none",
                 "ports": [{"name": "echo", "containerPort": PORT, "protocol": "TCP"}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let ip = pod_ip(n).to_string();
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("set pod status");
}

fn report(what: &str, took: Duration) {
    eprintln!("figure: {what}: {} ms", took.as_millis());
}

#[test]
fn the_lab_passes_traffic_between_pods_and_nowhere_else_without_an_agent() {
    let mut node = Node::new();
    for n in [1, 2] {
        node.add_pod(n, PORT);
    }
    assert!(
        probe(&pod_ns(1), pod_ip(2), PORT, PROBE_TIMEOUT),
        "pod 1 → pod 2"
    );
    assert!(
        probe(&pod_ns(2), pod_ip(1), PORT, PROBE_TIMEOUT),
        "pod 2 → pod 1"
    );
    assert!(
        !probe(&pod_ns(1), pod_ip(2), PORT + 1, PROBE_TIMEOUT),
        "nothing listens on another port"
    );
    assert!(
        !probe(&pod_ns(1), pod_ip(9), PORT, PROBE_TIMEOUT),
        "no pod 9"
    );
    let routes = Command::new("ip")
        .args(["-n", &node_ns(), "route", "show", "default"])
        .output()
        .unwrap();
    assert!(
        routes.status.success() && routes.stdout.is_empty(),
        "the node namespace has no uplink"
    );
    let flow = Flow::open(&pod_ns(1), pod_ip(2), PORT, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(500));
    let (exchanged, _) = flow.finish("an idle lab");
    assert!(exchanged >= 5, "{exchanged} echoes in 500 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_created_edited_and_deleted_take_effect() {
    let e2e = E2e::start(&[WEB, CLIENT, OTHER]).await;
    // No policy selects web: it is not isolated.
    e2e.eventually(CLIENT, WEB, true);
    e2e.eventually(OTHER, WEB, true);

    e2e.apply_policy("web-ingress", "web", "client").await;
    report("policy create enforced", e2e.eventually(OTHER, WEB, false));
    e2e.now(CLIENT, WEB, true, "allowed by the new policy");
    e2e.now(WEB, CLIENT, true, "client is selected by no policy");

    e2e.apply_policy("web-ingress", "web", "other").await;
    report("policy edit enforced", e2e.eventually(CLIENT, WEB, false));
    e2e.eventually(OTHER, WEB, true);

    e2e.policies
        .delete("web-ingress", &DeleteParams::default())
        .await
        .expect("delete policy");
    report("policy delete enforced", e2e.eventually(CLIENT, WEB, true));
    e2e.now(OTHER, WEB, true, "no policy left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_added_removed_and_relabelled_take_effect() {
    let mut e2e = E2e::start(&[WEB, CLIENT]).await;
    e2e.apply_policy("web-ingress", "web", "client").await;
    e2e.eventually(CLIENT, WEB, true);

    // A new pod: an unknown address is no client.
    e2e.node.add_pod(OTHER.0, PORT);
    create_pod(&e2e.pods, OTHER.0, OTHER.1, OTHER.2).await;
    e2e.eventually(OTHER, WEB, false);
    e2e.eventually(WEB, OTHER, true);

    let relabel = json!({"metadata": {"labels": {"app": "client"}}});
    e2e.pods
        .patch(OTHER.1, &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .expect("relabel");
    report("pod relabel enforced", e2e.eventually(OTHER, WEB, true));
    let relabel = json!({"metadata": {"labels": {"app": "other"}}});
    e2e.pods
        .patch(OTHER.1, &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .expect("relabel back");
    e2e.eventually(OTHER, WEB, false);

    // The client pod object goes away (its namespace stays): its address is nobody's any more.
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    e2e.pods.delete(CLIENT.1, &now).await.expect("delete pod");
    report("pod delete enforced", e2e.eventually(CLIENT, WEB, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_and_cut_watches_heal_without_a_gap() {
    let mut e2e = E2e::start(&[WEB, CLIENT, OTHER]).await;
    e2e.apply_policy("web-ingress", "web", "client").await;
    e2e.eventually(OTHER, WEB, false);
    e2e.eventually(CLIENT, WEB, true);
    let flow = Flow::open(
        &pod_ns(CLIENT.0),
        pod_ip(WEB.0),
        PORT,
        Duration::from_secs(1),
    );

    // The API server goes away: enforcement goes on unchanged.
    e2e.server.stop_apiserver();
    std::thread::sleep(Duration::from_secs(2));
    e2e.now(OTHER, WEB, false, "while the API server is down");
    e2e.now(CLIENT, WEB, true, "while the API server is down");
    e2e.server
        .start_apiserver()
        .expect("restart the API server");
    flow.assert_alive("across the API-server restart");

    // The agent follows changes again once it has reconnected.
    e2e.apply_policy("web-ingress", "web", "other").await;
    report(
        "change after an API-server restart enforced",
        e2e.eventually(OTHER, WEB, true),
    );
    e2e.eventually(CLIENT, WEB, false);
    drop(flow);

    // Cut every watch and keep the agent partitioned while the policy changes back.
    e2e.apply_policy("web-ingress", "web", "client").await;
    e2e.eventually(CLIENT, WEB, true);
    let flow = Flow::open(
        &pod_ns(CLIENT.0),
        pod_ip(WEB.0),
        PORT,
        Duration::from_secs(1),
    );
    e2e.proxy.refuse(true);
    e2e.proxy.cut();
    e2e.apply_policy("web-ingress", "web", "other").await;
    std::thread::sleep(Duration::from_secs(2));
    e2e.now(
        OTHER,
        WEB,
        false,
        "while partitioned: the last known policy still holds",
    );
    flow.assert_alive("while partitioned");
    let (exchanged, worst) = flow.finish("across the cut");
    assert!(
        exchanged > 10,
        "the flow exchanged only {exchanged} messages"
    );
    eprintln!(
        "figure: established flow across restart and cut: {exchanged} echoes, slowest {} ms",
        worst.as_millis()
    );
    let healed = Instant::now();
    e2e.proxy.refuse(false);
    e2e.eventually(OTHER, WEB, true);
    report(
        "heal after a cut watch (partition end → change enforced)",
        healed.elapsed(),
    );
    e2e.now(CLIENT, WEB, false, "after the heal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_under_traffic_loses_no_established_allowed_flow() {
    let mut e2e = E2e::start(&[WEB, CLIENT, OTHER]).await;
    e2e.apply_policy("web-ingress", "web", "client").await;
    e2e.eventually(OTHER, WEB, false);
    e2e.eventually(CLIENT, WEB, true);
    let flow = Flow::open(
        &pod_ns(CLIENT.0),
        pod_ip(WEB.0),
        PORT,
        Duration::from_secs(1),
    );
    std::thread::sleep(Duration::from_millis(500));

    e2e.agent.stop();
    e2e.now(
        OTHER,
        WEB,
        false,
        "with no agent running: pinned programs keep enforcing",
    );
    e2e.now(CLIENT, WEB, true, "with no agent running");
    let restarted = Instant::now();
    e2e.agent.spawn();
    report("agent restart to ready", restarted.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    e2e.now(OTHER, WEB, false, "after the agent restart");
    e2e.now(CLIENT, WEB, true, "after the agent restart");
    e2e.agent.restart();
    std::thread::sleep(Duration::from_secs(1));
    let (exchanged, worst) = flow.finish("across two agent restarts");
    eprintln!(
        "figure: established flow across two agent restarts: {exchanged} echoes, slowest {} ms",
        worst.as_millis()
    );
    e2e.now(OTHER, WEB, false, "after the second restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_other_nodes_are_peers_by_their_labels_and_not_enforced_here() {
    let mut e2e = E2e::start(&[WEB]).await;
    e2e.apply_policy("web-ingress", "web", "client").await;
    const REMOTE_CLIENT: (u8, &str, &str) = (4, "remote-client", "client");
    const REMOTE_OTHER: (u8, &str, &str) = (5, "remote-other", "other");
    for (n, name, app) in [REMOTE_CLIENT, REMOTE_OTHER] {
        e2e.node.add_pod(n, PORT);
        create_pod_on(&e2e.pods, "ztkube-remote", n, name, app).await;
    }
    e2e.eventually(REMOTE_CLIENT, WEB, true);
    e2e.eventually(REMOTE_OTHER, WEB, false);

    // A policy isolating the remote pod is its own node's to enforce, not this one's.
    let deny: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "other-deny-all"},
        "spec": {"podSelector": {"matchLabels": {"app": "other"}}, "policyTypes": ["Ingress"]},
    }))
    .unwrap();
    e2e.policies
        .create(&PostParams::default(), &deny)
        .await
        .expect("create deny-all");
    std::thread::sleep(Duration::from_secs(1));
    e2e.now(
        WEB,
        REMOTE_OTHER,
        true,
        "a remote pod's ingress is enforced on its own node",
    );
    e2e.now(REMOTE_OTHER, WEB, false, "still not a client");

    // Relabelled on its node, the remote pod becomes a client here.
    let relabel = json!({"metadata": {"labels": {"app": "client"}}});
    e2e.pods
        .patch(
            REMOTE_OTHER.1,
            &PatchParams::default(),
            &Patch::Merge(&relabel),
        )
        .await
        .expect("relabel");
    report(
        "remote pod relabel enforced",
        e2e.eventually(REMOTE_OTHER, WEB, true),
    );
}
