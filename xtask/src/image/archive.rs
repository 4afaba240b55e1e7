//! The image tarball, assembled from files (pure: bytes in, bytes out).
//!
//! One archive that both importers accept, as `docker save` writes it since Docker 25:
//! an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) for `ctr images import`,
//! and a `manifest.json` naming the same blobs for `docker load`. One uncompressed layer, every
//! entry owned by root with mtime 0, in path order: the same files give the same digests.

use std::collections::BTreeMap;

use serde_json::json;
use sha2::{Digest as _, Sha256};

/// A file of the image's root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// Path inside the image, without the leading `/` (`usr/local/bin/zt-agent`).
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
    /// A symbolic link to this target instead of a regular file (`data` unused).
    pub symlink: Option<String>,
}

impl File {
    pub fn regular(path: &str, data: Vec<u8>, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            data,
            mode,
            symlink: None,
        }
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        Self {
            path: path.to_owned(),
            data: Vec::new(),
            mode: 0o777,
            symlink: Some(target.to_owned()),
        }
    }
}

/// What goes into the archive.
#[derive(Clone, Debug)]
pub struct Image {
    /// `registry/name:tag`.
    pub reference: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub files: Vec<File>,
}

/// An archive and the digests that identify it.
#[derive(Debug)]
pub struct Archive {
    pub bytes: Vec<u8>,
    /// The OCI manifest's digest (what `ctr images ls` shows).
    pub manifest_digest: String,
    /// The config's digest: the image id `docker images` shows.
    pub config_digest: String,
    pub layer_size: usize,
}

fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header
        .set_path(path)
        .expect("image paths are short and relative");
    header.set_size(size);
    header.set_mode(mode);
    header.set_entry_type(kind);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    header
}

/// The layer: every file, with each parent directory before it.
pub fn layer(files: &[File]) -> Vec<u8> {
    let mut sorted: Vec<&File> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for file in sorted {
        let mut parent = String::new();
        let parts: Vec<&str> = file.path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            parent.push_str(part);
            parent.push('/');
            if dirs.insert(parent.clone()) {
                let h = header(&parent, 0, 0o755, tar::EntryType::Directory);
                builder
                    .append(&h, std::io::empty())
                    .expect("writing to memory");
            }
        }
        if let Some(target) = &file.symlink {
            let mut h = header(&file.path, 0, file.mode, tar::EntryType::Symlink);
            h.set_link_name(target).expect("short link targets");
            h.set_cksum();
            builder
                .append(&h, std::io::empty())
                .expect("writing to memory");
            continue;
        }
        let h = header(
            &file.path,
            file.data.len() as u64,
            file.mode,
            tar::EntryType::Regular,
        );
        builder
            .append(&h, file.data.as_slice())
            .expect("writing to memory");
    }
    builder.into_inner().expect("writing to memory")
}

