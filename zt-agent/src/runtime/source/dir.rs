//! `--source dir:PATH`: a folder of manifests (see [`crate::manifests`]), followed as it changes.
//!
//! The folder is polled: every `interval` its manifest files' names and contents are hashed, and
//! when the hash changes the folder is read whole and sent as one `Reset` per kind (Namespaces,
//! Pods, then NetworkPolicies; the index makes unchanged kinds free). Polling catches every way
//! a file can change (editors' renames, `kubectl`-style atomic writes, bind-mounted ConfigMaps)
//! with no inotify limits to tune.
//!
//! A folder that does not read, parse or validate is reported and **not** applied: the last good
//! state stays enforced (applying a partial folder could drop a policy and open what it closed).
//! It is retried when its contents change again. Every read of a changed folder is reported to
//! the [`Metrics`] (`zt_manifest_loads_total{result}`, the last applied and rejected times,
//! `zt_manifest_rejected`) and the rejection's reason to `/readyz` through [`Health`].

use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::mpsc;

use super::super::metrics::{Health, Metrics};
use crate::{
    error::Result,
    manifests,
    resource::{Kind, Resource, SourceEvent},
};

/// Follows `dir` until `events` closes, reporting each read to `metrics` and `health`.
pub fn follow(
    dir: PathBuf,
    events: mpsc::Sender<SourceEvent>,
    interval: Duration,
    metrics: Metrics,
    health: std::sync::Arc<Health>,
) {
    let mut last: Option<u64> = None;
    let mut unlisted = false;
    loop {
        if events.is_closed() {
            return;
        }
        match fingerprint(&dir) {
            Ok(hash) if last != Some(hash) => {
                last = Some(hash);
                unlisted = false;
                match manifests::load_dir(&dir) {
                    Ok(resources) => {
                        tracing::info!(dir = %dir.display(), objects = resources.len(), "read the manifests");
                        metrics.manifests_applied(&health);
                        for event in resets(resources) {
                            if events.blocking_send(event).is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "manifests not applied; the last good state stays enforced");
                        metrics.manifests_rejected(&health, error.to_string());
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                if !unlisted {
                    tracing::warn!(%error, dir = %dir.display(), "cannot list the manifest folder");
                    metrics.manifests_rejected(&health, error.to_string());
                }
                unlisted = true;
                // Forget the hash so the folder is read again as soon as it lists.
                last = None;
                std::thread::sleep(interval);
                continue;
            }
        }
        std::thread::sleep(interval);
    }
}

/// One `Reset` per kind, Namespaces first so pods and policies never refer to a namespace the
/// index has not seen.
pub fn resets(resources: Vec<Resource>) -> Vec<SourceEvent> {
    let mut by_kind: [(Kind, Vec<Resource>); 3] = [
        (Kind::Namespace, Vec::new()),
        (Kind::Pod, Vec::new()),
        (Kind::NetworkPolicy, Vec::new()),
    ];
    for resource in resources {
        let kind = resource.kind();
        if let Some((_, objects)) = by_kind.iter_mut().find(|(k, _)| *k == kind) {
            objects.push(resource);
        }
    }
    by_kind
        .into_iter()
        .map(|(kind, objects)| SourceEvent::Reset { kind, objects })
        .collect()
}

/// A hash of the manifest files' names and contents.
fn fingerprint(dir: &Path) -> Result<u64> {
    let mut hasher = DefaultHasher::new();
    for path in manifests::manifest_files(dir)? {
        path.hash(&mut hasher);
        // A file removed between listing and reading hashes as empty; the next poll sees it gone.
        std::fs::read(&path).unwrap_or_default().hash(&mut hasher);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Resource> {
        manifests::parse(Path::new("test.yaml"), text).unwrap()
    }

    #[test]
    fn resets_every_kind_in_order_even_when_empty() {
        let resources = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec: {podSelector: {}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: a}\nspec: {containers: [{name: c}]}\n",
        );
        let events = resets(resources);
        let shape: Vec<(Kind, usize)> = events
            .iter()
            .map(|e| match e {
                SourceEvent::Reset { kind, objects } => (*kind, objects.len()),
                other => panic!("not a reset: {other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (Kind::Namespace, 0),
                (Kind::Pod, 1),
                (Kind::NetworkPolicy, 1)
            ]
        );
    }

    #[test]
    fn fingerprint_follows_contents() {
        let dir = std::env::temp_dir().join(format!("ztrt-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.yaml");
        std::fs::write(&file, "x: 1\n").unwrap();
        let first = fingerprint(&dir).unwrap();
        assert_eq!(fingerprint(&dir).unwrap(), first);
        std::fs::write(&file, "x: 2\n").unwrap();
        let second = fingerprint(&dir).unwrap();
        std::fs::write(dir.join(".hidden.yaml"), "ignored").unwrap();
        let third = fingerprint(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_ne!(first, second);
        assert_eq!(second, third, "hidden files are not manifests");
    }
}
