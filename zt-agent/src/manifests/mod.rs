//! A folder of Kubernetes manifests as [`Resource`]s: what `--source dir:PATH` and the lab read,
//! validated as strictly as the API server validates what `kubectl apply` sends it.
//!
//! - Files: `*.yaml`, `*.yml` and `*.json` in the folder and its subfolders (as `kubectl apply
//!   -R -f DIR` reads them), in sorted path order; hidden files and folders (a leading `.`, as
//!   editors, atomic writers and ConfigMap mounts' `..data` use) are skipped, and so are files
//!   with other extensions (a README).
//! - Each file may hold several documents (`---`; JSON is YAML too); empty documents are skipped,
//!   and a `kind: List` document contributes its `items`.
//! - Kinds: `v1` Namespace and Pod, `networking.k8s.io/v1` NetworkPolicy. Anything else is an
//!   error: a folder the agent enforces must not silently lose an object it was meant to carry.
//! - Strict: an unknown field ([`strict`]), a value the API server would refuse ([`validate`]),
//!   or two objects of one kind with the same namespace and name is an error. Each names the
//!   file, the document's index (0-based), the object, the field path and, where the field is
//!   found in the text, its line and column; every problem of the object is listed.
//!
//! Nothing here is lenient: a folder with one bad object is rejected whole, so the agent keeps
//! the last good folder enforced instead of a folder with a hole in it.

pub mod strict;
pub mod syntax;
pub mod validate;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use self::strict::FieldPath;
use crate::{
    error::{Error, Result},
    resource::{Kind, Resource},
};

/// Subfolders deeper than this are an error (a symlink loop, most likely).
const MAX_DEPTH: usize = 16;
/// At most this many problems are listed per object.
const MAX_PROBLEMS: usize = 20;

/// Every object in the manifest files of `dir`, in file order then document order; an error if
/// any file does not read, parse or validate, or two objects share kind, namespace and name.
pub fn load_dir(dir: &Path) -> Result<Vec<Resource>> {
    let mut resources = Vec::new();
    let mut seen: BTreeMap<(Kind, String, String), (PathBuf, usize)> = BTreeMap::new();
    for path in manifest_files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        for (index, resource) in parse_documents(&path, &text)? {
            let key = identity(&resource);
            if let Some((first, first_index)) = seen.get(&key) {
                let (kind, ns, name) = &key;
                let what = match kind {
                    Kind::Namespace => format!("Namespace {name:?}"),
                    _ => format!("{kind:?} {ns}/{name}"),
                };
                return Err(Error::Manifest {
                    path,
                    message: format!(
                        "document {index}: {what} is declared twice (first in {}, document \
                         {first_index}); the API server would keep one of them, zt refuses both",
                        first.display()
                    ),
                });
            }
            seen.insert(key, (path.clone(), index));
            resources.push(resource);
        }
    }
    Ok(resources)
}

/// Kind, namespace (`default` when unset; empty for Namespaces) and name.
fn identity(resource: &Resource) -> (Kind, String, String) {
    let meta = match resource {
        Resource::Namespace(o) => &o.metadata,
        Resource::Pod(o) => &o.metadata,
        Resource::NetworkPolicy(o) => &o.metadata,
    };
    let ns = match resource {
        Resource::Namespace(_) => String::new(),
        _ => meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
    };
    (resource.kind(), ns, meta.name.clone().unwrap_or_default())
}

/// The manifest files of `dir` and its subfolders, sorted by path.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    collect(dir, 0, &mut files)?;
    files.sort();
    Ok(files)
}

fn collect(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    if depth > MAX_DEPTH {
        return Err(Error::Manifest {
            path: dir.to_path_buf(),
            message: format!("more than {MAX_DEPTH} folders deep (a symlink loop?)"),
        });
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, as Kubernetes ConfigMap mounts are built of them.
        if path.is_dir() {
            collect(&path, depth + 1, files)?;
        } else if path.is_file()
            && [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| name.ends_with(ext))
        {
            files.push(path);
        }
    }
    Ok(())
}

