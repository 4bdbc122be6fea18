//! The bytes of the exec write path and the digest both paths share: the one tar (or, in an image
//! without `tar`, base64 lines) that carries all of a container's secrets on stdin, and the keyed
//! content digest written to `.ready`.
//!
//! The tar is built in a buffer allocated once at its final size (no reallocation leaves copies of
//! secret bytes in freed memory) and zeroed on drop. The in-container script that unpacks it lives
//! with the exec path (`injector::exec`).

use zeroize::Zeroizing;

use crate::model::{GroupName, SecretFile, READY_MARKER};
use crate::secret::SecretValue;

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
        // Names (resolved inside the container, after the digest) count as what they say; files
        // with numeric owners hash exactly as before names existed.
        if let Some(u) = &f.names.user {
            h.update(b"\x01user:");
            h.update(u.as_bytes());
            h.update([0]);
        }
        match &f.names.group {
            Some(GroupName::Group(g)) => {
                h.update(b"\x01group:");
                h.update(g.as_bytes());
                h.update([0]);
            }
            Some(GroupName::PrimaryOf(u)) => {
                h.update(b"\x01primary:");
                h.update(u.as_bytes());
                h.update([0]);
            }
            None => {}
        }
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.expose());
    }
    let out = h.finalize();
    out.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The change a Swarm roll is for: the same on every agent that delivers it (every task of the
/// service, every node), so the `dso.rolled` label makes a second agent's roll a no-op. When every
/// file's backend has a version (KV v2, AWS), only the references and versions are hashed; else
/// the values are, keyed with the service id rather than the per-host key (which differs between
/// agents). The label is readable by whoever can inspect services on a manager (root on the
/// swarm, who can read the values anyway), never inside a container. 16 hex digits.
pub fn rolled_digest(
    service: &str,
    files: &[(&SecretFile, &SecretValue)],
    versions: &[Option<String>],
) -> String {
    use sha2::{Digest, Sha256};
    let key = format!("dso.rolled\0{service}");
    let all_versioned = versions.len() == files.len() && versions.iter().all(Option::is_some);
    if !all_versioned {
        return digest(key.as_bytes(), files);
    }
    let mut h = Sha256::new();
    h.update(b"versions\0");
    h.update(key.as_bytes());
    for ((f, _), v) in files.iter().zip(versions) {
        for part in [
            f.name.as_str(),
            &f.source.to_string(),
            v.as_deref().unwrap_or(""),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(f.mode.to_le_bytes());
        h.update(f.uid.to_le_bytes());
        h.update(f.gid.to_le_bytes());
    }
    let out = h.finalize();
    out.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The stdin payload of `Transport::Base64Lines` (see `injector::exec`): one base64 line per file, zeroed on drop.
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

/// The name of the readiness marker, for documentation and tests.
pub fn ready_marker() -> &'static str {
    READY_MARKER
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::test_file as file;

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
        // Owners given by name count as the names (resolved after the digest, inside the
        // container): another name is another digest, the same name the same one.
        let mut n = a.clone();
        n.names.user = Some("app".into());
        let dn = digest(b"k", &[(&n, &v1)]);
        assert_ne!(d1, dn);
        assert_eq!(dn, digest(b"k", &[(&n.clone(), &v1)]));
        let mut g = n.clone();
        g.names.group = Some(crate::model::GroupName::PrimaryOf("app".into()));
        let mut h = n.clone();
        h.names.group = Some(crate::model::GroupName::Group("app".into()));
        assert_ne!(digest(b"k", &[(&g, &v1)]), digest(b"k", &[(&h, &v1)]));
    }

    #[test]
    fn rolled_digest_is_per_service_and_change_and_prefers_versions() {
        let a = file("a", 0o400);
        let (v1, v2) = (
            SecretValue::from_str_copy("one"),
            SecretValue::from_str_copy("two"),
        );
        let none = [None];
        let d = rolled_digest("svc", &[(&a, &v1)], &none);
        assert_eq!(d.len(), 16);
        assert_eq!(d, rolled_digest("svc", &[(&a, &v1)], &none));
        assert_ne!(d, rolled_digest("svc", &[(&a, &v2)], &none));
        assert_ne!(d, rolled_digest("other", &[(&a, &v1)], &none));
        // With a version per file the values are not hashed: the version says what changed.
        let v3 = [Some("3".to_string())];
        let d3 = rolled_digest("svc", &[(&a, &v1)], &v3);
        assert_eq!(d3, rolled_digest("svc", &[(&a, &v2)], &v3));
        assert_ne!(
            d3,
            rolled_digest("svc", &[(&a, &v1)], &[Some("4".to_string())])
        );
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
