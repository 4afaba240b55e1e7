//! The agent's Prometheus metrics and the health state `/healthz` and `/readyz` report.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use zt_common::reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub ready: Gauge,
    pub source_changes: Counter,
    pub syncs: Counter,
    pub sync_writes: Counter,
    pub sync_errors: Counter,
    pub attach_errors: Counter,
    pub attached_interfaces: Gauge,
    pub local_endpoints: Gauge,
    pub unattached_endpoints: Gauge,
    pub map_entries: Family<MapLabel, Gauge>,
    pub packets: Family<ReasonLabel, Counter>,
    pub events: Family<EventLabel, Counter>,
    pub events_lost: Counter,
    pub compile_warnings: Counter,
    /// Last kernel counter values, so the `packets` counters advance by differences.
    packets_seen: Arc<Mutex<[u64; reason::COUNT as usize]>>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "zt_agent_ready",
            "1 when /readyz answers 200",
            m.ready.clone(),
        );
        registry.register(
            "zt_source_changes",
            "Source updates that changed the cluster state, each compiled and synced",
            m.source_changes.clone(),
        );
        registry.register(
            "zt_syncs",
            "Map syncs that wrote something",
            m.syncs.clone(),
        );
        registry.register(
            "zt_sync_writes",
            "Map writes applied",
            m.sync_writes.clone(),
        );
        registry.register(
            "zt_sync_errors",
            "Map syncs that failed (the maps are re-read and the sync retried)",
            m.sync_errors.clone(),
        );
        registry.register(
            "zt_attach_errors",
            "Failed attaches of the program pair",
            m.attach_errors.clone(),
        );
        registry.register(
            "zt_attached_interfaces",
            "Pod interfaces carrying the program pair",
            m.attached_interfaces.clone(),
        );
        registry.register(
            "zt_local_endpoints",
            "Local pod addresses to enforce",
            m.local_endpoints.clone(),
        );
        registry.register(
            "zt_unattached_endpoints",
            "Local pod addresses with no host-side interface found yet",
            m.unattached_endpoints.clone(),
        );
        registry.register(
            "zt_map_entries",
            "Entries the agent keeps in each map",
            m.map_entries.clone(),
        );
        registry.register(
            "zt_datapath_packets",
            "Packets by verdict reason (all CPUs)",
            m.packets.clone(),
        );
        registry.register(
            "zt_datapath_events",
            "Verdict events read, by kind and reason",
            m.events.clone(),
        );
        registry.register(
            "zt_datapath_events_undecodable",
            "Ring buffer items too short to be an event",
            m.events_lost.clone(),
        );
        registry.register(
            "zt_compile_warnings",
            "Bad policy or pod fields skipped by the compiler",
            m.compile_warnings.clone(),
        );
        m
    }

    /// Advances the per-reason packet counters to the kernel's sums.
    pub fn set_packets(&self, now: &[u64; reason::COUNT as usize]) {
        let mut seen = self.packets_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (i, (&n, last)) in now.iter().zip(seen.iter_mut()).enumerate() {
            if n > *last {
                self.packets
                    .get_or_create(&ReasonLabel {
                        reason: reason::name(i as u8).to_owned(),
                    })
                    .inc_by(n - *last);
            }
            *last = n;
        }
    }
}

/// What `/healthz` and `/readyz` answer.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Milliseconds since the Unix epoch of the control loop's last turn.
    heartbeat_ms: AtomicU64,
    why_not_ready: Mutex<String>,
}

impl Health {
    pub fn set(&self, why_not_ready: Option<String>) {
        self.ready.store(why_not_ready.is_none(), Ordering::Release);
        *self.why_not_ready.lock().unwrap_or_else(|e| e.into_inner()) =
            why_not_ready.unwrap_or_default();
    }

    /// `Ok` when ready, else why not.
    pub fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(self
                .why_not_ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone())
        }
    }

    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Release);
    }

    /// Whether the control loop turned within `max_ms`.
    pub fn alive(&self, max_ms: u64) -> bool {
        now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Acquire)) <= max_ms
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
