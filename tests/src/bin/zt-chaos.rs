//! `cargo xtask chaos [--quick] [--json]`: every chaos case at full scale, its figures as a table
//! or one JSON object; exits non-zero if any allowed packet was lost or any denied one leaked.

use clap::Parser;
use zt_tests::chaos::{self, Scale};

#[derive(Debug, Parser)]
struct Cli {
    /// The zt-agent binary to break.
    #[arg(long)]
    agent: std::path::PathBuf,
    /// The quick scale `cargo xtask test` runs.
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scale = if cli.quick { Scale::QUICK } else { Scale::FULL };
    let figures = chaos::run_all(&cli.agent, scale)?;
    if cli.json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        println!(
            "{:<12} {:>8} {:>6} {:>7}  details",
            "case", "sent", "lost", "leaked"
        );
        for (case, f) in &figures {
            let details: Vec<String> = f.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{case:<12} {:>8} {:>6} {:>7}  {}",
                f.traffic.sent,
                f.traffic.lost,
                f.traffic.leaked,
                details.join(" ")
            );
        }
    }
    let bad: Vec<&str> = figures
        .iter()
        .filter(|(_, f)| f.traffic.lost > 0 || f.traffic.leaked > 0)
        .map(|(case, _)| *case)
        .collect();
    anyhow::ensure!(
        bad.is_empty(),
        "packets lost or leaked in: {}",
        bad.join(", ")
    );
    Ok(())
}
