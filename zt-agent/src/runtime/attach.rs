//! The attach manager: the program pair on each local pod's host-side interface.
//!
//! - `zt_from_pod` sits at TC ingress (what the pod sends), `zt_to_pod` at TC egress (what it
//!   receives).
//! - [`AttachMode::Tcx`] (Linux 6.6+): TCX links, pinned under `<pin_root>/links/<ifindex>-{from,to}`.
//!   [`AttachMode::Tc`] (older kernels): a clsact qdisc and two direct-action `cls_bpf` filters at
//!   a fixed priority and handle, remembered by an empty marker directory
//!   `<pin_root>/links/<ifindex>-tc`.
//! - Either way the attachment outlives the agent: while it is down or restarting, the programs
//!   keep enforcing on the pinned maps. A restarted agent [`adopts`](Attacher::adopt) what it
//!   finds. A TCX link's program is swapped atomically (`BPF_LINK_UPDATE`) only when the running
//!   one differs — another tag, or it does not use the pinned `zt_config` map (maps from an older
//!   generation of pins). A tc filter is replaced in place (a netlink change of the existing
//!   filter, atomic in `cls_bpf`), never deleted and re-added.
//! - [`detach`](Attacher::detach) unpins and closes a TCX link, or deletes the two filters. An
//!   interface that is gone took its attachments with it; its pins or marker are removed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, Link as _, PinnedLink},
        loaded_links, loaded_programs,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle, qdisc_add_clsact},
    },
};
use zt_common::names;

use super::{iface::HostIf, loader::program};
use crate::error::{Error, Result};

/// How the pair is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX links (`bpf_link`), pinned: Linux 6.6 and later.
    Tcx,
    /// A clsact qdisc and netlink `cls_bpf` filters: any kernel zt runs on.
    Tc,
}

impl AttachMode {
    /// TCX where the running kernel has it, tc otherwise.
    pub fn detect() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if kernel_has_tcx(&release) {
            AttachMode::Tcx
        } else {
            AttachMode::Tc
        }
    }
}

/// Whether a kernel release string (`6.18.0-1-amd64`) names Linux 6.6 or later.
fn kernel_has_tcx(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (6, 6)
}

/// The tc filters' place on the clsact hooks: first, with a handle that names them as zt's.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 0x7a74);
/// Marker directory suffix of an interface attached in tc mode.
const TC_MARKER: &str = "tc";

/// The two hooks of a pod interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    From,
    To,
}

impl Hook {
    const BOTH: [Hook; 2] = [Hook::From, Hook::To];

    fn program(self) -> &'static str {
        match self {
            Hook::From => names::PROG_FROM_POD,
            Hook::To => names::PROG_TO_POD,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::From => TcAttachType::Ingress,
            Hook::To => TcAttachType::Egress,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Hook::From => "from",
            Hook::To => "to",
        }
    }
}

#[derive(Debug)]
struct Attached {
    ifname: String,
    mode: AttachMode,
    // TCX only. Closing these fds leaves the links attached: the pins hold them.
    _links: Vec<FdLink>,
}

/// The interfaces carrying the program pair.
#[derive(Debug)]
pub struct Attacher {
    dir: PathBuf,
    mode: AttachMode,
    attached: BTreeMap<u32, Attached>,
}

impl Attacher {
    /// New attachments use `mode`; [`Attacher::adopt`] takes over either kind.
    pub fn new(dir: &Path, mode: AttachMode) -> Self {
        Self {
            dir: dir.to_path_buf(),
            mode,
            attached: BTreeMap::new(),
        }
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }

    pub fn len(&self) -> usize {
        self.attached.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attached.is_empty()
    }

    pub fn ifindexes(&self) -> Vec<u32> {
        self.attached.keys().copied().collect()
    }

    fn pin_path(&self, ifindex: u32, hook: Hook) -> PathBuf {
        self.dir.join(format!("{ifindex}-{}", hook.suffix()))
    }

    fn marker_path(&self, ifindex: u32) -> PathBuf {
        self.dir.join(format!("{ifindex}-{TC_MARKER}"))
    }

