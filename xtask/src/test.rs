//! `cargo xtask test`: every test tier, in order from fastest to slowest.

use std::process::Command;

use crate::{cmd, ebpf, toolchain};

pub fn run() -> anyhow::Result<()> {
    cmd::require_root("cargo xtask test")?;
    toolchain::ensure_debian_packages()?;
    ebpf::build()?;
    // Pure tiers: index, compiler, planner, property tests. No kernel, no cluster.
    cmd::run(Command::new("cargo").args(["test", "--package", "zt-common", "--package", "zt-agent"]))?;
    crate::e2e::kube()?; // the real API server (finds or builds kube-apiserver first)
    // Kernel tiers share kernel state (programs, maps, namespaces): one test at a time.
    cmd::run(Command::new("cargo").args(["test", "--package", "zt-tests", "--", "--test-threads=1"]))?;
    Ok(())
}
