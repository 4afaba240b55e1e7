//! `--source kube`: Namespaces, Pods (cluster-wide: remote pods are the peers) and NetworkPolicies
//! from the API server, as [`SourceEvent`]s.
//!
//! ```text
//!  watcher(DynamicObject) ─▶ backoff ─▶ strip ─▶ reflector store ─▶ Tracker ─▶ Gate ─▶ events
//!      one per kind            (default)   managedFields  (the re-list      decode,   first Resets
//!                                          last-applied   buffer)           last good  back to back
//! ```
//! - Every (re)list completion (`InitDone`) becomes a `Reset` built from the reflector's store, so
//!   deletes missed while a watch was down are never relied on: the re-list is the truth.
//! - Objects are watched untyped and decoded one by one: an object that does not decode is counted
//!   (`zt_source_invalid_objects_total`) and skipped, and never fails the list it came in. If an
//!   earlier version decoded, that last good version stays — dropping a policy because its newer
//!   version is unreadable could open what it closed.
//! - `metadata.managedFields` and the last-applied annotation are stripped; `status` is kept (the pod
//!   IPs live there).
//! - The first Resets of all three kinds are delivered back to back, Namespaces, Pods, then
//!   NetworkPolicies, and nothing before them: a consumer that drains what is queued before it
//!   syncs never programs a half-listed cluster (policies without their pods would cut flows).

use std::collections::{BTreeMap, HashMap};

use ::kube::{
    Api, Client, ResourceExt as _,
    api::{ApiResource, DynamicObject},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use futures::{StreamExt as _, future};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::sync::mpsc;

use crate::resource::{Kind, Resource, SourceEvent};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const KINDS: [Kind; 3] = [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy];

/// The source's counters, labelled by kind.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    invalid_objects: Family<KindLabel, Counter>,
    resets: Family<KindLabel, Counter>,
    watch_errors: Family<KindLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

impl Metrics {
    /// Counters registered in `registry` (prefix it with `zt_source` through a sub-registry or not).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "zt_source_invalid_objects",
            "Objects from the API server that did not decode and were skipped",
            metrics.invalid_objects.clone(),
        );
        registry.register(
            "zt_source_resets",
            "Completed (re)lists of a kind, each followed by a full resync",
            metrics.resets.clone(),
        );
        registry.register(
            "zt_source_watch_errors",
            "Failed lists and watches (retried with backoff)",
            metrics.watch_errors.clone(),
        );
        metrics
    }

    /// How many objects of `kind` failed to decode so far.
    pub fn invalid_objects(&self, kind: Kind) -> u64 {
        self.invalid_objects.get_or_create(&label(kind)).get()
    }

    /// How many lists or watches of `kind` failed so far.
    pub fn watch_errors(&self, kind: Kind) -> u64 {
        self.watch_errors.get_or_create(&label(kind)).get()
    }

    /// How many (re)lists of `kind` completed so far.
    pub fn resets(&self, kind: Kind) -> u64 {
        self.resets.get_or_create(&label(kind)).get()
    }
}

fn label(kind: Kind) -> KindLabel {
    KindLabel {
        kind: format!("{kind:?}"),
    }
}

/// Watches the three kinds until `events` is closed (the receiver dropped) or the future is
/// dropped; list and watch failures are retried with kube-rs's default backoff and never end it.
pub async fn run(
    client: Client,
    events: mpsc::Sender<SourceEvent>,
    metrics: Metrics,
) -> crate::Result<()> {
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(events.max_capacity());
    let watchers = future::join_all(
        KINDS.map(|kind| watch(kind, client.clone(), tx.clone(), metrics.clone())),
    );
    drop(tx);
    let forward = async {
        let mut gate = Gate::default();
        while let Some(event) = rx.recv().await {
            for event in gate.push(event) {
                if events.send(event).await.is_err() {
                    return;
                }
            }
        }
    };
    // The watchers end only when their sender fails, that is when `forward` has stopped; a closed
    // `events` ends everything even while the cluster is quiet.
    tokio::select! {
        _ = watchers => {}
        () = forward => {}
        () = events.closed() => {}
    }
    Ok(())
}

