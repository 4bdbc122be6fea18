//! Building the one tar (and the one command) that puts all of a container's secrets in place.
//!
//! The tar is built in a buffer allocated once at its final size (no reallocation leaves copies of
//! secret bytes in freed memory) and zeroed on drop. The command runs `sh` inside the container:
//! it checks that the directory is a tmpfs, extracts into a staging directory on that same tmpfs,
//! sets owner and mode, renames each file into place (atomic for readers), and writes `.ready` last.

use zeroize::Zeroizing;

use crate::secret::SecretValue;
use crate::spec::{SecretFile, READY_MARKER};

/// Exit code of the in-container script when the directory is not a tmpfs.
pub const EXIT_NOT_TMPFS: i64 = 64;
/// Exit code of the in-container script when `tar` is missing.
pub const EXIT_NO_TAR: i64 = 65;

/// Why a tar could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The tar writer failed (bad name or size); the message names the file.
    #[error("building the tar entry for `{name}`: {reason}")]
    Entry {
        /// File name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// The exact size of the tar for these contents.
fn tar_size(lens: &[usize]) -> usize {
    lens.iter()
        .map(|l| 512 + l.div_ceil(512) * 512)
        .sum::<usize>()
        + 1024
}

/// Builds one tar holding each file with its mode/owner. Files keep the order given.
pub fn build_tar(files: &[(&SecretFile, &SecretValue)]) -> Result<Zeroizing<Vec<u8>>, TarError> {
    let lens: Vec<usize> = files.iter().map(|(_, v)| v.len()).collect();
    let size = tar_size(&lens);
    let mut buf: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(size));
    let mut builder = tar::Builder::new(&mut *buf);
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for (file, value) in files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(value.len() as u64);
        header.set_mode(file.mode);
        header.set_uid(u64::from(file.uid));
        header.set_gid(u64::from(file.gid));
        header.set_mtime(mtime);
        header.set_path(&file.name).map_err(|e| TarError::Entry {
            name: file.name.clone(),
            reason: e.to_string(),
        })?;
        header.set_cksum();
        builder
            .append(&header, value.expose())
            .map_err(|e| TarError::Entry {
                name: file.name.clone(),
                reason: e.to_string(),
            })?;
    }
    builder.finish().map_err(|e| TarError::Entry {
        name: "<end>".to_string(),
        reason: e.to_string(),
    })?;
    drop(builder);
    Ok(buf)
}

/// What the in-container script prints when it replaced an earlier set (not a first injection).
pub const REPLACED_MARKER: &str = "replaced";

/// Exit code of the in-container script when the directory already holds exactly this content.
pub const EXIT_UNCHANGED: i64 = 10;

/// Exit code of the in-container script when a foreign entry at one of DSO's names refuses the
/// container; it prints `dso-foreign:<name>` (a name DSO gave it).
pub const EXIT_FOREIGN: i64 = 66;

/// The line prefix naming the foreign entry.
pub const FOREIGN_MARKER: &str = "dso-foreign:";

/// The in-container script (`write.sh`): the same rules as the direct path (SECURITY.md). Its
/// arguments: mount point, directory, digest, `tar`|`b64`, then name, mode, uid, gid per file.
const SCRIPT: &str = include_str!("write.sh");

/// The digest of a set of files as written (names, modes, owners, contents), keyed with a
/// per-host key so the digest in `.ready` (readable inside the container) cannot be used to guess
/// a low-entropy secret offline. 16 hex digits.
pub fn digest(key: &[u8], files: &[(&SecretFile, &SecretValue)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_le_bytes());
    h.update(key);
    for (f, v) in files {
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.mode.to_le_bytes());
        h.update(f.uid.to_le_bytes());
        h.update(f.gid.to_le_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.expose());
    }
    let out = h.finalize();
    out.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// How the files travel on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One tar (needs `tar` in the container).
    Tar,
    /// One base64 line per file (needs `sh` and `base64`); the fallback when `tar` is missing.
    Base64Lines,
}

/// The in-container script (one text for both transports: the transport is an argument).
pub fn script() -> &'static str {
    SCRIPT
}

