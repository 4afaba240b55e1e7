//! The hermetic lab.

pub fn probe(_args: crate::cli::LabProbeArgs) -> anyhow::Result<()> {
    anyhow::bail!("zt-agent lab is not built yet")
}
