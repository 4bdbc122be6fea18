//! The secrets directory of one container, written and verified through directory fds (the
//! direct path; the exec script does the same in `sh`). SECURITY.md, "The write path's rules".
//!
//! - [`open_secrets_dir`]: the tmpfs mount point reported by inspect, resolved inside the
//!   container's root (`RESOLVE_IN_ROOT`), must be a tmpfs and the root of its mount; the
//!   directory below it is reached one component at a time with `RESOLVE_BENEATH |
//!   RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS`.
//! - [`write_layout`]: `unchanged` only after reading the current generation back; otherwise the
//!   directory is taken over (root, 0755), DSO's names cleared by fixed rules, a new generation
//!   written and swapped in, the previous one removed by the names DSO wrote into it, `.ready`
//!   last. Only DSO's names are ever looked at: the work is bounded by the number of secrets.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use dso_actors::direct::{DirectError, FallbackReason, Written};
use dso_actors::model::{SecretFile, READY_MARKER};
use dso_actors::secret::SecretValue;
use dso_actors::spec::MAX_SECRETS;
use rustix::fs::{
    fchmod, fchown, fstat, fstatfs, mkdirat, openat, openat2, readlinkat, renameat, statat,
    symlinkat, unlinkat, AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Uid,
};
use rustix::io::Errno;
use zeroize::Zeroizing;

/// `f_type` of a tmpfs (`TMPFS_MAGIC`).
pub const TMPFS_MAGIC: u64 = 0x0102_1994;
/// The symlink to the current generation.
pub const DATA: &str = "..data";
/// Prefix of a generation directory (`..data_<digest>`).
pub const GENERATION_PREFIX: &str = "..data_";
/// Where a new generation is written before it is renamed into place.
pub const STAGING: &str = "..dso_staging";
/// A symlink made here is renamed over `..data` or a secret name (atomic replacement).
pub const LINK_TMP: &str = "..dso_link";
/// `.ready` is written here, then renamed.
pub const READY_TMP: &str = "..dso_ready";

/// A refusal naming `entry` (relative to the secrets directory `dir`).
fn foreign(dir: &str, entry: impl Into<String>, what: &str) -> DirectError {
    DirectError::Foreign {
        entry: entry.into(),
        what: what.to_string(),
        dir: dir.to_string(),
    }
}

/// A failed step on `name` in the secrets directory `dir`.
fn io_err(dir: &str, step: &'static str, name: &str, e: Errno) -> DirectError {
    DirectError::Io {
        step,
        name: name.to_string(),
        dir: dir.to_string(),
        source: e.into(),
    }
}

fn fs_name(magic: u64) -> String {
    match magic {
        0xEF53 => "ext4".to_string(),
        0x794c_7630 => "overlay".to_string(),
        0x5846_5342 => "xfs".to_string(),
        0x9123_683e => "btrfs".to_string(),
        0x9fa0 => "proc".to_string(),
        other => format!("a filesystem of type {other:#x}"),
    }
}

fn magic_of(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    // `f_type` is signed on some targets; compare its bit pattern.
    #[allow(clippy::unnecessary_cast)]
    Ok(fstatfs(fd)?.f_type as u64 & 0xffff_ffff)
}