/// The stdin payload of [`Transport::Base64Lines`]: one base64 line per file, zeroed on drop.
pub fn build_b64_lines(values: &[&SecretValue]) -> Zeroizing<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let size: usize = values.iter().map(|v| v.len().div_ceil(3) * 4 + 1).sum();
    let mut out = Zeroizing::new(Vec::with_capacity(size));
    for v in values {
        for chunk in v.expose().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            out.push(ALPHABET[(n >> 18) as usize & 63]);
            out.push(ALPHABET[(n >> 12) as usize & 63]);
            out.push(if chunk.len() > 1 {
                ALPHABET[(n >> 6) as usize & 63]
            } else {
                b'='
            });
            out.push(if chunk.len() > 2 {
                ALPHABET[n as usize & 63]
            } else {
                b'='
            });
        }
        out.push(b'\n');
    }
    out
}

/// The argv of the exec that installs `files` into `dir`, on the tmpfs mounted at `mount`.
pub fn inject_command(
    mount: &str,
    dir: &str,
    digest: &str,
    files: &[&SecretFile],
    transport: Transport,
) -> Vec<String> {
    let mut cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        SCRIPT.to_string(),
        "dso-inject".to_string(),
        mount.to_string(),
        dir.to_string(),
        digest.to_string(),
        match transport {
            Transport::Tar => "tar",
            Transport::Base64Lines => "b64",
        }
        .to_string(),
    ];
    for f in files {
        cmd.push(f.name.clone());
        cmd.push(format!("{:o}", f.mode));
        cmd.push(f.uid.to_string());
        cmd.push(f.gid.to_string());
    }
    cmd
}

/// The name of the readiness marker, for documentation and tests.
pub fn ready_marker() -> &'static str {
    READY_MARKER
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, mode: u32) -> SecretFile {
        SecretFile {
            name: name.into(),
            source: "local/x".parse().unwrap(),
            mode,
            uid: 1000,
            gid: 1001,
        }
    }

    #[test]
    fn tar_holds_every_file_with_mode_owner_and_no_reallocation() {
        let a = file("a", 0o400);
        let b = file("b.txt", 0o640);
        let va = SecretValue::from_str_copy("alpha");
        let vb = SecretValue::new(vec![7u8; 1500]);
        let tar_bytes = build_tar(&[(&a, &va), (&b, &vb)]).unwrap();
        assert_eq!(tar_bytes.len(), tar_size(&[5, 1500]));
        assert_eq!(
            tar_bytes.capacity(),
            tar_bytes.len(),
            "buffer must never grow"
        );
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        let mut seen = vec![];
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut body = vec![];
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            seen.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                body.len(),
            ));
        }
        assert_eq!(
            seen,
            vec![
                ("a".into(), 0o400, 1000, 1001, 5),
                ("b.txt".into(), 0o640, 1000, 1001, 1500)
            ]
        );
    }

    #[test]
    fn command_passes_names_as_arguments() {
        let a = file("db_password", 0o440);
        let cmd = inject_command(
            "/run/secrets/dso",
            "/run/secrets/dso",
            "0123abcd",
            &[&a],
            Transport::Tar,
        );
        assert_eq!(&cmd[..2], &["sh", "-c"]);
        assert_eq!(
            &cmd[3..],
            &[
                "dso-inject",
                "/run/secrets/dso",
                "/run/secrets/dso",
                "0123abcd",
                "tar",
                "db_password",
                "440",
                "1000",
                "1001"
            ]
        );
        assert!(!cmd[2].contains("db_password"));
    }

    #[test]
    fn digest_changes_with_content_owner_and_key() {
        let a = file("a", 0o400);
        let v1 = SecretValue::from_str_copy("one");
        let v2 = SecretValue::from_str_copy("two");
        let d1 = digest(b"k", &[(&a, &v1)]);
        assert_eq!(d1.len(), 16);
        assert_eq!(d1, digest(b"k", &[(&a, &v1)]));
        assert_ne!(d1, digest(b"k", &[(&a, &v2)]));
        assert_ne!(d1, digest(b"other", &[(&a, &v1)]));
        let mut b = a.clone();
        b.mode = 0o440;
        assert_ne!(d1, digest(b"k", &[(&b, &v1)]));
    }

    #[test]
    fn base64_lines_match_the_standard_encoding() {
        let vals = [
            SecretValue::from_str_copy("a"),
            SecretValue::from_str_copy("ab"),
            SecretValue::from_str_copy("abc"),
            SecretValue::new(vec![0xff, 0x00, 0x10, 0x80]),
        ];
        let refs: Vec<_> = vals.iter().collect();
        let out = build_b64_lines(&refs);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "YQ==\nYWI=\nYWJj\n/wAQgA==\n"
        );
        assert_eq!(out.capacity(), out.len());
    }
}
