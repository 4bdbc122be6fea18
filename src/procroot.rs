//! The real [`DirectWriter`]: a container's files written through `/proc/<pid>/root`, without exec.
//!
//! `docker exec` costs a runc start per container (25–30 ms of CPU on a small host), which makes
//! the rotation fan-out to hundreds of containers take seconds. When the agent runs on the host
//! (or in a container with `pid: host`) as root, the container's tmpfs is reachable through the
//! mount namespace of its main process: [`ProcRootWriter`] writes exactly the layout the exec
//! script writes (see `dso_actors::tarball`): `..data_<digest>` holding the files, `..data` a symlink
//! to it swapped with one `rename`, each visible name a symlink into `..data`, `.ready` holding the
//! digest written last; same modes, owners, and the same "unchanged" answer when `.ready` already
//! holds the digest — so an agent switching between the two paths rewrites nothing.
//!
//! Safety of the path walk (the container controls everything under its root):
//! - `/proc/<pid>` is opened once as a directory fd; every later check (its `cgroup` names the
//!   container id, its `uid_map` is the host's) and the `root` link are read through that fd, so a
//!   recycled pid cannot redirect us to another process.
//! - The secrets directory is opened with `openat2(root, dir, RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)`: symlinks the container planted resolve inside its root, `..` stops at
//!   it, `/proc/*/root`-style magic links are refused.
//! - The directory must be a tmpfs (`fstatfs`), else nothing is written.
//! - Below it, only `*at()` calls relative to that directory fd, with single-component names,
//!   `O_NOFOLLOW` and `O_EXCL`; symlinks found there are replaced or removed, never followed.
//!
//! Anything that makes the path unusable for a container (no access to `/proc`, a user
//! namespace, a kernel without `openat2`, a process that is not the container's) is a
//! [`DirectError::Fallback`]: the injector then uses exec.
//!
//! An OS adapter like [`crate::docker`]: built once in `commands/agent.rs` when `agent.write_mode = "auto"`
//! and handed to the Supervisor. The calls are synchronous and short
//! (tens of syscalls on a tmpfs); the injector runs them inline.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use dso_actors::direct::{DirectError, DirectTarget, DirectWriter, FallbackReason, Written};
use dso_actors::model::{SecretFile, READY_MARKER};
use dso_actors::secret::SecretValue;
use rustix::fs::{
    fchmod, fchown, fstatfs, mkdirat, openat, openat2, renameat, statat, symlinkat, unlinkat,
    AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Uid,
};
use rustix::io::Errno;

/// `f_type` of a tmpfs (`TMPFS_MAGIC` in `linux/magic.h`).
const TMPFS_MAGIC: u64 = 0x0102_1994;

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

fn errno_is(e: Errno, list: &[Errno]) -> bool {
    list.contains(&e)
}

