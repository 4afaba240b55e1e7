//! `--source kube` against a real kube-apiserver: what the API server holds arrives as Resets, then
//! changes arrive as Apply/Delete, and after an API-server restart a re-list reports the deletes
//! no watch could see. The source runs as the agent's service account from deploy/zt-agent.yaml.

use std::{collections::BTreeSet, path::Path, time::Duration};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::sync::mpsc;
use zt_agent::{
    resource::{Kind, Resource, SourceEvent},
    runtime::source::kube::{self as source, Metrics},
};
use zt_tests::apiserver::{ApiServer, Proxy, User};

const NS: &str = "ztkube-src";
const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    server: ApiServer,
    pods: Api<Pod>,
    policies: Api<NetworkPolicy>,
}

fn manifest() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/zt-agent.yaml"))
        .expect("read deploy/zt-agent.yaml")
}

async fn cluster() -> Cluster {
    let cluster = cluster_without_rbac().await;
    cluster
        .server
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest()))
        .expect("apply the agent's RBAC");
    cluster
}

async fn cluster_without_rbac() -> Cluster {
    let server = ApiServer::start().expect("start the API server");
    let admin = server.client(User::Admin).await.expect("admin client");
    let mut ns = Namespace::default();
    ns.metadata.name = Some(NS.into());
    ns.labels_mut().insert("team".into(), "a".into());
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    Cluster {
        server,
        pods: Api::namespaced(admin.clone(), NS),
        policies: Api::namespaced(admin, NS),
    }
}

impl Cluster {
    /// A pod bound to a node, with the address a kubelet would have reported.
    async fn create_pod(&self, name: &str, app: &str, ip: &str) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": "ztkube-node", "containers": [{"name": "c", "image": "none",
                     "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]},
        }))
        .unwrap();
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        self.pods
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("set pod status");
    }

    async fn create_policy(&self, name: &str) {
        let policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                  "ports": [{"port": 80, "protocol": "TCP"}]}]},
        }))
        .unwrap();
        self.policies
            .create(&PostParams::default(), &policy)
            .await
            .expect("create policy");
    }
}

/// Starts the source as the agent and returns its events.
async fn start_source(
    server: &ApiServer,
) -> (
    mpsc::Receiver<SourceEvent>,
    Metrics,
    tokio::task::JoinHandle<()>,
) {
    source_with(server.client(User::Agent).await.expect("agent client"))
}

fn source_with(
    client: kube::Client,
) -> (
    mpsc::Receiver<SourceEvent>,
    Metrics,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(256);
    let metrics = Metrics::default();
    let task = tokio::spawn({
        let metrics = metrics.clone();
        async move {
            source::run(client, tx, metrics)
                .await
                .expect("the source ends cleanly")
        }
    });
    (rx, metrics, task)
}

/// What a consumer of the events believes the cluster holds, (kind, namespace/name), and a log of
/// the events' shapes.
#[derive(Default)]
struct Mirror {
    objects: BTreeSet<(Kind, String)>,
    log: Vec<String>,
}

impl Mirror {
    fn apply(&mut self, event: SourceEvent) {
        self.log.push(match &event {
            SourceEvent::Apply(r) => format!("apply {:?} {}", r.kind(), full_name(r)),
            SourceEvent::Delete { kind, name, .. } => format!("delete {kind:?} {name}"),
            SourceEvent::Reset { kind, .. } => format!("reset {kind:?}"),
        });
        match event {
            SourceEvent::Apply(resource) => {
                self.objects.insert((resource.kind(), full_name(&resource)));
            }
            SourceEvent::Delete {
                kind,
                namespace,
                name,
            } => {
                let full = namespace.map_or(name.clone(), |ns| format!("{ns}/{name}"));
                self.objects.remove(&(kind, full));
            }
            SourceEvent::Reset { kind, objects } => {
                self.objects.retain(|(k, _)| *k != kind);
                self.objects
                    .extend(objects.iter().map(|r| (kind, full_name(r))));
            }
        }
    }

