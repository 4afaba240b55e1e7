//! `--source kube` against a real kube-apiserver: what the API server holds arrives as Resets, then
//! changes arrive as Apply/Delete, and after an API-server restart a re-list reports the deletes
//! no watch could see. The source runs as the agent's service account from deploy/zt-agent.yaml.

use std::{path::Path, time::Duration};

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
use zt_tests::apiserver::{ApiServer, User};

const NS: &str = "ztkube-src";
const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    server: ApiServer,
    pods: Api<Pod>,
    policies: Api<NetworkPolicy>,
}

async fn cluster() -> Cluster {
    let server = ApiServer::start().expect("start the API server");
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/zt-agent.yaml"),
    )
    .expect("read deploy/zt-agent.yaml");
    server
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest))
        .expect("apply the agent's RBAC");
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
    let client = server.client(User::Agent).await.expect("agent client");
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
    let pods = expect(&mut rx, "the first pod reset", reset_of(Kind::Pod)).await;
    assert_eq!(names(&pods), ["stays", "vanishes"]);
    expect(
        &mut rx,
        "the first policy reset",
        reset_of(Kind::NetworkPolicy),
    )
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
        .expect("delete the policy");
    cluster
        .server
        .start_apiserver()
        .expect("start the API server again");

    let pods = expect(
        &mut rx,
        "a pod reset after the restart",
        reset_of(Kind::Pod),
    )
    .await;
    assert_eq!(names(&pods), ["stays"]);
    let policies = expect(
        &mut rx,
        "a policy reset after the restart",
        reset_of(Kind::NetworkPolicy),
    )
    .await;
    assert!(names(&policies).is_empty(), "{:?}", names(&policies));
    assert!(metrics.resets(Kind::Pod) >= 2);

    // And the watches work again afterwards.
    cluster.create_pod("after", "web", "10.77.0.32").await;
    expect(
        &mut rx,
        "a pod created after the restart",
        applied(Kind::Pod, "after"),
    )
    .await;
}