/// Reads a small file relative to `dir` (no symlink followed at the last step), at most `max`
/// bytes.
fn read_small(dir: BorrowedFd<'_>, name: &str, max: usize) -> Result<Vec<u8>, Errno> {
    let fd = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::with_capacity(max.min(4096));
    let mut buf = [0u8; 4096];
    while out.len() < max {
        let n = rustix::io::read(&fd, &mut buf[..])?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n.min(max - out.len())]);
    }
    Ok(out)
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
        let denied = |what: &str, e: Errno| DirectError::Fallback {
            reason: FallbackReason::ProcDenied,
            detail: format!("{what} of pid {pid}: {}", io::Error::from(e)),
        };
        let proc_dir = self.proc.join(pid.to_string());
        let procfd = match openat(
            rustix::fs::CWD,
            &proc_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if errno_is(e, &[Errno::NOENT, Errno::SRCH]) => {
                return Err(gone("before the write"))
            }
            Err(e) => return Err(denied("opening /proc", e)),
        };
        // The process must be the container's: its cgroup path names the full container id.
        let cgroup = match read_small(procfd.as_fd(), "cgroup", 64 * 1024) {
            Ok(c) => c,
            Err(e) if errno_is(e, &[Errno::NOENT, Errno::SRCH]) => {
                return Err(gone("before the write"))
            }
            Err(e) => return Err(denied("reading cgroup", e)),
        };
        if target.container_id.len() < 12
            || !String::from_utf8_lossy(&cgroup).contains(target.container_id)
        {
            return Err(DirectError::Fallback {
                reason: FallbackReason::CgroupMismatch,
                detail: format!(
                    "the cgroup of pid {pid} does not name container {}",
                    &target.container_id[..target.container_id.len().min(12)]
                ),
            });
        }
        let uid_map = match read_small(procfd.as_fd(), "uid_map", 4096) {
            Ok(m) => m,
            Err(e) if errno_is(e, &[Errno::NOENT, Errno::SRCH]) => {
                return Err(gone("before the write"))
            }
            Err(e) => return Err(denied("reading uid_map", e)),
        };
        let uid_map = String::from_utf8_lossy(&uid_map)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if uid_map != HOST_UID_MAP {
            return Err(DirectError::Fallback {
                reason: FallbackReason::UserNamespace,
                detail: format!("uid_map of pid {pid} is `{uid_map}`"),
            });
        }
        // The root of the container's mount namespace (a magic link: followed here, on purpose,
        // and nowhere else).
        let root = match openat(
            &procfd,
            "root",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if errno_is(e, &[Errno::NOENT, Errno::SRCH]) => {
                return Err(gone("before the write"))
            }
            Err(e) => return Err(denied("opening root", e)),
        };
        let dirfd = open_dir_in_root(root.as_fd(), target.dir)?;
        let written = write_layout(dirfd.as_fd(), target.dir, digest, files)?;
        // A process that exited meanwhile leaves a clear outcome rather than a false "success".
        match statat(&procfd, "stat", AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(written),
            Err(e) if errno_is(e, &[Errno::NOENT, Errno::SRCH]) => Err(gone("during the write")),
            Err(_) => Ok(written),
        }
    }
}

fn fs_name(magic: u64) -> String {
    match magic {
        0xEF53 => "ext4".to_string(),
        0x794c_7630 => "overlay".to_string(),
        0x5846_5342 => "xfs".to_string(),
        0x9123_683e => "btrfs".to_string(),
        0x9fa0 => "proc".to_string(),
        0x6265_6572 => "sysfs".to_string(),
        0x1cd1 => "devpts".to_string(),
        other => format!("a filesystem of type {other:#x}"),
    }
}

fn check_tmpfs(fd: BorrowedFd<'_>, dir: &str) -> Result<(), DirectError> {
    let st = fstatfs(fd).map_err(|e| DirectError::BadDir {
        dir: dir.to_string(),
        reason: format!("fstatfs: {}", io::Error::from(e)),
    })?;
    // `f_type` is signed on some targets; compare its bit pattern.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u64 & 0xffff_ffff;
    if magic != TMPFS_MAGIC {
        return Err(DirectError::NotTmpfs {
            dir: dir.to_string(),
            fs: fs_name(magic),
        });
    }
    Ok(())
}

