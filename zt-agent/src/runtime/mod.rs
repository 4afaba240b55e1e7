//! `zt-agent run`: everything that touches the kernel or the API server.
//!
//! ```text
//!  source (kube | dir) ──events──▶ control loop ──▶ index ─▶ compiler ─▶ desired state
//!                                       │                                     │ + ifindex from
//!                                       │  iface: host-side interface per pod ┘   the attach manager
//!                                       ├─▶ maps: plan(applied, desired − applied) ─▶ map writes
//!                                       └─▶ attach: TCX pair per pod interface, pinned
//!  events: zt_events ring buffer ─▶ logs + metrics        serve: /healthz /readyz /metrics
//! ```
//! One task, the control loop, owns the index, the compiler, the maps and the links; it turns on
//! every source change and at least once a second (interfaces appear without any source change).
//!
//! Restart without a gap: maps are pinned under `<pin_root>/maps`, links under `<pin_root>/links`.
//! At start the agent reads the maps back into its `applied` state and adopts the links, then
//! changes **nothing** until every source has synced; its first sync then writes only the
//! difference and removes only what is stale. Shutdown (SIGTERM, SIGINT) leaves pins, links and
//! maps in place: enforcement goes on while no agent runs.

pub mod attach;
pub mod bpffs;
pub mod control;
pub mod drift;
pub mod events;
pub mod expiry;
pub mod iface;
pub mod kmod;
pub mod loader;
pub mod lock;
pub mod maps;
pub mod metrics;
pub mod migrate;
pub mod netlink;
pub mod serve;
pub mod source;
pub mod uninstall;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use aya::maps::RingBuf;
use prometheus_client::registry::Registry;
use tokio::{signal::unix::SignalKind, sync::mpsc};
use zt_common::{endpoint::EndpointValue, names};

use self::{
    attach::{AttachMode, Attacher},
    drift::Schedule,
    iface::{Discovery, HostIf, Kernel},
    loader::Loaded,
    metrics::{Health, MapLabel, Metrics},
    source::Source,
};
use crate::{
    cli::RunArgs,
    compiler::{Compiler, Locality, Options},
    datapath::{self, DatapathState, MapWrite, StateDelta, state::diff_maps},
    error::{Error, Result},
    index::Index,
    resource::{Kind, SourceEvent},
};