    fn of(&self, kind: Kind) -> Vec<String> {
        let ours = |n: &&String| n.starts_with(&format!("{NS}/"));
        self.objects
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n)
            .filter(ours)
            .cloned()
            .collect()
    }

    /// Applies events until `done` holds.
    async fn until(
        &mut self,
        rx: &mut mpsc::Receiver<SourceEvent>,
        what: &str,
        done: impl Fn(&Mirror) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(event)) => self.apply(event),
                Ok(None) => panic!("the source stopped while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {WAIT:?}; the mirror holds {:?}",
                    self.objects
                ),
            }
        }
    }
}

fn full_name(resource: &Resource) -> String {
    let meta = match resource {
        Resource::Namespace(o) => &o.metadata,
        Resource::Pod(o) => &o.metadata,
        Resource::NetworkPolicy(o) => &o.metadata,
    };
    let name = meta.name.clone().unwrap_or_default();
    meta.namespace
        .as_ref()
        .map_or(name.clone(), |ns| format!("{ns}/{name}"))
}

fn ours(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("{NS}/{n}")).collect()
}

/// The next event `want` accepts, skipping others (system namespaces, status echoes).
async fn expect(
    rx: &mut mpsc::Receiver<SourceEvent>,
    what: &str,
    want: impl Fn(&SourceEvent) -> bool,
) -> SourceEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) if want(&event) => return event,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the source stopped while waiting for {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }
}

fn name(resource: &Resource) -> String {
    match resource {
        Resource::Namespace(o) => o.name_any(),
        Resource::Pod(o) => o.name_any(),
        Resource::NetworkPolicy(o) => o.name_any(),
    }
}

fn reset_of(kind: Kind) -> impl Fn(&SourceEvent) -> bool {
    move |e| matches!(e, SourceEvent::Reset { kind: k, .. } if *k == kind)
}

fn names(event: &SourceEvent) -> Vec<String> {
    let SourceEvent::Reset { objects, .. } = event else {
        panic!("not a Reset: {event:?}")
    };
    let mut names: Vec<String> = objects.iter().map(name).collect();
    names.sort();
    names
}

fn pod_of(event: &SourceEvent) -> &Pod {
    match event {
        SourceEvent::Apply(Resource::Pod(pod)) => pod,
        other => panic!("not a pod apply: {other:?}"),
    }
}

fn applied(kind: Kind, object: &'static str) -> impl Fn(&SourceEvent) -> bool {
    move |e| matches!(e, SourceEvent::Apply(r) if r.kind() == kind && name(r) == object)
}

fn deleted(kind: Kind, object: &'static str) -> impl Fn(&SourceEvent) -> bool {
    move |e| {
        matches!(e, SourceEvent::Delete { kind: k, namespace, name } if *k == kind && name == object
        && namespace.as_deref() == if kind == Kind::Namespace { None } else { Some(NS) })
    }
}

#[tokio::test]
async fn initial_state_arrives_as_resets_in_order_before_anything_else() {
    let cluster = cluster().await;
    cluster.create_pod("web", "web", "10.77.0.10").await;
    cluster.create_policy("web-ingress").await;
    let (mut rx, metrics, task) = start_source(&cluster.server).await;

    let first: Vec<SourceEvent> = [
        tokio::time::timeout(WAIT, rx.recv()).await,
        tokio::time::timeout(WAIT, rx.recv()).await,
        tokio::time::timeout(WAIT, rx.recv()).await,
    ]
    .into_iter()
    .map(|e| e.expect("an event in time").expect("the source runs"))
    .collect();
    assert!(reset_of(Kind::Namespace)(&first[0]), "{:?}", first[0]);
    assert!(reset_of(Kind::Pod)(&first[1]), "{:?}", first[1]);
    assert!(reset_of(Kind::NetworkPolicy)(&first[2]), "{:?}", first[2]);
    assert!(
        names(&first[0]).contains(&NS.to_owned()),
        "{:?}",
        names(&first[0])
    );
    assert_eq!(names(&first[1]), ["web"]);
    assert_eq!(names(&first[2]), ["web-ingress"]);

    let SourceEvent::Reset { objects, .. } = &first[1] else {
        unreachable!()
    };
    let Resource::Pod(pod) = &objects[0] else {
        panic!("a pod")
    };
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
        Some("10.77.0.10"),
        "pod status is kept"
    );
    assert!(
        pod.metadata
            .managed_fields
            .as_ref()
            .is_none_or(Vec::is_empty),
        "managed fields are stripped"
    );
    for kind in [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy] {
        assert_eq!(metrics.resets(kind), 1, "{kind:?}");
        assert_eq!(metrics.invalid_objects(kind), 0, "{kind:?}");
    }
    drop(rx);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the source stops when its receiver is gone")
        .unwrap();
}