/// The whole archive.
pub fn archive(image: &Image) -> Archive {
    let layer = layer(&image.files);
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": image.entrypoint,
            "Cmd": image.cmd,
            "Env": image.env,
            "WorkingDir": "/",
            "Labels": image.labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "cargo xtask image"}],
    }))
    .expect("JSON of JSON values");
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .expect("JSON of JSON values");
    let manifest_digest = sha256(&manifest);
    let tag = image
        .reference
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": image.reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .expect("JSON of JSON values");
    let blob = |digest: &str| format!("blobs/sha256/{}", &digest["sha256:".len()..]);
    let docker = serde_json::to_vec(&json!([{
        "Config": blob(&config_digest),
        "RepoTags": [image.reference],
        "Layers": [blob(&layer_digest)],
    }]))
    .expect("JSON of JSON values");

    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], kind: tar::EntryType| {
        let h = header(
            path,
            data.len() as u64,
            if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            },
            kind,
        );
        builder.append(&h, data).expect("writing to memory");
    };
    add("blobs/", &[], tar::EntryType::Directory);
    add("blobs/sha256/", &[], tar::EntryType::Directory);
    add(&blob(&layer_digest), &layer, tar::EntryType::Regular);
    add(&blob(&config_digest), &config, tar::EntryType::Regular);
    add(&blob(&manifest_digest), &manifest, tar::EntryType::Regular);
    add(
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        tar::EntryType::Regular,
    );
    add("index.json", &index, tar::EntryType::Regular);
    add("manifest.json", &docker, tar::EntryType::Regular);
    Archive {
        bytes: builder.into_inner().expect("writing to memory"),
        manifest_digest,
        config_digest,
        layer_size: layer.len(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn entries(tarball: &[u8]) -> BTreeMap<String, (Vec<u8>, u32, tar::EntryType)> {
        let mut archive = tar::Archive::new(tarball);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let (mode, kind) = (e.header().mode().unwrap(), e.header().entry_type());
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, (data, mode, kind))
            })
            .collect()
    }

    fn image() -> Image {
        Image {
            reference: "ghcr.io/zt-dev/zt-agent:1.2.3".into(),
            entrypoint: vec!["/usr/local/bin/zt-agent".into()],
            cmd: vec![],
            env: vec!["PATH=/usr/local/bin".into()],
            labels: BTreeMap::from([("org.opencontainers.image.version".into(), "1.2.3".into())]),
            files: vec![
                File::regular("usr/local/bin/zt-agent", b"\x7fELF agent".to_vec(), 0o755),
                File::regular("lib64/ld-linux-x86-64.so.2", b"loader".to_vec(), 0o755),
                File::symlink("usr/bin/zt", "/usr/local/bin/zt-agent"),
            ],
        }
    }

    fn json(data: &[u8]) -> serde_json::Value {
        serde_json::from_slice(data).unwrap()
    }

    #[test]
    fn layer_has_parents_first_and_modes() {
        let layer = entries(&layer(&image().files));
        let names: Vec<&String> = layer.keys().collect();
        assert_eq!(
            names,
            [
                "lib64/",
                "lib64/ld-linux-x86-64.so.2",
                "usr/",
                "usr/bin/",
                "usr/bin/zt",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/zt-agent"
            ]
        );
        let agent = &layer["usr/local/bin/zt-agent"];
        assert_eq!(
            (agent.0.as_slice(), agent.1),
            (&b"\x7fELF agent"[..], 0o755)
        );
        assert_eq!(layer["usr/"].2, tar::EntryType::Directory);
        assert_eq!(layer["usr/bin/zt"].2, tar::EntryType::Symlink);
    }

    #[test]
    fn docker_and_oci_views_name_the_same_blobs_by_their_digests() {
        let built = archive(&image());
        let files = entries(&built.bytes);
        let blob = |digest: &str| &files[&format!("blobs/sha256/{}", &digest[7..])].0;
        // Every blob's name is its content's digest.
        for (path, (data, _, kind)) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(*kind, tar::EntryType::Regular);
                assert_eq!(sha256(data), format!("sha256:{hex}"), "{path}");
            }
        }
        let index = json(&files["index.json"].0);
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], built.manifest_digest);
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "ghcr.io/zt-dev/zt-agent:1.2.3"
        );
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "1.2.3"
        );
        let manifest = json(blob(&built.manifest_digest));
        assert_eq!(manifest["config"]["digest"], built.config_digest);
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
        assert_eq!(manifest["layers"][0]["size"], blob(&layer_digest).len());
        let config = json(blob(&built.config_digest));
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest.as_str());
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/zt-agent");
        let docker = json(&files["manifest.json"].0);
        assert_eq!(docker[0]["RepoTags"][0], "ghcr.io/zt-dev/zt-agent:1.2.3");
        assert_eq!(
            docker[0]["Config"],
            format!("blobs/sha256/{}", &built.config_digest[7..])
        );
        assert_eq!(
            docker[0]["Layers"][0],
            format!("blobs/sha256/{}", &layer_digest[7..])
        );
        assert_eq!(json(&files["oci-layout"].0)["imageLayoutVersion"], "1.0.0");
    }

    #[test]
    fn same_files_same_digests() {
        let (a, b) = (archive(&image()), archive(&image()));
        assert_eq!(a.bytes, b.bytes);
        let mut other = image();
        other.files[0].data.push(b'!');
        assert_ne!(archive(&other).config_digest, a.config_digest);
    }
}