/// How often the control loop turns without source changes (interface discovery, counters).
const TICK: Duration = Duration::from_secs(1);
/// Turns an attached interface must stay unneeded before it is detached.
const DETACH_AFTER_TURNS: u32 = 3;
/// How often a `dir:` source looks at its folder.
const DIR_POLL: Duration = Duration::from_millis(250);

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> Result<()> {
    init_tracing();
    let source = Source::parse(&args.source)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("starting the async runtime: {e}")))?
        .block_on(agent(args, source))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and container logs get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if std::env::var("ZT_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn agent(args: RunArgs, source: Source) -> Result<()> {
    let locality = match (&source, &args.node_name) {
        (_, Some(node)) => Locality::Node(node.clone()),
        (Source::Dir(_), None) => Locality::All,
        (Source::Kube, None) => {
            return Err(Error::Other(
                "--source kube needs --node-name (or NODE_NAME) to know which pods are local"
                    .into(),
            ));
        }
    };

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let health = Arc::new(Health::default());
    health.set(Some("starting".into()));
    health.beat();

    // Held until the process exits: one agent per pin root. The pin root must be on its bpffs
    // first (mounted where missing), so the lock names the directory the maps will live in.
    bpffs::ensure_pin_root(&args.pin_root)?;
    let lock = lock::PinRootLock::acquire(&args.lock_dir, &args.pin_root)?;
    tracing::info!(lock = %lock.path.display(), "holding the pin root's lock");
    let loading = std::time::Instant::now();
    let mut loaded = Loaded::load(&args.pin_root)?;
    let config = maps::configure(&mut loaded.ebpf, args.fail_open)?;
    let applied = maps::read_state(&loaded.ebpf)?;
    tracing::info!(
        pin_root = %args.pin_root.display(),
        endpoints = applied.endpoints.len(),
        identities = applied.identities.len(),
        policy = applied.policy.len(),
        revision = config.policy_revision,
        fail_closed = !args.fail_open,
        load_ms = loading.elapsed().as_millis() as u64,
        "loaded the datapath; adopting what the maps hold"
    );
    let mut kernel = Kernel::open()?;
    let links = kernel.links()?;
    let mode = args.attach.unwrap_or_else(AttachMode::detect);
    tracing::info!(?mode, "attach mode");
    if mode == AttachMode::Tc {
        kmod::ensure(kmod::TC_ATTACH)?;
    }
    let mut attacher = Attacher::new(&loaded.links_dir, mode);
    let config_map_id = loaded.config_map_id()?;
    attacher.adopt(&mut loaded.ebpf, config_map_id, &live(&links));
    loaded.finish_migration()?;

    let host_addrs: Vec<IpAddr> = links
        .iter()
        .flat_map(|l| l.addresses().collect::<Vec<_>>())
        .collect();
    let compiler = Compiler::new(Options {
        local: locality,
        host_addrs,
        audit: args.audit,
    });

    let (tx, rx) = mpsc::channel::<SourceEvent>(1024);
    match source {
        Source::Dir(dir) => {
            tracing::info!(dir = %dir.display(), "following a folder of manifests");
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::task::spawn_blocking(move || {
                source::dir::follow(dir, tx, DIR_POLL, metrics, health)
            });
        }
        Source::Kube => {
            let client = ::kube::Client::try_default().await.map_err(|e| {
                Error::Other(format!(
                    "no Kubernetes client (in-cluster config or KUBECONFIG): {e}"
                ))
            })?;
            let source_metrics = source::kube::Metrics::register(&mut registry);
            tokio::spawn(async move {
                if let Err(error) = source::kube::run(client, tx, source_metrics).await {
                    tracing::error!(%error, "the kube source stopped");
                }
            });
        }
    }

    let names: events::Names = Arc::default();
    let ring = loaded
        .ebpf
        .take_map(names::MAP_EVENTS)
        .ok_or_else(|| Error::Ebpf(format!("the object has no map {}", names::MAP_EVENTS)))
        .and_then(|m| {
            RingBuf::try_from(m).map_err(|e| Error::Ebpf(format!("{}: {e}", names::MAP_EVENTS)))
        })?;
    tokio::spawn(events::follow(ring, names.clone(), metrics.clone()));
    std::thread::Builder::new()
        .name("zt-ct-expiry".into())
        .spawn({
            let dir = loaded.maps_dir.clone();
            let expired = metrics.conntrack_expired.clone();
            move || expiry::follow(dir, expired)
        })
        .map_err(|e| Error::Other(format!("starting the conntrack sweeper: {e}")))?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Other(format!("listening on {}: {e}", args.listen)))?;
    tracing::info!(listen = %args.listen, "serving /healthz /readyz /metrics");
    tokio::spawn(serve::serve(listener, Arc::new(registry), health.clone()));
    let (ask, asked) = mpsc::channel::<control::Asked>(16);
    match control::bind(&args.control_socket).await {
        Ok(socket) => {
            tokio::spawn(control::serve(socket, args.control_socket.clone(), ask));
        }
        Err(error) => {
            tracing::warn!(%error, "no control socket: `zt-agent explain` cannot ask this agent")
        }
    }

    // What the maps say about each endpoint's interface is where discovery starts: a restarted
    // agent finds its pods' interfaces without asking for a single route.
    let mut discovery = Discovery::default();
    discovery.seed(
        applied
            .endpoints
            .iter()
            .map(|(addr, value)| (*addr, value.ifindex)),
        &links,
    );
    let mut control = Control {
        loaded,
        attacher,
        unneeded: BTreeMap::new(),
        discovery,
        kernel,
        index: Index::default(),
        compiler,
        applied,
        reread: false,
        compiled_changes: StateDelta::default(),
        full_diff: true,
        synced: BTreeSet::new(),
        synced_once: false,
        names,
        metrics,
        health,
        config,
        verify: Schedule::new(args.verify_interval()),
        clock: expiry::Clock::default(),
        unwritten: BTreeMap::new(),
    };
    control.run(rx, asked).await;
    drop(lock);
    tracing::info!("stopped; programs, links and maps stay in place and keep enforcing");
    Ok(())
}