/// Opens `dir` (absolute, inside the container, at or below the tmpfs mount point `mount`) from
/// the container's `root`. Missing components below the mount point are created (0755, root);
/// every component below it is taken over (root-owned, not writable by others) so that nobody
/// else can rename it.
pub fn open_secrets_dir(
    root: BorrowedFd<'_>,
    mount: &str,
    dir: &str,
) -> Result<OwnedFd, DirectError> {
    let not_tmpfs = |reason: String| DirectError::NotTmpfs {
        dir: dir.to_string(),
        reason,
    };
    let rel = if dir == mount {
        ""
    } else {
        match dir.strip_prefix(mount).and_then(|r| r.strip_prefix('/')) {
            Some(r) if mount.starts_with('/') => r,
            _ => {
                return Err(not_tmpfs(format!(
                    "it is not below the tmpfs mount {mount}"
                )))
            }
        }
    };
    let dflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut fd = match openat2(
        root,
        mount,
        dflags,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOSYS) => {
            return Err(DirectError::Fallback {
                reason: FallbackReason::NoOpenat2,
                detail: "openat2: ENOSYS".to_string(),
            })
        }
        Err(e) => {
            return Err(not_tmpfs(format!(
                "the mount point {mount}: {}",
                io::Error::from(e)
            )))
        }
    };
    let magic = magic_of(fd.as_fd())
        .map_err(|e| not_tmpfs(format!("fstatfs {mount}: {}", io::Error::from(e))))?;
    if magic != TMPFS_MAGIC {
        return Err(not_tmpfs(format!("{mount} is on {}", fs_name(magic))));
    }
    // The root of its mount: `..` is on another device.
    let here = fstat(&fd).map_err(|e| not_tmpfs(format!("fstat: {}", io::Error::from(e))))?;
    let up = statat(&fd, "..", AtFlags::empty())
        .map_err(|e| not_tmpfs(format!("stat ..: {}", io::Error::from(e))))?;
    if up.st_dev == here.st_dev {
        return Err(not_tmpfs(format!(
            "{mount} is inside a tmpfs, not the root of a tmpfs mount"
        )));
    }
    let below = ResolveFlags::BENEATH | ResolveFlags::NO_XDEV | ResolveFlags::NO_SYMLINKS;
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        let open =
            |fd: &OwnedFd| openat2(fd, comp, dflags | OFlags::NOFOLLOW, Mode::empty(), below);
        let next = match open(&fd) {
            Err(Errno::NOENT) => {
                match mkdirat(&fd, comp, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(not_tmpfs(format!(
                            "creating `{comp}`: {}",
                            io::Error::from(e)
                        )))
                    }
                }
                open(&fd)
            }
            other => other,
        };
        let is_link = |fd: &OwnedFd| matches!(lstat(fd.as_fd(), comp), Ok(Some(st)) if kind(&st) == FileType::Symlink);
        let next = next.map_err(|e| {
            not_tmpfs(match e {
                Errno::LOOP | Errno::NOTDIR if is_link(&fd) => format!("`{comp}` is a symlink"),
                Errno::XDEV => format!("`{comp}` is another mount"),
                Errno::NOTDIR => format!("`{comp}` is not a directory"),
                e => format!("`{comp}`: {}", io::Error::from(e)),
            })
        })?;
        take_over(next.as_fd()).map_err(|e| io_err(dir, "taking over", comp, e))?;
        fd = next;
    }
    Ok(fd)
}

/// Root-owned, 0755: after this only root can add, rename or remove entries.
fn take_over(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let st = fstat(fd)?;
    if st.st_uid != 0 || st.st_gid != 0 {
        fchown(fd, Some(Uid::ROOT), Some(Gid::ROOT))?;
    }
    if st.st_mode & 0o7777 != 0o755 {
        fchmod(fd, Mode::from_raw_mode(0o755))?;
    }
    Ok(())
}

fn lstat(dir: BorrowedFd<'_>, name: &str) -> Result<Option<Stat>, Errno> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn kind(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn link_target(dir: BorrowedFd<'_>, name: &str) -> Option<Vec<u8>> {
    readlinkat(dir, name, Vec::new())
        .ok()
        .map(|c| c.into_bytes())
}

/// True when `name` is a root-owned symlink to exactly `target`.
fn is_our_link(dir: BorrowedFd<'_>, name: &str, target: &str) -> bool {
    matches!(lstat(dir, name), Ok(Some(st)) if kind(&st) == FileType::Symlink && st.st_uid == 0)
        && link_target(dir, name).as_deref() == Some(target.as_bytes())
}

