//! `cargo xtask bench compiler`.

pub fn run(_json: bool) -> anyhow::Result<()> {
    anyhow::bail!("bench compiler is not built yet")
}
