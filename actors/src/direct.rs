//! The direct write path's interface: a container's files written through its mount namespace,
//! without exec.
//!
//! `docker exec` costs a runc start per container (25–30 ms of CPU on a small host), which makes
//! the rotation fan-out to hundreds of containers take seconds. When the agent runs on the host
//! (or in a container with `pid: host`) as root, the container's tmpfs is reachable through the
//! mount namespace of its main process. A [`DirectWriter`] writes exactly the layout the exec
//! script writes (see [`crate::tarball`]): `..data_<digest>` holding the files, `..data` a symlink
//! to it swapped with one `rename`, each visible name a symlink into `..data`, `.ready` holding the
//! digest written last; same modes, owners, and the same "unchanged" answer (given only after the
//! current generation was read back, never because `.ready` says so) — so an agent switching
//! between the two paths rewrites nothing. The rules both follow are in SECURITY.md.
//!
//! The OS-level writer (`ProcRootWriter`: `/proc/<pid>/root`, `openat2`, `*at()` calls) lives in
//! the `dso` crate beside the Docker adapter (`src/procroot.rs`); the Supervisor receives it (or
//! None: every write is an exec) and hands it to the injectors. This crate stays free of OS calls.
//!
//! Anything that makes the path unusable for a container (no access to `/proc`, a user
//! namespace, a kernel without `openat2`, a process that is not the container's) is a
//! [`DirectError::Fallback`]: the injector then uses exec. The calls are synchronous and short
//! (tens of syscalls on a tmpfs); the injector runs them inline.

use std::io;

use crate::model::SecretFile;
use crate::secret::SecretValue;

/// Where a direct write goes.
#[derive(Debug, Clone, Copy)]
pub struct DirectTarget<'a> {
    /// Full container id (64 hex digits): the process's cgroup must name it.
    pub container_id: &'a str,
    /// `State.Pid`: the container's main process, as the host sees it.
    pub pid: u32,
    /// Absolute directory inside the container.
    pub dir: &'a str,
    /// The tmpfs mount point (from inspect) that holds `dir`.
    pub mount: &'a str,
    /// `State.StartedAt` of the inspect that returned `pid`: the process must not be younger.
    pub started_at: Option<&'a str>,
}

/// What a direct write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// `.ready` already held this digest: nothing was touched.
    Unchanged,
    /// A new generation is in place.
    New {
        /// True when an earlier set (a `.ready`) was replaced: not a first injection.
        replaced: bool,
    },
}

/// Why the direct path was not usable; the injector then writes through exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// The agent may not read `/proc/<pid>` (EPERM/EACCES: not root, or in a container without
    /// `pid: host`, or the pid is not visible), or its `root`: that is a ptrace access-mode
    /// check, which root in a container without `CAP_SYS_PTRACE` fails for a process of another
    /// uid (a container with `user: 1000`).
    ProcDenied,
    /// The container runs in its own user namespace (userns-remap, rootless): ownership would be
    /// wrong seen from inside.
    UserNamespace,
    /// The kernel has no `openat2` (before Linux 5.6).
    NoOpenat2,
    /// The process at that pid does not belong to the container (pid reused, or the agent sees
    /// another cgroup namespace).
    CgroupMismatch,
    /// The engine reported no pid for the container.
    NoPid,
    /// The container runs, but its pid does not exist here: the agent runs in a PID namespace of
    /// its own (a container without `pid: host`), where the pids Docker reports mean nothing.
    /// Decided by the Injector (the writer reports `Gone`; Docker says it runs).
    PidNamespace,
    /// The process at that pid started after the container did: the pid was reused.
    PidReused,
    /// Owners are given by name and the container's `/etc/passwd` or `/etc/group` is on another
    /// mount than its root (a bind mount, or a symlink into `/proc`, a volume, a FUSE mount): the
    /// agent reads account files only from the root filesystem itself; the exec path reads them
    /// inside the container.
    AccountsMount,
}

impl FallbackReason {
    /// Every reason, for pre-created metric series.
    pub const ALL: [FallbackReason; 8] = [
        FallbackReason::ProcDenied,
        FallbackReason::UserNamespace,
        FallbackReason::NoOpenat2,
        FallbackReason::CgroupMismatch,
        FallbackReason::NoPid,
        FallbackReason::PidNamespace,
        FallbackReason::PidReused,
        FallbackReason::AccountsMount,
    ];