/// Reads at most `max` bytes of the regular file `name` in `dir` (never following a symlink).
pub(crate) fn read_file(
    dir: BorrowedFd<'_>,
    name: &str,
    max: usize,
) -> Result<(Stat, Zeroizing<Vec<u8>>), Errno> {
    let fd = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    read_open(fd, max)
}

/// Reads at most `max` + 1 bytes of `fd` (opened `O_NONBLOCK`), when it is a regular file
/// (anything else is `EINVAL`, never read): more than `max` tells the caller it is too large.
pub(crate) fn read_open(fd: OwnedFd, max: usize) -> Result<(Stat, Zeroizing<Vec<u8>>), Errno> {
    let st = fstat(&fd)?;
    if kind(&st) != FileType::RegularFile {
        return Err(Errno::INVAL);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(max.min(1 << 20) + 1));
    let mut buf = Zeroizing::new([0u8; 4096]);
    while out.len() <= max {
        let n = rustix::io::read(&fd, &mut buf[..])?;
        if n == 0 {
            break;
        }
        let room = max + 1 - out.len();
        out.extend_from_slice(&buf[..n.min(room)]);
    }
    Ok((st, out))
}

/// True when the directory holds exactly this content, written by DSO: everything read back.
fn verified(dir: BorrowedFd<'_>, digest: &str, files: &[(&SecretFile, &SecretValue)]) -> bool {
    let gen = format!("{GENERATION_PREFIX}{digest}");
    let Ok(st) = fstat(dir) else { return false };
    if st.st_uid != 0 || st.st_gid != 0 || st.st_mode & 0o7777 != 0o755 {
        return false;
    }
    if !is_our_link(dir, DATA, &gen) {
        return false;
    }
    match lstat(dir, &gen) {
        Ok(Some(st)) if kind(&st) == FileType::Directory && st.st_uid == 0 => {}
        _ => return false,
    }
    let Ok(gfd) = openat(
        dir,
        gen.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    for (f, v) in files {
        if !is_our_link(dir, &f.name, &format!("{DATA}/{}", f.name)) {
            return false;
        }
        let Ok((st, content)) = read_file(gfd.as_fd(), &f.name, v.len()) else {
            return false;
        };
        if st.st_uid != f.uid
            || st.st_gid != f.gid
            || st.st_mode & 0o7777 != f.mode
            || content.as_slice() != v.expose()
        {
            return false;
        }
    }
    match read_file(dir, READY_MARKER, 256) {
        Ok((st, ready)) => {
            st.st_uid == 0 && ready.split(|b| *b == b'\n').next() == Some(digest.as_bytes())
        }
        Err(_) => false,
    }
}

/// What is at one of DSO's names, and what to do with it.
enum Found {
    /// Nothing, or something a rename replaces atomically (a file or symlink).
    Replaceable,
    /// DSO's own link (`..data` or a name, root-owned, right target): kept.
    Ours,
}

/// Clears the way for `name` (a secret name, `..data` or `.ready`): a directory is removed when
/// empty; a file or symlink is left for the rename that replaces it; anything else is refused.
fn clear_name(
    dir: BorrowedFd<'_>,
    dir_name: &str,
    name: &str,
    ours: Option<&str>,
) -> Result<Found, DirectError> {
    let foreign = |what: &str| foreign(dir_name, name, what);
    let io_err = |step, e: Errno| io_err(dir_name, step, name, e);
    let Some(st) = lstat(dir, name).map_err(|e| io_err("checking", e))? else {
        return Ok(Found::Replaceable);
    };
    match kind(&st) {
        FileType::RegularFile => Ok(Found::Replaceable),
        FileType::Symlink => Ok(match ours {
            Some(t) if is_our_link(dir, name, t) => Found::Ours,
            _ => Found::Replaceable,
        }),
        FileType::Directory => match unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(Found::Replaceable),
            Err(Errno::NOTEMPTY | Errno::EXIST) => Err(foreign("a non-empty directory")),
            Err(e) => Err(io_err("removing the directory", e)),
        },
        FileType::Fifo => Err(foreign("a fifo")),
        FileType::Socket => Err(foreign("a socket")),
        _ => Err(foreign("a device node")),
    }
}