/// One kind's watcher; returns when `events` is closed.
async fn watch(kind: Kind, client: Client, events: mpsc::Sender<SourceEvent>, metrics: Metrics) {
    let resource = api_resource(kind);
    let api = Api::<DynamicObject>::all_with(client, &resource);
    let writer = reflector::store::Writer::new(resource);
    let store: Store<DynamicObject> = writer.as_reader();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(strip)
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let mut tracker = Tracker::new(kind);
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(watcher::Event::Apply(obj)) => tracker.apply(&obj),
            Ok(watcher::Event::Delete(obj)) => Some(tracker.delete(&obj)),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
            Ok(watcher::Event::InitDone) => {
                metrics.resets.get_or_create(&label(kind)).inc();
                Some(tracker.reset(store.state().iter().map(AsRef::as_ref)))
            }
            Err(error) => {
                metrics.watch_errors.get_or_create(&label(kind)).inc();
                tracing::warn!(%error, ?kind, "watch failed; retrying with backoff");
                None
            }
        };
        let invalid = tracker.take_invalid();
        if invalid > 0 {
            metrics
                .invalid_objects
                .get_or_create(&label(kind))
                .inc_by(invalid);
        }
        if let Some(event) = event
            && events.send(event).await.is_err()
        {
            return;
        }
    }
}

fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
        Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
    }
}

/// Drops what zt never reads and what is large: field managers and kubectl's copy of the object.
/// `status` stays: the pod IPs live there.
fn strip(obj: &mut DynamicObject) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut().remove(LAST_APPLIED);
}

/// Decodes one object as `kind`.
fn decode(kind: Kind, obj: &DynamicObject) -> Result<Resource, serde_json::Error> {
    let value = serde_json::to_value(obj)?;
    Ok(match kind {
        Kind::Namespace => Resource::Namespace(serde_json::from_value(value)?),
        Kind::Pod => Resource::Pod(serde_json::from_value(value)?),
        Kind::NetworkPolicy => Resource::NetworkPolicy(serde_json::from_value(value)?),
    })
}

type Key = (Option<String>, String);

fn key(obj: &DynamicObject) -> Key {
    (obj.metadata.namespace.clone(), obj.name_any())
}

/// One kind's decoding state: the last version of every object that decoded.
struct Tracker {
    kind: Kind,
    last_good: HashMap<Key, Resource>,
    invalid: u64,
}

impl Tracker {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            last_good: HashMap::new(),
            invalid: 0,
        }
    }

    /// An added or changed object; `None` when it does not decode (its last good version stays).
    fn apply(&mut self, obj: &DynamicObject) -> Option<SourceEvent> {
        let resource = self.decode(obj)?;
        self.last_good.insert(key(obj), resource.clone());
        Some(SourceEvent::Apply(resource))
    }

    /// A deleted object; its name is enough, whatever its body.
    fn delete(&mut self, obj: &DynamicObject) -> SourceEvent {
        let (namespace, name) = key(obj);
        self.last_good.remove(&(namespace.clone(), name.clone()));
        SourceEvent::Delete {
            kind: self.kind,
            namespace,
            name,
        }
    }

    /// A completed (re)list: everything the server has now. An object that does not decode keeps
    /// its last good version if it had one, and is absent otherwise.
    fn reset<'a>(&mut self, listed: impl IntoIterator<Item = &'a DynamicObject>) -> SourceEvent {
        let mut last_good = HashMap::new();
        for obj in listed {
            let key = key(obj);
            let resource = match self.decode(obj) {
                Some(resource) => resource,
                None => match self.last_good.remove(&key) {
                    Some(previous) => previous,
                    None => continue,
                },
            };
            last_good.insert(key, resource);
        }
        self.last_good = last_good;
        let mut objects: Vec<(&Key, &Resource)> = self.last_good.iter().collect();
        objects.sort_by(|a, b| a.0.cmp(b.0));
        SourceEvent::Reset {
            kind: self.kind,
            objects: objects.into_iter().map(|(_, r)| r.clone()).collect(),
        }
    }

    /// How many objects failed to decode since the last call.
    fn take_invalid(&mut self) -> u64 {
        std::mem::take(&mut self.invalid)
    }

    fn decode(&mut self, obj: &DynamicObject) -> Option<Resource> {
        match decode(self.kind, obj) {
            Ok(resource) => Some(resource),
            Err(error) => {
                self.invalid += 1;
                let (namespace, name) = key(obj);
                tracing::warn!(%error, kind = ?self.kind, ?namespace, name, "skipping an object that does not decode");
                None
            }
        }
    }
}

