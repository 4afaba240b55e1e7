//! `cargo xtask e2e …`: end-to-end tests against real components.
//!
//! `kube`: a real kube-apiserver v1.20.2 and etcd on loopback ports (found, unpacked or built by
//! deploy/build-kube-apiserver.sh), the agent with `--source kube`, and real packets between pods in
//! network namespaces. Runs every `tests/tests/kube_*.rs` one test at a time and prints
//! `N passed, M failed`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::{cmd, ebpf, toolchain};

#[derive(Debug, Subcommand)]
pub enum Which {
    /// The agent against a real kube-apiserver, checked with real packets (root).
    Kube,
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Kube => kube(),
    }
}

pub fn kube() -> anyhow::Result<()> {
    cmd::require_root("cargo xtask e2e kube")?;
    toolchain::ensure_debian_packages(&[toolchain::LAB_PACKAGES, toolchain::TEST_PACKAGES])?;
    let apiserver = kube_apiserver()?;
    ebpf::build()?;

    let tests = test_targets(|name| name.starts_with("kube_"))?;
    if tests.is_empty() {
        bail!("no tests/tests/kube_*.rs");
    }
    // The packet tests run the agent binary itself, in the lab's node namespace.
    cmd::run(Command::new("cargo").args(["build", "--package", "zt-agent", "--bin", "zt-agent"]))?;
    let agent = cmd::agent_binary();
    let mut cargo = Command::new("cargo");
    cargo.args(["test", "--package", "zt-tests"]);
    for test in &tests {
        cargo.args(["--test", test]);
    }
    // Kernel state and loopback ports are shared: one test at a time.
    cargo
        .args(["--", "--test-threads=1"])
        .env("KUBE_APISERVER", &apiserver)
        .env("ZT_AGENT_BIN", agent);
    let (passed, failed, ok) = run_counting(&mut cargo)?;
    println!("{passed} passed, {failed} failed");
    if !ok || failed > 0 || passed == 0 {
        bail!("e2e kube failed");
    }
    Ok(())
}

/// The integration-test targets of `tests/` whose name passes `keep`, sorted: `NAME.rs`, or
/// `NAME/main.rs` for a test with modules of its own.
pub fn test_targets(keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
    let dir = cmd::workspace_root().join("tests/tests");
    let mut tests: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let name = match name.strip_suffix(".rs") {
                Some(stem) => stem.to_owned(),
                None if entry.path().join("main.rs").exists() => name,
                None => return None,
            };
            keep(&name).then_some(name)
        })
        .collect();
    tests.sort();
    Ok(tests)
}

/// The binary's path, from deploy/build-kube-apiserver.sh (which may take minutes to build it).
fn kube_apiserver() -> anyhow::Result<String> {
    let script = cmd::workspace_root().join("deploy/build-kube-apiserver.sh");
    let mut find = Command::new("bash");
    find.arg(&script).stderr(Stdio::inherit());
    eprintln!("+ {}", cmd::display(&find));
    let out = find
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let path = String::from_utf8(out.stdout)?.trim().to_owned();
    eprintln!("kube-apiserver: {path}");
    Ok(path)
}

/// Runs libtest through cargo, passing its output through, and adds up its `test result:` lines.
fn run_counting(cargo: &mut Command) -> anyhow::Result<(u64, u64, bool)> {
    eprintln!("+ {}", cmd::display(cargo));
    let mut child = cargo
        .current_dir(cmd::workspace_root())
        .stdout(Stdio::piped())
        .spawn()?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("stdout is piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_result(&line) {
            passed += p;
            failed += f;
        }
    }
    Ok((passed, failed, child.wait()?.success()))
}

/// `test result: FAILED. 2 passed; 1 failed; 0 ignored; …` → (2, 1).
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |what: &str| -> Option<u64> {
        rest.split(';').find_map(|part| {
            part.trim()
                .rsplit_once(' ')
                .filter(|(_, w)| *w == what)?
                .0
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
    };
    Some((count("passed")?, count("failed")?))
}

#[cfg(test)]
mod tests {
    use super::parse_result;

    #[test]
    fn parses_libtest_summaries() {
        assert_eq!(
            parse_result(
                "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s"
            ),
            Some((3, 0))
        );
        assert_eq!(
            parse_result("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured"),
            Some((2, 1))
        );
        assert_eq!(parse_result("test something ... ok"), None);
    }
}