/// Removes the directory `name` the way DSO made it: unlink the names DSO writes into it, then
/// `rmdir`. A leftover of a root-owned one (a generation or staging directory; only the
/// container's root can add to those) is read at most [`MAX_SECRETS`] + 1 entries deep. A file
/// or symlink at `name` is unlinked; a foreign directory is removed only when empty.
fn remove_generation(
    dir: BorrowedFd<'_>,
    dir_name: &str,
    name: &str,
    names: &[&str],
) -> Result<(), DirectError> {
    let foreign = |entry: String, what: &str| foreign(dir_name, entry, what);
    let io_err = |step, e: Errno| io_err(dir_name, step, name, e);
    let Some(st) = lstat(dir, name).map_err(|e| io_err("checking", e))? else {
        return Ok(());
    };
    match kind(&st) {
        FileType::Directory => {}
        FileType::RegularFile | FileType::Symlink => {
            return unlinkat(dir, name, AtFlags::empty()).map_err(|e| io_err("removing", e))
        }
        _ => {
            return Err(foreign(
                name.to_string(),
                "not a directory, file or symlink",
            ))
        }
    }
    let rmdir = || unlinkat(dir, name, AtFlags::REMOVEDIR);
    if st.st_uid != 0 {
        // Not DSO's: removed only when empty.
        return match rmdir() {
            Ok(()) => Ok(()),
            Err(Errno::NOTEMPTY | Errno::EXIST) => {
                Err(foreign(name.to_string(), "a non-empty directory"))
            }
            Err(e) => Err(io_err("removing", e)),
        };
    }
    let sub = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("opening", e))?;
    for n in names {
        match unlinkat(&sub, *n, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::ISDIR) => return Err(foreign(format!("{name}/{n}"), "a directory")),
            Err(e) => return Err(io_err("emptying", e)),
        }
    }
    match rmdir() {
        Ok(()) => return Ok(()),
        Err(Errno::NOTEMPTY | Errno::EXIST) => {}
        Err(e) => return Err(io_err("removing", e)),
    }
    // Names from an earlier configuration, or put there by the container's root: bounded.
    let mut seen = 0usize;
    for entry in Dir::read_from(&sub).map_err(|e| io_err("listing", e))? {
        let entry = entry.map_err(|e| io_err("listing", e))?;
        let n = entry.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        seen += 1;
        let shown = String::from_utf8_lossy(n)
            .chars()
            .take(64)
            .collect::<String>();
        if seen > MAX_SECRETS {
            return Err(foreign(
                name.to_string(),
                "a directory with too many entries",
            ));
        }
        match entry.file_type() {
            FileType::RegularFile | FileType::Symlink => {
                unlinkat(&sub, entry.file_name(), AtFlags::empty())
                    .map_err(|e| io_err("emptying", e))?
            }
            _ => return Err(foreign(format!("{name}/{shown}"), "not a file")),
        }
    }
    rmdir().map_err(|e| io_err("removing", e))
}

