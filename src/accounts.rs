//! The container's own `/etc/passwd` and `/etc/group`, read for the direct path's owners given by
//! name (`User: app`), with the same confinement as the write: `openat2(root, path,
//! RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` so symlinks the container planted
//! resolve inside its root (an absolute link to `/etc/shadow` is the container's `/etc/shadow`,
//! never the host's) and never leave its root filesystem (a link into its `/proc`, a volume or a
//! FUSE mount that never answers: the exec path is used instead, `accounts_mount`). The file is
//! first opened `O_PATH` — which runs no driver code — and only a regular file is then opened for
//! reading (through `/proc/self/fd`): a device node planted there (`mknod` is allowed in
//! containers; the agent is root outside their device cgroup) is never opened, and a FIFO cannot
//! hang the agent. At most [`MAX_ACCOUNT_FILE`] bytes each (larger is refused, not truncated). A missing file reads as
//! empty: the names are then unknown and the container is refused by name. Parsing and
//! resolution are `dso_actors::owners`; the exec path does the same lookup in its script.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use dso_actors::direct::{DirectError, FallbackReason};
use dso_actors::model::SecretFile;
use dso_actors::owners::{self, Accounts};
use dso_actors::secret::SecretValue;
use rustix::fs::{fstat, open, openat2, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::layout::read_open;

/// Largest `/etc/passwd` or `/etc/group` read (more is refused, not truncated).
pub const MAX_ACCOUNT_FILE: usize = 1024 * 1024;

/// `files` with every owner given by name replaced by its number from the container's own
/// account files (read below `root`, an `O_PATH` fd of its root); None when no owner is a name
/// (nothing is read then). An unknown name is [`DirectError::UnknownOwner`].
pub fn resolve_owners(
    root: BorrowedFd<'_>,
    files: &[(&SecretFile, &SecretValue)],
) -> Result<Option<Vec<SecretFile>>, DirectError> {
    let plain: Vec<&SecretFile> = files.iter().map(|(f, _)| *f).collect();
    if !owners::any_named(&plain) {
        return Ok(None);
    }
    let accounts = read_accounts(root)?;
    Ok(Some(owners::resolve(&plain, &accounts)?))
}

/// Reads and parses both files below the container's `root`.
pub fn read_accounts(root: BorrowedFd<'_>) -> Result<Accounts, DirectError> {
    let passwd = read_in_root(root, "/etc/passwd")?;
    let group = read_in_root(root, "/etc/group")?;
    Ok(Accounts::parse(&passwd, &group))
}

/// One file below `root`, confined to it and its filesystem, bounded; absent = empty.
fn read_in_root(root: BorrowedFd<'_>, file: &'static str) -> Result<Vec<u8>, DirectError> {
    let err = |source: io::Error| DirectError::Accounts { file, source };
    let not_regular = || {
        err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ))
    };
    let path = match openat2(
        root,
        file,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Vec::new()),
        Err(Errno::NOSYS) => {
            return Err(DirectError::Fallback {
                reason: FallbackReason::NoOpenat2,
                detail: "openat2: ENOSYS".to_string(),
            })
        }
        Err(Errno::XDEV) => {
            return Err(DirectError::Fallback {
                reason: FallbackReason::AccountsMount,
                detail: format!("{file} is not on the container's root filesystem"),
            })
        }
        Err(e) => return Err(err(e.into())),
    };
    // Nothing but a regular file is ever opened for reading: opening a device runs its driver.
    let st = fstat(&path).map_err(|e| err(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(not_regular());
    }
    let fd = match open(
        format!("/proc/self/fd/{}", path.as_raw_fd()),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => return Err(err(e.into())),
    };
    drop(path);
    match read_open(fd, MAX_ACCOUNT_FILE) {
        Ok((_, bytes)) if bytes.len() > MAX_ACCOUNT_FILE => Err(err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_ACCOUNT_FILE} bytes"),
        ))),
        Ok((_, bytes)) => Ok(bytes.to_vec()),
        Err(Errno::INVAL) => Err(not_regular()),
        Err(e) => Err(err(e.into())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rustix::fs::{open, FileType, CWD};
    use std::os::fd::AsFd;

    /// Symlinks inside the root resolve inside it (never to the host's files); a missing file
    /// is empty; a FIFO (without blocking) or an oversized file is refused.
    #[test]
    fn reads_confined_to_the_root_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        // An absolute symlink to the host's /etc/passwd resolves to <root>/etc/shadow, then
        // (absent) reads as empty; `..` stops at the root.
        std::os::unix::fs::symlink("/etc/shadow", etc.join("passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/passwd", etc.join("shadow")).unwrap();
        let root = open(
            dir.path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        // The chain ends at <root>/etc/passwd itself: a loop inside the root, never the host's.
        assert!(read_in_root(root.as_fd(), "/etc/passwd").is_err());
        std::fs::remove_file(etc.join("shadow")).unwrap();
        assert_eq!(read_in_root(root.as_fd(), "/etc/passwd").unwrap(), b"");
        std::fs::write(etc.join("shadow"), "app:x:1000:1000::/:/bin/sh\n").unwrap();
        let acc = read_accounts(root.as_fd()).unwrap();
        assert_eq!(acc, Accounts::parse(b"app:x:1000:1000::/:/bin/sh\n", b""));
        rustix::fs::mknodat(
            CWD,
            etc.join("group").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(read_in_root(root.as_fd(), "/etc/group")
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        std::fs::remove_file(etc.join("group")).unwrap();
        // A device node is never opened (opening runs its driver: a watchdog, a tty); the tests
        // run as root, so `mknod` works as it does for root in a container.
        if rustix::process::geteuid().is_root() {
            rustix::fs::mknodat(
                CWD,
                etc.join("group").as_path(),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o600),
                rustix::fs::makedev(1, 3),
            )
            .unwrap();
            assert!(read_in_root(root.as_fd(), "/etc/group")
                .unwrap_err()
                .to_string()
                .contains("not a regular file"));
            std::fs::remove_file(etc.join("group")).unwrap();
        }
        std::fs::write(etc.join("group"), vec![b'x'; MAX_ACCOUNT_FILE + 1]).unwrap();
        assert!(read_in_root(root.as_fd(), "/etc/group")
            .unwrap_err()
            .to_string()
            .contains("larger than"));
    }
}
