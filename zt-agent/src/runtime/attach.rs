//! The attach manager: the program pair on each local pod's host-side interface, as TCX links
//! pinned under `<pin_root>/links/<ifindex>-{from,to}`.
//!
//! - `zt_from_pod` sits at TCX ingress (what the pod sends), `zt_to_pod` at TCX egress (what it
//!   receives).
//! - Pinned links outlive the agent: while it is down or restarting, the programs keep enforcing
//!   on the pinned maps. A restarted agent [`adopts`](Attacher::adopt) them; it swaps a link's
//!   program atomically (`BPF_LINK_UPDATE`) only when the running one differs — another tag, or it
//!   does not use the pinned `zt_config` map (maps from an older generation of pins).
//! - [`detach`](Attacher::detach) unpins and closes the link, which detaches it. A link whose
//!   interface is gone is already detached by the kernel; its pin is removed.
//! - TCX needs Linux 6.6; there is no clsact fallback (netlink filters cannot be pinned, so they
//!   could not be adopted across restarts without a gap).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        loaded_programs,
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use zt_common::names;

use super::{iface::HostIf, loader::program};
use crate::error::{Error, Result};

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
    // Closing these fds leaves the links attached: the pins hold them.
    _links: Vec<FdLink>,
}

/// The interfaces carrying the program pair.
#[derive(Debug)]
pub struct Attacher {
    dir: PathBuf,
    attached: BTreeMap<u32, Attached>,
}

impl Attacher {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
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

    /// Takes over the links a previous agent pinned, for interfaces that still exist
    /// (`live`: ifindex → name); pins of vanished interfaces are removed. A pair missing one half
    /// is completed.
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
                tracing::info!(ifindex, "removing the pinned links of a vanished interface");
                for path in paths {
                    let _ = std::fs::remove_file(path);
                }
                continue;
            };
            let host = HostIf {
                ifindex,
                ifname: ifname.clone(),
            };
            match self.adopt_pair(ebpf, config_map_id, &host) {
                Ok(()) => tracing::info!(ifindex, ifname, "adopted the pinned program pair"),
                Err(error) => tracing::warn!(%error, ifindex, ifname, "cannot adopt pinned links"),
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
                _links: links,
            },
        );
        Ok(())
    }

    /// Attaches the pair to `host` and pins it, unless it is attached already.
    pub fn attach(&mut self, ebpf: &mut Ebpf, host: &HostIf) -> Result<()> {
        if self.attached.contains_key(&host.ifindex) {
            return Ok(());
        }
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
        tracing::info!(
            ifindex = host.ifindex,
            ifname = host.ifname,
            "attached the program pair"
        );
        self.attached.insert(
            host.ifindex,
            Attached {
                ifname: host.ifname.clone(),
                _links: links,
            },
        );
        Ok(())
    }

    /// Detaches the pair from `ifindex` and removes its pins.
    pub fn detach(&mut self, ifindex: u32) {
        for hook in Hook::BOTH {
            let _ = std::fs::remove_file(self.pin_path(ifindex, hook));
        }
        if let Some(attached) = self.attached.remove(&ifindex) {
            tracing::info!(
                ifindex,
                ifname = attached.ifname,
                "detached the program pair"
            );
        }
    }
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
