//! Makes sure a pin root lies on a bpf filesystem before anything is loaded or pinned.
//!
//! Pins exist only on bpffs, and a fresh machine has nothing mounted on `/sys/fs/bpf` (nor has a
//! DaemonSet whose hostPath made an empty directory). Like Cilium's agent, zt mounts one where it
//! is missing: on `/sys/fs/bpf` when the pin root lies below it, else on the pin root itself. When
//! it cannot (no `CAP_SYS_ADMIN`, a read-only parent, a container without the host's bpffs) it
//! stops with what to run, and removes every directory it created on the way.
//!
//! The agent (`zt-agent run`), the lab and the kernel tests all come through [`ensure_pin_root`].

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::{errno::Errno, mount::MsFlags, sys::statfs};

use crate::error::{Error, Result};

/// Where bpffs is mounted by convention.
pub const BPF_FS_ROOT: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes `pin_root` an existing directory on a bpffs, mounting one if there is none.
pub fn ensure_pin_root(pin_root: &Path) -> Result<()> {
    let mount_point = mount_point_for(pin_root);
    if !on_bpffs(pin_root) {
        let created = create_dirs(&mount_point).map_err(|e| cannot_mount(&mount_point, e))?;
        if let Err(e) = mount_bpffs(&mount_point) {
            // Another agent may have mounted it meanwhile: what matters is that one is there.
            if !on_bpffs(&mount_point) {
                remove_dirs(&created);
                return Err(cannot_mount(&mount_point, e));
            }
        }
        tracing::info!(mount_point = %mount_point.display(), "mounted a bpf filesystem");
    }
    create_dirs(pin_root).map_err(|source| Error::PinRoot {
        path: pin_root.to_path_buf(),
        message: format!("cannot create it: {source}"),
    })?;
    if !on_bpffs(pin_root) {
        return Err(Error::PinRoot {
            path: pin_root.to_path_buf(),
            message: format!(
                "it is not on a bpf filesystem (a different filesystem is mounted below {}); \
                 choose a --pin-root on a bpffs",
                mount_point.display()
            ),
        });
    }
    Ok(())
}

/// Whether `path`, or the nearest existing directory above it, lies on a bpffs.
pub fn on_bpffs(path: &Path) -> bool {
    path.ancestors()
        .find(|dir| dir.exists())
        .and_then(|dir| statfs::statfs(dir).ok())
        .is_some_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Where a bpffs for `pin_root` is mounted when none is there: the conventional root when the pin
/// root lies below it (so every zt pin root, and every other bpf tool, shares it), else the pin
/// root itself.
pub fn mount_point_for(pin_root: &Path) -> PathBuf {
    if pin_root.starts_with(BPF_FS_ROOT) {
        PathBuf::from(BPF_FS_ROOT)
    } else {
        pin_root.to_path_buf()
    }
}

fn mount_bpffs(at: &Path) -> nix::Result<()> {
    nix::mount::mount(
        Some("bpf"),
        at,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}

/// Creates `dir` and its missing parents; returns those it created, outermost first.
fn create_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.exists())
        .map(Path::to_path_buf)
        .collect();
    let mut created = Vec::new();
    for d in missing.into_iter().rev() {
        if let Err(e) = std::fs::create_dir(&d) {
            remove_dirs(&created);
            return Err(e);
        }
        created.push(d);
    }
    Ok(created)
}

fn remove_dirs(created: &[PathBuf]) {
    for d in created.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

fn cannot_mount(at: &Path, cause: impl Into<MountFailure>) -> Error {
    let hint = match cause.into() {
        MountFailure::Errno(Errno::EPERM) => {
            "this process may not mount (it needs CAP_SYS_ADMIN in the host's mount namespace)"
        }
        MountFailure::Errno(Errno::EROFS) | MountFailure::Io(io::ErrorKind::ReadOnlyFilesystem) => {
            "its parent is on a read-only filesystem"
        }
        MountFailure::Errno(Errno::ENODEV) => {
            "this kernel has no bpf filesystem (CONFIG_BPF_SYSCALL)"
        }
        _ => "the mount failed",
    };
    Error::PinRoot {
        path: at.to_path_buf(),
        message: format!(
            "no bpf filesystem is mounted there and zt could not mount one: {hint}. Mount it as root \
             (`mount -t bpf bpf {BPF_FS_ROOT}`) and choose a --pin-root below it; in a container, \
             mount the host's {BPF_FS_ROOT} (a hostPath of type Directory)"
        ),
    }
}

/// Why creating a mount point or mounting failed.
enum MountFailure {
    Errno(Errno),
    Io(io::ErrorKind),
}

impl From<Errno> for MountFailure {
    fn from(e: Errno) -> Self {
        Self::Errno(e)
    }
}

impl From<io::Error> for MountFailure {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(code) => Self::Errno(Errno::from_raw(code)),
            None => Self::Io(e.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_roots_below_the_convention_share_its_mount() {
        assert_eq!(
            mount_point_for(Path::new("/sys/fs/bpf/zt")),
            Path::new(BPF_FS_ROOT)
        );
        assert_eq!(
            mount_point_for(Path::new("/sys/fs/bpf")),
            Path::new(BPF_FS_ROOT)
        );
        assert_eq!(
            mount_point_for(Path::new("/run/zt/bpf")),
            Path::new("/run/zt/bpf")
        );
    }

    #[test]
    fn a_failed_creation_leaves_no_directory_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let below = tmp.path().join("a/b");
        assert_eq!(create_dirs(&below).unwrap().len(), 2);
        assert!(create_dirs(&blocker.join("c/d")).is_err());
        assert!(!blocker.join("c").exists());
    }

    #[test]
    fn the_message_says_what_to_run() {
        let e = cannot_mount(Path::new("/sys/fs/bpf"), Errno::EPERM).to_string();
        assert!(e.contains("mount -t bpf bpf /sys/fs/bpf"), "{e}");
        assert!(e.contains("CAP_SYS_ADMIN"), "{e}");
    }
}
