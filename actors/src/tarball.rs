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
    lens.iter().map(|l| 512 + l.div_ceil(512) * 512).sum::<usize>() + 1024
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
        header
            .set_path(&file.name)
            .map_err(|e| TarError::Entry {
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

/// The script run with `sh -c SCRIPT dso-inject DIR [NAME MODE UID GID]...`.
///
/// Positional parameters carry the (already validated) names, so nothing is interpolated into the
/// script text.
pub const INJECT_SCRIPT: &str = r#"set -e
umask 077
d="$1"; shift
command -v tar >/dev/null 2>&1 || { echo "dso: no tar in this container" >&2; exit 65; }
mkdir -p "$d"
fs=$(stat -f -c %T "$d" 2>/dev/null || echo unknown)
case "$fs" in tmpfs|unknown) ;; *) echo "dso: $d is on $fs, not tmpfs" >&2; exit 64;; esac
t="$d/.dso-staging.$$"
rm -rf "$t"
mkdir "$t"
trap 'rm -rf "$t"' EXIT
tar -x -f - -C "$t"
while [ $# -ge 4 ]; do
  chown "$3:$4" "$t/$1"
  chmod "$2" "$t/$1"
  mv -f "$t/$1" "$d/$1"
  shift 4
done
rmdir "$t"
trap - EXIT
if [ ! -e "$d/.ready" ]; then : > "$d/.ready.tmp.$$"; chmod 0444 "$d/.ready.tmp.$$"; mv -f "$d/.ready.tmp.$$" "$d/.ready"; fi
"#;

/// The argv of the exec that installs `files` into `dir`.
pub fn inject_command(dir: &str, files: &[&SecretFile]) -> Vec<String> {
    let mut cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        INJECT_SCRIPT.to_string(),
        "dso-inject".to_string(),
        dir.to_string(),
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
        assert_eq!(tar_bytes.capacity(), tar_bytes.len(), "buffer must never grow");
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
            vec![("a".into(), 0o400, 1000, 1001, 5), ("b.txt".into(), 0o640, 1000, 1001, 1500)]
        );
    }

    #[test]
    fn command_passes_names_as_arguments() {
        let a = file("db_password", 0o440);
        let cmd = inject_command("/run/secrets/dso", &[&a]);
        assert_eq!(&cmd[..2], &["sh", "-c"]);
        assert_eq!(&cmd[3..], &["dso-inject", "/run/secrets/dso", "db_password", "440", "1000", "1001"]);
        assert!(!cmd[2].contains("db_password"));
    }
}
