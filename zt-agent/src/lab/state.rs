//! What a lab run made, recorded under [`STATE_DIR`] before it is made, so that teardown — on
//! return, on failure, on Ctrl-C, or by a later run after this one was killed — finds every
//! namespace, pin dir, agent process and work dir.
//!
//! A run is `<pid>-<seq>`. A record whose owner is no longer alive (same pid *and* start time, so a
//! reused pid does not count) is a leftover, and the next lab removes it.
//!
//! Each record names its user: the login user who started it (`SUDO_UID` when root runs it
//! through sudo, else the real uid). `lab down` stops and removes only the caller's labs;
//! `lab down --all` every lab on the machine.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

use super::net;

pub const STATE_DIR: &str = "/run/zt-lab";
const BPFFS: &str = "/sys/fs/bpf";

/// Everything one run created or is about to create.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub run: String,
    pub owner: Process,
    /// The login user who started the run (see [`caller`]); records without one are root's.
    #[serde(default)]
    pub user: u32,
    pub netns: Vec<String>,
    pub pin_root: Option<PathBuf>,
    pub agent: Option<Process>,
    pub workdir: Option<PathBuf>,
}

/// A running (not zombie) process as pid plus start time (clock ticks since boot), which together
/// never repeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub start: u64,
}

impl Process {
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        // A zombie has exited; only its parent's wait is missing.
        if fields.next()? == "Z" {
            return None;
        }
        let start = fields.nth(18)?.parse().ok()?;
        Some(Self { pid, start })
    }

    pub fn alive(self) -> bool {
        Self::of(self.pid) == Some(self)
    }
}

/// The records of this process's live runs, for the signal handler.
fn live() -> &'static Mutex<BTreeMap<String, Record>> {
    static LIVE: OnceLock<Mutex<BTreeMap<String, Record>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// A new run id, unique on this machine while this process lives.
pub fn new_run() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

fn path_of(run: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{run}.json"))
}

/// Starts recording run `run`.
pub fn begin(run: &str) -> crate::Result<()> {
    let owner = Process::of(std::process::id())
        .ok_or_else(|| crate::Error::Other("cannot read /proc/self/stat".to_owned()))?;
    let record = Record {
        run: run.to_owned(),
        owner,
        user: caller(),
        ..Record::default()
    };
    std::fs::create_dir_all(STATE_DIR).map_err(|source| crate::Error::Io {
        path: STATE_DIR.into(),
        source,
    })?;
    save(&record)?;
    live()
        .lock()
        .expect("not poisoned")
        .insert(run.to_owned(), record);
    Ok(())
}

/// Changes run `run`'s record, on disk first.
pub fn update(run: &str, change: impl FnOnce(&mut Record)) -> crate::Result<()> {
    let mut live = live().lock().expect("not poisoned");
    let Some(record) = live.get_mut(run) else {
        return Ok(());
    };
    change(record);
    save(record)
}

fn save(record: &Record) -> crate::Result<()> {
    let path = path_of(&record.run);
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(record).expect("a record serializes");
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| crate::Error::Io { path, source })
}

/// Removes everything run `run` recorded, and the record.
pub fn finish(run: &str) {
    let record = live().lock().expect("not poisoned").remove(run);
    if let Some(record) = record {
        teardown(&record);
    }
}

/// Undoes a record: stops its agent, unpins, deletes namespaces (their links go with them), removes
/// the work dir, then the record itself. Idempotent.
pub fn teardown(record: &Record) {
    if let Some(agent) = record.agent {
        stop_process(agent);
    }
    if let Some(pin_root) = &record.pin_root {
        let _ = std::fs::remove_dir_all(pin_root);
    }
    for netns in record.netns.iter().rev() {
        net::delete_netns(netns);
    }
    if let Some(workdir) = &record.workdir {
        let _ = std::fs::remove_dir_all(workdir);
    }
    let _ = std::fs::remove_file(path_of(&record.run));
}

/// SIGTERM, then SIGKILL if it is still there after 5 s.
pub fn stop_process(process: Process) {
    if !process.alive() {
        return;
    }
    let pid = Pid::from_raw(process.pid as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while process.alive() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    if process.alive() {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// All records on disk.
pub fn records() -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            if path.extension()? != "json" {
                return None;
            }
            serde_json::from_slice(&std::fs::read(path).ok()?).ok()
        })
        .collect()
}

