//! A folder of Kubernetes manifests as [`Resource`]s: what `--source dir:PATH` and the lab read.
//!
//! - Files: `*.yaml` and `*.yml` directly in the folder, in sorted name order; hidden files (a
//!   leading `.`, as editors and atomic writers use for temporaries) are skipped.
//! - Each file may hold several documents (`---`); empty documents are skipped, and a `kind: List`
//!   document contributes its `items`.
//! - Kinds: `v1` Namespace and Pod, `networking.k8s.io/v1` NetworkPolicy. Anything else is an
//!   error that names the file, the document's index (0-based) and its kind: a folder the agent
//!   enforces must not silently lose an object it was meant to carry.
//! - A YAML error names the file and its line and column.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use crate::{
    error::{Error, Result},
    resource::Resource,
};

/// Every object in the `*.yaml` / `*.yml` files of `dir`, in file order then document order.
pub fn load_dir(dir: &Path) -> Result<Vec<Resource>> {
    let mut resources = Vec::new();
    for path in manifest_files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        resources.extend(parse(&path, &text)?);
    }
    Ok(resources)
}

/// The manifest files of `dir`, sorted by name.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if !is_yaml || name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, as Kubernetes ConfigMap mounts are built of them.
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The objects in one file's text; `path` is only used to name the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Resource>> {
    let mut resources = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde::Deserialize::deserialize(document).map_err(|e| yaml_error(path, &e))?;
        let at = Place { path, index };
        decode_document(&at, value, &mut resources)?;
    }
    Ok(resources)
}

/// Where an object came from, for error messages.
struct Place<'a> {
    path: &'a Path,
    index: usize,
}

impl Place<'_> {
    fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::Manifest {
            path: self.path.to_path_buf(),
            message: format!("document {}: {message}", self.index),
        }
    }
}

fn decode_document(at: &Place<'_>, value: Value, out: &mut Vec<Resource>) -> Result<()> {
    if value.is_null() {
        return Ok(());
    }
    if field(&value, "kind") == Some("List") {
        let Some(items) = value.get("items").and_then(Value::as_sequence) else {
            return Err(at.error("kind List without an `items` sequence"));
        };
        for (i, item) in items.iter().enumerate() {
            let resource = decode_object(item.clone())
                .map_err(|message| at.error(format!("items[{i}]: {message}")))?;
            out.push(resource);
        }
        return Ok(());
    }
    out.push(decode_object(value).map_err(|message| at.error(message))?);
    Ok(())
}

/// One object, or a message saying what is wrong with it (kind and name included when known).
fn decode_object(value: Value) -> std::result::Result<Resource, String> {
    if !value.is_mapping() {
        return Err("not a mapping (expected a Kubernetes object)".to_owned());
    }
    let kind = field(&value, "kind").map(str::to_owned);
    let api_version = field(&value, "apiVersion").map(str::to_owned);
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(kind) = kind else {
        return Err("no `kind`".to_owned());
    };
    let what = match &name {
        Some(name) => format!("{kind} {name:?}"),
        None => kind.clone(),
    };
    let expected = match kind.as_str() {
        "Namespace" | "Pod" => "v1",
        "NetworkPolicy" => "networking.k8s.io/v1",
        other => {
            return Err(format!(
                "kind {other:?} is not supported (only Namespace, Pod and NetworkPolicy)"
            ));
        }
    };
    if api_version.as_deref() != Some(expected) {
        return Err(format!(
            "{what}: apiVersion {} (expected {expected:?})",
            api_version.map_or_else(|| "missing".to_owned(), |v| format!("{v:?}"))
        ));
    }
    if name.as_deref().is_none_or(str::is_empty) {
        return Err(format!("{what}: no metadata.name"));
    }
    let decoded = match kind.as_str() {
        "Namespace" => serde_yaml::from_value(value).map(Resource::Namespace),
        "Pod" => serde_yaml::from_value(value).map(Resource::Pod),
        _ => serde_yaml::from_value(value).map(Resource::NetworkPolicy),
    };
    decoded.map_err(|e| format!("{what}: {e}"))
}

fn field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn yaml_error(path: &Path, error: &serde_yaml::Error) -> Error {
    let message = match error.location() {
        Some(at) => format!("line {}, column {}: {error}", at.line(), at.column()),
        None => error.to_string(),
    };
    Error::Manifest {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Resource>> {
        parse(Path::new("x.yaml"), text)
    }

    #[test]
    fn reads_the_three_kinds_across_documents() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  containers:
  - name: c
    image: none
    ports: [{name: serve-80-tcp, containerPort: 80, protocol: TCP}]
status: {podIP: 10.0.0.1}
---
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;
        let got = parse_str(text).unwrap();
        assert_eq!(got.len(), 3);
        let Resource::Pod(pod) = &got[1] else {
            panic!("second object is not a pod: {got:?}")
        };
        assert_eq!(pod.metadata.name.as_deref(), Some("a"));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
        let port = &pod.spec.as_ref().unwrap().containers[0]
            .ports
            .as_ref()
            .unwrap()[0];
        assert_eq!(port.container_port, 80);
        assert!(
            matches!(&got[2], Resource::NetworkPolicy(p) if p.metadata.name.as_deref() == Some("deny"))
        );
    }

    #[test]
    fn a_list_contributes_its_items() {
        let text = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: x}}
- {apiVersion: v1, kind: Namespace, metadata: {name: y}}
"#;
        assert_eq!(parse_str(text).unwrap().len(), 2);
    }

    #[test]
    fn another_kind_is_an_error_naming_file_document_and_kind() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n";
        let message = parse_str(text).unwrap_err().to_string();
        assert!(message.contains("x.yaml"), "{message}");
        assert!(message.contains("document 1"), "{message}");
        assert!(message.contains("Service"), "{message}");
    }

    #[test]
    fn a_yaml_error_names_the_position() {
        let message = parse_str("kind: Pod\nmetadata: {name: [\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("x.yaml"), "{message}");
        assert!(message.contains("line "), "{message}");
    }

    #[test]
    fn wrong_api_version_missing_name_and_bad_fields_are_errors() {
        for text in [
            "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}\n",
            "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: 7}\n",
            "- just\n- a list\n",
            "metadata: {name: a}\n",
        ] {
            assert!(parse_str(text).is_err(), "accepted: {text}");
        }
    }

    #[test]
    fn load_dir_reads_yaml_files_in_name_order_and_skips_others() {
        let dir = std::env::temp_dir().join(format!("ztlab-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ns =
            |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n");
        std::fs::write(dir.join("b.yaml"), ns("b")).unwrap();
        std::fs::write(dir.join("a.yml"), ns("a")).unwrap();
        std::fs::write(dir.join(".c.yaml"), ns("hidden")).unwrap();
        std::fs::write(dir.join("notes.txt"), "kind: Service").unwrap();
        let got = load_dir(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<_> = got
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Resource::Namespace(n) => n.metadata.name.unwrap(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn a_missing_dir_is_an_io_error() {
        assert!(matches!(
            load_dir(Path::new("/nonexistent/ztlab")),
            Err(Error::Io { .. })
        ));
    }
}
