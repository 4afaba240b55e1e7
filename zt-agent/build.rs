//! Builds the kernel object (`zt-ebpf`) for the BPF target and leaves it in `OUT_DIR`, where
//! `zt_agent::datapath::object` embeds it. `AYA_BUILD_SKIP=1` skips this for lint-only runs.

use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../zt-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("zt-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "zt-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF object failed; run `cargo xtask build-ebpf` once to install the \
         nightly rust-src component and bpf-linker, or set AYA_BUILD_SKIP=1 for lint-only builds",
    )
}
