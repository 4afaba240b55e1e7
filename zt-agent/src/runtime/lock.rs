//! One agent per pin root: an exclusive `flock` on `<lock_dir>/<hash of the pin root>.lock`.
//!
//! Two agents on one pin root would write each other's maps and links with no warning (each
//! diffs against what it last wrote, so neither sees the other). The lock lives outside bpffs
//! (which holds no regular files) under `/run/zt` by default: tmpfs, so it never outlives a boot,
//! and `flock` is released by the kernel when its holder dies, `kill -9` included — there is no
//! stale lock to clean up. The file names the holder (pid and pin root) for the error the second
//! agent prints. `zt-agent uninstall` takes the same lock, so it never pulls pins from under a
//! running agent.
//!
//! The name is a hash of the pin root's canonical path (FNV-1a, stable across builds and
//! versions), so `/sys/fs/bpf/zt` and `/sys/fs/bpf//zt/` are one lock. In a DaemonSet the lock
//! directory must be a hostPath, as the pin root is, or a second pod would not see the first's
//! lock.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read as _, Seek as _, Write as _},
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Where the locks live unless `--lock-dir` says otherwise.
pub const LOCK_DIR: &str = "/run/zt";

/// Held for as long as this value lives (the open file descriptor holds the `flock`).
#[derive(Debug)]
pub struct PinRootLock {
    _file: File,
    pub path: PathBuf,
}

impl PinRootLock {
    /// Takes the lock of `pin_root` (created if missing, so its path can be made canonical; the
    /// agent has put it on bpffs before) in `lock_dir`, or says who holds it.
    pub fn acquire(lock_dir: &Path, pin_root: &Path) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(pin_root).map_err(io(pin_root))?;
        let canonical = pin_root.canonicalize().map_err(io(pin_root))?;
        std::fs::create_dir_all(lock_dir).map_err(io(lock_dir))?;
        let path = lock_dir.join(lock_name(&canonical));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Other(format!(
                    "another zt-agent holds the pin root {} ({}; lock {}): one agent per pin \
                     root, or they overwrite each other's maps. Stop it first, or use another \
                     --pin-root",
                    canonical.display(),
                    holder.trim(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(source)) => return Err(Error::Io { path, source }),
        }
        let holder = format!(
            "pid {} ({})\n",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(holder.as_bytes()))
            .map_err(io(&path))?;
        Ok(Self { _file: file, path })
    }
}

/// `<fnv1a-64 of the path, hex>.lock`.
pub fn lock_name(canonical_pin_root: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in canonical_pin_root.as_os_str().as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_stable_and_per_path() {
        // FNV-1a of "/sys/fs/bpf/zt": another name here would let two versions run on one pin root.
        assert_eq!(
            lock_name(Path::new("/sys/fs/bpf/zt")),
            "dd56e8bdcac7fc0f.lock"
        );
        assert_ne!(
            lock_name(Path::new("/sys/fs/bpf/zt")),
            lock_name(Path::new("/sys/fs/bpf/zt2"))
        );
    }

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_the_lock_frees_on_drop() {
        let base = std::env::temp_dir().join(format!("zt-lock-{}", std::process::id()));
        let (locks, root) = (base.join("locks"), base.join("pins/zt"));
        let first = PinRootLock::acquire(&locks, &root).unwrap();
        // The same directory by another spelling is the same lock.
        let other_spelling = base.join("pins/./zt/");
        let message = PinRootLock::acquire(&locks, &other_spelling)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("another zt-agent holds the pin root"),
            "{message}"
        );
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(PinRootLock::acquire(&locks, &base.join("pins/other")).is_ok());
        drop(first);
        let again = PinRootLock::acquire(&locks, &root);
        let _ = std::fs::remove_dir_all(&base);
        again.unwrap();
    }
}
