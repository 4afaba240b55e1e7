//! `zt-agent uninstall`: takes zt off a node. Detaches every program pair the pin root records
//! (TCX links, tc filters), removes every pin (links, markers, maps) and the pin root itself, and
//! reports each thing it removed.
//!
//! Pinned programs keep enforcing after the agent is gone — that is what makes restarts safe —
//! so deleting the DaemonSet alone leaves the last policies enforced forever. This is the other
//! half. It takes the pin root's [lock](super::lock): while an agent runs on the pin root it
//! refuses (the agent would re-attach, and its open link fds would keep the programs attached).
//! It must run in the agent's network namespace (the host's, in a cluster), where the ifindexes
//! in the pin names mean the pods' interfaces. Only what the pin root records is touched: other
//! pin roots, and other programs on the same interfaces, stay.

use std::path::Path;

use super::{attach, iface, lock::PinRootLock};
use crate::{
    cli::UninstallArgs,
    error::{Error, Result},
};

/// Runs `zt-agent uninstall`: prints what it removed; an error if anything could not be.
pub fn run(args: UninstallArgs) -> Result<()> {
    if !args.pin_root.exists() {
        println!(
            "nothing to remove: {} does not exist",
            args.pin_root.display()
        );
        return Ok(());
    }
    let lock = PinRootLock::acquire(&args.lock_dir, &args.pin_root)?;
    let report = uninstall(&args.pin_root);
    drop(lock);
    for line in &report.done {
        println!("removed {line}");
    }
    for line in &report.failed {
        eprintln!("not removed: {line}");
    }
    if report.done.is_empty() && report.failed.is_empty() {
        println!("nothing to remove under {}", args.pin_root.display());
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "{} things under {} could not be removed (listed above)",
            report.failed.len(),
            args.pin_root.display()
        )))
    }
}

/// Removes the attachments, the pins and the directories of `pin_root`.
pub fn uninstall(pin_root: &Path) -> attach::Removed {
    let live = match iface::list_links() {
        Ok(links) => links.into_iter().map(|l| (l.ifindex, l.ifname)).collect(),
        Err(error) => {
            let mut out = attach::Removed::default();
            out.failed
                .push(format!("cannot list interfaces ({error}); nothing removed"));
            return out;
        }
    };
    let links = pin_root.join("links");
    let mut out = attach::remove_all(&links, &live);
    let maps = pin_root.join("maps");
    if let Ok(entries) = std::fs::read_dir(&maps) {
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            match std::fs::remove_file(&path) {
                Ok(()) => out.done.push(format!("map pin {}", path.display())),
                Err(e) => out.failed.push(format!("{}: {e}", path.display())),
            }
        }
    }
    for dir in [&links, &maps, &pin_root.to_path_buf()] {
        match std::fs::remove_dir(dir) {
            Ok(()) => out.done.push(format!("directory {}", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => out.failed.push(format!("{}: {e}", dir.display())),
        }
    }
    out
}
