//! Everything that touches the kernel or the API server.

pub mod source;

pub fn run(_args: crate::cli::RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("zt-agent run is not built yet")
}