/// Removes what killed runs left: their records, and any `ztlab-<pid>-…` namespace or pin dir
/// whose pid is not running. Returns what it removed, to tell the user.
pub fn reap_leftovers() -> Vec<String> {
    let mut reaped = Vec::new();
    for record in records() {
        if !record.owner.alive() {
            teardown(&record);
            reaped.push(format!("run {}", record.run));
        }
    }
    reaped.extend(remove_orphans(net::PREFIX));
    reaped
}

/// Deletes every network namespace and bpffs pin dir named `<prefix>-<pid>…` whose process is
/// not running, so a user that names its objects so can clean up after its killed runs. Returns
/// the paths it removed.
pub fn remove_orphans(prefix: &str) -> Vec<String> {
    let orphan = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            return false;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        pid.is_some_and(|pid| pid != std::process::id() && Process::of(pid).is_none())
    };
    let mut reaped = Vec::new();
    for (dir, is_netns) in [("/run/netns", true), (BPFFS, false)] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !orphan(&name) {
                continue;
            }
            if is_netns {
                net::delete_netns(&name);
            } else {
                let _ = std::fs::remove_dir_all(entry.path());
            }
            reaped.push(format!("{dir}/{name}"));
        }
    }
    reaped
}

/// The login user running this process: `SUDO_UID` when root runs it through sudo, else the
/// real uid.
pub fn caller() -> u32 {
    let uid = nix::unistd::getuid().as_raw();
    match std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok()) {
        Some(sudo) if uid == 0 => sudo,
        _ => uid,
    }
}

/// Which labs `lab down` stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whose {
    /// Those of this login user.
    User(u32),
    /// Every lab on the machine, and every `ztlab-…` leftover of a dead process.
    All,
}

impl Whose {
    fn covers(self, record: &Record) -> bool {
        match self {
            Whose::User(user) => record.user == user,
            Whose::All => true,
        }
    }
}

/// Asks the running labs `whose` says to stop (SIGTERM: each tears itself down), waits for
/// them, then removes what dead ones of theirs left. Other users' labs are not touched.
pub fn stop(whose: Whose) -> Vec<String> {
    let mut stopped = Vec::new();
    for record in records().into_iter().filter(|r| whose.covers(r)) {
        if record.owner.alive() && record.owner.pid != std::process::id() {
            stop_process(record.owner);
            stopped.push(format!("lab {} (pid {})", record.run, record.owner.pid));
        }
    }
    for record in records().into_iter().filter(|r| whose.covers(r)) {
        if !record.owner.alive() {
            teardown(&record);
            stopped.push(format!("run {}", record.run));
        }
    }
    if whose == Whose::All {
        stopped.extend(remove_orphans(net::PREFIX));
    }
    stopped
}

/// Runs `spawn` (which starts run `run`'s agent) and records the process it returns the pid
/// of, holding the records' lock throughout: a signal's teardown, which takes the same lock,
/// either runs before the agent exists or finds it recorded — never an agent it does not know
/// of, that would go on pinning maps after the teardown removed the pin dir.
pub fn spawn_recorded<T>(
    run: &str,
    spawn: impl FnOnce() -> crate::Result<T>,
    pid: impl Fn(&T) -> u32,
) -> crate::Result<T> {
    let mut live = live().lock().expect("not poisoned");
    let spawned = spawn()?;
    if let Some(record) = live.get_mut(run) {
        record.agent = Process::of(pid(&spawned));
        save(record)?;
    }
    Ok(spawned)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread — call it before any thread starts, so
/// every thread inherits the mask — and handles them on a thread of its own: tear down every live
/// run, then exit 130. Returns the set, for threads that must unblock it before spawning children.
pub fn handle_signals() -> crate::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::SigSet;
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block()
        .map_err(|e| crate::Error::Other(format!("blocking signals: {e}")))?;
    thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            eprintln!("zt-agent lab: {signal}, tearing the lab down");
            let mut live = live().lock().expect("not poisoned");
            for record in live.values() {
                teardown(record);
            }
            live.clear();
            // Exit holding the lock: no other thread may record anything new.
            std::process::exit(130);
        }
    });
    Ok(set)
}

/// Runs `f` (which spawns a child process) on a thread with `signals` unblocked, so the child
/// does not inherit a mask that would make it deaf to SIGTERM.
pub fn with_signals_unblocked<T: Send>(
    signals: Option<nix::sys::signal::SigSet>,
    f: impl FnOnce() -> T + Send,
) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(set) = signals {
                    let _ = set.thread_unblock();
                }
                f()
            })
            .join()
            .expect("the spawning thread does not panic")
    })
}