    /// Takes over what a previous agent attached, for interfaces that still exist (`live`:
    /// ifindex → name); pins and markers of vanished interfaces are removed. A pair missing one
    /// half is completed.
    pub fn adopt(&mut self, ebpf: &mut Ebpf, config_map_id: u32, live: &BTreeMap<u32, String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut pinned: BTreeMap<u32, Vec<PathBuf>> = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ifindex) = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(i, _)| i.parse::<u32>().ok())
            else {
                continue;
            };
            pinned.entry(ifindex).or_default().push(entry.path());
        }
        for (ifindex, paths) in pinned {
            let Some(ifname) = live.get(&ifindex) else {
                tracing::info!(ifindex, "removing the pins of a vanished interface");
                for path in paths {
                    let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir(&path));
                }
                continue;
            };
            let host = HostIf {
                ifindex,
                ifname: ifname.clone(),
            };
            let tc = paths
                .iter()
                .any(|p| p.ends_with(format!("{ifindex}-{TC_MARKER}")));
            let adopted = if tc {
                self.attach_tc_pair(ebpf, &host)
            } else {
                self.adopt_pair(ebpf, config_map_id, &host)
            };
            match adopted {
                Ok(()) => tracing::info!(ifindex, ifname, tc, "adopted the program pair"),
                Err(error) => tracing::warn!(%error, ifindex, ifname, "cannot adopt the pair"),
            }
        }
    }

    fn adopt_pair(&mut self, ebpf: &mut Ebpf, config_map_id: u32, host: &HostIf) -> Result<()> {
        let mut links = Vec::new();
        for hook in Hook::BOTH {
            let path = self.pin_path(host.ifindex, hook);
            let link = match PinnedLink::from_pin(&path) {
                Ok(pinned) => {
                    let link = FdLink::from(pinned);
                    if current(ebpf, hook, &link, config_map_id)? {
                        link
                    } else {
                        tracing::info!(
                            ifname = host.ifname,
                            hook = hook.program(),
                            "replacing an outdated program"
                        );
                        replace(ebpf, hook, link)?
                    }
                }
                Err(_) => attach_new(ebpf, hook, host, &path)?,
            };
            links.push(link);
        }
        self.attached.insert(
            host.ifindex,
            Attached {
                ifname: host.ifname.clone(),
                mode: AttachMode::Tcx,
                _links: links,
            },
        );
        Ok(())
    }

    /// Attaches the pair to `host` in this attacher's mode, unless it is attached already.
    pub fn attach(&mut self, ebpf: &mut Ebpf, host: &HostIf) -> Result<()> {
        if self.attached.contains_key(&host.ifindex) {
            return Ok(());
        }
        match self.mode {
            AttachMode::Tcx => self.attach_tcx_pair(ebpf, host)?,
            AttachMode::Tc => self.attach_tc_pair(ebpf, host)?,
        }
        tracing::info!(
            ifindex = host.ifindex,
            ifname = host.ifname,
            mode = ?self.mode,
            "attached the program pair"
        );
        Ok(())
    }

    /// Attaches the pair with TCX links and pins them.
    fn attach_tcx_pair(&mut self, ebpf: &mut Ebpf, host: &HostIf) -> Result<()> {
        let mut links = Vec::new();
        for hook in Hook::BOTH {
            let path = self.pin_path(host.ifindex, hook);
            // A pin left by a crash between the two attaches of a pair.
            let _ = std::fs::remove_file(&path);
            match attach_new(ebpf, hook, host, &path) {
                Ok(link) => links.push(link),
                Err(error) => {
                    for hook in Hook::BOTH {
                        let _ = std::fs::remove_file(self.pin_path(host.ifindex, hook));
                    }
                    return Err(error);
                }
            }
        }
        self.attached.insert(
            host.ifindex,
            Attached {
                ifname: host.ifname.clone(),
                mode: AttachMode::Tcx,
                _links: links,
            },
        );
        Ok(())
    }

    /// Attaches the pair as tc filters, replacing ours in place where they exist, and leaves a
    /// marker so a restarted agent knows to adopt them.
    fn attach_tc_pair(&mut self, ebpf: &mut Ebpf, host: &HostIf) -> Result<()> {
        let marker = self.marker_path(host.ifindex);
        // bpffs holds directories but no regular files: the marker is an empty directory.
        match std::fs::create_dir(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(Error::Io {
                    path: marker,
                    source,
                });
            }
        }
        // The qdisc is usually there already (EEXIST); attaching reports any real problem.
        let _ = qdisc_add_clsact(&host.ifname);
        for hook in Hook::BOTH {
            attach_tc(ebpf, hook, host)?;
        }
        self.attached.insert(
            host.ifindex,
            Attached {
                ifname: host.ifname.clone(),
                mode: AttachMode::Tc,
                _links: Vec::new(),
            },
        );
        Ok(())
    }

    /// Detaches the pair from `ifindex` and removes its pins or marker.
    pub fn detach(&mut self, ifindex: u32) {
        for hook in Hook::BOTH {
            let _ = std::fs::remove_file(self.pin_path(ifindex, hook));
        }
        let _ = std::fs::remove_dir(self.marker_path(ifindex));
        if let Some(attached) = self.attached.remove(&ifindex) {
            if attached.mode == AttachMode::Tc {
                for hook in Hook::BOTH {
                    // Dropping a netlink link deletes its filter; an interface that is gone took
                    // its filters with it, which makes this fail harmlessly.
                    drop(tc_link(hook, &attached.ifname));
                }
            }
            tracing::info!(
                ifindex,
                ifname = attached.ifname,
                "detached the program pair"
            );
        }
    }
}