/// The compiled state as the kernel must hold it: endpoints only for addresses whose host-side
/// interface was found, each carrying that interface's ifindex (the compiler leaves it 0). An
/// address without an interface gets no entry, so it can never pass another interface's spoof
/// check, and fail-closed interfaces drop it.
pub fn local_endpoints(
    compiled: &DatapathState,
    found: &BTreeMap<IpAddr, HostIf>,
) -> BTreeMap<IpAddr, EndpointValue> {
    compiled
        .endpoints
        .iter()
        .filter_map(|(addr, value)| {
            let host = found.get(addr)?;
            let value = EndpointValue {
                ifindex: host.ifindex,
                ..*value
            };
            Some((*addr, value))
        })
        .collect()
}

fn live(links: &[iface::Link]) -> BTreeMap<u32, String> {
    links
        .iter()
        .map(|l| (l.ifindex, l.ifname.clone()))
        .collect()
}

struct Control {
    loaded: Loaded,
    attacher: Attacher,
    /// Attached interfaces no pod needed, with how many turns in a row.
    unneeded: BTreeMap<u32, u32>,
    discovery: Discovery,
    /// rtnetlink of the agent's namespace: links, routes, bridge ports' peers.
    kernel: Kernel,
    index: Index,
    compiler: Compiler,
    /// What the kernel maps hold (read back at start, then kept in step with every write).
    applied: DatapathState,
    /// A write failed: re-read the maps before the next diff.
    reread: bool,
    /// Identity and policy changes compiled since the maps last matched the compiler.
    compiled_changes: StateDelta,
    /// The next sync diffs the compiler's whole state against `applied` (at start and after a
    /// re-read: the maps may hold entries the compiler never produced) instead of writing
    /// `compiled_changes`.
    full_diff: bool,
    /// Kinds whose first full list arrived.
    synced: BTreeSet<Kind>,
    synced_once: bool,
    names: events::Names,
    metrics: Metrics,
    health: Arc<Health>,
    /// The `zt_config` knobs this agent set.
    config: zt_common::config::Config,
    /// When the maps are next read back to find drift.
    verify: Schedule,
    /// The conntrack clock in `zt_config` (this loop is its only writer).
    clock: expiry::Clock,
    /// Entries full maps refused in the last sync, by map.
    unwritten: BTreeMap<&'static str, usize>,
}

