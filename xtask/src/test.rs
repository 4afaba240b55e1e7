//! `cargo xtask test`: every test tier, fastest first — pure (index, compiler, planner, property
//! tests), kernel (BPF_PROG_TEST_RUN, veth, agent runtime), lab (conformance), and the agent
//! against a real API server (`cargo xtask e2e kube`).

use std::process::Command;

use crate::{cmd, e2e, ebpf, toolchain};

pub fn run() -> anyhow::Result<()> {
    cmd::require_root("cargo xtask test")?;
    toolchain::ensure_debian_packages(&[toolchain::LAB_PACKAGES, toolchain::TEST_PACKAGES])?;
    ebpf::build()?;
    cmd::run(Command::new("cargo").args([
        "test",
        "--package",
        "zt-common",
        "--package",
        "zt-agent",
    ]))?;
    // The lab and the agent tests run the agent binary itself.
    cmd::run(Command::new("cargo").args(["build", "--package", "zt-agent", "--bin", "zt-agent"]))?;
    // Kernel tiers share kernel state (programs, maps, namespaces): one test at a time.
    let mut kernel = Command::new("cargo");
    kernel.args(["test", "--package", "zt-tests", "--lib", "--bins"]);
    for test in e2e::test_targets(|name| !name.starts_with("kube_") && !name.starts_with("node_"))?
    {
        kernel.args(["--test", &test]);
    }
    cmd::run(kernel.args(["--", "--test-threads=1"]))?;
    e2e::kube()
}