/// What [`remove_all`] did.
#[derive(Debug, Default)]
pub struct Removed {
    /// One line per attachment detached or pin removed.
    pub done: Vec<String>,
    /// What could not be removed, and why.
    pub failed: Vec<String>,
}

/// Detaches and unpins every attachment recorded under `dir` (`zt-agent uninstall`; no agent
/// may run on it): each TCX link (its pin removed, then checked gone from the kernel — a link
/// some other process still holds open stays attached, and is reported), and each tc marker's
/// two filters on the interface of that ifindex (`live`: ifindex → name in this namespace).
/// clsact qdiscs stay: other programs may use them, and without filters they do nothing.
pub fn remove_all(dir: &Path, live: &BTreeMap<u32, String>) -> Removed {
    let mut out = Removed::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((ifindex, suffix)) = name
            .split_once('-')
            .and_then(|(i, s)| Some((i.parse::<u32>().ok()?, s)))
        else {
            out.failed
                .push(format!("{}: not a zt pin, left alone", path.display()));
            continue;
        };
        let on = live.get(&ifindex).map_or_else(
            || format!("ifindex {ifindex} (gone)"),
            |n| format!("{n} (ifindex {ifindex})"),
        );
        let hook = Hook::BOTH.into_iter().find(|h| h.suffix() == suffix);
        match (hook, suffix) {
            (Some(hook), _) => remove_link(&path, hook, &on, &mut out),
            (None, TC_MARKER) => {
                if let Some(ifname) = live.get(&ifindex) {
                    for hook in Hook::BOTH {
                        match tc_link(hook, ifname).map(|link| link.detach()) {
                            Ok(Ok(())) => out
                                .done
                                .push(format!("tc filter of {} on {on}", hook.program())),
                            Ok(Err(e)) => out
                                .failed
                                .push(format!("tc filter of {} on {on}: {e}", hook.program())),
                            Err(e) => out
                                .failed
                                .push(format!("tc filter of {} on {on}: {e}", hook.program())),
                        }
                    }
                }
                match std::fs::remove_dir(&path) {
                    Ok(()) => out.done.push(format!("tc marker {}", path.display())),
                    Err(e) => out.failed.push(format!("{}: {e}", path.display())),
                }
            }
            (None, _) => out
                .failed
                .push(format!("{}: not a zt pin, left alone", path.display())),
        }
    }
    out
}

/// Unpins one TCX link and checks that the kernel let go of it.
fn remove_link(path: &Path, hook: Hook, on: &str, out: &mut Removed) {
    let id = PinnedLink::from_pin(path)
        .ok()
        .and_then(|pinned| FdLink::from(pinned).info().ok())
        .map(|info| info.id());
    if let Err(e) = std::fs::remove_file(path) {
        out.failed.push(format!("{}: {e}", path.display()));
        return;
    }
    // The fd opened above is closed: if nothing else holds the link, it is gone now.
    let still = id.is_some_and(|id| loaded_links().flatten().any(|l| l.id() == id));
    if still {
        out.failed.push(format!(
            "TCX link of {} on {on}: unpinned, but another process holds it open (a running \
             agent?), so it stays attached until that process exits",
            hook.program()
        ));
    } else {
        out.done.push(format!(
            "TCX link of {} on {on} (pin {})",
            hook.program(),
            path.display()
        ));
    }
}