/// Holds everything until every kind has had its first Reset, then releases the Resets back to
/// back in a fixed order, followed by what came after them; from then on it passes events through.
#[derive(Default)]
struct Gate {
    open: bool,
    resets: BTreeMap<Kind, SourceEvent>,
    held: Vec<SourceEvent>,
}

impl Gate {
    fn push(&mut self, event: SourceEvent) -> Vec<SourceEvent> {
        if self.open {
            return vec![event];
        }
        match event {
            SourceEvent::Reset { kind, .. } => {
                // A second Reset of a kind before the others arrived replaces the first, and
                // supersedes what that kind held since.
                self.held.retain(|held| event_kind(held) != kind);
                self.resets.insert(kind, event);
            }
            event => self.held.push(event),
        }
        if self.resets.len() < KINDS.len() {
            return Vec::new();
        }
        self.open = true;
        let mut out: Vec<SourceEvent> = std::mem::take(&mut self.resets).into_values().collect();
        out.append(&mut self.held);
        out
    }
}

fn event_kind(event: &SourceEvent) -> Kind {
    match event {
        SourceEvent::Apply(resource) => resource.kind(),
        SourceEvent::Delete { kind, .. } | SourceEvent::Reset { kind, .. } => *kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        body: serde_json::Value,
    ) -> DynamicObject {
        let mut obj = DynamicObject::new(name, &api_resource(kind)).data(body);
        obj.metadata.namespace = namespace.map(str::to_owned);
        obj
    }

    fn pod(name: &str, ip: &str) -> DynamicObject {
        dynamic(
            Kind::Pod,
            Some("ns"),
            name,
            serde_json::json!({"status": {"podIP": ip}}),
        )
    }

    /// A pod whose `spec.containers` is a string: valid JSON, not a Pod.
    fn broken_pod(name: &str) -> DynamicObject {
        dynamic(
            Kind::Pod,
            Some("ns"),
            name,
            serde_json::json!({"spec": {"containers": "nope"}}),
        )
    }

    fn pod_ip(resource: &Resource) -> Option<String> {
        match resource {
            Resource::Pod(pod) => pod.status.as_ref()?.pod_ip.clone(),
            _ => None,
        }
    }

    fn reset_names(event: &SourceEvent) -> Vec<(String, Option<String>)> {
        match event {
            SourceEvent::Reset { objects, .. } => {
                objects.iter().map(|r| (r_name(r), pod_ip(r))).collect()
            }
            other => panic!("expected a Reset, got {other:?}"),
        }
    }

    fn r_name(resource: &Resource) -> String {
        match resource {
            Resource::Namespace(o) => o.name_any(),
            Resource::Pod(o) => o.name_any(),
            Resource::NetworkPolicy(o) => o.name_any(),
        }
    }

    #[test]
    fn decodes_each_kind_and_keeps_pod_status() {
        let ns = dynamic(
            Kind::Namespace,
            None,
            "a",
            serde_json::json!({"metadata": {"labels": {"x": "y"}}}),
        );
        assert!(matches!(
            decode(Kind::Namespace, &ns),
            Ok(Resource::Namespace(_))
        ));
        let policy = dynamic(
            Kind::NetworkPolicy,
            Some("a"),
            "deny",
            serde_json::json!({"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        );
        assert!(matches!(
            decode(Kind::NetworkPolicy, &policy),
            Ok(Resource::NetworkPolicy(_))
        ));
        let decoded = decode(Kind::Pod, &pod("p", "10.0.0.7")).expect("a pod decodes");
        assert_eq!(pod_ip(&decoded).as_deref(), Some("10.0.0.7"));
    }

    #[test]
    fn strip_drops_managed_fields_and_last_applied_but_keeps_status() {
        let mut obj = pod("p", "10.0.0.7");
        obj.metadata.managed_fields = Some(vec![Default::default()]);
        obj.annotations_mut()
            .insert(LAST_APPLIED.into(), "{}".into());
        obj.annotations_mut().insert("keep".into(), "me".into());
        strip(&mut obj);
        assert!(obj.managed_fields().is_empty());
        assert_eq!(obj.annotations().keys().collect::<Vec<_>>(), ["keep"]);
        assert_eq!(
            pod_ip(&decode(Kind::Pod, &obj).unwrap()).as_deref(),
            Some("10.0.0.7")
        );
    }

    #[test]
    fn an_undecodable_object_is_counted_and_skipped() {
        let mut tracker = Tracker::new(Kind::Pod);
        assert!(tracker.apply(&broken_pod("bad")).is_none());
        let reset = tracker.reset([&pod("good", "10.0.0.1"), &broken_pod("bad")]);
        assert_eq!(
            reset_names(&reset),
            [("good".to_owned(), Some("10.0.0.1".to_owned()))]
        );
        assert_eq!(tracker.take_invalid(), 2);
        assert_eq!(tracker.take_invalid(), 0);
    }

    #[test]
    fn an_undecodable_update_keeps_the_last_good_version_through_a_relist() {
        let mut tracker = Tracker::new(Kind::Pod);
        assert!(matches!(
            tracker.apply(&pod("p", "10.0.0.1")),
            Some(SourceEvent::Apply(_))
        ));
        assert!(tracker.apply(&broken_pod("p")).is_none());
        let reset = tracker.reset([&broken_pod("p")]);
        assert_eq!(
            reset_names(&reset),
            [("p".to_owned(), Some("10.0.0.1".to_owned()))]
        );
        // Once deleted, there is no last good version to fall back on.
        assert!(
            matches!(tracker.delete(&broken_pod("p")), SourceEvent::Delete { ref name, .. } if name == "p")
        );
        assert!(reset_names(&tracker.reset([&broken_pod("p")])).is_empty());
    }

    #[test]
    fn a_reset_forgets_what_the_relist_no_longer_has() {
        let mut tracker = Tracker::new(Kind::Pod);
        tracker.reset([&pod("a", "10.0.0.1"), &pod("b", "10.0.0.2")]);
        let reset = tracker.reset([&pod("b", "10.0.0.3")]);
        assert_eq!(
            reset_names(&reset),
            [("b".to_owned(), Some("10.0.0.3".to_owned()))]
        );
        assert_eq!(tracker.last_good.len(), 1);
    }

    #[test]
    fn delete_carries_namespace_and_name() {
        let mut tracker = Tracker::new(Kind::NetworkPolicy);
        let obj = dynamic(
            Kind::NetworkPolicy,
            Some("prod"),
            "deny",
            serde_json::json!({}),
        );
        match tracker.delete(&obj) {
            SourceEvent::Delete {
                kind,
                namespace,
                name,
            } => {
                assert_eq!(
                    (kind, namespace.as_deref(), name.as_str()),
                    (Kind::NetworkPolicy, Some("prod"), "deny")
                );
            }
            other => panic!("expected a Delete, got {other:?}"),
        }
    }

    fn reset(kind: Kind) -> SourceEvent {
        SourceEvent::Reset {
            kind,
            objects: Vec::new(),
        }
    }

    fn delete(kind: Kind, name: &str) -> SourceEvent {
        SourceEvent::Delete {
            kind,
            namespace: None,
            name: name.into(),
        }
    }

    fn shape(events: &[SourceEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                SourceEvent::Reset { kind, .. } => format!("reset {kind:?}"),
                SourceEvent::Delete { kind, name, .. } => format!("delete {kind:?} {name}"),
                SourceEvent::Apply(r) => format!("apply {:?}", r.kind()),
            })
            .collect()
    }

    #[test]
    fn the_gate_releases_the_first_resets_together_in_order() {
        let mut gate = Gate::default();
        assert!(gate.push(reset(Kind::NetworkPolicy)).is_empty());
        assert!(gate.push(delete(Kind::NetworkPolicy, "x")).is_empty());
        assert!(gate.push(reset(Kind::Pod)).is_empty());
        let out = gate.push(reset(Kind::Namespace));
        assert_eq!(
            shape(&out),
            [
                "reset Namespace",
                "reset Pod",
                "reset NetworkPolicy",
                "delete NetworkPolicy x"
            ]
        );
        assert_eq!(shape(&gate.push(delete(Kind::Pod, "y"))), ["delete Pod y"]);
        assert_eq!(shape(&gate.push(reset(Kind::Pod))), ["reset Pod"]);
    }

    #[test]
    fn a_second_reset_before_the_gate_opens_supersedes_what_its_kind_held() {
        let mut gate = Gate::default();
        gate.push(reset(Kind::Pod));
        gate.push(delete(Kind::Pod, "stale"));
        gate.push(delete(Kind::Namespace, "other"));
        gate.push(reset(Kind::Pod));
        gate.push(reset(Kind::Namespace));
        let out = gate.push(reset(Kind::NetworkPolicy));
        assert_eq!(
            shape(&out),
            ["reset Namespace", "reset Pod", "reset NetworkPolicy"]
        );
    }
}