/// The generation `..data` points to, when DSO made that link (root-owned, to `..data_<hex>`).
fn current_generation(dir: BorrowedFd<'_>) -> Option<String> {
    let st = lstat(dir, DATA).ok()??;
    if kind(&st) != FileType::Symlink || st.st_uid != 0 {
        return None;
    }
    let target = String::from_utf8(link_target(dir, DATA)?).ok()?;
    let hex = target.strip_prefix(GENERATION_PREFIX)?;
    (!hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(target)
}

/// Writes the layout of `files` (generation `digest`) into `dir`, or answers `Unchanged` after
/// verifying it is already there. `dir_name` only names the directory in errors.
pub fn write_layout(
    dir: BorrowedFd<'_>,
    dir_name: &str,
    digest: &str,
    files: &[(&SecretFile, &SecretValue)],
) -> Result<Written, DirectError> {
    if verified(dir, digest, files) {
        return Ok(Written::Unchanged);
    }
    let io_err = |step: &'static str, name: &str, e: Errno| io_err(dir_name, step, name, e);
    take_over(dir).map_err(|e| io_err("taking over", dir_name, e))?;
    let names: Vec<&str> = files.iter().map(|(f, _)| f.name.as_str()).collect();
    let gen = format!("{GENERATION_PREFIX}{digest}");
    let had = matches!(lstat(dir, READY_MARKER), Ok(Some(st)) if kind(&st) == FileType::RegularFile && st.st_uid == 0);
    let old = current_generation(dir).filter(|g| *g != gen);

    // Everything at DSO's names is cleared, or the container refused, before anything is written.
    clear_name(dir, dir_name, DATA, None)?;
    clear_name(dir, dir_name, READY_MARKER, None)?;
    let mut keep = Vec::with_capacity(files.len());
    for n in &names {
        keep.push(matches!(
            clear_name(dir, dir_name, n, Some(&format!("{DATA}/{n}")))?,
            Found::Ours
        ));
    }
    for tmp in [STAGING, LINK_TMP, READY_TMP] {
        remove_generation(dir, dir_name, tmp, &names)?;
    }
    // A generation of this digest that did not verify (tampered, or left by a crash).
    remove_generation(dir, dir_name, &gen, &names)?;

    mkdirat(dir, STAGING, Mode::from_raw_mode(0o700))
        .map_err(|e| io_err("creating", STAGING, e))?;
    let fill = || -> Result<(), DirectError> {
        let sfd = openat(
            dir,
            STAGING,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("opening", STAGING, e))?;
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
        fchmod(&sfd, Mode::from_raw_mode(0o755)).map_err(|e| io_err("chmod", STAGING, e))
    };
    if let Err(e) = fill().and_then(|()| {
        renameat(dir, STAGING, dir, gen.as_str())
            .map_err(|e| io_err("renaming the staging directory to", &gen, e))
    }) {
        let _ = remove_generation(dir, dir_name, STAGING, &names);
        return Err(e);
    }
    // One rename swaps the whole set: readers see the old one or the new one.
    let relink = |name: &str, target: &str| -> Result<(), DirectError> {
        symlinkat(target, dir, LINK_TMP).map_err(|e| io_err("linking", LINK_TMP, e))?;
        renameat(dir, LINK_TMP, dir, name).map_err(|e| {
            let _ = unlinkat(dir, LINK_TMP, AtFlags::empty());
            io_err("replacing", name, e)
        })
    };
    relink(DATA, &gen)?;
    for (n, ours) in names.iter().zip(keep) {
        if !ours {
            relink(n, &format!("{DATA}/{n}"))?;
        }
    }
    if let Some(old) = &old {
        remove_generation(dir, dir_name, old, &names)?;
    }
    // `.ready` last.
    let fd = openat(
        dir,
        READY_TMP,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io_err("creating", READY_TMP, e))?;
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
    if let Err(e) = res.and_then(|()| renameat(dir, READY_TMP, dir, READY_MARKER)) {
        let _ = unlinkat(dir, READY_TMP, AtFlags::empty());
        return Err(io_err("writing", READY_MARKER, e));
    }
    Ok(Written::New { replaced: had })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    /// A fresh directory on the host's `/dev/shm` (a tmpfs), removed on drop.
    struct ShmDir(PathBuf);
    impl ShmDir {
        fn new() -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let p = PathBuf::from(format!(
                "/dev/shm/dso-layout-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o1777)).unwrap();
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
            names: Default::default(),
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

    const D1: &str = "0123456789abcdef";
    const D2: &str = "fedcba9876543210";

    #[test]
    fn layout_modes_owners_takeover_unchanged_and_rotation() {
        let d = ShmDir::new();
        let a = file("a", 0o400, 1000);
        let b = file("b.txt", 0o640, 0);
        let va = SecretValue::from_str_copy("alpha");
        let vb = SecretValue::new(vec![7u8; 100_000]);
        let fd = d.fd();
        let set = [(&a, &va), (&b, &vb)];
        assert_eq!(
            write_layout(fd.as_fd(), "/t", D1, &set).unwrap(),
            Written::New { replaced: false }
        );
        let p = &d.0;
        assert_eq!(
            entries(p),
            vec!["..data", "..data_0123456789abcdef", ".ready", "a", "b.txt"]
        );
        assert_eq!(
            std::fs::read_link(p.join("a")).unwrap(),
            Path::new("..data/a")
        );
        assert_eq!(std::fs::read(p.join("a")).unwrap(), b"alpha");
        let ma = std::fs::metadata(p.join("a")).unwrap();
        assert_eq!(
            (ma.mode() & 0o7777, ma.uid(), ma.gid()),
            (0o400, 1000, 1001)
        );
        let top = std::fs::metadata(p).unwrap();
        assert_eq!((top.mode() & 0o7777, top.uid()), (0o755, 0), "taken over");
        assert_eq!(
            std::fs::read_to_string(p.join(".ready")).unwrap(),
            format!("{D1}\n")
        );
        assert_eq!(
            write_layout(fd.as_fd(), "/t", D1, &set).unwrap(),
            Written::Unchanged
        );
        let va2 = SecretValue::from_str_copy("beta");
        assert_eq!(
            write_layout(fd.as_fd(), "/t", D2, &[(&a, &va2), (&b, &vb)]).unwrap(),
            Written::New { replaced: true }
        );
        assert_eq!(std::fs::read(p.join("a")).unwrap(), b"beta");
        assert_eq!(
            entries(p),
            vec!["..data", "..data_fedcba9876543210", ".ready", "a", "b.txt"]
        );
    }

    #[test]
    fn tampering_is_found_by_reading_back() {
        let d = ShmDir::new();
        let a = file("a", 0o400, 0);
        let v = SecretValue::from_str_copy("alpha");
        let fd = d.fd();
        write_layout(fd.as_fd(), "/t", D1, &[(&a, &v)]).unwrap();
        let gen_file = d.0.join(format!("..data_{D1}/a"));
        // Same length, other content, `.ready` intact.
        std::fs::set_permissions(&gen_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&gen_file, "omega").unwrap();
        std::fs::set_permissions(&gen_file, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            write_layout(fd.as_fd(), "/t", D1, &[(&a, &v)]).unwrap(),
            Written::New { replaced: true }
        );
        assert_eq!(std::fs::read(d.0.join("a")).unwrap(), b"alpha");
        // A name pointing elsewhere.
        std::fs::remove_file(d.0.join("a")).unwrap();
        std::fs::write(d.0.join("evil"), "evil").unwrap();
        std::os::unix::fs::symlink("evil", d.0.join("a")).unwrap();
        assert!(matches!(
            write_layout(fd.as_fd(), "/t", D1, &[(&a, &v)]).unwrap(),
            Written::New { .. }
        ));
        assert_eq!(std::fs::read(d.0.join("a")).unwrap(), b"alpha");
        assert_eq!(
            std::fs::read(d.0.join("evil")).unwrap(),
            b"evil",
            "never followed"
        );
    }

    #[test]
    fn foreign_entries_at_dsos_names() {
        let a = file("a", 0o400, 0);
        let v = SecretValue::from_str_copy("alpha");
        // Files, symlinks and empty directories are cleared; planted symlinks never followed.
        let d = ShmDir::new();
        let outside = ShmDir::new();
        std::fs::write(outside.0.join("victim"), "keep").unwrap();
        std::os::unix::fs::symlink(&outside.0, d.0.join("..data")).unwrap();
        std::os::unix::fs::symlink(outside.0.join("victim"), d.0.join(".ready")).unwrap();
        std::os::unix::fs::symlink(&outside.0, d.0.join(STAGING)).unwrap();
        std::fs::create_dir(d.0.join("a")).unwrap();
        std::fs::write(d.0.join(LINK_TMP), "x").unwrap();
        let fd = d.fd();
        write_layout(fd.as_fd(), "/t", D1, &[(&a, &v)]).unwrap();
        assert_eq!(entries(&outside.0), vec!["victim"]);
        assert_eq!(
            std::fs::read_to_string(outside.0.join("victim")).unwrap(),
            "keep"
        );
        assert_eq!(std::fs::read(d.0.join("a")).unwrap(), b"alpha");
        // A non-empty directory or a fifo at a name refuses, naming it, before anything is written.
        for plant in ["dir", "fifo"] {
            let d = ShmDir::new();
            if plant == "dir" {
                std::fs::create_dir_all(d.0.join("a/x")).unwrap();
            } else {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    d.0.join("a").as_path(),
                    FileType::Fifo,
                    Mode::from_raw_mode(0o644),
                    0,
                )
                .unwrap();
            }
            let fd = d.fd();
            match write_layout(fd.as_fd(), "/t", D1, &[(&a, &v)]) {
                Err(DirectError::Foreign { entry, .. }) => assert_eq!(entry, "a"),
                other => panic!("{plant}: expected a refusal, got {other:?}"),
            }
            assert_eq!(entries(&d.0), vec!["a"], "{plant}: nothing written");
        }
    }

    #[test]
    fn other_names_are_never_walked() {
        let d = ShmDir::new();
        // A deep chain and many entries under names that are not DSO's current ones.
        let mut p = d.0.join("..data_zz");
        for _ in 0..200 {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        for i in 0..1000 {
            std::fs::write(d.0.join(format!("..data_f{i}")), "").unwrap();
        }
        let a = file("a", 0o400, 0);
        let v = SecretValue::from_str_copy("alpha");
        let fd = d.fd();
        write_layout(fd.as_fd(), "/t", D1, &[(&a, &v)]).unwrap();
        write_layout(fd.as_fd(), "/t", D2, &[(&a, &v)]).unwrap();
        assert!(p.is_dir());
        assert_eq!(entries(&d.0).len(), 1000 + 1 + 4);
        // An old generation holding a name from an earlier configuration is still removed.
        let b = file("b", 0o400, 0);
        write_layout(fd.as_fd(), "/t", D1, &[(&a, &v), (&b, &v)]).unwrap();
        write_layout(fd.as_fd(), "/t", D2, &[(&a, &v)]).unwrap();
        assert!(!d.0.join(format!("..data_{D1}")).exists());
    }

    #[test]
    fn the_dir_is_found_below_a_tmpfs_mount_root_without_symlinks() {
        let root = openat(
            rustix::fs::CWD,
            "/",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let d = ShmDir::new();
        let dir = format!("{}/a/b", d.0.display());
        let fd = open_secrets_dir(root.as_fd(), "/dev/shm", &dir).unwrap();
        drop(fd);
        let m = std::fs::metadata(d.0.join("a/b")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0));
        // A symlink below the mount point is refused.
        std::os::unix::fs::symlink("/tmp", d.0.join("l")).unwrap();
        let dir = format!("{}/l/x", d.0.display());
        match open_secrets_dir(root.as_fd(), "/dev/shm", &dir) {
            Err(DirectError::NotTmpfs { reason, .. }) => {
                assert!(reason.contains("`l` is a symlink"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // A directory inside a tmpfs is not a mount root; a disk is not a tmpfs.
        let inside = d.0.display().to_string();
        assert!(matches!(
            open_secrets_dir(root.as_fd(), &inside, &inside),
            Err(DirectError::NotTmpfs { .. })
        ));
        assert!(matches!(
            open_secrets_dir(root.as_fd(), "/etc", "/etc"),
            Err(DirectError::NotTmpfs { .. })
        ));
        assert!(matches!(
            open_secrets_dir(root.as_fd(), "/dev/shm", "/dev/shmx"),
            Err(DirectError::NotTmpfs { .. })
        ));
    }
}