/// Our filter on `hook` of `ifname`, whether or not it exists.
fn tc_link(hook: Hook, ifname: &str) -> std::io::Result<SchedClassifierLink> {
    SchedClassifierLink::attached(ifname, hook.attach_type(), TC_PRIORITY, TC_HANDLE, None)
}

/// Puts our program in our filter on `hook` of `host`: the existing filter's program is replaced
/// in place, else the filter is created.
fn attach_tc(ebpf: &mut Ebpf, hook: Hook, host: &HostIf) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| {
        Error::Ebpf(format!(
            "tc attach of {} to {}: {e}",
            hook.program(),
            host.ifname
        ))
    };
    let prog = program(ebpf, hook.program())?;
    let existing = tc_link(hook, &host.ifname).map_err(|e| err(&e))?;
    let id = match prog.attach_to_link(existing) {
        Ok(id) => id,
        Err(_) => prog
            .attach_with_options(
                &host.ifname,
                hook.attach_type(),
                TcAttachOptions::Netlink(NlOptions {
                    priority: TC_PRIORITY,
                    handle: TC_HANDLE,
                    classid: None,
                }),
            )
            .map_err(|e| err(&e))?,
    };
    let link = prog.take_link(id).map_err(|e| err(&e))?;
    // A filter lives on the interface, not in a file descriptor: it must stay when this agent
    // exits, so it keeps enforcing; dropping the link would delete it.
    std::mem::forget(link);
    Ok(())
}

fn attach_new(ebpf: &mut Ebpf, hook: Hook, host: &HostIf, pin: &Path) -> Result<FdLink> {
    let prog = program(ebpf, hook.program())?;
    let id = prog
        .attach_with_options(
            &host.ifname,
            hook.attach_type(),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| {
            Error::Ebpf(format!(
                "TCX attach of {} to {} (needs Linux 6.6+): {e}",
                hook.program(),
                host.ifname
            ))
        })?;
    let link = prog
        .take_link(id)
        .map_err(|e| Error::Ebpf(format!("{}: {e}", hook.program())))?;
    let link =
        FdLink::try_from(link).map_err(|e| Error::Ebpf(format!("{}: {e}", hook.program())))?;
    let pinned = link
        .pin(pin)
        .map_err(|e| Error::Ebpf(format!("pinning {}: {e}", pin.display())))?;
    Ok(FdLink::from(pinned))
}

/// Whether the link runs the same program as ours, on the pinned maps.
fn current(ebpf: &mut Ebpf, hook: Hook, link: &FdLink, config_map_id: u32) -> Result<bool> {
    let ours = program(ebpf, hook.program())?
        .info()
        .map_err(|e| Error::Ebpf(format!("{}: {e}", hook.program())))?
        .tag();
    let linked = link
        .info()
        .map_err(|e| Error::Ebpf(format!("link info: {e}")))?
        .program_id();
    let Some(info) = loaded_programs().flatten().find(|p| p.id() == linked) else {
        return Ok(false);
    };
    let maps = info.map_ids().ok().flatten().unwrap_or_default();
    Ok(info.tag() == ours && maps.contains(&config_map_id))
}

/// Swaps the program of an existing link for ours; the pin keeps naming the same link.
fn replace(ebpf: &mut Ebpf, hook: Hook, link: FdLink) -> Result<FdLink> {
    let err = |e: &dyn std::fmt::Display| Error::Ebpf(format!("replacing {}: {e}", hook.program()));
    let link = SchedClassifierLink::try_from(link).map_err(|e| err(&e))?;
    let prog: &mut SchedClassifier = program(ebpf, hook.program())?;
    let id = prog.attach_to_link(link).map_err(|e| err(&e))?;
    let link = prog.take_link(id).map_err(|e| err(&e))?;
    FdLink::try_from(link).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcx_from_linux_6_6_on() {
        for (release, tcx) in [
            ("6.18.0-1-amd64", true),
            ("6.6.0", true),
            ("6.5.13-generic", false),
            ("5.15.0-91-generic", false),
            ("7.0", true),
            ("", false),
        ] {
            assert_eq!(kernel_has_tcx(release), tcx, "{release}");
        }
    }
}