/// Opens `dir` (absolute, inside the container) below `root`, confined to it; creates missing
/// components (mode 0755, like `mkdir -p` with umask 022) only after checking that the nearest
/// existing ancestor is a tmpfs. The result is a tmpfs directory fd, or an error.
pub fn open_dir_in_root(root: BorrowedFd<'_>, dir: &str) -> Result<OwnedFd, DirectError> {
    let comps: Vec<&str> = dir
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.contains(&"..") || !dir.starts_with('/') {
        return Err(DirectError::BadDir {
            dir: dir.to_string(),
            reason: "must be an absolute path without `..`".to_string(),
        });
    }
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let bad = |e: Errno, what: &str| DirectError::BadDir {
        dir: dir.to_string(),
        reason: format!("{what}: {}", io::Error::from(e)),
    };
    // Deepest existing prefix.
    let mut have = comps.len();
    let mut fd = loop {
        let path = format!("/{}", comps[..have].join("/"));
        match openat2(root, path.as_str(), flags, Mode::empty(), resolve) {
            Ok(fd) => break fd,
            Err(Errno::NOSYS) => {
                return Err(DirectError::Fallback {
                    reason: FallbackReason::NoOpenat2,
                    detail: "openat2: ENOSYS".to_string(),
                })
            }
            Err(Errno::NOENT) if have > 0 => have -= 1,
            Err(Errno::NOTDIR) => {
                return Err(bad(
                    Errno::NOTDIR,
                    "a component is not a directory (remove it, or choose another dso.dir)",
                ))
            }
            Err(Errno::LOOP) => {
                return Err(bad(
                    Errno::LOOP,
                    "too many symlinks, or a /proc magic link, on the way",
                ))
            }
            Err(Errno::XDEV) => {
                return Err(bad(Errno::XDEV, "the path leaves the container's root"))
            }
            Err(e) => return Err(bad(e, "opening")),
        }
    };
    check_tmpfs(fd.as_fd(), dir)?;
    for comp in &comps[have..] {
        match mkdirat(&fd, *comp, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(bad(e, "creating a missing directory")),
        }
        let next = openat(&fd, *comp, flags | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| bad(e, "opening a directory just created"))?;
        // `mkdir -p` with umask 022: 0755 whatever the agent's umask.
        let _ = fchmod(&next, Mode::from_raw_mode(0o755));
        fd = next;
    }
    check_tmpfs(fd.as_fd(), dir)?;
    Ok(fd)
}

/// The kind of an entry in `dir`, without following a symlink (None: absent).
fn kind(dir: BorrowedFd<'_>, name: &str) -> Result<Option<FileType>, Errno> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `name` in `dir`: a file or symlink (never followed), or a directory tree (walked with
/// `O_NOFOLLOW`, so nothing outside it is touched).
fn remove_entry(dir: BorrowedFd<'_>, name: &str) -> Result<(), Errno> {
    match kind(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            for child in list(sub.as_fd())? {
                remove_entry(sub.as_fd(), &child)?;
            }
            drop(sub);
            unlinkat(dir, name, AtFlags::REMOVEDIR)
        }
        Some(_) => unlinkat(dir, name, AtFlags::empty()),
    }
}

/// Names in `dir` (without `.` and `..`).
fn list(dir: BorrowedFd<'_>) -> Result<Vec<String>, Errno> {
    let mut out = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        out.push(String::from_utf8_lossy(bytes).into_owned());
    }
    Ok(out)
}