/// The objects in one file's text; `path` is only used to name the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Resource>> {
    Ok(parse_documents(path, text)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// The objects in one file's text, each with the index of its document.
fn parse_documents(path: &Path, text: &str) -> Result<Vec<(usize, Resource)>> {
    let mut resources = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde::Deserialize::deserialize(document).map_err(|e| yaml_error(path, &e))?;
        let at = Place { path, text, index };
        decode_document(&at, value, &mut resources)?;
    }
    Ok(resources)
}

/// Where an object came from, for error messages.
struct Place<'a> {
    path: &'a Path,
    text: &'a str,
    index: usize,
}

impl Place<'_> {
    fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::Manifest {
            path: self.path.to_path_buf(),
            message: format!("document {}: {message}", self.index),
        }
    }

    /// The document's own deserializer, whose errors carry lines and columns.
    fn document(&self) -> Option<serde_yaml::Deserializer<'_>> {
        serde_yaml::Deserializer::from_str(self.text).nth(self.index)
    }

    /// `line L, column C: ` for the field at `path`, when it is in the text.
    fn position(&self, path: &FieldPath) -> String {
        self.document()
            .and_then(|doc| strict::locate(doc, path))
            .map(|(line, column)| format!("line {line}, column {column}: "))
            .unwrap_or_default()
    }
}

/// Why an object was refused.
enum Refusal {
    /// Not an object zt can read at all.
    Message(String),
    /// `what` (kind and name) has these problems.
    Problems(String, Vec<(FieldPath, String)>),
}

fn decode_document(at: &Place<'_>, value: Value, out: &mut Vec<(usize, Resource)>) -> Result<()> {
    if value.is_null() {
        return Ok(());
    }
    if field(&value, "kind") == Some("List") {
        let Some(items) = value.get("items").and_then(Value::as_sequence) else {
            return Err(at.error("kind List without an `items` sequence"));
        };
        let prefix = FieldPath::default().key("items");
        for (i, item) in items.iter().enumerate() {
            let resource = decode_object(item.clone(), at, &prefix.index(i))?;
            out.push((at.index, resource));
        }
        return Ok(());
    }
    out.push((at.index, decode_object(value, at, &FieldPath::default())?));
    Ok(())
}