impl Control {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<SourceEvent>,
        mut asked: mpsc::Receiver<control::Asked>,
    ) {
        let (Ok(mut term), Ok(mut int)) = (
            tokio::signal::unix::signal(SignalKind::terminate()),
            tokio::signal::unix::signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot handle signals");
            return;
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changed = false;
        let mut source_open = true;
        loop {
            tokio::select! {
                event = rx.recv(), if source_open => match event {
                    Some(event) => {
                        changed |= self.take(event);
                        // Drain what is queued, so a burst (the kube source's first lists) is one sync.
                        while let Ok(event) = rx.try_recv() {
                            changed |= self.take(event);
                        }
                    }
                    None => {
                        tracing::error!("the source stopped; enforcement stays as it is");
                        source_open = false;
                        continue;
                    }
                },
                _ = tick.tick() => {}
                Some((request, reply)) = asked.recv() => {
                    let _ = reply.send(self.answer(request));
                    continue;
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
            self.health.beat();
            self.turn(changed);
            if changed {
                self.metrics.source_changes.inc();
                changed = false;
            }
        }
    }

    /// A control socket request, answered from the index, the compiler and the maps as the
    /// kernel holds them now.
    fn answer(&self, request: crate::explain::wire::Request) -> crate::explain::wire::Reply {
        use crate::explain::wire::{Reply, Request};
        let Request::Explain(filters) = request;
        let explained = (|| {
            let query = filters.query()?;
            let kernel = maps::read_state(&self.loaded.ebpf)?;
            let pods = crate::explain::pods_of(&self.index, &query);
            crate::explain::Model {
                compiler: &self.compiler,
                state: &kernel,
                fail_closed: self.config.flags & zt_common::config::flags::FAIL_CLOSED != 0,
                index: &self.index,
                pods: &pods,
            }
            .explain(&query)
        })();
        match explained {
            Ok(explanation) => Reply::Ok(explanation),
            Err(error) => Reply::Error(error.to_string()),
        }
    }

    fn take(&mut self, event: SourceEvent) -> bool {
        if let SourceEvent::Reset { kind, .. } = &event {
            self.synced.insert(*kind);
        }
        self.index.handle(event)
    }

    fn all_synced(&self) -> bool {
        self.synced.len() == 3
    }

    /// One turn: compile when the index changed, find interfaces, sync maps, attach, detach.
    fn turn(&mut self, changed: bool) {
        if let Err(error) = self.clock.tick(&mut self.loaded.ebpf) {
            tracing::warn!(%error, "advancing the conntrack clock");
        }
        if let Ok(counters) = maps::counters(&self.loaded.ebpf) {
            self.metrics.set_packets(&counters);
        }
        if !self.all_synced() {
            self.health
                .set(Some("waiting for the source's first full list".into()));
            return;
        }
        if changed || !self.synced_once {
            let before = self.compiler.skipped_total();
            let changes = self.compiler.update(&self.index);
            self.compiled_changes.merge(changes);
            self.metrics
                .compile_warnings
                .inc_by(self.compiler.skipped_total() - before);
            let warnings = self.compiler.warnings();
            self.metrics
                .compile_warnings_current
                .set(warnings.len() as i64);
            self.health
                .set_warnings(warnings.iter().map(ToString::to_string).collect());
            self.refresh_names();
        }
        let links = match self.kernel.links() {
            Ok(links) => links,
            Err(error) => {
                tracing::warn!(%error, "cannot list interfaces");
                self.health
                    .set(Some(format!("cannot list interfaces: {error}")));
                return;
            }
        };
        let wanted: BTreeSet<IpAddr> = self.compiler.state().endpoints.keys().copied().collect();
        let found = self.discovery.resolve(&mut self.kernel, &wanted, &links);

        // Maps first, so a pod's entry exists before its interface starts enforcing (with
        // FAIL_CLOSED an attached interface drops addresses it does not know).
        let synced = self.sync(&found);
        let mut unattached = wanted.len() - found.len();
        let mut attach_failed = 0;
        let needed: BTreeMap<u32, &HostIf> = found.values().map(|h| (h.ifindex, h)).collect();
        for host in needed.values() {
            if let Err(error) = self.attacher.attach(&mut self.loaded.ebpf, host) {
                self.metrics.attach_errors.inc();
                tracing::warn!(%error, ifname = host.ifname, "cannot attach");
                attach_failed += 1;
            }
        }
        // An interface no pod needs is detached once it has been unneeded for a few turns (a
        // failed lookup must not strip a live pod of its programs), or at once when it is gone.
        self.unneeded
            .retain(|ifindex, _| !needed.contains_key(ifindex));
        for ifindex in self.attacher.ifindexes() {
            if needed.contains_key(&ifindex) {
                continue;
            }
            let turns = self.unneeded.entry(ifindex).or_insert(0);
            *turns += 1;
            let gone = !links.iter().any(|l| l.ifindex == ifindex);
            if gone || *turns >= DETACH_AFTER_TURNS {
                self.attacher.detach(ifindex);
                self.unneeded.remove(&ifindex);
            }
        }
        unattached += found
            .values()
            .filter(|h| !self.attacher.is_attached(h.ifindex))
            .count();
        self.synced_once |= synced;

        self.metrics.local_endpoints.set(wanted.len() as i64);
        self.metrics.unattached_endpoints.set(unattached as i64);
        self.metrics
            .attached_interfaces
            .set(self.attacher.len() as i64);
        let why_not = if !synced {
            Some("the last map sync failed".to_owned())
        } else if !self.unwritten.is_empty() {
            let full: Vec<String> = self
                .unwritten
                .iter()
                .map(|(map, n)| format!("{map} ({n} entries not written)"))
                .collect();
            Some(format!(
                "full maps: {}; what those entries would allow is denied",
                full.join(", ")
            ))
        } else if attach_failed > 0 {
            Some(format!("{attach_failed} interfaces failed to attach"))
        } else if unattached > 0 {
            let missing: Vec<String> = wanted
                .iter()
                .filter(|a| !found.contains_key(a))
                .take(5)
                .map(|a| self.pod_name(a))
                .collect();
            Some(format!(
                "{unattached} local pod addresses have no interface yet ({})",
                missing.join(", ")
            ))
        } else {
            None
        };
        self.metrics.ready.set(i64::from(why_not.is_none()));
        self.health.set(why_not);
    }

    /// Writes the difference between the compiled state (endpoints with a found interface, their
    /// ifindex filled in) and what the maps hold. `false` when a write failed.
    ///
    /// Endpoints (a node's pods) are diffed whole every turn, since they also follow interfaces.
    /// Identities and policy (cluster-wide, hundreds of thousands of entries) are diffed whole
    /// only when `full_diff` says so; otherwise only the keys the compiler changed are looked at.
    fn sync(&mut self, found: &BTreeMap<IpAddr, HostIf>) -> bool {
        if self.synced_once && self.verify.due(std::time::Instant::now()) {
            self.find_drift();
        }
        if std::mem::take(&mut self.reread) {
            match maps::read_state(&self.loaded.ebpf) {
                Ok(state) => {
                    self.applied = state;
                    self.full_diff = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the maps back");
                    self.reread = true;
                    return false;
                }
            }
        }
        let compiled = self.compiler.state();
        let endpoints = local_endpoints(compiled, found);
        let delta = if self.full_diff {
            StateDelta {
                endpoints: diff_maps(&self.applied.endpoints, &endpoints),
                identities: diff_maps(&self.applied.identities, &compiled.identities),
                policy: diff_maps(&self.applied.policy, &compiled.policy),
            }
        } else {
            let mut delta = self.applied.missing(&self.compiled_changes);
            delta.endpoints = diff_maps(&self.applied.endpoints, &endpoints);
            delta
        };
        self.compiled_changes = StateDelta::default();
        self.full_diff = false;
        if delta.is_empty() {
            return true;
        }
        let writes = datapath::plan(&self.applied, &delta);
        let result = maps::apply(&mut self.loaded.ebpf, &writes);
        match result {
            Ok(refused) => {
                tracing::info!(
                    endpoints = delta.endpoints.len(),
                    identities = delta.identities.len(),
                    policy = delta.policy.len(),
                    writes = writes.len(),
                    refused = refused.len(),
                    "synced the maps"
                );
                let mut delta = delta;
                delta.drop_refused(&refused);
                self.applied.apply(&delta);
                self.note_refused(&refused);
                self.metrics.syncs.inc();
                self.metrics.sync_writes.inc_by(writes.len() as u64);
                for (map, n) in [
                    ("endpoints", self.applied.endpoints.len()),
                    ("identities", self.applied.identities.len()),
                    ("policy", self.applied.policy.len()),
                ] {
                    self.metrics
                        .map_entries
                        .get_or_create(&MapLabel { map: map.into() })
                        .set(n as i64);
                }
                true
            }
            Err(error) => {
                tracing::error!(%error, "map sync failed; re-reading the maps and retrying");
                self.metrics.sync_errors.inc();
                self.reread = true;
                false
            }
        }
    }

    /// Records the inserts full maps refused in this sync: the next sync diffs everything again
    /// (so they are retried as soon as there is room), readiness names the maps, and the
    /// metrics count them. What they would have allowed is denied meanwhile (see `maps::apply`).
    fn note_refused(&mut self, refused: &[MapWrite]) {
        let mut by_map: BTreeMap<&'static str, usize> = BTreeMap::new();
        for write in refused {
            *by_map.entry(maps::map_of(write)).or_default() += 1;
        }
        for map in self.unwritten.keys().chain(by_map.keys()) {
            self.metrics
                .map_unwritten
                .get_or_create(&MapLabel { map: (*map).into() })
                .set(by_map.get(map).copied().unwrap_or(0) as i64);
        }
        for (map, n) in &by_map {
            if !self.unwritten.contains_key(map) {
                tracing::error!(
                    map,
                    entries = n,
                    "map is full: entries the policies need cannot be written; the flows they \
                     would allow are denied (never allowed) until there is room. Fewer policies, \
                     ports or pods on this node make room; the agent retries every turn"
                );
                self.metrics
                    .map_full
                    .get_or_create(&MapLabel { map: (*map).into() })
                    .inc();
            }
        }
        if by_map.is_empty() && !self.unwritten.is_empty() {
            tracing::info!("every refused entry is written now: no map is full any more");
        }
        self.full_diff |= !by_map.is_empty();
        self.unwritten = by_map;
    }

    /// Reads the maps back and compares them with `applied`; on any difference counts it and
    /// makes this sync a full one from what the maps really hold, which repairs it (see
    /// [`drift`]).
    fn find_drift(&mut self) {
        let read = match maps::read_state(&self.loaded.ebpf) {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "cannot read the maps back to look for drift");
                return;
            }
        };
        let knobs = match maps::read_config(&self.loaded.ebpf) {
            Ok(now) => drift::knobs_differ(&self.config, &now),
            Err(_) => drift::KnobsDiffer(false),
        };
        let found = drift::measure(&self.applied, &read, knobs);
        if found.total() == 0 {
            return;
        }
        tracing::warn!(
            endpoints = found.endpoints,
            identities = found.identities,
            policy = found.policy,
            config = found.config,
            "the maps changed behind the agent's back (another agent on this pin root?); repairing"
        );
        for (map, n) in found.by_map() {
            if n > 0 {
                self.metrics
                    .map_drift
                    .get_or_create(&MapLabel { map: map.into() })
                    .inc_by(n as u64);
            }
        }
        self.metrics.drift_repairs.inc();
        if knobs.0 {
            let fail_open = self.config.flags & zt_common::config::flags::FAIL_CLOSED == 0;
            match maps::configure(&mut self.loaded.ebpf, fail_open) {
                Ok(config) => self.config = config,
                Err(error) => tracing::warn!(%error, "cannot restore zt_config"),
            }
        }
        self.applied = read;
        self.full_diff = true;
    }

    fn refresh_names(&self) {
        let mut names: HashMap<IpAddr, String> = HashMap::new();
        for ((ns, name), pod) in &self.index.pods {
            for ip in &pod.ips {
                names.insert(*ip, format!("{ns}/{name}"));
            }
        }
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = names;
    }

    fn pod_name(&self, addr: &IpAddr) -> String {
        self.names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .cloned()
            .unwrap_or_else(|| addr.to_string())
    }
}

#[cfg(test)]
mod tests {
    use zt_common::endpoint::EndpointValue;

    use super::*;

    #[test]
    fn endpoints_carry_their_interface_and_unfound_ones_are_left_out() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "fd00::3".parse().unwrap());
        let mut compiled = DatapathState::default();
        for (addr, identity) in [(a, 300), (b, 301)] {
            compiled.endpoints.insert(
                addr,
                EndpointValue {
                    identity,
                    ..Default::default()
                },
            );
            compiled.identities.insert(addr.into(), identity);
        }
        let found = BTreeMap::from([(
            a,
            HostIf {
                ifindex: 7,
                ifname: "veth7".into(),
            },
        )]);
        let endpoints = local_endpoints(&compiled, &found);
        assert_eq!(endpoints.len(), 1);
        assert_eq!(
            endpoints[&a],
            EndpointValue {
                identity: 300,
                ifindex: 7,
                ..Default::default()
            }
        );
        assert!(local_endpoints(&compiled, &BTreeMap::new()).is_empty());
    }
}
