//! Hot standby: one active agent per `agent.state_dir`, any number waiting.
//!
//! The active agent holds an exclusive `flock(2)` on `<state_dir>/agent.lock` for as long as its
//! process lives; the kernel releases it the moment the process dies (`kill -9` included), and a
//! standby blocked in `flock` wakes at once. Nothing else is shared or synchronised: the state an
//! agent needs is in the containers (their `.ready` digests, keyed with the shared `digest.key`).
//!
//! The holder writes who it is into the file (pid, start time, PID namespace, a random nonce).
//! That serves one case: a restart in place (SIGHUP with a changed config re-executes the agent
//! under the same pid) closes the lock's file descriptor, so a standby may win the lock during
//! the re-exec. A standby that finds the previous holder's process still running (same pid and
//! start time, not a zombie, in its own PID namespace) gives the lock back and waits again, so
//! the reloaded agent stays the active one — unless that holder does not take the lock back
//! within [`YIELD_LIMIT`]. Across PID namespaces (agent containers without `pid: host`) liveness
//! cannot be told and the standby keeps the lock.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

/// The lock's file name inside `agent.state_dir`.
pub const LOCK_FILE: &str = "agent.lock";
/// How long a standby waits, lock released, for a live previous holder to take it back.
pub const YIELD_LIMIT: Duration = Duration::from_secs(2);
/// Pause between giving the lock back and waiting for it again.
const YIELD_PAUSE: Duration = Duration::from_millis(100);
/// Most bytes of the holder record read.
const MAX_RECORD: u64 = 256;

/// Why the leader lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    /// The lock file cannot be opened or created.
    #[error("agent.state_dir: cannot open the leader lock {path}: {source}")]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `flock` failed (not because another agent holds it).
    #[error("agent.state_dir: cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The holder record cannot be written.
    #[error("agent.state_dir: cannot write the holder record to {path}: {source}")]
    Record {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Who holds (or last held) the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Process id, in `pid_ns`.
    pub pid: u32,
    /// Start time of that process (clock ticks since boot, `/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// The PID namespace, as `readlink /proc/self/ns/pid` says (`pid:[4026531836]`).
    pub pid_ns: String,
    /// Random per acquisition: tells a lock taken back from one never touched again.
    pub nonce: u64,
}

/// (state, start time) of a process from `/proc/<pid>/stat`.
fn proc_stat(pid: &str) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn own_pid_ns() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Holder {
    /// This process, with a fresh nonce.
    pub fn me() -> Holder {
        Holder {
            pid: std::process::id(),
            start_time: proc_stat("self").map(|(_, t)| t).unwrap_or(0),
            pid_ns: own_pid_ns(),
            nonce: rand::random(),
        }
    }

    /// `pid start_time pid_ns nonce`, one line.
    pub fn render(&self) -> String {
        format!(
            "{} {} {} {:016x}\n",
            self.pid, self.start_time, self.pid_ns, self.nonce
        )
    }

    /// The record [`Holder::render`] wrote; None when empty or garbled.
    pub fn parse(text: &str) -> Option<Holder> {
        let mut it = text.split_whitespace();
        let h = Holder {
            pid: it.next()?.parse().ok()?,
            start_time: it.next()?.parse().ok()?,
            pid_ns: it.next()?.to_string(),
            nonce: u64::from_str_radix(it.next()?, 16).ok()?,
        };
        it.next().is_none().then_some(h)
    }

    /// The same process as `other` (the nonce aside): the same pid, start time and namespace.
    pub fn same_process(&self, other: &Holder) -> bool {
        self.pid == other.pid && self.start_time == other.start_time && self.pid_ns == other.pid_ns
    }

    /// The recorded process still runs: it is in our PID namespace (else this cannot be told,
    /// and it counts as gone), its pid has the recorded start time, and it is not a zombie.
    pub fn is_alive(&self) -> bool {
        if self.pid_ns.is_empty() || self.pid_ns != own_pid_ns() {
            return false;
        }
        matches!(proc_stat(&self.pid.to_string()),
            Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }
}

/// The held lock: this agent is the active one until it is dropped (or the process ends).
#[derive(Debug)]
pub struct LeaderLock {
    _file: File,
    holder: Holder,
}

/// What one attempt found.
enum Attempt {
    Acquired(LeaderLock),
    /// Another agent holds the lock.
    Held,
    /// We got the lock, but its previous holder still runs: given back.
    Yielded(Holder),
}

/// The lock file of `state_dir`.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LOCK_FILE)
}