/// One object (at `prefix` in its document: `items[3]` in a List), strictly decoded and
/// validated.
fn decode_object(value: Value, at: &Place<'_>, prefix: &FieldPath) -> Result<Resource> {
    let list_item = !prefix.0.is_empty();
    let refused = |refusal: Refusal| -> Error {
        let lead = if list_item {
            format!("{prefix}: ")
        } else {
            String::new()
        };
        match refusal {
            Refusal::Message(m) => at.error(format!("{lead}{m}")),
            Refusal::Problems(what, problems) => {
                let lines: Vec<String> = problems
                    .iter()
                    .take(MAX_PROBLEMS)
                    .map(|(path, why)| {
                        let mut full = prefix.clone();
                        full.0.extend(path.0.iter().cloned());
                        format!("{}{path}: {why}", at.position(&full))
                    })
                    .collect();
                let more = problems.len().saturating_sub(MAX_PROBLEMS);
                let more = if more > 0 {
                    format!("\n  ({more} more)")
                } else {
                    String::new()
                };
                at.error(format!("{lead}{what}:\n  {}{more}", lines.join("\n  ")))
            }
        }
    };
    if !value.is_mapping() {
        return Err(refused(Refusal::Message(
            "not a mapping (expected a Kubernetes object)".to_owned(),
        )));
    }
    let kind = field(&value, "kind").map(str::to_owned);
    let api_version = field(&value, "apiVersion").map(str::to_owned);
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    let Some(kind) = kind else {
        return Err(refused(Refusal::Message("no `kind`".to_owned())));
    };
    let what = match (&name, namespace, kind.as_str()) {
        (Some(name), _, "Namespace") => format!("{kind} {name:?}"),
        (Some(name), ns, _) => format!("{kind} {}/{name}", ns.unwrap_or("default")),
        (None, _, _) => kind.clone(),
    };
    let expected = match kind.as_str() {
        "Namespace" | "Pod" => "v1",
        "NetworkPolicy" => "networking.k8s.io/v1",
        other => {
            return Err(refused(Refusal::Message(format!(
                "kind {other:?} is not supported (only Namespace, Pod and NetworkPolicy)"
            ))));
        }
    };
    if api_version.as_deref() != Some(expected) {
        return Err(refused(Refusal::Message(format!(
            "{what}: apiVersion {} (expected {expected:?})",
            api_version.map_or_else(|| "missing".to_owned(), |v| format!("{v:?}"))
        ))));
    }
    let (resource, known, problems) = match kind.as_str() {
        "Namespace" => {
            let o = typed_object::<k8s_openapi::api::core::v1::Namespace>(&value, at, list_item)
                .map_err(|m| refused(Refusal::Message(format!("{what}: {m}"))))?;
            let problems = validate::namespace(&o);
            let known = serde_yaml::to_value(&o);
            (Resource::Namespace(o), known, problems)
        }
        "Pod" => {
            let o = typed_object::<k8s_openapi::api::core::v1::Pod>(&value, at, list_item)
                .map_err(|m| refused(Refusal::Message(format!("{what}: {m}"))))?;
            let problems = validate::pod(&o);
            let known = serde_yaml::to_value(&o);
            (Resource::Pod(o), known, problems)
        }
        _ => {
            let o = typed_object::<k8s_openapi::api::networking::v1::NetworkPolicy>(
                &value, at, list_item,
            )
            .map_err(|m| refused(Refusal::Message(format!("{what}: {m}"))))?;
            let problems = validate::network_policy(&o);
            let known = serde_yaml::to_value(&o);
            (Resource::NetworkPolicy(o), known, problems)
        }
    };
    let known = known.map_err(|e| refused(Refusal::Message(format!("{what}: {e}"))))?;
    let mut all: Vec<(FieldPath, String)> = strict::unknown_fields(&value, &known)
        .into_iter()
        .map(|path| (path, "unknown field".to_owned()))
        .collect();
    all.extend(problems);
    if all.is_empty() {
        Ok(resource)
    } else {
        Err(refused(Refusal::Problems(what, all)))
    }
}