/// A name unique to this process and call, for staging entries.
fn tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "d{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes the AtomicWriter layout of `files` into the (tmpfs) directory `dir`, exactly as the
/// exec script does. `dir_name` only names the directory in errors.
pub fn write_layout(
    dir: BorrowedFd<'_>,
    dir_name: &str,
    digest: &str,
    files: &[(&SecretFile, &SecretValue)],
) -> Result<Written, DirectError> {
    let io_err = |step: &'static str, name: &str, e: Errno| DirectError::Io {
        step,
        name: name.to_string(),
        dir: dir_name.to_string(),
        source: io::Error::from(e),
    };
    let ready_kind = kind(dir, READY_MARKER).map_err(|e| io_err("checking", READY_MARKER, e))?;
    let data_kind = kind(dir, "..data").map_err(|e| io_err("checking", "..data", e))?;
    let had = ready_kind == Some(FileType::RegularFile);
    if had && data_kind == Some(FileType::Symlink) {
        if let Ok(cur) = read_small(dir, READY_MARKER, 256) {
            let first = cur.split(|b| *b == b'\n').next().unwrap_or(&[]);
            if first == digest.as_bytes() {
                return Ok(Written::Unchanged);
            }
        }
    }

    let t = tag();
    let staging = format!(".dso-staging.{t}");
    remove_entry(dir, &staging).map_err(|e| io_err("removing", &staging, e))?;
    mkdirat(dir, staging.as_str(), Mode::from_raw_mode(0o700))
        .map_err(|e| io_err("creating", &staging, e))?;
    let fill = || -> Result<(), DirectError> {
        let sfd = openat(
            dir,
            staging.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("opening", &staging, e))?;
        for (f, v) in files {
            let fd = openat(
                &sfd,
                f.name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| io_err("creating", &f.name, e))?;
            let mut rest = v.expose();
            while !rest.is_empty() {
                let n = rustix::io::write(&fd, rest).map_err(|e| io_err("writing", &f.name, e))?;
                rest = &rest[n..];
            }
            // Owner first: chown clears set-id bits, chmod then sets the exact mode.
            fchown(&fd, Some(Uid::from_raw(f.uid)), Some(Gid::from_raw(f.gid)))
                .map_err(|e| io_err("chown", &f.name, e))?;
            fchmod(&fd, Mode::from_raw_mode(f.mode)).map_err(|e| io_err("chmod", &f.name, e))?;
        }
        fchmod(&sfd, Mode::from_raw_mode(0o755)).map_err(|e| io_err("chmod", &staging, e))?;
        Ok(())
    };
    if let Err(e) = fill() {
        let _ = remove_entry(dir, &staging);
        return Err(e);
    }
    let new = format!("..data_{digest}");
    if let Err(e) =
        remove_entry(dir, &new).and_then(|()| renameat(dir, staging.as_str(), dir, new.as_str()))
    {
        let _ = remove_entry(dir, &staging);
        return Err(io_err("renaming the staging directory to", &new, e));
    }
    // One rename swaps the whole set: readers see the old one or the new one.
    let tmp_link = format!("..data_tmp.{t}");
    symlinkat(new.as_str(), dir, tmp_link.as_str()).map_err(|e| io_err("linking", &tmp_link, e))?;
    if let Err(e) = renameat(dir, tmp_link.as_str(), dir, "..data") {
        let _ = unlinkat(dir, tmp_link.as_str(), AtFlags::empty());
        return Err(io_err(
            "swapping (is it a directory? remove it) ",
            "..data",
            e,
        ));
    }
    // Visible names: a symlink into `..data`; a name that is already a symlink stays (the script
    // does the same); anything else in the way is replaced.
    for (f, _) in files {
        let k = kind(dir, &f.name).map_err(|e| io_err("checking", &f.name, e))?;
        if k == Some(FileType::Symlink) {
            continue;
        }
        if k.is_some() {
            unlinkat(dir, f.name.as_str(), AtFlags::empty())
                .map_err(|e| io_err("removing", &f.name, e))?;
        }
        symlinkat(format!("..data/{}", f.name).as_str(), dir, f.name.as_str())
            .map_err(|e| io_err("linking", &f.name, e))?;
    }
    // Earlier generations (and leftovers of interrupted runs).
    for old in list(dir).map_err(|e| io_err("listing", dir_name, e))? {
        if old.starts_with("..data_") && old != new {
            remove_entry(dir, &old).map_err(|e| io_err("removing", &old, e))?;
        }
    }
    // `.ready` last.
    let ready_tmp = format!("{READY_MARKER}.tmp.{t}");
    let _ = unlinkat(dir, ready_tmp.as_str(), AtFlags::empty());
    let fd = openat(
        dir,
        ready_tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io_err("creating", &ready_tmp, e))?;
    let line = format!("{digest}\n");
    let res = rustix::io::write(&fd, line.as_bytes())
        .and_then(|n| {
            if n == line.len() {
                Ok(())
            } else {
                Err(Errno::IO)
            }
        })
        .and_then(|()| fchmod(&fd, Mode::from_raw_mode(0o444)));
    drop(fd);
    if let Err(e) = res.and_then(|()| renameat(dir, ready_tmp.as_str(), dir, READY_MARKER)) {
        let _ = unlinkat(dir, ready_tmp.as_str(), AtFlags::empty());
        return Err(io_err("writing", READY_MARKER, e));
    }
    Ok(Written::New { replaced: had })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    /// A fresh directory on the host's `/dev/shm` (a tmpfs), removed on drop.
    struct ShmDir(PathBuf);
    impl ShmDir {
        fn new() -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let p = PathBuf::from(format!(
                "/dev/shm/dso-direct-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir(&p).unwrap();
            Self(p)
        }
        fn fd(&self) -> OwnedFd {
            openat(
                rustix::fs::CWD,
                &self.0,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap()
        }
    }
    impl Drop for ShmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn file(name: &str, mode: u32, uid: u32) -> SecretFile {
        SecretFile {
            name: name.into(),
            source: "local/x".parse().unwrap(),
            mode,
            uid,
            gid: uid + 1,
        }
    }

    fn entries(p: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn layout_modes_owners_ready_and_unchanged() {
        let d = ShmDir::new();
        let a = file("a", 0o400, 1000);
        let b = file("b.txt", 0o640, 0);
        let va = SecretValue::from_str_copy("alpha");
        let vb = SecretValue::new(vec![7u8; 100_000]);
        let fd = d.fd();
        let w = write_layout(
            fd.as_fd(),
            "/t",
            "0123456789abcdef",
            &[(&a, &va), (&b, &vb)],
        )
        .unwrap();
        assert_eq!(w, Written::New { replaced: false });
        assert_eq!(
            entries(&d.0),
            vec!["..data", "..data_0123456789abcdef", ".ready", "a", "b.txt"]
        );
        let p = &d.0;
        assert_eq!(
            std::fs::read_link(p.join("..data")).unwrap(),
            Path::new("..data_0123456789abcdef")
        );
        assert_eq!(
            std::fs::read_link(p.join("a")).unwrap(),
            Path::new("..data/a")
        );
        assert_eq!(std::fs::read(p.join("a")).unwrap(), b"alpha");
        assert_eq!(std::fs::read(p.join("b.txt")).unwrap().len(), 100_000);
        let ma = std::fs::metadata(p.join("a")).unwrap();
        assert_eq!(
            (ma.permissions().mode() & 0o7777, ma.uid(), ma.gid()),
            (0o400, 1000, 1001)
        );
        let mb = std::fs::metadata(p.join("b.txt")).unwrap();
        assert_eq!((mb.permissions().mode() & 0o7777, mb.uid()), (0o640, 0));
        let gen = std::fs::metadata(p.join("..data_0123456789abcdef")).unwrap();
        assert_eq!(gen.permissions().mode() & 0o7777, 0o755);
        let ready = std::fs::metadata(p.join(".ready")).unwrap();
        assert_eq!(ready.permissions().mode() & 0o7777, 0o444);
        assert_eq!(
            std::fs::read_to_string(p.join(".ready")).unwrap(),
            "0123456789abcdef\n"
        );

        // Same digest: nothing touched.
        assert_eq!(
            write_layout(
                fd.as_fd(),
                "/t",
                "0123456789abcdef",
                &[(&a, &va), (&b, &vb)]
            )
            .unwrap(),
            Written::Unchanged
        );
        // A new digest: a new generation replaces the old one.
        let va2 = SecretValue::from_str_copy("beta");
        assert_eq!(
            write_layout(
                fd.as_fd(),
                "/t",
                "fedcba9876543210",
                &[(&a, &va2), (&b, &vb)]
            )
            .unwrap(),
            Written::New { replaced: true }
        );
        assert_eq!(std::fs::read(p.join("a")).unwrap(), b"beta");
        assert_eq!(
            entries(&d.0),
            vec!["..data", "..data_fedcba9876543210", ".ready", "a", "b.txt"]
        );
    }

    #[test]
    fn planted_symlinks_are_replaced_never_followed() {
        let d = ShmDir::new();
        let outside = ShmDir::new();
        std::fs::write(outside.0.join("victim"), "keep").unwrap();
        // `..data` and a stale generation point outside; `.ready` is a symlink to a file outside.
        std::os::unix::fs::symlink(&outside.0, d.0.join("..data")).unwrap();
        std::os::unix::fs::symlink(&outside.0, d.0.join("..data_old")).unwrap();
        std::os::unix::fs::symlink(outside.0.join("victim"), d.0.join(".ready")).unwrap();
        let a = file("a", 0o400, 0);
        let v = SecretValue::from_str_copy("x");
        let fd = d.fd();
        write_layout(fd.as_fd(), "/t", "00000000000000aa", &[(&a, &v)]).unwrap();
        assert_eq!(entries(&outside.0), vec!["victim"]);
        assert_eq!(
            std::fs::read_to_string(outside.0.join("victim")).unwrap(),
            "keep"
        );
        assert_eq!(
            std::fs::read_link(d.0.join("..data")).unwrap(),
            Path::new("..data_00000000000000aa")
        );
        assert_eq!(std::fs::read(d.0.join("a")).unwrap(), b"x");
    }

    #[test]
    fn dir_lookups_stay_inside_the_root_and_need_tmpfs() {
        // A fake container root on a tmpfs, with a planted symlink to `/`.
        let root = ShmDir::new();
        std::fs::create_dir_all(root.0.join("run/secrets")).unwrap();
        std::fs::create_dir_all(root.0.join("etc")).unwrap();
        std::os::unix::fs::symlink("/", root.0.join("run/secrets/up")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../../../etc",
            root.0.join("run/secrets/esc"),
        )
        .unwrap();
        let rfd = root.fd();
        // `/` of the container is the root itself, not the host's.
        let fd = open_dir_in_root(rfd.as_fd(), "/run/secrets/up/run").unwrap();
        drop(fd);
        // `..` clamps at the root: `etc` is created inside it, never the host's /etc touched.
        let fd = open_dir_in_root(rfd.as_fd(), "/run/secrets/esc/dso").unwrap();
        drop(fd);
        assert!(root.0.join("etc/dso").is_dir());
        // Missing components are created 0755.
        let fd = open_dir_in_root(rfd.as_fd(), "/a/b/c").unwrap();
        drop(fd);
        let m = std::fs::metadata(root.0.join("a/b/c")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        // A root on a disk filesystem is refused.
        let disk = tempdir_on_disk();
        if is_tmpfs(&disk) {
            let _ = std::fs::remove_dir_all(&disk);
            return;
        }
        let dfd = openat(
            rustix::fs::CWD,
            disk.as_path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        match open_dir_in_root(dfd.as_fd(), "/x") {
            Err(DirectError::NotTmpfs { fs, .. }) => assert!(!fs.contains("tmpfs"), "{fs}"),
            other => panic!("expected NotTmpfs, got {other:?}"),
        }
        assert!(!disk.join("x").exists(), "nothing created on disk");
        let _ = std::fs::remove_dir_all(&disk);
    }

    fn is_tmpfs(p: &Path) -> bool {
        rustix::fs::statfs(p)
            .map(|s| s.f_type as u64 & 0xffff_ffff == TMPFS_MAGIC)
            .unwrap_or(true)
    }

    fn tempdir_on_disk() -> PathBuf {
        let p = std::env::temp_dir().join(format!("dso-direct-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn a_host_process_is_not_a_container_and_a_dead_pid_is_gone() {
        let w = ProcRootWriter::new();
        let a = file("a", 0o400, 0);
        let v = SecretValue::from_str_copy("x");
        let me = DirectTarget {
            container_id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            pid: std::process::id(),
            dir: "/run/secrets/dso",
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
