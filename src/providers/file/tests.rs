//! Unit tests of the `file` provider.

use super::*;

const SECRET_A: &str = "tok-SECRET-value-1";
const SECRET_B: &str = "pw-SECRET-value-2";

fn cfg(dir: &Path) -> FileConfig {
    FileConfig {
        path: dir.join("data/vault.enc"),
        key_file: Some(dir.join("keys/vault.key")),
        ..FileConfig::default()
    }
}

fn sv(s: &str) -> SecretValue {
    SecretValue::from_str_copy(s)
}

fn value(d: Option<SecretData>) -> Vec<u8> {
    match d {
        Some(SecretData::Value(v)) => v.expose().to_vec(),
        other => panic!("expected a single value, got {other:?}"),
    }
}

fn map(d: Option<SecretData>) -> BTreeMap<String, Vec<u8>> {
    match d {
        Some(SecretData::Map(m)) => m
            .into_iter()
            .map(|(k, v)| (k, v.expose().to_vec()))
            .collect(),
        other => panic!("expected a map, got {other:?}"),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Replaces the vault file with `bytes` through a new inode (as a real writer would).
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = with_suffix(path, ".test-replace");
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn round_trip_map_vs_value_reopen_and_redaction() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let v = FileVault::open(&c).unwrap();

    // Key file created 0600 with 32 bytes, its new parent directory 0700; no vault file yet.
    let key_file = c.effective_key_file().unwrap();
    let md = fs::metadata(&key_file).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert_eq!(md.len(), 32);
    let kd = fs::metadata(key_file.parent().unwrap()).unwrap();
    assert_eq!(kd.permissions().mode() & 0o777, 0o700);
    assert!(!c.path.exists());
    assert_eq!(v.get("app/token").unwrap(), None);
    assert!(v.list().unwrap().is_empty());

    v.set("app/token", None, sv(SECRET_A)).unwrap();
    v.set("app/db", Some("user"), sv("admin")).unwrap();
    v.set("app/db", Some("password"), sv(SECRET_B)).unwrap();
    v.set("bin", None, SecretValue::new(vec![0, 255, 10, 35, 47]))
        .unwrap();
    assert_eq!(value(v.get("app/token").unwrap()), SECRET_A.as_bytes());
    assert_eq!(value(v.get("bin").unwrap()), vec![0, 255, 10, 35, 47]);
    let m = map(v.get("app/db").unwrap());
    assert_eq!(m["user"], b"admin");
    assert_eq!(m["password"], SECRET_B.as_bytes());
    assert_eq!(
        v.list().unwrap(),
        vec![
            (
                "app/db".to_string(),
                vec!["password".to_string(), "user".to_string()]
            ),
            ("app/token".to_string(), vec![]),
            ("bin".to_string(), vec![]),
        ]
    );

    // A key on a single value is refused; a single value replaces a map.
    let err = v.set("app/token", Some("x"), sv("y")).unwrap_err();
    assert!(matches!(err, FileVaultError::NotAMap { .. }), "{err}");
    assert!(matches!(
        v.remove("app/token", Some("x")),
        Err(FileVaultError::NotAMap { .. })
    ));
    v.set("misc", Some("k"), sv("1")).unwrap();
    v.set("misc", None, sv("whole")).unwrap();
    assert_eq!(value(v.get("misc").unwrap()), b"whole");

    // On disk: format line, 0600, no plaintext (raw or base64).
    let bytes = fs::read(&c.path).unwrap();
    assert!(
        bytes.starts_with(b"dso-vault 1\n{\"kdf\":\"argon2id\",\"m_kib\":19456,\"t\":2,\"p\":1,")
    );
    for s in [SECRET_A, SECRET_B] {
        assert!(!contains(&bytes, s.as_bytes()), "plaintext in vault file");
        assert!(
            !contains(&bytes, B64.encode(s).as_bytes()),
            "base64 plaintext in vault file"
        );
    }
    let vmode = fs::metadata(&c.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(vmode, 0o600);
    let dir_entries: Vec<_> = fs::read_dir(c.path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        dir_entries.iter().all(|n| !n.contains(".tmp-")),
        "temp file left behind: {dir_entries:?}"
    );

    // The salt is kept across writes; the nonce changes.
    let header = |b: &[u8]| -> Header {
        let line = b.split(|c| *c == b'\n').nth(1).unwrap();
        serde_json::from_slice(line).unwrap()
    };
    let h1 = header(&bytes);
    v.set("misc", None, sv("again")).unwrap();
    let h2 = header(&fs::read(&c.path).unwrap());
    assert_eq!(h1.salt, h2.salt);
    assert_ne!(h1.nonce, h2.nonce);

    // Reopen with the same key file: everything reads back; changes show up in the old instance.
    let v2 = FileVault::open(&c).unwrap();
    assert_eq!(value(v2.get("app/token").unwrap()), SECRET_A.as_bytes());
    assert_eq!(
        map(v2.get("app/db").unwrap())["password"],
        SECRET_B.as_bytes()
    );
    assert!(v2.remove("app/db", Some("user")).unwrap());
    assert!(!v2.remove("app/db", Some("user")).unwrap());
    assert_eq!(
        map(v.get("app/db").unwrap()).keys().collect::<Vec<_>>(),
        vec!["password"]
    );
    assert!(v2.remove("app/db", Some("password")).unwrap());
    assert_eq!(v.get("app/db").unwrap(), None, "empty map removes the path");
    assert!(v.remove("app/token", None).unwrap());
    assert!(!v.remove("app/token", None).unwrap());
    assert!(!v.remove("nothing/here", Some("k")).unwrap());
    assert_eq!(v2.get("app/token").unwrap(), None);

    // Debug output never shows values or key material.
    v.set("app/token", None, sv(SECRET_A)).unwrap();
    let key_bytes = fs::read(&key_file).unwrap();
    let shown = format!("{v:?} {v2:?} {err:?} {err}");
    assert!(
        !shown.contains(SECRET_A) && !shown.contains(SECRET_B),
        "{shown}"
    );
    assert!(
        !shown.contains(&format!("{:?}", &key_bytes[..4])),
        "{shown}"
    );
    assert!(shown.contains("vault.enc"), "{shown}");
}

#[test]
fn tampered_file_is_an_error_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let v = FileVault::open(&c).unwrap();
    v.set("app/token", None, sv(SECRET_A)).unwrap();
    let good = fs::read(&c.path).unwrap();
    let line_start = |n: usize| {
        let mut at = 0;
        for _ in 0..n {
            at += good[at..].iter().position(|b| *b == b'\n').unwrap() + 1;
        }
        at
    };
    let flip = |i: usize| {
        let mut b = good.clone();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        b
    };
    // One ciphertext character, then one header (nonce) character.
    let ct = line_start(2) + 8;
    let nonce_at = line_start(1) + contains_at(&good[line_start(1)..], b"\"nonce\":\"") + 9 + 2;
    for bad in [flip(ct), flip(nonce_at)] {
        replace_file(&c.path, &bad);
        let err = v.get("app/token").unwrap_err();
        assert!(matches!(err, FileVaultError::Decrypt { .. }), "{err}");
        assert!(err.to_string().contains("does not match"), "{err}");
    }
    let mut other_version = good.clone();
    other_version[10] = b'7';
    replace_file(&c.path, &other_version);
    assert!(matches!(
        v.get("app/token"),
        Err(FileVaultError::UnsupportedVersion { .. })
    ));
    replace_file(&c.path, b"not a vault\n");
    let err = v.get("app/token").unwrap_err();
    assert!(matches!(err, FileVaultError::Corrupt { .. }), "{err}");
    assert!(matches!(
        err.into_backend("app/token"),
        BackendError::Unavailable(m) if m.contains("vault.enc")
    ));
    // A failed read does not wipe the file on the next write attempt either.
    assert!(v.set("x", None, sv("1")).is_err());
    replace_file(&c.path, &good);
    assert_eq!(value(v.get("app/token").unwrap()), SECRET_A.as_bytes());
}

fn contains_at(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[tokio::test]
async fn wrong_key_is_denied_and_fetch_maps_errors() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let v = FileVault::open(&c).unwrap();
    v.set("app/token", None, sv(SECRET_A)).unwrap();

    // Through the SecretBackend trait.
    let backend: Arc<dyn SecretBackend> = Arc::new(v.clone());
    backend.probe().await.unwrap();
    match backend.fetch("app/token").await.unwrap() {
        SecretData::Value(x) => assert_eq!(x.expose(), SECRET_A.as_bytes()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        backend.fetch("app/missing").await.unwrap_err(),
        BackendError::NotFound {
            path: "app/missing".to_string()
        }
    );
    assert!(matches!(
        backend.fetch("../etc").await.unwrap_err(),
        BackendError::NotFound { .. }
    ));

    // Another key file (created on open because it is missing) does not decrypt this vault.
    let wrong = FileConfig {
        key_file: Some(dir.path().join("other.key")),
        ..c.clone()
    };
    let w = FileVault::open(&wrong).unwrap();
    let err = w.get("app/token").unwrap_err();
    assert!(matches!(err, FileVaultError::Decrypt { .. }), "{err}");
    assert!(
        err.to_string().contains("does not match the vault file"),
        "{err}"
    );
    assert!(!format!("{err:?}").contains(SECRET_A));
    // Writing with the wrong key must not clobber the vault either.
    assert!(w.set("x", None, sv("1")).is_err());
    let wb: Arc<dyn SecretBackend> = Arc::new(w);
    match wb.fetch("app/token").await.unwrap_err() {
        BackendError::Denied(m) => assert!(m.contains("does not match"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(wb.probe().await, Err(BackendError::Denied(_))));
    assert_eq!(value(v.get("app/token").unwrap()), SECRET_A.as_bytes());

    // Unreadable vault file → Unavailable naming the file.
    fs::remove_file(&c.path).unwrap();
    fs::create_dir(&c.path).unwrap();
    match backend.fetch("app/token").await.unwrap_err() {
        BackendError::Unavailable(m) => assert!(m.contains("vault.enc"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn passphrase_vaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.enc");
    let c = FileConfig {
        path: path.clone(),
        passphrase_env: Some("DSO_TEST_SURELY_UNSET_VAR_4F1A".to_string()),
        ..FileConfig::default()
    };
    assert_eq!(c.effective_key_file(), None);
    let err = FileVault::open(&c).unwrap_err();
    assert!(
        matches!(err, FileVaultError::PassphraseUnset { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("DSO_TEST_SURELY_UNSET_VAR_4F1A"),
        "{err}"
    );

    // (std::env::set_var is disallowed; build passphrase vaults directly.)
    let env = || KeySource::Env("DSO_PASS".to_string());
    let good = FileVault::with_secret(&path, env(), Zeroizing::new(b"correct horse".to_vec()));
    good.set("a", None, sv(SECRET_A)).unwrap();
    let bad = FileVault::with_secret(&path, env(), Zeroizing::new(b"battery staple".to_vec()));
    assert!(matches!(bad.get("a"), Err(FileVaultError::Decrypt { .. })));
    let shown = format!("{good:?}");
    assert!(
        shown.contains("DSO_PASS") && !shown.contains("horse"),
        "{shown}"
    );

    let both = FileConfig {
        key_file: Some(dir.path().join("k")),
        passphrase_env: Some("X".to_string()),
        ..c.clone()
    };
    assert!(matches!(
        FileVault::open(&both),
        Err(FileVaultError::Config { .. })
    ));
}

#[test]
fn loose_or_empty_key_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let key = c.key_file.clone().unwrap();
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    fs::write(&key, [7u8; 32]).unwrap();
    for mode in [0o644, 0o620, 0o604, 0o660] {
        fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
        let err = FileVault::open(&c).unwrap_err();
        assert!(
            matches!(err, FileVaultError::KeyFilePermissions { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("run `chmod 600 {}`", key.display())),
            "{err}"
        );
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
    FileVault::open(&c).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&key, b"").unwrap();
    let err = FileVault::open(&c).unwrap_err();
    assert!(
        matches!(
            err,
            FileVaultError::KeyFileInvalid {
                problem: "is empty",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("vault.key"), "{err}");
}

#[test]
fn concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    // Create the key file once so both writers share it.
    drop(FileVault::open(&c).unwrap());
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let v = FileVault::open(&c).unwrap();
                for i in 0..20 {
                    v.set(&format!("t{t}/s{i}"), Some("k"), sv(&format!("{t}-{i}")))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let v = FileVault::open(&c).unwrap();
    let list = v.list().unwrap();
    assert_eq!(list.len(), 40, "{list:?}");
    for t in 0..2 {
        for i in 0..20 {
            let m = map(v.get(&format!("t{t}/s{i}")).unwrap());
            assert_eq!(m["k"], format!("{t}-{i}").as_bytes());
        }
    }
}

#[test]
fn paths_and_keys_are_validated() {
    let f = Path::new("/v.enc");
    for ok in ["a", "app/db", "A-z_0.9@x+y=z,w", "a/b/c"] {
        check_path(f, ok).unwrap();
    }
    for bad in [
        "", "/a", "a/", "a//b", ".", "a/..", "a b", "a#k", "é", "a\\b",
    ] {
        let err = check_path(f, bad).unwrap_err();
        assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
    }
    check_key(f, "password").unwrap();
    for bad in ["", "a#b", "a/b"] {
        let err = check_key(f, bad).unwrap_err();
        assert!(matches!(err, FileVaultError::InvalidKey { .. }), "{err}");
    }
}

#[test]
fn config_defaults_and_validation() {
    let d: FileConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(d, FileConfig::default());
    assert_eq!(d.path, PathBuf::from(DEFAULT_PATH));
    assert_eq!(
        d.effective_key_file(),
        Some(PathBuf::from(DEFAULT_KEY_FILE))
    );
    assert!(d.validate("providers.local").is_empty());
    let t: FileConfig = serde_json::from_str(r#"{"key_file":"/k"}"#).unwrap();
    assert_eq!(t.effective_key_file(), Some(PathBuf::from("/k")));
    assert!(serde_json::from_str::<FileConfig>(r#"{"nope":1}"#).is_err());
    let back: FileConfig = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);

    let bad = FileConfig {
        path: PathBuf::from("rel/vault.enc"),
        key_file: Some(PathBuf::from("/k")),
        passphrase_env: Some("A=B".to_string()),
    };
    let errs = bad.validate("providers.local");
    assert_eq!(errs.len(), 3, "{errs:?}");
    for field in ["path", "passphrase_env"] {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("providers.local.{field}: "))),
            "{errs:?}"
        );
    }
}
