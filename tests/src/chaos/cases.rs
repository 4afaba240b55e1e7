//! The chaos cases. Each builds its own node, starts the agent, waits until it enforces, runs the
//! fault under [`Traffic`], and reports what the traffic saw plus the case's own figures. A case
//! fails (an error) only when it could not run; the caller judges the figures.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::ensure;
use serde::Serialize;

use super::{
    node::ChaosNode,
    traffic::{Counts, Traffic},
};

const READY: Duration = Duration::from_secs(30);

/// What a case measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    #[serde(flatten)]
    pub traffic: Counts,
    /// The case's own figures (rounds, leftovers, memory, …).
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<&'static str, u64>,
    /// Per kind of traffic.
    pub by_kind: std::collections::BTreeMap<&'static str, Counts>,
}

impl Figures {
    fn new(traffic: (Counts, Vec<(&'static str, Counts)>)) -> Self {
        Self {
            traffic: traffic.0,
            by_kind: traffic.1.into_iter().collect(),
            extra: Default::default(),
        }
    }

    fn with(mut self, key: &'static str, value: u64) -> Self {
        self.extra.insert(key, value);
        self
    }
}

/// A small deterministic generator, so a failing round can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn started(agent: &Path) -> anyhow::Result<ChaosNode> {
    started_with(agent, &[])
}

fn started_with(agent: &Path, flags: &[&'static str]) -> anyhow::Result<ChaosNode> {
    let mut node = ChaosNode::new()?;
    node.agent_flags.extend(flags);
    node.write("")?;
    node.start_agent(agent)?;
    node.wait_ready(READY)?;
    Ok(node)
}

/// `restart`: the agent killed with SIGKILL `rounds` times, each at a random moment of its life
/// (during load, the first sync, or steady turns), and started again at once. Afterwards the
/// pinned state must be what a fresh agent builds: the same endpoints, links and policy entries.
pub fn restart(agent: &Path, rounds: u32, seed: u64) -> anyhow::Result<Figures> {
    let mut node = started(agent)?;
    let entries_before = node.pinned_entries()?;
    let pins_before = node.link_pins().len();
    let mut rng = Rng::new(seed);
    let traffic = Traffic::start(&node);
    thread::sleep(Duration::from_millis(300));
    let mut result = Ok(());
    for _ in 0..rounds {
        thread::sleep(Duration::from_millis(rng.below(1500)));
        node.kill_agent();
        if let Err(e) = node.start_agent(agent) {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        result = node.wait_ready(READY);
        thread::sleep(Duration::from_millis(1500));
    }
    let figures = Figures::new(traffic.stop()?);
    result?;
    let pins_after = node.link_pins().len();
    let entries_after = node.pinned_entries()?;
    ensure!(
        pins_after == pins_before,
        "{pins_after} link pins after the restarts, {pins_before} before"
    );
    ensure!(
        entries_after == entries_before,
        "pinned entries {entries_after:?} after the restarts, {entries_before:?} before"
    );
    Ok(figures.with("kills", u64::from(rounds)))
}

/// `iface_churn`: a pod created (namespace, veth, manifest) and deleted `rounds` times while
/// the traffic runs. Each new pod must be enforced from its first turn (it is denied towards
/// `a` as soon as its programs are attached), and afterwards nothing of it may be left: link
/// pins, endpoints and map entries are back to what they were.
pub fn iface_churn(agent: &Path, rounds: u32) -> anyhow::Result<Figures> {
    let mut node = started(agent)?;
    let pins_before = node.link_pins().len();
    let entries_before = node.pinned_entries()?;
    let traffic = Traffic::start(&node);
    let (mut leaked_new, mut slowest_ms) = (0u64, 0u64);
    let mut churn = || -> anyhow::Result<()> {
        for _ in 0..rounds {
            node.add_pod("d")?;
            node.write("")?;
            let started = Instant::now();
            while node.link_pins().len() < pins_before + 2 {
                ensure!(
                    started.elapsed() < READY,
                    "the new pod was not attached in {READY:?}:\n{}",
                    node.log_tail()
                );
                thread::sleep(Duration::from_millis(10));
            }
            slowest_ms = slowest_ms.max(started.elapsed().as_millis() as u64);
            let a = std::net::SocketAddr::from((node.pod("a").ipv4, super::node::TCP_PORT));
            let reached = node.pod("d").netns.run(|| {
                std::net::TcpStream::connect_timeout(&a, Duration::from_millis(100)).is_ok()
            })?;
            leaked_new += u64::from(reached);
            node.remove_pod("d");
            node.write("")?;
        }
        Ok(())
    };
    let result = churn();
    // Stale state goes after three unneeded turns.
    let deadline = Instant::now() + Duration::from_secs(10);
    while result.is_ok()
        && (node.link_pins().len() != pins_before
            || node.pinned_entries().ok().as_ref() != Some(&entries_before))
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(100));
    }
    let figures = Figures::new(traffic.stop()?);
    result?;
    let left_pins = node.link_pins().len().saturating_sub(pins_before) as u64;
    let entries_after = node.pinned_entries()?;
    let left_entries: usize = entries_after
        .iter()
        .map(|(map, n)| n.saturating_sub(entries_before[map]))
        .sum();
    let mut figures = figures
        .with("rounds", u64::from(rounds))
        .with("left_link_pins", left_pins)
        .with("left_map_entries", left_entries as u64)
        .with("slowest_attach_ms", slowest_ms);
    figures.traffic.leaked += leaked_new;
    figures.extra.insert("new_pod_leaked", leaked_new);
    Ok(figures)
}

/// `churn`: `per_minute` policy updates a minute for `duration` — policies on `a` added, edited
/// and deleted, admitting `b`, `c` or nobody on ports the traffic does not use, so every update
/// rewrites map entries and bumps the revision while the measured verdicts must not move — with
/// the agent's memory sampled before and after.
pub fn churn(agent: &Path, per_minute: u32, duration: Duration) -> anyhow::Result<Figures> {
    let node = started(agent)?;
    let rss_before = node.agent_rss_kib().unwrap_or(0);
    let traffic = Traffic::start(&node);
    let every = Duration::from_secs(60) / per_minute;
    let (started, mut updates) = (Instant::now(), 0u64);
    let mut rng = Rng::new(0x5eed);
    let mut result = Ok(());
    while started.elapsed() < duration {
        let policies = 1 + rng.below(20);
        let extra: String = (0..policies)
            .map(|i| {
                format!(
                    "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                     metadata: {{name: churn-{i}, namespace: ztch}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n\
                     \x20 ingress: [{{from: [{{podSelector: {{matchLabels: {{app: {peer}}}}}}}], ports: [{{port: {p}}}]}}]\n",
                    peer = ["b", "c", "d"][rng.below(3) as usize],
                    p = 9000 + rng.below(50000)
                )
            })
            .collect();
        if let Err(e) = node.write(&extra) {
            result = Err(e);
            break;
        }
        updates += 1;
        thread::sleep(every);
    }
    thread::sleep(Duration::from_secs(1));
    let rss_after = node.agent_rss_kib().unwrap_or(0);
    let figures = Figures::new(traffic.stop()?);
    result?;
    Ok(figures
        .with("updates", updates)
        .with("rss_before_kib", rss_before)
        .with("rss_after_kib", rss_after))
}

/// The bulk that overflows `zt_policy`: `pods` remote pods, each its own identity, admitted to
/// `a` on `ports` ports by one policy — `pods × ports` entries for one subject.
fn bulk(pods: u32, ports: u32) -> String {
    let mut text = String::new();
    for i in 0..pods {
        text += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: bulk-{i}, namespace: ztch, labels: {{bulk: \"{i}\"}}}}\n\
             spec: {{nodeName: elsewhere, containers: [{{name: c, image: x}}]}}\n\
             status: {{phase: Running, podIP: 10.234.{}.{}}}\n",
            i / 250,
            1 + i % 250
        );
    }
    let ports: Vec<String> = (0..ports)
        .map(|p| format!("{{port: {}}}", 20000 + p))
        .collect();
    text += &format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bulk, namespace: ztch}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  policyTypes: [Ingress]\n\
         \x20 ingress: [{{from: [{{podSelector: {{matchExpressions: [{{key: bulk, operator: Exists}}]}}}}], ports: [{}]}}]\n",
        ports.join(", ")
    );
    text
}

