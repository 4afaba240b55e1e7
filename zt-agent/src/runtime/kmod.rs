//! Kernel modules zt relies on: loaded when they are missing, named when they cannot be.
//!
//! `veth` (the lab's pods), `sch_ingress` (clsact) and `cls_bpf` (the tc attach mode) are modules on many
//! distribution kernels and built in on others. The kernel usually loads them on first use, but
//! only when `modprobe` works in the caller's context; a minimal host or a container may not have
//! it. zt loads each one it needs up front and, when that fails, says which module is missing
//! instead of letting a netlink call fail with "Operation not supported" later.

use std::{path::Path, process::Command};

use crate::error::{Error, Result};

/// What the lab needs (its pods are veth pairs).
pub const LAB: &[&str] = &["veth"];
/// What the tc attach mode needs: a clsact qdisc (it lives in `sch_ingress`) with `cls_bpf`
/// filters.
pub const TC_ATTACH: &[&str] = &["sch_ingress", "cls_bpf"];

/// Makes sure every module in `names` is loaded or built in.
pub fn ensure(names: &[&str]) -> Result<()> {
    let kernel = KernelModules::read();
    for name in names {
        if kernel.has(name) {
            continue;
        }
        let loaded = Command::new("modprobe")
            .arg(name)
            .output()
            .is_ok_and(|out| out.status.success());
        if !loaded && !KernelModules::read().has(name) {
            return Err(Error::Other(format!(
                "the kernel module {name} is not loaded and `modprobe {name}` failed: load it \
                 (`modprobe {name}`, from the kmod package) or use a kernel built with it"
            )));
        }
        tracing::info!(module = name, "loaded a kernel module");
    }
    Ok(())
}

/// What the running kernel has: its loaded modules and those built into it.
#[derive(Debug, Default)]
struct KernelModules {
    /// `None` when the kernel has no module support: everything it has is built in.
    loaded: Option<String>,
    builtin: String,
}

impl KernelModules {
    fn read() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let builtin = Path::new("/lib/modules")
            .join(release.trim())
            .join("modules.builtin");
        Self {
            loaded: std::fs::read_to_string("/proc/modules").ok(),
            builtin: std::fs::read_to_string(builtin).unwrap_or_default(),
        }
    }

    fn has(&self, name: &str) -> bool {
        let Some(loaded) = &self.loaded else {
            return true;
        };
        // modules.builtin lists paths such as kernel/net/sched/cls_bpf.ko; names use `_` for `-`.
        let builtin = self.builtin.lines().any(|path| {
            Path::new(path)
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".ko"))
                .is_some_and(|m| m.replace('-', "_") == name)
        });
        builtin || loaded.lines().any(|l| l.split(' ').next() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_modules_has_everything_built_in() {
        assert!(KernelModules::default().has("veth"));
    }

    #[test]
    fn modules_are_found_loaded_or_built_in() {
        let kernel = KernelModules {
            loaded: Some("veth 40960 0 - Live 0x0000000000000000\n".into()),
            builtin: "kernel/net/sched/cls_bpf.ko\nkernel/net/sched/sch-ingress.ko\n".into(),
        };
        assert!(kernel.has("veth"));
        assert!(kernel.has("cls_bpf"));
        assert!(kernel.has("sch_ingress"));
        assert!(!kernel.has("sch_clsact"));
        assert!(!kernel.has("vet"));
    }
}
