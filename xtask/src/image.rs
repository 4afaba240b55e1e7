//! `cargo xtask image`: the agent's container image, without a Docker engine.
//!
//! The image holds the release `zt-agent` (the eBPF object embedded) and the shared libraries
//! `ldd` says it loads — glibc's loader, libc, libm, libgcc_s — and nothing else: no shell, no
//! `ip`, no `nsenter` (the agent speaks rtnetlink itself). It is written as one tarball that
//! `ctr images import` and `docker load` both accept ([`archive`]), tagged
//! `ghcr.io/zt-dev/zt-agent:<workspace version>` unless `--tag` says otherwise.
//!
//! `--rootfs DIR` writes the same files into a directory instead: the Dockerfile's build stage
//! runs that and its last stage is `FROM scratch` + `COPY --from=build /rootfs /`, so both paths
//! produce the same filesystem.

mod archive;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{cmd, ebpf};

/// The repository the manifests in deploy/ name.
pub const REPOSITORY: &str = "ghcr.io/zt-dev/zt-agent";
/// Where the agent sits in the image.
const AGENT_PATH: &str = "usr/local/bin/zt-agent";

#[derive(Debug, Args)]
pub struct Opts {
    /// Image tag (default: the workspace version).
    #[arg(long)]
    pub tag: Option<String>,
    /// Output tarball (default: <target>/image/zt-agent-<tag>.tar).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the image's files into DIR instead of a tarball (the Dockerfile uses this).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
}

/// The default tag: the workspace version.
pub fn default_tag() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// What `run` built.
#[derive(Debug)]
pub struct Built {
    pub path: PathBuf,
}

pub fn run(opts: Opts) -> anyhow::Result<()> {
    build(opts).map(|_| ())
}

pub fn build(opts: Opts) -> anyhow::Result<Built> {
    ebpf::build()?;
    cmd::run(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "zt-agent",
        "--bin",
        "zt-agent",
    ]))?;
    let agent = cmd::target_dir().join("release/zt-agent");
    let files = files(&agent)?;
    let tag = opts.tag.unwrap_or_else(default_tag);
    let reference = format!("{REPOSITORY}:{tag}");

    if let Some(dir) = opts.rootfs {
        for file in &files {
            let path = dir.join(&file.path);
            std::fs::create_dir_all(path.parent().expect("files sit in directories"))?;
            std::fs::write(&path, &file.data)
                .with_context(|| format!("writing {}", path.display()))?;
            set_mode(&path, file.mode)?;
        }
        eprintln!("wrote {} files into {}", files.len(), dir.display());
        return Ok(Built { path: dir });
    }

    let image = archive::Image {
        reference: reference.clone(),
        entrypoint: vec![format!("/{AGENT_PATH}")],
        cmd: vec![],
        env: vec!["PATH=/usr/local/bin".into()],
        labels: BTreeMap::from([
            ("org.opencontainers.image.title".into(), "zt-agent".into()),
            ("org.opencontainers.image.version".into(), tag.clone()),
            (
                "org.opencontainers.image.source".into(),
                "https://github.com/zt-dev/zt".into(),
            ),
            (
                "org.opencontainers.image.licenses".into(),
                "Apache-2.0".into(),
            ),
        ]),
        files,
    };
    let out = opts
        .out
        .unwrap_or_else(|| cmd::target_dir().join(format!("image/zt-agent-{tag}.tar")));
    write(&image, &out)?;
    eprintln!(
        "load it with `ctr -n k8s.io images import {0}` or `docker load -i {0}`",
        out.display()
    );
    Ok(Built { path: out })
}

/// Writes `image` to `out` (atomically: a reader never sees half an archive).
pub fn write(image: &archive::Image, out: &Path) -> anyhow::Result<()> {
    let built = archive::archive(image);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let partial = out.with_extension("tar.partial");
    std::fs::write(&partial, &built.bytes)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, out)?;
    eprintln!(
        "image {}: {} ({:.1} MB, layer {:.1} MB), manifest {}, id {}",
        image.reference,
        out.display(),
        built.bytes.len() as f64 / 1e6,
        built.layer_size as f64 / 1e6,
        built.manifest_digest,
        built.config_digest
    );
    Ok(())
}