/// Pod `d`, isolated: only `b` may reach it.
const D_POLICY: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: d-in, namespace: ztch}\nspec:\n  podSelector: {matchLabels: {app: d}}\n\
    \x20 policyTypes: [Ingress]\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]\n";

/// `maps_full`: a policy whose entries (`pods × ports`) do not fit in `zt_policy`, under the
/// traffic. The agent must write what fits and keep going: the full map is named on `/readyz`
/// and in `zt_map_unwritten_entries`, established and already-written flows keep passing, a pod
/// that arrives meanwhile is enforced (its policy isolates it; the denied client `c` cannot reach
/// it), and once the bulk policy goes, every refused entry is written (`b` reaches `d`).
///
/// The agent runs `--fail-open`: there a pod without its endpoint entry is let through, so that is
/// where a full map could open a hole.
pub fn maps_full(agent: &Path, pods: u32, ports: u32) -> anyhow::Result<Figures> {
    const FULL_WITHIN: Duration = Duration::from_secs(120);
    let mut node = started_with(agent, &["--fail-open"])?;
    let traffic = Traffic::start(&node);
    let mut check = || -> anyhow::Result<(u64, u64, u64)> {
        let bulk = bulk(pods, ports);
        node.write(&bulk)?;
        let since = Instant::now();
        // The metric is set in the sync, readiness at the end of the same turn: wait for both.
        let unwritten = loop {
            let (status, why) = node.readyz();
            match node.metric("zt_map_unwritten_entries") {
                Some(n)
                    if n > 0.0 && status == 503 && why.contains(zt_common::names::MAP_POLICY) =>
                {
                    break n as u64;
                }
                _ => {}
            }
            ensure!(
                since.elapsed() < FULL_WITHIN,
                "zt_policy never reported full on /readyz and in metrics: {status} {why}\n{}",
                node.log_tail()
            );
            thread::sleep(Duration::from_millis(200));
        };
        node.add_pod("d")?;
        node.serve("d")?;
        node.write(&format!("{bulk}{D_POLICY}"))?;
        let since = Instant::now();
        while node.link_pins().len() < 8 {
            ensure!(
                since.elapsed() < READY,
                "pod d was not attached:\n{}",
                node.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
        // Its endpoint is written in the sync that attached it; give the next turn a moment.
        thread::sleep(Duration::from_millis(1500));
        let leaked = u64::from(node.connects("c", "d")?);
        node.write(D_POLICY)?;
        let since = Instant::now();
        while !(node.readyz().0 == 200 && node.connects("b", "d")?) {
            ensure!(
                since.elapsed() < FULL_WITHIN,
                "no recovery after the bulk policy went: {:?}\n{}",
                node.readyz(),
                node.log_tail()
            );
            thread::sleep(Duration::from_millis(200));
        }
        Ok((unwritten, leaked, since.elapsed().as_millis() as u64))
    };
    let result = check();
    let figures = Figures::new(traffic.stop()?);
    let (unwritten, leaked, recovered_ms) = result?;
    let mut figures = figures
        .with("policy_entries_wanted", u64::from(pods) * u64::from(ports))
        .with("unwritten_entries", unwritten)
        .with("new_pod_leaked", leaked)
        .with("recovered_ms", recovered_ms);
    figures.traffic.leaked += leaked;
    Ok(figures)
}