impl LeaderLock {
    /// One attempt that never waits: `Some` when this agent is now the active one, `None` when
    /// another agent holds the lock (or held it and still runs: it is restarting in place).
    pub fn try_acquire(state_dir: &Path) -> Result<Option<LeaderLock>, StandbyError> {
        let me = Holder::me();
        Ok(match attempt(state_dir, &me, false, None)? {
            Attempt::Acquired(l) => Some(l),
            Attempt::Held | Attempt::Yielded(_) => None,
        })
    }

    /// Waits (blocking the thread: run it with `spawn_blocking`) until this agent holds the lock.
    pub fn acquire(state_dir: &Path) -> Result<LeaderLock, StandbyError> {
        let me = Holder::me();
        // The live previous holder we gave the lock back to, and since when its record is the same.
        let mut yielded: Option<(Holder, Instant)> = None;
        loop {
            let patience = yielded
                .as_ref()
                .map(|(h, since)| (h, since.elapsed() >= YIELD_LIMIT));
            match attempt(state_dir, &me, true, patience)? {
                Attempt::Acquired(l) => return Ok(l),
                Attempt::Held => {}
                Attempt::Yielded(h) => {
                    if yielded.as_ref().is_none_or(|(prev, _)| *prev != h) {
                        yielded = Some((h, Instant::now()));
                    }
                    std::thread::sleep(YIELD_PAUSE);
                }
            }
        }
    }

    /// Who this agent recorded itself as.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }
}

/// Opens the lock file, takes the lock (`wait`: blocking), reads the previous holder and either
/// records `me` or gives the lock back to a live previous holder. `patience`: the live holder
/// given the lock back before, and whether it has had [`YIELD_LIMIT`] to take it.
fn attempt(
    state_dir: &Path,
    me: &Holder,
    wait: bool,
    patience: Option<(&Holder, bool)>,
) -> Result<Attempt, StandbyError> {
    let path = lock_path(state_dir);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| StandbyError::Open {
            path: path.clone(),
            source,
        })?;
    let op = if wait {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    loop {
        match flock(&file, op) {
            Ok(()) => break,
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) => return Ok(Attempt::Held),
            Err(e) => {
                return Err(StandbyError::Lock {
                    path,
                    source: e.into(),
                })
            }
        }
    }
    let mut text = String::new();
    // A record that cannot be read is treated as none: the lock is what counts.
    let _ = (&file).take(MAX_RECORD).read_to_string(&mut text);
    if let Some(prev) = Holder::parse(&text) {
        let gave_up = patience.is_some_and(|(h, waited)| *h == prev && waited);
        if !prev.same_process(me) && prev.is_alive() && !gave_up {
            // Dropping the file releases the lock.
            return Ok(Attempt::Yielded(prev));
        }
    }
    let record = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(me.render().as_bytes())
    };
    record(&mut file).map_err(|source| StandbyError::Record { path, source })?;
    Ok(Attempt::Acquired(LeaderLock {
        _file: file,
        holder: me.clone(),
    }))
}

