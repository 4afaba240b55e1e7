//! zt on a real Kubernetes node (`cargo xtask e2e node`, root): the image and the manifests of
//! deploy/, run by a kubelet, enforcing on pods that containerd and the CNI bridge plugin created.
//!
//! One cluster ([`zt_tests::node::Node`]) for every check, in order; each check is a step of the
//! story and later ones build on earlier ones (the agent deployed, the pods running). A failed
//! check is reported and the rest still run; the cluster is torn down at the end in any case.
//! Prints `N passed, M failed`.
//!
//! Inputs (set by xtask): `ZT_KUBE_BIN_DIR` (the Kubernetes binaries), `ZT_NODE_PAUSE_TAR`,
//! `ZT_NODE_AGNHOST_TAR`, `ZT_NODE_AGENT_TAR` and `ZT_NODE_AGENT_TAR_NEXT` (the agent image under
//! a second tag, for the rollout), `ZT_NODE_AGENT_TAG[_NEXT]`, `ZT_DEPLOY_DIR` (deploy/).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use zt_agent::lab::Protocol;
use zt_tests::{
    lab_support::{Flow, NAMESPACES, PODS, all_flows},
    node::{APISERVER_PORT, Bins, Component, DIR, Node},
};

const CONVERGE: Duration = Duration::from_secs(30);
const AGENT_PIN_ROOT: &str = "/sys/fs/bpf/zt-node";

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set (run `cargo xtask e2e node`)"))
}