/// `value` as a `T`. A type error is reported with serde_yaml's path, and with the line and
/// column when the object is a whole document (decoded again from its text).
fn typed_object<T: DeserializeOwned>(
    value: &Value,
    at: &Place<'_>,
    list_item: bool,
) -> std::result::Result<T, String> {
    serde_yaml::from_value(value.clone()).map_err(|e| {
        let located = (!list_item)
            .then(|| at.document())
            .flatten()
            .and_then(|doc| T::deserialize(doc).err());
        match located {
            Some(e) => e.to_string(),
            None => e.to_string(),
        }
    })
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

    /// A temporary folder, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("zt-manifests-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, text: &str) {
            let path = self.0.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn policy(spec: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\nspec:\n{spec}"
        )
    }

    /// The error for `text`, which must be refused.
    fn refused(text: &str) -> String {
        match parse_str(text) {
            Ok(got) => panic!("accepted {got:?}:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_misspelt_field_is_refused_with_its_line_and_path() {
        // `fromm` would otherwise be dropped, leaving a rule with no `from`: allow from anyone.
        let text = policy(
            "  podSelector: {}\n  ingress:\n  - fromm:\n    - podSelector: {matchLabels: {app: b}}\n",
        );
        let message = refused(&text);
        assert!(message.contains("x.yaml"), "{message}");
        assert!(message.contains("NetworkPolicy x/p"), "{message}");
        assert!(
            message.contains("line 9, column 5: spec.ingress[0].fromm: unknown field"),
            "{message}"
        );
    }

    #[test]
    fn unknown_fields_anywhere_are_refused() {
        for (text, path) in [
            (policy("  podselector: {}\n"), "spec.podselector"),
            (policy("  podSelector: {matchLabel: {a: b}}\n"), "spec.podSelector.matchLabel"),
            (
                policy("  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, exept: [10.1.0.0/16]}}]\n"),
                "spec.egress[0].to[0].ipBlock.exept",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a, lables: {app: a}}\nspec: {containers: [{name: c}]}\n".to_owned(),
                "metadata.lables",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{containerport: 80}]}]}\n".to_owned(),
                "spec.containers[0].ports[0].containerport",
            ),
            (
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\nspek: {}\n".to_owned(),
                "spek",
            ),
        ] {
            let message = refused(&text);
            assert!(message.contains(&format!("{path}: unknown field")), "{path}: {message}");
            assert!(message.contains("line "), "{message}");
        }
    }

    #[test]
    fn nulls_are_not_unknown_fields() {
        let text = policy("  podSelector: null\n  ingress:\n  - from: null\n    ports: null\n");
        assert_eq!(parse_str(&text).unwrap().len(), 1);
    }

    #[test]
    fn unsupported_enum_values_are_refused() {
        for (spec, path, value) in [
            (
                "  podSelector: {}\n  policyTypes: [Egres]\n",
                "spec.policyTypes[0]",
                "Egres",
            ),
            (
                "  podSelector: {}\n  ingress:\n  - ports: [{protocol: tcp, port: 80}]\n",
                "spec.ingress[0].ports[0].protocol",
                "tcp",
            ),
            (
                "  podSelector: {matchExpressions: [{key: a, operator: in, values: [x]}]}\n",
                "spec.podSelector.matchExpressions[0].operator",
                "in",
            ),
        ] {
            let message = refused(&policy(spec));
            assert!(message.contains(path), "{path}: {message}");
            assert!(
                message.contains(&format!("unsupported value {value:?}")),
                "{message}"
            );
        }
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 80, protocol: HTTP}]\n";
        let message = refused(pod);
        assert!(message.contains("line 7, column "), "{message}");
        assert!(
            message.contains("spec.containers[0].ports[0].protocol: unsupported value \"HTTP\""),
            "{message}"
        );
    }

    #[test]
    fn values_the_api_server_refuses_are_refused() {
        for (spec, path) in [
            (
                "  ingress:\n  - from: [{}]\n",
                "spec.ingress[0].from[0]: must specify a peer",
            ),
            (
                "  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]\n",
                "spec.ingress[0].from[0].ipBlock: may not be combined",
            ),
            (
                "  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/33}}]\n",
                "spec.egress[0].to[0].ipBlock.cidr",
            ),
            (
                "  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]\n",
                "spec.egress[0].to[0].ipBlock.except[0]: \"11.0.0.0/16\" must be a strict subset",
            ),
            (
                "  ingress:\n  - ports: [{port: 0}]\n",
                "spec.ingress[0].ports[0].port: 0 must be",
            ),
            (
                "  ingress:\n  - ports: [{port: 70000}]\n",
                "spec.ingress[0].ports[0].port: 70000",
            ),
            (
                "  ingress:\n  - ports: [{port: HTTP}]\n",
                "spec.ingress[0].ports[0].port: \"HTTP\" is not a port name",
            ),
            (
                "  ingress:\n  - ports: [{port: 90, endPort: 80}]\n",
                "spec.ingress[0].ports[0].endPort: 80 must not be below",
            ),
            (
                "  ingress:\n  - ports: [{endPort: 80}]\n",
                "spec.ingress[0].ports[0].endPort: may not be given without port",
            ),
            (
                "  ingress:\n  - ports: [{port: http, endPort: 80}]\n",
                "endPort: may not be given with a named port",
            ),
            (
                "  podSelector: {matchExpressions: [{key: a, operator: In}]}\n",
                "spec.podSelector.matchExpressions[0].values: must be non-empty",
            ),
            (
                "  podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}\n",
                "spec.podSelector.matchExpressions[0].values: must be empty",
            ),
            (
                "  podSelector: {matchLabels: {app: 'a b'}}\n",
                "spec.podSelector.matchLabels.app",
            ),
            (
                "  policyTypes: [Ingress, Egress, Ingress]\n",
                "spec.policyTypes: at most 2 values",
            ),
        ] {
            let message = refused(&policy(spec));
            assert!(message.contains(path), "{path}: {message}");
        }
        for (text, path) in [
            (
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: X}\n",
                "metadata.name",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n",
                "spec: required",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n",
                "spec.containers: required",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{containerPort: 0}]}]}\n",
                "spec.containers[0].ports[0].containerPort: 0",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{name: web, containerPort: 1}, {name: web, containerPort: 2}]}]}\n",
                "spec.containers[0].ports[1].name: duplicate port name",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.300}\n",
                "status.podIP: \"10.0.0.300\" is not an IP address",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\nstatus: {phase: running}\n",
                "status.phase: unsupported value",
            ),
        ] {
            let message = refused(text);
            assert!(message.contains(path), "{path}: {message}");
        }
    }

    #[test]
    fn a_type_error_names_its_line() {
        let message =
            refused("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: 7}\n");
        assert!(message.contains("line 4"), "{message}");
        assert!(message.contains("spec.containers"), "{message}");
    }

    #[test]
    fn list_items_are_validated_with_their_place() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: x}\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: y, labls: {}}\n";
        let message = refused(text);
        assert!(message.contains("items[1]: Namespace \"y\""), "{message}");
        assert!(message.contains("line 9, column "), "{message}");
    }

    #[test]
    fn two_objects_with_one_name_are_refused_across_files() {
        let dir = TempDir::new("dup");
        let deny = |types: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: same, namespace: x}}\nspec: {{podSelector: {{}}, policyTypes: [{types}]}}\n"
            )
        };
        dir.write("a.yaml", &deny("Ingress"));
        dir.write("b.yaml", &deny("Egress"));
        let message = load_dir(&dir.0).unwrap_err().to_string();
        assert!(message.contains("b.yaml"), "{message}");
        assert!(message.contains("a.yaml"), "{message}");
        assert!(
            message.contains("NetworkPolicy x/same is declared twice"),
            "{message}"
        );
        // The same name in two namespaces, or for two kinds, is two objects.
        std::fs::write(
            dir.0.join("b.yaml"),
            deny("Egress").replace("namespace: x", "namespace: y"),
        )
        .unwrap();
        dir.write(
            "c.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: same}\n",
        );
        assert_eq!(load_dir(&dir.0).unwrap().len(), 3);
        // `default` is the namespace of an object without one.
        dir.write(
            "d.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n",
        );
        dir.write("e.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default}\nspec: {containers: [{name: c}]}\n");
        assert!(
            load_dir(&dir.0)
                .unwrap_err()
                .to_string()
                .contains("Pod default/a is declared twice")
        );
    }

    #[test]
    fn json_files_and_subfolders_are_read_hidden_ones_are_not() {
        let dir = TempDir::new("tree");
        let ns =
            |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n");
        dir.write("a.yaml", &ns("a"));
        dir.write(
            "b.json",
            r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}"#,
        );
        dir.write("sub/c.yaml", &ns("c"));
        dir.write("sub/deeper/d.yml", &ns("d"));
        dir.write(".hidden/e.yaml", &ns("e"));
        dir.write("sub/README.md", "kind: Service");
        let names: Vec<_> = load_dir(&dir.0)
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Resource::Namespace(n) => n.metadata.name.unwrap(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        dir.write("sub/bad.json", r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "f", "nmespace": "x"}}"#);
        let message = load_dir(&dir.0).unwrap_err().to_string();
        assert!(
            message.contains("bad.json") && message.contains("metadata.nmespace: unknown field"),
            "{message}"
        );
    }

    #[test]
    fn the_demo_and_lab_manifests_in_the_repository_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo");
        let resources = load_dir(&root).unwrap();
        assert!(resources.iter().any(|r| matches!(r, Resource::Pod(_))));
        assert!(
            resources
                .iter()
                .any(|r| matches!(r, Resource::NetworkPolicy(_)))
        );
    }

    #[test]
    fn a_missing_dir_is_an_io_error() {
        assert!(matches!(
            load_dir(Path::new("/nonexistent/ztlab")),
            Err(Error::Io { .. })
        ));
    }
}
