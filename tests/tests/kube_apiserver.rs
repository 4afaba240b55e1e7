//! The API-server harness itself: a real kube-apiserver answers, survives restarts, enforces RBAC,
//! and deploy/zt-agent.yaml is accepted by it and grants the agent exactly the reads it needs.

use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use zt_tests::apiserver::{ApiServer, KUBE_VERSION, User};

fn manifest() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/zt-agent.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn serves_its_version_and_survives_a_restart() {
    let mut server = ApiServer::start().expect("start the API server");
    let client = server.client(User::Admin).await.expect("admin client");
    let version = client.apiserver_version().await.expect("GET /version");
    assert_eq!(version.git_version, KUBE_VERSION);

    server
        .kubectl(&["create", "namespace", "ztkube-survivor"])
        .expect("create namespace");
    server.restart_apiserver().expect("restart");
    let namespaces = Api::<Namespace>::all(client);
    let ns = namespaces
        .get("ztkube-survivor")
        .await
        .expect("the namespace outlives the restart");
    assert_eq!(ns.metadata.name.as_deref(), Some("ztkube-survivor"));
}

#[tokio::test]
async fn deploy_manifest_is_accepted_and_its_role_reads_but_never_writes() {
    let server = ApiServer::start().expect("start the API server");
    server
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest()))
        .expect("apply deploy/zt-agent.yaml");
    let agent = server.client(User::Agent).await.expect("agent client");
    let lp = ListParams::default();

    Api::<Pod>::all(agent.clone())
        .list(&lp)
        .await
        .expect("the agent lists pods cluster-wide");
    Api::<Namespace>::all(agent.clone())
        .list(&lp)
        .await
        .expect("the agent lists namespaces");
    Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::all(agent.clone())
        .list(&lp)
        .await
        .expect("the agent lists network policies");

    let mut ns = Namespace::default();
    ns.metadata.name = Some("ztkube-forbidden".into());
    let err = Api::<Namespace>::all(agent.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect_err("the agent must not create namespaces");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::all(agent)
        .list(&lp)
        .await;
    assert!(
        matches!(secrets, Err(kube::Error::Api(ref s)) if s.code == 403),
        "the agent must not read secrets"
    );
}

#[test]
fn etcd_delete_refuses_a_missing_key() {
    let server = ApiServer::start().expect("start the API server");
    let err = server
        .etcd_delete("/registry/pods/nowhere/nothing")
        .expect_err("nothing to delete");
    assert!(err.to_string().contains("did not delete"), "{err}");
}
