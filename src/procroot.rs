//! The real [`DirectWriter`]: a container's files written through `/proc/<pid>/root`, without
//! exec (SECURITY.md, "The write path's rules").
//!
//! `/proc/<pid>` is opened once as a directory fd (checked to be procfs); everything about the
//! process is read through it: its `cgroup` must name the container exactly and its start time
//! must not be later than the container's ([`crate::pidproof`]), its `uid_map` must be the
//! host's. The `root` link (a magic link: followed here, on purpose, and nowhere else) gives the
//! container's root; [`crate::layout`] resolves the tmpfs mount point and the directory below it
//! and writes or verifies the layout. Anything that makes the path unusable for a container is a
//! [`DirectError::Fallback`]: the injector then uses exec.
//!
//! An OS adapter like [`crate::docker`]: built once in `commands/agent.rs` when
//! `agent.write_mode = "auto"` and handed to the Supervisor. The calls are synchronous and short
//! (tens of syscalls on a tmpfs, bounded by the number of secrets); the injector runs them inline.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use dso_actors::direct::{DirectError, DirectTarget, DirectWriter, FallbackReason, Written};
use dso_actors::model::SecretFile;
use dso_actors::secret::SecretValue;
use rustix::fs::{fstatfs, openat, statat, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::layout::{open_secrets_dir, read_file, write_layout};
use crate::pidproof::{cgroup_is_container, start_ticks, started_with_container};

/// `f_type` of procfs.
const PROC_SUPER_MAGIC: u64 = 0x9fa0;

/// The uid map of a process in the host's user namespace.
const HOST_UID_MAP: &str = "0 0 4294967295";

/// The real writer: `/proc/<pid>/root`, `openat2`, `*at()` calls (Linux 5.6+, run as root).
#[derive(Debug, Clone)]
pub struct ProcRootWriter {
    proc: PathBuf,
}

impl Default for ProcRootWriter {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
        }
    }
}

impl ProcRootWriter {
    /// A writer that uses `/proc`.
    pub fn new() -> Self {
        Self::default()
    }
}

fn gone_errno(e: Errno) -> bool {
    matches!(e, Errno::NOENT | Errno::SRCH)
}

