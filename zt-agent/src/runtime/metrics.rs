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
pub struct ResultLabel {
    pub result: String,
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
    pub map_full: Family<MapLabel, Counter>,
    pub map_unwritten: Family<MapLabel, Gauge>,
    pub packets: Family<ReasonLabel, Counter>,
    pub events: Family<EventLabel, Counter>,
    pub events_lost: Counter,
    pub compile_warnings: Counter,
    /// Map entries found changed behind the agent's back, by map.
    pub map_drift: Family<MapLabel, Counter>,
    /// Read-backs that found drift (each followed by a repair).
    pub drift_repairs: Counter,
    /// Compiler warnings standing now.
    pub compile_warnings_current: Gauge,
    /// `dir:` source reads of a changed folder, by result (`applied`, `rejected`).
    pub manifest_loads: Family<ResultLabel, Counter>,
    pub manifest_last_applied: Gauge,
    pub manifest_last_rejected: Gauge,
    /// 1 while the folder as it is now is rejected (the last good one stays enforced).
    pub manifest_rejected: Gauge,
    pub conntrack_expired: Counter,
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
            "zt_map_full",
            "Times a map was found full: inserts it refused, whose flows are denied meanwhile",
            m.map_full.clone(),
        );
        registry.register(
            "zt_map_unwritten_entries",
            "Entries the agent needs that a full map refused in the last sync (0: none)",
            m.map_unwritten.clone(),
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
            "zt_conntrack_expired",
            "Conntrack entries the agent's sweeps deleted as idle past their timeout",
            m.conntrack_expired.clone(),
        );
        registry.register(
            "zt_compile_warnings",
            "Bad policy or pod fields skipped by the compiler",
            m.compile_warnings.clone(),
        );
        registry.register(
            "zt_map_drift",
            "Map entries found changed behind the agent's back by the periodic read-back, by map",
            m.map_drift.clone(),
        );
        registry.register(
            "zt_drift_repairs",
            "Read-backs that found drift, each repaired by the next sync",
            m.drift_repairs.clone(),
        );
        registry.register(
            "zt_compile_warnings_current",
            "Compiler warnings standing now (the list is on /readyz)",
            m.compile_warnings_current.clone(),
        );
        registry.register(
            "zt_manifest_loads",
            "Reads of a changed manifest folder (dir: source), by result: applied or rejected",
            m.manifest_loads.clone(),
        );
        registry.register(
            "zt_manifest_last_applied_timestamp_seconds",
            "When the manifest folder was last read and applied (Unix time; 0: never)",
            m.manifest_last_applied.clone(),
        );
        registry.register(
            "zt_manifest_last_rejected_timestamp_seconds",
            "When the manifest folder was last rejected (Unix time; 0: never)",
            m.manifest_last_rejected.clone(),
        );
        registry.register(
            "zt_manifest_rejected",
            "1 while the manifest folder as it is now is rejected and the last good one enforced",
            m.manifest_rejected.clone(),
        );
        m
    }

    /// A read of the manifest folder was applied.
    pub fn manifests_applied(&self, health: &Health) {
        self.count_load("applied");
        self.manifest_last_applied.set(now_ms() as i64 / 1000);
        self.manifest_rejected.set(0);
        health.set_source_problem(None);
    }

    /// A read of the manifest folder was rejected, for `why`.
    pub fn manifests_rejected(&self, health: &Health, why: String) {
        self.count_load("rejected");
        self.manifest_last_rejected.set(now_ms() as i64 / 1000);
        self.manifest_rejected.set(1);
        health.set_source_problem(Some(why));
    }

    fn count_load(&self, result: &str) {
        self.manifest_loads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
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
///
/// Besides ready or not, `/readyz` carries notes that do not change readiness: why the manifest
/// folder as it is now was rejected (the last good one is enforced, correctly, so the agent
/// stays ready), and the compiler's standing warnings.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Milliseconds since the Unix epoch of the control loop's last turn.
    heartbeat_ms: AtomicU64,
    why_not_ready: Mutex<String>,
    source_problem: Mutex<Option<String>>,
    warnings: Mutex<Vec<String>>,
}

/// At most this many compiler warnings are listed on `/readyz`.
const READYZ_WARNINGS: usize = 10;

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

    pub fn set_source_problem(&self, problem: Option<String>) {
        *self
            .source_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = problem;
    }

    pub fn set_warnings(&self, warnings: Vec<String>) {
        *self.warnings.lock().unwrap_or_else(|e| e.into_inner()) = warnings;
    }

    /// The notes `/readyz` adds to its answer, one per line; empty when there are none.
    pub fn notes(&self) -> String {
        let mut out = String::new();
        if let Some(problem) = &*self
            .source_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            out.push_str(&format!(
                "source rejected, the last good state stays enforced: {problem}\n"
            ));
        }
        let warnings = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
        for w in warnings.iter().take(READYZ_WARNINGS) {
            out.push_str(&format!("warning: {w}\n"));
        }
        if warnings.len() > READYZ_WARNINGS {
            out.push_str(&format!(
                "warning: … {} more (zt_compile_warnings_current)\n",
                warnings.len() - READYZ_WARNINGS
            ));
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_move_the_metrics_and_the_readyz_notes() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let health = Health::default();
        health.set(None);
        metrics.manifests_rejected(
            &health,
            "a.yaml: spec.ingress[0].fromm: unknown field".into(),
        );
        assert!(
            health.ready().is_ok(),
            "the last good state is enforced: still ready"
        );
        assert!(
            health.notes().contains("source rejected"),
            "{}",
            health.notes()
        );
        assert!(health.notes().contains("fromm"));
        assert_eq!(metrics.manifest_rejected.get(), 1);
        assert!(metrics.manifest_last_rejected.get() > 1_700_000_000);
        metrics.manifests_applied(&health);
        assert_eq!(metrics.manifest_rejected.get(), 0);
        assert_eq!(health.notes(), "");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"zt_manifest_loads_total{result="rejected"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"zt_manifest_loads_total{result="applied"} 1"#),
            "{text}"
        );
        health.set_warnings((0..12).map(|i| format!("w{i}")).collect());
        assert!(health.notes().contains("warning: w9\n"));
        assert!(health.notes().contains("2 more"));
    }
}