    /// Metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::ProcDenied => "proc_denied",
            FallbackReason::UserNamespace => "user_namespace",
            FallbackReason::NoOpenat2 => "no_openat2",
            FallbackReason::CgroupMismatch => "cgroup_mismatch",
            FallbackReason::NoPid => "no_pid",
            FallbackReason::PidNamespace => "pid_namespace",
            FallbackReason::PidReused => "pid_reused",
            FallbackReason::AccountsMount => "accounts_mount",
        }
    }

    /// What it means, for the one log line per reason.
    pub fn explain(self) -> &'static str {
        match self {
            FallbackReason::ProcDenied => "the agent may not open /proc/<pid> (or its root) of containers (run it as root on the host, or in a container with `pid: host` and, for containers whose process is not root, `cap_add: [SYS_PTRACE]`)",
            FallbackReason::UserNamespace => "containers run in their own user namespace (userns-remap or rootless Docker)",
            FallbackReason::NoOpenat2 => "the kernel has no openat2 (Linux 5.6+ needed)",
            FallbackReason::CgroupMismatch => "the process at the container's pid is not exactly in the container's cgroup (pid reused, a cgroup that merely contains the id, or an unknown cgroup layout)",
            FallbackReason::NoPid => "the engine reported no pid for the container",
            FallbackReason::PidNamespace => "the agent runs in its own PID namespace, where the pids Docker reports do not exist (give its container `pid: host`)",
            FallbackReason::PidReused => "the process at the container's pid started after the container (the pid was reused)",
            FallbackReason::AccountsMount => "a container's /etc/passwd or /etc/group (owners given by name) is not on its root filesystem (a bind mount, or a symlink into another mount)",
        }
    }
}

/// Why a direct write failed. Never holds a value: only names, steps and OS errors.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The direct path cannot serve this container; exec is used instead.
    #[error("direct write not possible ({}): {detail}", reason.as_str())]
    Fallback {
        /// Which condition.
        reason: FallbackReason,
        /// What exactly was seen.
        detail: String,
    },
    /// The directory is not provably on the container's tmpfs: refused, nothing written.
    #[error("{dir} is not provably on the container's tmpfs: {reason}")]
    NotTmpfs {
        /// Directory inside the container.
        dir: String,
        /// What was found instead.
        reason: String,
    },
    /// An entry at one of DSO's names that DSO did not create and may not remove (a non-empty
    /// directory, a fifo, …): refused, naming it.
    #[error("`{entry}` in {dir} is {what}, which DSO did not create and does not remove; remove it (or recreate the container)")]
    Foreign {
        /// The entry, relative to the secrets directory.
        entry: String,
        /// What it is.
        what: String,
        /// Directory inside the container.
        dir: String,
    },
    /// The container's main process exited (before or during the write).
    #[error("the container's main process (pid {pid}) exited {when}")]
    Gone {
        /// The pid.
        pid: u32,
        /// "before the write" / "during the write".
        when: &'static str,
    },
    /// The directory path is unusable (e.g. a component is a file, or too many symlinks).
    #[error("{dir}: {reason}")]
    BadDir {
        /// Directory inside the container.
        dir: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A user or group name of the spec is not in the container's `/etc/passwd` or
    /// `/etc/group`: refused, nothing written.
    #[error("{0}")]
    UnknownOwner(#[from] crate::owners::UnknownName),
    /// The container's `/etc/passwd` or `/etc/group` could not be read (through its root,
    /// confined like the write); nothing written.
    #[error("reading {file} through the container's root: {source}")]
    Accounts {
        /// `/etc/passwd` or `/etc/group`.
        file: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// One step of the write failed; the previous set (if any) is still in place.
    #[error("{step} `{name}` in {dir}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The entry (file or directory name in the secrets directory).
        name: String,
        /// Directory inside the container.
        dir: String,
        /// The OS error.
        source: io::Error,
    },
}

/// The OS side of the direct path (a trait so the injector's choice between direct and exec is
/// unit-tested with `fake::FakeDirectWriter`; the real one is the `dso` crate's `ProcRootWriter`).
pub trait DirectWriter: Send + Sync + std::fmt::Debug {
    /// Installs `files` (with their values, in this order) into `target` as generation `digest`.
    /// Owners given by name (`SecretFile::names`) are resolved from the container's own
    /// `/etc/passwd` and `/etc/group`, read through its root (`crate::owners::resolve`); an
    /// unknown name is [`DirectError::UnknownOwner`], nothing written.
    fn write(
        &self,
        target: &DirectTarget<'_>,
        digest: &str,
        files: &[(&SecretFile, &SecretValue)],
    ) -> Result<Written, DirectError>;
}
