//! `cargo xtask bench datapath`.

pub fn run(_json: bool) -> anyhow::Result<()> {
    anyhow::bail!("bench datapath is not built yet")
}