fn main() {
    // `cargo test -p zt-tests` runs every target: this one only means something with the cluster's
    // inputs, which `cargo xtask e2e node` provides.
    if std::env::var_os("ZT_NODE_AGENT_TAR").is_none() {
        eprintln!("node_e2e: skipped (run it with `sudo cargo xtask e2e node`)");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("node_e2e needs root (it runs a kubelet and containerd)");
        std::process::exit(2);
    }
    let setup = || -> anyhow::Result<Node> {
        let images = [
            PathBuf::from(env("ZT_NODE_AGNHOST_TAR")?),
            PathBuf::from(env("ZT_NODE_AGENT_TAR")?),
            PathBuf::from(env("ZT_NODE_AGENT_TAR_NEXT")?),
        ];
        Node::up(Bins::from_env()?, &images)
    };
    let node = match setup() {
        Ok(node) => node,
        Err(error) => {
            eprintln!("the node did not come up: {error:#}");
            println!("0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    let mut suite = Suite {
        node,
        ips: BTreeMap::new(),
        passed: 0,
        failed: Vec::new(),
    };
    suite.check(
        "the agent DaemonSet becomes Ready (kubectl apply -k)",
        Suite::deploy,
    );
    suite.check("pods x/y/z × a/b/c run and are attached", Suite::pods);
    suite.check("no policy: every flow allowed", |s| {
        s.matrix("no policy", "", &|_| true)
    });
    suite.check("default deny ingress in x", |s| {
        s.matrix("deny all ingress in x", DENY_ALL_INGRESS_X, &|f| {
            f.to_ns != "x"
        })
    });
    suite.check("allow x/a from namespace y", |s| {
        s.matrix("x/a from namespace y", ALLOW_X_A_FROM_Y, &|f| {
            !f.to("x", "a") || f.from_ns == "y"
        })
    });
    suite.check("named port serve-80-tcp on x/a", |s| {
        s.matrix("x/a only on serve-80-tcp", NAMED_PORT, &|f| {
            !f.to("x", "a") || f.tcp(80)
        })
    });
    suite.check("egress of x/a only to namespace y", |s| {
        s.matrix("x/a to namespace y only", EGRESS_TO_Y, &|f| {
            !f.from("x", "a") || f.to_ns == "y"
        })
    });
    suite.check("namespace AND pod selector in one peer", |s| {
        s.matrix("x/a from y/b only", AND_PEER, &|f| {
            !f.to("x", "a") || f.from("y", "b")
        })
    });
    suite.check(
        "agent resource use (for requests and limits)",
        Suite::resources,
    );
    suite.check(
        "continuity: agent pod deleted, DaemonSet rolled to a new tag, kubelet and containerd restarted",
        Suite::continuity,
    );
    suite.check(
        "a pod created while the agent is down is enforced once it is back",
        Suite::pod_while_down,
    );
    suite.check(
        "each added capability is needed (the agent fails without it)",
        Suite::capabilities,
    );
    let Suite {
        node,
        passed,
        failed,
        ..
    } = suite;
    drop(node);
    for name in &failed {
        eprintln!("FAILED: {name}");
    }
    println!("{passed} passed, {} failed", failed.len());
    std::process::exit(if failed.is_empty() { 0 } else { 1 });
}

struct Suite {
    node: Node,
    /// Pod name (`ns/pod`) → address.
    ips: BTreeMap<String, String>,
    passed: usize,
    failed: Vec<String>,
}

impl Suite {
    fn check(&mut self, name: &str, f: impl FnOnce(&mut Suite) -> anyhow::Result<()>) {
        eprintln!("\n== {name}");
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| f(self)));
        let secs = t0.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(())) => {
                println!("check {name} ... ok ({secs:.1} s)");
                self.passed += 1;
            }
            Ok(Err(error)) => {
                println!("check {name} ... FAILED ({secs:.1} s): {error:#}");
                eprintln!("agent log tail:\n{}", self.agent_log_tail());
                self.failed.push(name.into());
            }
            Err(_) => {
                println!("check {name} ... FAILED ({secs:.1} s): panicked");
                self.failed.push(name.into());
            }
        }
    }

    fn agent_log_tail(&self) -> String {
        self.node
            .kubectl(&["-n", "zt-system", "logs", "ds/zt-agent", "--tail=30"])
            .unwrap_or_else(|e| format!("(no agent log: {e})"))
    }

    /// `kubectl apply -k` of an overlay that is deploy/ plus what this node needs: the API server
    /// on loopback (this node runs no kube-proxy), the pin root of this test, the image tag.
    fn deploy(&mut self) -> anyhow::Result<()> {
        self.apply_agent(&env("ZT_NODE_AGENT_TAG")?)?;
        self.wait_agent_ready(Duration::from_secs(120))?;
        let pod = self.agent_pod()?;
        // The pod runs as the manifest says: not privileged, read-only root, seccomp.
        let spec = self
            .node
            .kubectl(&["-n", "zt-system", "get", "pod", &pod, "-o", "json"])?;
        let spec: serde_json::Value = serde_json::from_str(&spec)?;
        let sc = &spec["spec"]["containers"][0]["securityContext"];
        ensure!(
            sc["privileged"] == false && sc["readOnlyRootFilesystem"] == true,
            "{sc}"
        );
        ensure!(spec["spec"]["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault");
        let metrics = self.agent_metrics()?;
        ensure!(
            metrics.contains("zt_agent_ready 1"),
            "zt_agent_ready is not 1"
        );
        Ok(())
    }

    fn apply_agent(&self, tag: &str) -> anyhow::Result<()> {
        // kustomize takes resources by relative path only.
        let deploy = format!("../../..{}", env("ZT_DEPLOY_DIR")?);
        let overlay = Path::new(DIR).join("overlay");
        fs::create_dir_all(&overlay)?;
        fs::write(
            overlay.join("kustomization.yaml"),
            format!(
                r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: ["{deploy}"]
images: [{{name: ghcr.io/zt-dev/zt-agent, newTag: "{tag}"}}]
patches:
  - target: {{kind: DaemonSet, name: zt-agent}}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KUBERNETES_SERVICE_PORT, value: "{APISERVER_PORT}"}}
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --pin-root={AGENT_PIN_ROOT}
"#
            ),
        )?;
        self.node
            .kubectl(&["apply", "-k", &overlay.display().to_string()])?;
        Ok(())
    }

    fn wait_agent_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        self.node.kubectl(&[
            "-n",
            "zt-system",
            "rollout",
            "status",
            "ds/zt-agent",
            &format!("--timeout={}s", timeout.as_secs()),
        ])?;
        let t0 = Instant::now();
        loop {
            let ready = self.node.kubectl(&[
                "-n",
                "zt-system",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=agent",
                "-o",
                "jsonpath={range .items[*]}{.metadata.deletionTimestamp}/{.status.conditions[?(@.type==\"Ready\")].status} {end}",
            ])?;
            let states: Vec<&str> = ready.split_whitespace().collect();
            if states == ["/True"] {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!("agent pod not Ready: {ready}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn agent_pod(&self) -> anyhow::Result<String> {
        let name = self.node.kubectl(&[
            "-n",
            "zt-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=agent",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?;
        Ok(name
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned())
    }

    /// /metrics, from the node's loopback (where the agent listens).
    fn agent_metrics(&self) -> anyhow::Result<String> {
        zt_tests::node::run(std::process::Command::new("curl").args([
            "-sf",
            "--max-time",
            "2",
            "http://127.0.0.1:9990/metrics",
        ]))
    }

    fn pods(&mut self) -> anyhow::Result<()> {
        self.node
            .kubectl_stdin(&["apply", "-f", "-"], &cluster_yaml())?;
        self.node.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "--all",
            "-n",
            "x",
            "--timeout=180s",
        ])?;
        for ns in ["y", "z"] {
            self.node.kubectl(&[
                "wait",
                "--for=condition=Ready",
                "pod",
                "--all",
                "-n",
                ns,
                "--timeout=120s",
            ])?;
        }
        self.ips = self.pod_ips()?;
        let servers = self
            .ips
            .keys()
            .filter(|k| k.split('/').nth(1).is_some_and(|p| PODS.contains(&p)))
            .count();
        ensure!(servers == 9, "pod addresses: {:?}", self.ips);
        // Every pod's interface carries the pair: the agent says so once ready again.
        let t0 = Instant::now();
        loop {
            let metrics = self.agent_metrics()?;
            let attached = metric(&metrics, "zt_attached_interfaces").unwrap_or(0.0);
            let unattached = metric(&metrics, "zt_unattached_endpoints").unwrap_or(-1.0);
            if attached >= 9.0 && unattached == 0.0 {
                eprintln!(
                    "9 pods attached {:.1} s after they were Ready",
                    t0.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if t0.elapsed() > CONVERGE {
                bail!("attached {attached}, unattached {unattached}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn pod_ips(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let out = self.node.kubectl(&[
            "get",
            "pods",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}={.status.podIP}{\"\\n\"}{end}",
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(pod, ip)| {
                !ip.is_empty()
                    && NAMESPACES
                        .iter()
                        .any(|ns| pod.starts_with(&format!("{ns}/")))
            })
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Applies `policies` (replacing every earlier one), then probes until the matrix matches
    /// `rule`, failing with every wrong flow after [`CONVERGE`].
    fn matrix(
        &mut self,
        what: &str,
        policies: &str,
        rule: &dyn Fn(&Flow<'_>) -> bool,
    ) -> anyhow::Result<()> {
        for ns in NAMESPACES {
            self.node
                .kubectl(&["-n", ns, "delete", "networkpolicy", "--all"])?;
        }
        if !policies.trim().is_empty() {
            self.node.kubectl_stdin(&["apply", "-f", "-"], policies)?;
        }
        let t0 = Instant::now();
        loop {
            let results = self.probe_all()?;
            let wrong = mismatches(&results, rule);
            if wrong.is_empty() {
                eprintln!(
                    "{what}: {} flows as expected after {:.1} s ({} allowed)",
                    results.len(),
                    t0.elapsed().as_secs_f64(),
                    results.values().filter(|a| **a).count()
                );
                return Ok(());
            }
            if t0.elapsed() > CONVERGE {
                bail!("{what}: {} wrong flows:\n{}", wrong.len(), wrong.join("\n"));
            }
        }
    }

    /// Every ordered pair × TCP/UDP × 80/81, probed from inside the source pod with `kubectl
    /// exec` (one exec per source pod, its probes in parallel; the pods run at once).
    fn probe_all(&self) -> anyhow::Result<BTreeMap<(String, String, Protocol, u16), bool>> {
        let mut results = BTreeMap::new();
        let outputs: Vec<anyhow::Result<(String, String)>> = thread::scope(|scope| {
            let handles: Vec<_> = NAMESPACES
                .iter()
                .flat_map(|ns| PODS.iter().map(move |pod| format!("{ns}/{pod}")))
                .map(|from| {
                    let script = probe_script(&from, &self.ips);
                    scope.spawn(move || {
                        let (ns, pod) = from.split_once('/').expect("ns/pod");
                        let out = self.node.kubectl(&[
                            "-n",
                            ns,
                            "exec",
                            pod,
                            "-c",
                            "cont-80-tcp",
                            "--",
                            "/bin/sh",
                            "-c",
                            &script,
                        ])?;
                        Ok((from, out))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probe thread"))
                .collect()
        });
        for output in outputs {
            let (from, out) = output?;
            for line in out.lines() {
                // "ok|no <to> <TCP|UDP> <port>"
                let parts: Vec<&str> = line.split_whitespace().collect();
                if let [verdict, to, proto, port] = parts[..] {
                    let protocol = if proto == "TCP" {
                        Protocol::Tcp
                    } else {
                        Protocol::Udp
                    };
                    results.insert(
                        (from.clone(), to.to_owned(), protocol, port.parse()?),
                        verdict == "ok",
                    );
                }
            }
        }
        ensure!(
            results.len() == all_flows().len(),
            "{} probe results of {}",
            results.len(),
            all_flows().len()
        );
        Ok(results)
    }

    /// Traffic through every disruption: an allowed UDP flow y/stream → x/a:81 on one 5-tuple
    /// (an established conntrack entry) and a denied one z/leak → x/a:81, one datagram every
    /// 50 ms each, counted by the pods themselves into files on the host.
    fn continuity(&mut self) -> anyhow::Result<()> {
        for ns in NAMESPACES {
            self.node
                .kubectl(&["-n", ns, "delete", "networkpolicy", "--all"])?;
        }
        self.node
            .kubectl_stdin(&["apply", "-f", "-"], STREAM_POLICY)?;
        let out = Path::new(DIR).join("traffic");
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&out)?;
        let target = self.ips.get("x/a").context("x/a address")?.clone();
        self.node
            .kubectl_stdin(&["apply", "-f", "-"], &traffic_pods(&target, &out))?;
        for ns in ["y", "z"] {
            self.node.kubectl(&[
                "-n",
                ns,
                "wait",
                "--for=condition=Ready",
                "pod",
                "-l",
                "traffic",
                "--timeout=60s",
            ])?;
        }
        // "sent received", written by zt-netprobe in the pod.
        let count = |name: &str| -> (u64, u64) {
            let text = fs::read_to_string(out.join(name).join("counts")).unwrap_or_default();
            let mut numbers = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
            (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
        };
        // The allowed stream must flow before anything is disrupted.
        let t0 = Instant::now();
        while count("stream").1 < 20 {
            ensure!(
                t0.elapsed() < CONVERGE,
                "the allowed stream does not flow: stream {:?}, leak {:?}",
                count("stream"),
                count("leak")
            );
            thread::sleep(Duration::from_millis(100));
        }
        // Counted from here: both flows are established (or refused) before any disruption.
        thread::sleep(Duration::from_secs(2));
        let (sent0, received0) = count("stream");
        let (leak_sent0, leaked0) = count("leak");
        eprintln!(
            "streams flowing after {:.1} s: stream {sent0} sent / {received0} answered, leak {leak_sent0} / {leaked0}",
            t0.elapsed().as_secs_f64()
        );
        let mut report = String::new();
        let mut phase = |suite: &mut Suite,
                         what: &str,
                         act: &dyn Fn(&mut Suite) -> anyhow::Result<()>|
         -> anyhow::Result<()> {
            let t = Instant::now();
            act(suite)?;
            // Traffic keeps running a little past readiness.
            thread::sleep(Duration::from_secs(2));
            let _ = writeln!(
                report,
                "  {what}: {:.1} s until Ready again",
                t.elapsed().as_secs_f64()
            );
            Ok(())
        };
        phase(
            self,
            "agent pod deleted (the DaemonSet recreates it)",
            &|s| {
                let pod = s.agent_pod()?;
                s.node
                    .kubectl(&["-n", "zt-system", "delete", "pod", &pod, "--wait=false"])?;
                thread::sleep(Duration::from_secs(1));
                s.wait_agent_ready(Duration::from_secs(120))
            },
        )?;
        phase(self, "DaemonSet rolled to a new image tag", &|s| {
            s.apply_agent(&env("ZT_NODE_AGENT_TAG_NEXT")?)?;
            thread::sleep(Duration::from_secs(1));
            s.wait_agent_ready(Duration::from_secs(120))?;
            let image = s.node.kubectl(&[
                "-n",
                "zt-system",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=agent",
                "-o",
                "jsonpath={.items[0].spec.containers[0].image}",
            ])?;
            ensure!(
                image.ends_with(&env("ZT_NODE_AGENT_TAG_NEXT")?),
                "agent image {image}"
            );
            Ok(())
        })?;
        phase(self, "containerd and kubelet restarted", &|s| {
            s.node.restart(Component::Containerd)?;
            s.node.restart(Component::Kubelet)?;
            thread::sleep(Duration::from_secs(2));
            s.node.wait_node_ready(Duration::from_secs(90))?;
            s.wait_agent_ready(Duration::from_secs(120))
        })?;
        // Stop both senders, let the last replies arrive, then count.
        fs::write(out.join("stop"), "")?;
        thread::sleep(Duration::from_secs(4));
        let (sent, received) = count("stream");
        let (leak_sent, leaked) = count("leak");
        // The window: from the baseline (both counters written at the same datagram) to the end.
        let (sent, received) = (sent - sent0, received - received0);
        let (leak_sent, leaked) = (leak_sent - leak_sent0, leaked - leaked0);
        let lost = sent.saturating_sub(received);
        eprintln!(
            "continuity:\n{report}  allowed flow y/stream → x/a UDP/81: {sent} sent, {received} answered, {lost} lost\n  denied flow z/leak → x/a UDP/81: {leak_sent} sent, {leaked} answered (leaked)"
        );
        ensure!(
            sent > 100 && leak_sent > 100,
            "too little traffic: {sent} / {leak_sent}"
        );
        ensure!(lost == 0, "{lost} allowed datagrams lost");
        ensure!(leaked == 0, "{leaked} denied datagrams answered");
        Ok(())
    }

    /// The agent is taken off the node (the DaemonSet's nodeSelector matches nothing), a pod is
    /// created in x (deny all ingress there), and the agent is put back: from then until a probe
    /// from z is refused is the window in which the new pod is unprotected.
    fn pod_while_down(&mut self) -> anyhow::Result<()> {
        for ns in NAMESPACES {
            self.node
                .kubectl(&["-n", ns, "delete", "networkpolicy", "--all"])?;
        }
        self.node
            .kubectl_stdin(&["apply", "-f", "-"], DENY_ALL_INGRESS_X)?;
        let patch = |selector: &str| {
            self.node.kubectl(&[
                "-n",
                "zt-system",
                "patch",
                "ds/zt-agent",
                "--type=merge",
                "-p",
                &format!(r#"{{"spec":{{"template":{{"spec":{{"nodeSelector":{selector}}}}}}}}}"#),
            ])
        };
        patch(r#"{"zt.dev/nowhere":"true"}"#)?;
        let t0 = Instant::now();
        while !self.agent_pod()?.is_empty() {
            ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "the agent pod is still there"
            );
            thread::sleep(Duration::from_millis(200));
        }
        self.node
            .kubectl_stdin(&["apply", "-f", "-"], &late_pod())?;
        self.node.kubectl(&[
            "-n",
            "x",
            "wait",
            "--for=condition=Ready",
            "pod/late",
            "--timeout=60s",
        ])?;
        let ip = self
            .pod_ips()?
            .get("x/late")
            .context("x/late address")?
            .clone();
        let reach = |suite: &Suite| -> anyhow::Result<bool> {
            let out = suite.node.kubectl(&[
                "-n",
                "z",
                "exec",
                "c",
                "-c",
                "cont-80-tcp",
                "--",
                "/bin/sh",
                "-c",
                &format!("nc -w 1 {ip} 80 </dev/null"),
            ]);
            Ok(out.is_ok_and(|o| !o.is_empty()))
        };
        let open_while_down = reach(self)?;
        let back = Instant::now();
        patch("null")?;
        let mut ready_after = None;
        loop {
            if ready_after.is_none() && self.agent_ready_now() {
                ready_after = Some(back.elapsed());
            }
            if !reach(self)? {
                break;
            }
            ensure!(
                back.elapsed() < Duration::from_secs(120),
                "x/late still reachable from z/c"
            );
            thread::sleep(Duration::from_millis(100));
        }
        let window = back.elapsed();
        self.wait_agent_ready(Duration::from_secs(60))?;
        let ready_after = ready_after.unwrap_or_else(|| back.elapsed());
        eprintln!(
            "pod created while the agent was down: reachable from z/c while down: {open_while_down}; \
             enforced {:.1} s after the DaemonSet was put back (the agent pod reported Ready after {:.1} s)",
            window.as_secs_f64(),
            ready_after.as_secs_f64()
        );
        ensure!(
            open_while_down,
            "x/late was not reachable while the agent was down: the window was not measured"
        );
        Ok(())
    }

    /// The agent process's peak RSS and CPU time since it started (from /proc on the host).
    fn resources(&mut self) -> anyhow::Result<()> {
        let pid = agent_pid()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks = 100.0; // USER_HZ
        let cpu = (fields[11].parse::<f64>()? + fields[12].parse::<f64>()?) / ticks;
        let started = fields[19].parse::<f64>()? / ticks;
        let uptime: f64 = fs::read_to_string("/proc/uptime")?
            .split_whitespace()
            .next()
            .context("uptime")?
            .parse()?;
        let age = uptime - started;
        eprintln!(
            "agent (pid {pid}): RSS {:.1} MiB, peak {:.1} MiB; CPU {cpu:.2} s over {age:.0} s = {:.0} m on average",
            kb("VmRSS:") as f64 / 1024.0,
            kb("VmHWM:") as f64 / 1024.0,
            1000.0 * cpu / age.max(1.0)
        );
        ensure!(kb("VmHWM:") > 0, "no RSS figure");
        Ok(())
    }

    /// Takes each added capability out of the DaemonSet in turn: the agent must then fail (not
    /// become Ready); its log says why. The manifest is restored after each.
    fn capabilities(&mut self) -> anyhow::Result<()> {
        const ADDED: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];
        let mut report = String::new();
        for dropped in ADDED {
            let kept: Vec<String> = ADDED
                .iter()
                .filter(|c| **c != dropped)
                .map(|c| format!("\"{c}\""))
                .collect();
            self.node.kubectl(&[
                "-n", "zt-system", "patch", "ds/zt-agent", "--type=json", "-p",
                &format!(r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/securityContext/capabilities/add","value":[{}]}}]"#, kept.join(",")),
            ])?;
            thread::sleep(Duration::from_secs(2));
            let t0 = Instant::now();
            let mut ready = false;
            while t0.elapsed() < Duration::from_secs(40) {
                if self.agent_ready_now() && self.agent_caps_are(&kept) {
                    ready = true;
                    break;
                }
                thread::sleep(Duration::from_millis(500));
            }
            let log = self
                .node
                .kubectl(&["-n", "zt-system", "logs", "ds/zt-agent", "--tail=200"])
                .unwrap_or_default();
            let why = log
                .lines()
                .find(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("Error:"))
                .unwrap_or("(no error line)")
                .chars()
                .take(300)
                .collect::<String>();
            let _ = writeln!(
                report,
                "  without {dropped}: {}; {why}",
                if ready { "Ready" } else { "not Ready" }
            );
            // Restore.
            self.apply_agent(&self.current_tag()?)?;
            self.node.kubectl(&[
                "-n", "zt-system", "patch", "ds/zt-agent", "--type=json", "-p",
                r#"[{"op":"replace","path":"/spec/template/spec/containers/0/securityContext/capabilities/add","value":["BPF","NET_ADMIN","PERFMON"]}]"#,
            ])?;
            thread::sleep(Duration::from_secs(2));
            self.wait_agent_ready(Duration::from_secs(120))?;
            ensure!(
                !ready,
                "the agent became Ready without {dropped}:\n{report}"
            );
        }
        eprintln!("capabilities:\n{report}");
        Ok(())
    }

    fn current_tag(&self) -> anyhow::Result<String> {
        let image = self.node.kubectl(&[
            "-n",
            "zt-system",
            "get",
            "ds/zt-agent",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])?;
        Ok(image
            .rsplit_once(':')
            .context("image tag")?
            .1
            .trim()
            .to_owned())
    }

    /// Whether the running agent pod's spec adds exactly `caps`.
    fn agent_caps_are(&self, caps: &[String]) -> bool {
        self.node
            .kubectl(&[
                "-n",
                "zt-system",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=agent",
                "-o",
                "jsonpath={.items[0].spec.containers[0].securityContext.capabilities.add}",
            ])
            .is_ok_and(|s| {
                let mut got: Vec<String> = serde_json::from_str(&s).unwrap_or_default();
                let mut want = caps.to_vec();
                got.sort();
                want.sort();
                got == want
            })
    }

    fn agent_ready_now(&self) -> bool {
        self.node
            .kubectl(&[
                "-n",
                "zt-system",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=agent",
                "-o",
                "jsonpath={.items[0].status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .is_ok_and(|s| s.trim() == "True")
    }
}

/// The pid of the (one) agent process on this host.
fn agent_pid() -> anyhow::Result<u32> {
    for entry in fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("/usr/local/bin/zt-agent run") && cmdline.contains(AGENT_PIN_ROOT) {
            return Ok(pid);
        }
    }
    bail!("no agent process")
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mismatches(
    results: &BTreeMap<(String, String, Protocol, u16), bool>,
    rule: &dyn Fn(&Flow<'_>) -> bool,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for flow in all_flows() {
        let from = format!("{}/{}", flow.from_ns, flow.from_pod);
        let to = format!("{}/{}", flow.to_ns, flow.to_pod);
        let Some(got) = results.get(&(from.clone(), to.clone(), flow.protocol, flow.port)) else {
            wrong.push(format!(
                "{from} → {to} {:?}/{}: not probed",
                flow.protocol, flow.port
            ));
            continue;
        };
        let want = rule(&flow);
        if *got != want {
            let verdict = |a: bool| if a { "allowed" } else { "denied" };
            wrong.push(format!(
                "{from} → {to} {:?}/{}: expected {}, got {}",
                flow.protocol,
                flow.port,
                verdict(want),
                verdict(*got)
            ));
        }
    }
    wrong
}

/// A shell script that probes every other pod on TCP/UDP 80/81 at once and prints one line per
/// probe (`zt-netprobe`: TCP connects; UDP is answered by agnhost `serve-hostname --udp`).
fn probe_script(from: &str, ips: &BTreeMap<String, String>) -> String {
    let mut script = String::new();
    for (to, ip) in ips {
        if to == from || !to.split('/').nth(1).is_some_and(|p| PODS.contains(&p)) {
            continue;
        }
        for port in [80, 81] {
            for (proto, name) in [("tcp", "TCP"), ("udp", "UDP")] {
                let _ = write!(
                    script,
                    "echo $(/zt-netprobe probe {proto} {ip} {port}) {to} {name} {port} & "
                );
            }
        }
    }
    script.push_str("wait");
    script
}

const IMAGE: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";

fn server_containers() -> String {
    let mut out = String::new();
    for port in [80, 81] {
        for proto in ["tcp", "udp"] {
            let _ = write!(
                out,
                "\n    - name: cont-{port}-{proto}\n      image: {IMAGE}\n      imagePullPolicy: Never\n      args: [serve-hostname, --{proto}, --http=false, --port, \"{port}\"]\n      ports: [{{name: serve-{port}-{proto}, containerPort: {port}, protocol: {}}}]\n      resources: {{requests: {{cpu: 1m, memory: 8Mi}}}}",
                proto.to_uppercase()
            );
        }
    }
    out
}

fn cluster_yaml() -> String {
    let mut out = String::new();
    for ns in NAMESPACES {
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{ns}\", labels: {{ns: \"{ns}\"}}}}\n---\n"
        );
        for pod in PODS {
            let _ = write!(
                out,
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: \"{pod}\", namespace: \"{ns}\", labels: {{pod: \"{pod}\"}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:{}\n---\n",
                server_containers()
            );
        }
    }
    out
}

fn late_pod() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: late, namespace: x, labels: {{pod: late}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:{}\n",
        server_containers()
    )
}

/// y/stream and z/leak: each sends a numbered datagram every 50 ms to `target`:81 from one
/// source port, and records what it sent and what came back in a host directory.
fn traffic_pods(target: &str, out: &Path) -> String {
    let mut yaml = String::new();
    for (ns, name) in [("y", "stream"), ("z", "leak")] {
        fs::create_dir_all(out.join(name)).expect("traffic dir");
        let script =
            format!("exec /zt-netprobe stream {target} 81 40000 /out/{name}/counts /out/stop");
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: \"{ns}\", labels: {{traffic: \"true\", pod: {name}}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n    - name: send\n      image: {IMAGE}\n      imagePullPolicy: Never\n      command: [/bin/sh, -c, {script:?}]\n      volumeMounts: [{{name: out, mountPath: /out}}]\n  volumes: [{{name: out, hostPath: {{path: {}, type: Directory}}}}]\n---\n",
            out.display()
        );
    }
    yaml
}

const DENY_ALL_INGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

const ALLOW_X_A_FROM_Y: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]
";

const NAMED_PORT: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-named-80-tcp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-80-tcp}]}]
";

const EGRESS_TO_Y: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]
";

const AND_PEER: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}, podSelector: {matchLabels: {pod: b}}}]}]
";

/// x/a accepts UDP/81 from namespace y only (so y/stream is allowed and z/leak is not).
const STREAM_POLICY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: stream, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}], ports: [{port: 81, protocol: UDP}]}]
";