/// Takes the lead at once when no other agent holds it; else logs that this agent is a hot
/// standby and waits until the active agent's process ends (or `stop` completes first: then
/// `Ok(Err(stop's output))`). Logs the takeover with how long it waited.
pub async fn lead_or_wait<T>(
    state_dir: &Path,
    stop: impl std::future::Future<Output = T>,
) -> Result<Result<LeaderLock, T>, StandbyError> {
    // As the digest key would create it: 0700.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(state_dir)
        .map_err(|source| StandbyError::Open {
            path: lock_path(state_dir),
            source,
        })?;
    if let Some(lock) = LeaderLock::try_acquire(state_dir)? {
        return Ok(Ok(lock));
    }
    tracing::info!(
        lock = %lock_path(state_dir).display(),
        "another agent is active: hot standby until its process ends (agent.listen answers /healthz and /metrics; no admin socket, no Docker connection)"
    );
    let since = Instant::now();
    // A thread of its own, not spawn_blocking: the runtime would wait for a blocked flock when it
    // shuts down (a standby stopped by SIGTERM); a detached thread ends with the process.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let dir = state_dir.to_path_buf();
    std::thread::Builder::new()
        .name("dso-standby".into())
        .spawn(move || {
            // A failed send (the standby was stopped meanwhile) drops the lock: released.
            let _ = tx.send(LeaderLock::acquire(&dir));
        })
        .map_err(|source| StandbyError::Lock {
            path: lock_path(state_dir),
            source,
        })?;
    tokio::pin!(stop);
    tokio::select! {
        res = rx => {
            let lock = res.map_err(|_| StandbyError::Lock {
                path: lock_path(state_dir),
                source: std::io::Error::other("the waiting thread ended"),
            })??;
            tracing::info!(
                waited_ms = since.elapsed().as_millis() as u64,
                "took over as the active agent (the previous one's process ended)"
            );
            Ok(Ok(lock))
        }
        out = &mut stop => Ok(Err(out)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Takes the free lock recording `who` (another process) as its holder.
    fn try_acquire_as(state_dir: &Path, who: &Holder) -> Option<LeaderLock> {
        // The waiting standby holds the lock for microseconds while it yields: retry briefly.
        for _ in 0..100 {
            if let Ok(Attempt::Acquired(l)) = attempt(state_dir, who, false, None) {
                return Some(l);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn write_record(dir: &Path, h: &Holder) {
        std::fs::write(lock_path(dir), h.render()).unwrap();
    }

    /// A live process that is not this one (in our PID namespace), killed and reaped on drop.
    struct Other(std::process::Child);

    impl Other {
        fn start() -> Other {
            Other(
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap(),
            )
        }
        fn holder(&self) -> Holder {
            let pid = self.0.id();
            Holder {
                pid,
                start_time: proc_stat(&pid.to_string()).unwrap().1,
                pid_ns: own_pid_ns(),
                nonce: 7,
            }
        }
    }

    impl Drop for Other {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn records_render_and_parse() {
        let me = Holder::me();
        assert_eq!(Holder::parse(&me.render()), Some(me.clone()));
        assert!(me.is_alive());
        for bad in [
            "",
            "1 2",
            "x 2 pid:[1] 00",
            "1 2 pid:[1] 0g",
            "1 2 pid:[1] 00 extra",
        ] {
            assert_eq!(Holder::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_holder_at_a_time_and_the_next_one_gets_it_when_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = LeaderLock::try_acquire(dir.path())
            .unwrap()
            .expect("free lock");
        let record = std::fs::read_to_string(lock_path(dir.path())).unwrap();
        assert_eq!(Holder::parse(&record).as_ref(), Some(first.holder()));
        // flock locks belong to the open file: a second open in this process contends like
        // another agent would.
        assert!(LeaderLock::try_acquire(dir.path()).unwrap().is_none());
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let l = LeaderLock::acquire(&path).unwrap();
            (t.elapsed(), l)
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        let (waited, second) = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        // Our own earlier record (same process) never makes us wait.
        assert!(waited < YIELD_LIMIT, "{waited:?}");
        let mode = std::fs::metadata(lock_path(dir.path())).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        drop(second);
    }

    #[test]
    fn a_dead_or_foreign_previous_holder_is_taken_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let other = Other::start();
        let mut h = other.holder();
        drop(other);
        write_record(dir.path(), &h);
        assert!(!h.is_alive(), "reaped");
        assert!(LeaderLock::try_acquire(dir.path()).unwrap().is_some());
        // Another PID namespace: liveness cannot be told.
        h.pid = std::process::id();
        h.start_time = proc_stat("self").unwrap().1;
        h.pid_ns = "pid:[1]".into();
        write_record(dir.path(), &h);
        assert!(LeaderLock::try_acquire(dir.path()).unwrap().is_some());
        write_record(
            dir.path(),
            &Holder {
                start_time: 1,
                ..Holder::me()
            },
        );
        assert!(LeaderLock::try_acquire(dir.path()).unwrap().is_some());
    }

    #[test]
    fn a_live_previous_holder_gets_the_lock_back_for_a_while() {
        // A holder restarting in place: its process runs on, its lock was released by exec.
        let dir = tempfile::tempdir().unwrap();
        let other = Other::start();
        write_record(dir.path(), &other.holder());
        assert!(LeaderLock::try_acquire(dir.path()).unwrap().is_none());
        // It takes the lock back within the limit: the standby waits on.
        let path = dir.path().to_path_buf();
        let t = Instant::now();
        let waiter = std::thread::spawn(move || LeaderLock::acquire(&path).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        let back = try_acquire_as(
            dir.path(),
            &Holder {
                nonce: 8,
                ..other.holder()
            },
        );
        assert!(back.is_some(), "the live holder takes its lock back");
        std::thread::sleep(Duration::from_millis(300));
        // Released again while it still runs (a new record): the standby gives it YIELD_LIMIT
        // again, then takes over.
        drop(back);
        let l = waiter.join().unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(500) + YIELD_LIMIT,
            "{:?}",
            t.elapsed()
        );
        assert!(l.holder().same_process(&Holder::me()));
    }
}