#[tokio::test]
async fn creates_edits_and_deletes_arrive_as_apply_and_delete() {
    let cluster = cluster().await;
    let (mut rx, _metrics, _task) = start_source(&cluster.server).await;
    expect(&mut rx, "the policy reset", reset_of(Kind::NetworkPolicy)).await;

    cluster.create_pod("client", "client", "10.77.0.20").await;
    let with_ip = expect(&mut rx, "the pod with its address", |e| {
        applied(Kind::Pod, "client")(e)
            && pod_of(e)
                .status
                .as_ref()
                .is_some_and(|s| s.pod_ip.is_some())
    })
    .await;
    assert_eq!(
        pod_of(&with_ip).status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.77.0.20")
    );

    let relabel = json!({"metadata": {"labels": {"app": "web"}}});
    cluster
        .pods
        .patch("client", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .expect("relabel");
    let relabelled = expect(&mut rx, "the relabelled pod", |e| {
        applied(Kind::Pod, "client")(e) && pod_of(e).labels().get("app").is_some_and(|v| v == "web")
    })
    .await;
    assert_eq!(
        pod_of(&relabelled)
            .status
            .as_ref()
            .unwrap()
            .pod_ip
            .as_deref(),
        Some("10.77.0.20")
    );

    cluster.create_policy("web-ingress").await;
    expect(
        &mut rx,
        "the new policy",
        applied(Kind::NetworkPolicy, "web-ingress"),
    )
    .await;
    let edit = json!({"spec": {"ingress": []}});
    cluster
        .policies
        .patch("web-ingress", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("edit");
    expect(&mut rx, "the edited policy", |e| {
        matches!(e, SourceEvent::Apply(Resource::NetworkPolicy(p)) if p.name_any() == "web-ingress"
            && p.spec.as_ref().and_then(|s| s.ingress.as_ref()).is_none_or(Vec::is_empty))
    })
    .await;

    cluster
        .policies
        .delete("web-ingress", &DeleteParams::default())
        .await
        .expect("delete policy");
    expect(
        &mut rx,
        "the policy delete",
        deleted(Kind::NetworkPolicy, "web-ingress"),
    )
    .await;
    // No kubelet confirms a graceful delete of a bound pod: delete it at once, as a force delete does.
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    cluster
        .pods
        .delete("client", &now)
        .await
        .expect("delete pod");
    expect(&mut rx, "the pod delete", deleted(Kind::Pod, "client")).await;

    let ns_label = json!({"metadata": {"labels": {"team": "b"}}});
    Api::<Namespace>::all(cluster.pods.clone().into_client())
        .patch(NS, &PatchParams::default(), &Patch::Merge(&ns_label))
        .await
        .expect("relabel namespace");
    expect(&mut rx, "the relabelled namespace", |e| {
        matches!(e, SourceEvent::Apply(Resource::Namespace(n)) if n.name_any() == NS
            && n.labels().get("team").is_some_and(|v| v == "b"))
    })
    .await;
}

#[tokio::test]
async fn a_restart_relists_and_the_reset_reports_deletes_no_watch_saw() {
    let mut cluster = cluster().await;
    cluster.create_pod("stays", "web", "10.77.0.30").await;
    cluster.create_pod("vanishes", "client", "10.77.0.31").await;
    cluster.create_policy("vanishes-too").await;
    let (mut rx, metrics, _task) = start_source(&cluster.server).await;
    let mut mirror = Mirror::default();
    mirror
        .until(&mut rx, "the first lists", |m| {
            m.of(Kind::Pod) == ours(&["stays", "vanishes"])
                && m.of(Kind::NetworkPolicy) == ours(&["vanishes-too"])
        })
        .await;

    // While the API server is down, delete straight from etcd: no watch event can ever report it.
    cluster.server.stop_apiserver();
    cluster
        .server
        .etcd_delete(&format!("/registry/pods/{NS}/vanishes"))
        .expect("delete the pod in etcd");
    cluster
        .server
        .etcd_delete(&format!("/registry/networkpolicies/{NS}/vanishes-too"))
        .expect("delete the policy in etcd");
    cluster
        .server
        .start_apiserver()
        .expect("start the API server again");
    let restarted = std::time::Instant::now();
    mirror.log.clear();
    mirror
        .until(&mut rx, "the re-lists after the restart", |m| {
            m.of(Kind::Pod) == ours(&["stays"]) && m.of(Kind::NetworkPolicy).is_empty()
        })
        .await;
    eprintln!(
        "figure: API server ready → re-lists delivered: {} ms",
        restarted.elapsed().as_millis()
    );
    assert!(
        mirror.log.iter().all(|e| !e.starts_with("delete")),
        "only a re-list can report these: {:?}",
        mirror.log
    );
    assert!(
        mirror.log.contains(&"reset Pod".to_owned()),
        "{:?}",
        mirror.log
    );
    assert!(
        mirror.log.contains(&"reset NetworkPolicy".to_owned()),
        "{:?}",
        mirror.log
    );
    assert!(metrics.resets(Kind::Pod) >= 2 && metrics.resets(Kind::NetworkPolicy) >= 2);

    // And the watches work again afterwards.
    cluster.create_pod("after", "web", "10.77.0.32").await;
    expect(
        &mut rx,
        "a pod created after the restart",
        applied(Kind::Pod, "after"),
    )
    .await;
}

#[tokio::test]
async fn a_cut_watch_resumes_and_a_partition_loses_no_change() {
    let cluster = cluster().await;
    cluster.create_pod("before", "web", "10.77.0.40").await;
    let proxy = Proxy::start_here(cluster.server.addr()).expect("start the proxy");
    let client = cluster
        .server
        .client_via(User::Agent, proxy.port())
        .await
        .expect("client via the proxy");
    let (mut rx, _metrics, _task) = source_with(client);
    let mut mirror = Mirror::default();
    mirror
        .until(&mut rx, "the first pods", |m| {
            m.of(Kind::Pod) == ours(&["before"])
        })
        .await;

    // Every watch breaks at once; they come back on their own.
    proxy.cut();
    cluster.create_pod("after-cut", "web", "10.77.0.41").await;
    mirror
        .until(&mut rx, "a pod created after the cut", |m| {
            m.of(Kind::Pod) == ours(&["after-cut", "before"])
        })
        .await;

    // A partition: nothing gets through while the cluster changes.
    proxy.refuse(true);
    proxy.cut();
    cluster.create_pod("during", "web", "10.77.0.42").await;
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    cluster
        .pods
        .delete("before", &now)
        .await
        .expect("delete pod");
    cluster.create_policy("made-while-away").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok(event) = rx.try_recv() {
        mirror.apply(event);
    }
    assert_eq!(
        mirror.of(Kind::Pod),
        ours(&["after-cut", "before"]),
        "nothing arrives while partitioned"
    );

    proxy.refuse(false);
    mirror
        .until(&mut rx, "the changes made while partitioned", |m| {
            m.of(Kind::Pod) == ours(&["after-cut", "during"])
                && m.of(Kind::NetworkPolicy) == ours(&["made-while-away"])
        })
        .await;
}

#[tokio::test]
async fn forbidden_lists_are_retried_until_access_is_granted() {
    let cluster = cluster_without_rbac().await;
    cluster.create_pod("web", "web", "10.77.0.50").await;
    let (mut rx, metrics, _task) = start_source(&cluster.server).await;
    let deadline = std::time::Instant::now() + WAIT;
    while metrics.watch_errors(Kind::Pod) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed list counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        rx.try_recv().is_err(),
        "nothing is reported before every kind is listed"
    );

    cluster
        .server
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest()))
        .expect("grant the agent's RBAC");
    let mut mirror = Mirror::default();
    mirror
        .until(&mut rx, "the lists once allowed", |m| {
            m.of(Kind::Pod) == ours(&["web"])
        })
        .await;
    assert_eq!(metrics.resets(Kind::Pod), 1);
}