/// Wall-clock time of boot, in the clock `/proc/<pid>/stat` counts start times in (BOOTTIME).
fn boot_time() -> SystemTime {
    let b = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let since_boot = Duration::new(
        b.tv_sec.max(0) as u64,
        b.tv_nsec.clamp(0, 999_999_999) as u32,
    );
    SystemTime::now()
        .checked_sub(since_boot)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl DirectWriter for ProcRootWriter {
    fn write(
        &self,
        target: &DirectTarget<'_>,
        digest: &str,
        files: &[(&SecretFile, &SecretValue)],
    ) -> Result<Written, DirectError> {
        let pid = target.pid;
        if pid == 0 {
            return Err(DirectError::Fallback {
                reason: FallbackReason::NoPid,
                detail: "pid 0".to_string(),
            });
        }
        let gone = |when| DirectError::Gone { pid, when };
        // Permission (EPERM/EACCES: not root, a container without `pid: host`, no
        // CAP_SYS_PTRACE for a non-root process) is a reason to use exec; anything else —
        // notably EMFILE/ENFILE, which a local user can provoke by holding connections — is a
        // failed write, never a fallback reason.
        let denied = |what: &str, e: Errno| {
            if e == Errno::PERM || e == Errno::ACCESS {
                DirectError::Fallback {
                    reason: FallbackReason::ProcDenied,
                    detail: format!("{what} of pid {pid}: {}", io::Error::from(e)),
                }
            } else {
                DirectError::Io {
                    step: "reading /proc",
                    name: format!("/proc/{pid} ({what})"),
                    dir: target.dir.to_string(),
                    source: io::Error::from(e),
                }
            }
        };
        let read = |fd: BorrowedFd<'_>, name: &str, max: usize| match read_file(fd, name, max) {
            Ok((_, v)) => Ok(String::from_utf8_lossy(&v).into_owned()),
            Err(e) if gone_errno(e) => Err(gone("before the write")),
            Err(e) => Err(denied(&format!("reading {name}"), e)),
        };
        let procfd = match openat(
            rustix::fs::CWD,
            self.proc.join(pid.to_string()),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if gone_errno(e) => return Err(gone("before the write")),
            Err(e) => return Err(denied("opening /proc", e)),
        };
        #[allow(clippy::unnecessary_cast)]
        let magic = fstatfs(&procfd).map(|s| s.f_type as u64 & 0xffff_ffff);
        if magic != Ok(PROC_SUPER_MAGIC) {
            return Err(DirectError::Fallback {
                reason: FallbackReason::ProcDenied,
                detail: format!("{} is not procfs", self.proc.display()),
            });
        }
        let id = target.container_id;
        let cgroup = read(procfd.as_fd(), "cgroup", 64 * 1024)?;
        if !cgroup_is_container(&cgroup, id) {
            return Err(DirectError::Fallback {
                reason: FallbackReason::CgroupMismatch,
                detail: format!(
                    "the cgroup of pid {pid} is not exactly container {}'s",
                    &id[..id.len().min(12)]
                ),
            });
        }
        let stat = read(procfd.as_fd(), "stat", 4096)?;
        let ticks = start_ticks(&stat).ok_or_else(|| DirectError::Fallback {
            reason: FallbackReason::PidReused,
            detail: format!("no start time for pid {pid}"),
        })?;
        if let Err(e) = started_with_container(
            ticks,
            rustix::param::clock_ticks_per_second(),
            boot_time(),
            target.started_at,
        ) {
            return Err(DirectError::Fallback {
                reason: FallbackReason::PidReused,
                detail: format!("pid {pid}: {e}"),
            });
        }
        let uid_map = read(procfd.as_fd(), "uid_map", 4096)?;
        let uid_map = uid_map.split_whitespace().collect::<Vec<_>>().join(" ");
        if uid_map != HOST_UID_MAP {
            return Err(DirectError::Fallback {
                reason: FallbackReason::UserNamespace,
                detail: format!("uid_map of pid {pid} is `{uid_map}`"),
            });
        }
        let root = match openat(
            &procfd,
            "root",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if gone_errno(e) => return Err(gone("before the write")),
            Err(e) => return Err(denied("opening root", e)),
        };
        // Owners given by name: from the container's own account files, read through its root
        // before anything is created (an unknown name writes nothing).
        let resolved = crate::accounts::resolve_owners(root.as_fd(), files)?;
        let files: Vec<(&SecretFile, &SecretValue)> = match &resolved {
            Some(r) => r.iter().zip(files.iter().map(|(_, v)| *v)).collect(),
            None => files.to_vec(),
        };
        let dirfd = open_secrets_dir(root.as_fd(), target.mount, target.dir)?;
        let written = write_layout(dirfd.as_fd(), target.dir, digest, &files)?;
        // A process that exited meanwhile leaves a clear outcome rather than a false "success".
        match statat(&procfd, "stat", AtFlags::SYMLINK_NOFOLLOW) {
            Err(e) if gone_errno(e) => Err(gone("during the write")),
            _ => Ok(written),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> SecretFile {
        SecretFile {
            name: "a".into(),
            source: "local/x".parse().unwrap(),
            mode: 0o400,
            uid: 0,
            gid: 0,
            names: Default::default(),
        }
    }

    #[test]
    fn a_host_process_is_not_a_container_and_a_dead_pid_is_gone() {
        let w = ProcRootWriter::new();
        let a = file();
        let v = SecretValue::from_str_copy("x");
        let me = DirectTarget {
            container_id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            pid: std::process::id(),
            dir: "/run/secrets/dso",
            mount: "/run/secrets/dso",
            started_at: None,
        };
        match w.write(&me, "00", &[(&a, &v)]) {
            Err(DirectError::Fallback { reason, .. }) => {
                assert_eq!(reason, FallbackReason::CgroupMismatch)
            }
            other => panic!("expected a fallback, got {other:?}"),
        }
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = DirectTarget { pid, ..me };
        assert!(matches!(
            w.write(&dead, "00", &[(&a, &v)]),
            Err(DirectError::Gone { .. })
        ));
        let none = DirectTarget { pid: 0, ..me };
        assert!(matches!(
            w.write(&none, "00", &[(&a, &v)]),
            Err(DirectError::Fallback {
                reason: FallbackReason::NoPid,
                ..
            })
        ));
    }
}
