//! `cargo xtask build-ebpf`: the kernel object, always in release (debug builds trip the verifier).

use std::process::Command;

use crate::{cmd, toolchain};

pub fn build() -> anyhow::Result<()> {
    toolchain::ensure_ebpf_toolchain()?;
    cmd::run(
        Command::new("cargo")
            .args(["+nightly", "build", "--package", "zt-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Cdebuginfo=2\x1f-Clink-arg=--btf",
            ),
    )?;
    eprintln!(
        "built {}",
        cmd::target_dir()
            .join("bpfel-unknown-none/release/zt")
            .display()
    );
    Ok(())
}
