//! The API-server harness itself: a real kube-apiserver answers, survives restarts, enforces RBAC,
//! and deploy/zt-agent.yaml is accepted by it and grants the agent exactly the reads it needs.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use zt_tests::apiserver::{ApiServer, KUBE_VERSION, Proxy, User};

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
async fn the_uninstall_daemonset_is_accepted() {
    let server = ApiServer::start().expect("start the API server");
    server
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest()))
        .expect("apply deploy/zt-agent.yaml");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/zt-uninstall.yaml");
    let uninstall =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    server
        .kubectl_stdin(&["apply", "-f", "-"], Some(&uninstall))
        .expect("apply deploy/zt-uninstall.yaml");
    let client = server.client(User::Admin).await.expect("admin client");
    let ds = Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client, "zt-system")
        .get("zt-uninstall")
        .await
        .expect("the uninstall DaemonSet exists");
    let spec = ds.spec.and_then(|s| s.template.spec).expect("a pod spec");
    let init = &spec.init_containers.expect("an init container")[0];
    assert_eq!(
        init.args.as_deref().unwrap_or_default()[0],
        "uninstall",
        "it runs zt-agent uninstall"
    );
    assert_eq!(
        spec.host_network,
        Some(true),
        "in the host's network namespace"
    );
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

/// A network namespace that exists for one test.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "bring up lo in {name}");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_proxy_reaches_the_server_from_a_namespace_and_cuts_on_demand() {
    let server = ApiServer::start().expect("start the API server");
    // The process id keeps two runs at once apart.
    let netns = Netns::new(format!("ztkube-{}-proxy", std::process::id()));
    let proxy = Proxy::start(&netns.0, server.addr()).expect("start the proxy");
    let kubeconfig = server
        .kubeconfig_via(User::Admin, proxy.port())
        .expect("kubeconfig");
    let kubectl = |args: &[&str]| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns.0,
                "kubectl",
                "--request-timeout=5s",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    };
    // The namespace has no route to the machine: only the proxy gets through.
    let direct = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.0,
            "kubectl",
            "--request-timeout=5s",
            "--kubeconfig",
        ])
        .arg(server.kubeconfig(User::Admin))
        .args(["get", "--raw", "/readyz"])
        .output()
        .expect("run kubectl");
    assert!(
        !direct.status.success(),
        "the server must not be reachable without the proxy"
    );

    let out = kubectl(&["get", "--raw", "/readyz"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A watch through the proxy ends when the proxy cuts it.
    let mut watch = Command::new("ip")
        .args(["netns", "exec", &netns.0, "kubectl", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["get", "namespaces", "--watch", "--output=name"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a watch");
    std::thread::sleep(Duration::from_secs(2));
    assert!(watch.try_wait().unwrap().is_none(), "the watch runs");
    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(10);
    while watch.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = watch.kill();
            panic!("the watch outlived the cut");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    proxy.refuse(true);
    assert!(
        !kubectl(&["get", "--raw", "/readyz"]).status.success(),
        "refused while partitioned"
    );
    proxy.refuse(false);
    assert!(
        kubectl(&["get", "--raw", "/readyz"]).status.success(),
        "back after the partition"
    );
}

/// Every manifest of deploy/ — the kustomization (`kubectl kustomize deploy/`, what `kubectl
/// apply -k deploy/` applies), the uninstall DaemonSet and the demo's — passes `kubectl apply --dry-run=server`: the API
/// server's own validation and defaulting, with nothing stored. Namespaces are created first
/// (a server-side dry run of an object in a namespace that does not exist yet fails).
#[tokio::test]
async fn every_deploy_manifest_passes_a_server_side_dry_run() {
    let server = ApiServer::start().expect("start the API server");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let kustomized = Command::new("kubectl")
        .arg("kustomize")
        .arg(&deploy)
        .output()
        .expect("kubectl kustomize");
    assert!(
        kustomized.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&kustomized.stderr)
    );
    let mut sets = vec![(
        "kubectl kustomize deploy/".to_owned(),
        String::from_utf8(kustomized.stdout).unwrap(),
    )];
    // Outside the kustomization: the uninstall DaemonSet (docs/operations.md).
    sets.push((
        "deploy/zt-uninstall.yaml".to_owned(),
        std::fs::read_to_string(deploy.join("zt-uninstall.yaml")).unwrap(),
    ));
    for dir in ["demo/app", "demo/zero-trust"] {
        let mut files: Vec<_> = std::fs::read_dir(deploy.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            sets.push((
                file.display().to_string(),
                std::fs::read_to_string(&file).unwrap(),
            ));
        }
    }
    assert!(sets.len() >= 5, "deploy/ manifests: {}", sets.len());
    let mut namespaces = std::collections::BTreeSet::new();
    for (_, yaml) in &sets {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
            if let Some(ns) = value["metadata"]["namespace"].as_str() {
                namespaces.insert(ns.to_owned());
            }
            if value["kind"] == "Namespace" {
                namespaces.insert(value["metadata"]["name"].as_str().unwrap().to_owned());
            }
        }
    }
    for ns in &namespaces {
        if ns != "default" {
            server.kubectl(&["create", "namespace", ns]).unwrap();
        }
    }
    for (name, yaml) in &sets {
        let out = server
            .kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(yaml))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(out.contains("(server dry run)"), "{name}: {out}");
    }
    // Nothing was stored: the dry run of the DaemonSet left no DaemonSet.
    let stored = server
        .kubectl(&["-n", "zt-system", "get", "daemonsets", "-o", "name"])
        .unwrap();
    assert!(stored.trim().is_empty(), "{stored}");
    // A broken manifest is refused (the check can fail).
    let broken = sets[0].1.replace("maxUnavailable: 1", "maxUnavailable: -1");
    assert!(
        server
            .kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(&broken))
            .is_err(),
        "a DaemonSet with maxUnavailable -1 passed the dry run"
    );
}