/// The pause image the node's sandboxes run: a static `pause` binary alone.
pub fn pause_image(reference: &str, pause: &Path, out: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(pause).with_context(|| format!("reading {}", pause.display()))?;
    write(
        &archive::Image {
            reference: reference.into(),
            entrypoint: vec!["/pause".into()],
            cmd: vec![],
            env: vec!["PATH=/".into()],
            labels: BTreeMap::new(),
            files: vec![archive::File::regular("pause", data, 0o755)],
        },
        out,
    )
}

/// The test servers' image, as upstream's e2e suite names it: `/agnhost` (a static Go binary),
/// Debian's busybox-static with its applets (`sh`, `cat`, …), and the node tier's TCP/UDP client
/// `/zt-netprobe` with its libraries (busybox's `nc` has no UDP).
pub fn agnhost_image(
    reference: &str,
    agnhost: &Path,
    netprobe: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let busybox = Path::new("/bin/busybox");
    let applets = cmd::output(Command::new(busybox).arg("--list-full"))
        .context("busybox --list-full (package busybox-static)")?;
    let mut files = vec![
        archive::File::regular("agnhost", std::fs::read(agnhost)?, 0o755),
        archive::File::regular("bin/busybox", std::fs::read(busybox)?, 0o755),
        archive::File::regular(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
            0o644,
        ),
        archive::File::regular(
            "etc/group",
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
            0o644,
        ),
        archive::File::regular("tmp/.keep", Vec::new(), 0o644),
    ];
    files.extend(binary_with_libraries(netprobe, "zt-netprobe")?);
    for applet in applets.split_whitespace() {
        if applet != "bin/busybox" && applet.contains('/') {
            files.push(archive::File::symlink(applet, "/bin/busybox"));
        }
    }
    write(
        &archive::Image {
            reference: reference.into(),
            entrypoint: vec!["/agnhost".into()],
            cmd: vec!["pause".into()],
            env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
            labels: BTreeMap::new(),
            files,
        },
        out,
    )
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The agent and every library `ldd` names, each at the path the loader looks for it.
fn files(agent: &Path) -> anyhow::Result<Vec<archive::File>> {
    binary_with_libraries(agent, AGENT_PATH)
}

/// `binary` at `path` in the image, and every library `ldd` names for it.
fn binary_with_libraries(binary: &Path, path: &str) -> anyhow::Result<Vec<archive::File>> {
    let ldd = cmd::output(Command::new("ldd").arg(binary))
        .with_context(|| format!("ldd {} failed", binary.display()))?;
    if ldd.contains("not found") {
        bail!(
            "{} needs a library this machine lacks:\n{ldd}",
            binary.display()
        );
    }
    let libraries = libraries(&ldd);
    if !libraries.iter().any(|l| l.contains("ld-linux")) {
        bail!(
            "ldd names no dynamic loader for {}:\n{ldd}",
            binary.display()
        );
    }
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let mut files = vec![archive::File::regular(path, read(binary)?, 0o755)];
    for library in libraries {
        // Symlinks are followed: the file lands under the name the loader asks for.
        files.push(archive::File::regular(
            library.trim_start_matches('/'),
            read(Path::new(&library))?,
            0o755,
        ));
    }
    Ok(files)
}

/// The absolute paths in `ldd`'s output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`
/// and the loader's `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
fn libraries(ldd: &str) -> Vec<String> {
    let mut found: Vec<String> = ldd
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, target)) => target.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::libraries;

    #[test]
    fn libraries_of_ldd_output() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffc5a1f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f183f9e0000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f183f900000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f183f71e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f1841f9f000)
\tlibmissing.so => not found
";
        assert_eq!(
            libraries(ldd),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }
}
