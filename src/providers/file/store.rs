//! Storage: key files, locking, atomic writes, reading and re-reading the vault, and the `SecretBackend` implementation.

use super::*;

pub(super) fn io_err<'a>(
    file: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> FileVaultError + 'a {
    move |cause| FileVaultError::Io {
        file: file.to_path_buf(),
        action,
        cause,
    }
}

pub(super) fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub(super) fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub(super) fn create_dir_0700(dir: &Path) -> Result<(), FileVaultError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir, "create directory"))
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), FileVaultError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

pub(super) fn random_bytes(buf: &mut [u8], file: &Path) -> Result<(), FileVaultError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| FileVaultError::Crypto {
            file: file.to_path_buf(),
            reason: format!("system random source failed: {e}"),
        })
}

/// Writes `bytes` to a fresh `<target>.tmp-<pid>` (mode 0600) and fsyncs it; returns its path.
pub(super) fn write_temp(target: &Path, bytes: &[u8]) -> Result<(PathBuf, Stamp), FileVaultError> {
    let tmp = with_suffix(target, &format!(".tmp-{}", std::process::id()));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp, "remove stale temp file")(e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp, "create temp file"))?;
    let res = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| f.metadata());
    match res {
        Ok(md) => Ok((tmp, Stamp::of(&md))),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(io_err(&tmp, "write temp file")(e))
        }
    }
}

/// Validates a secret path: `/`-separated segments of `[A-Za-z0-9._@+=,-]`, not `.` or `..`.
pub(super) fn check_path(file: &Path, input: &str) -> Result<(), FileVaultError> {
    let bad = |reason: String| FileVaultError::InvalidPath {
        file: file.to_path_buf(),
        input: input.to_string(),
        reason,
    };
    if input.is_empty() {
        return Err(bad("the path is empty".to_string()));
    }
    for seg in input.split('/') {
        if seg.is_empty() {
            return Err(bad(
                "it has an empty segment (leading, trailing or doubled `/`)".to_string(),
            ));
        }
        if seg == "." || seg == ".." {
            return Err(bad(format!("segment `{seg}` is not allowed")));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._@+=,-".contains(*c)))
        {
            return Err(bad(format!("segment `{seg}` contains `{c}`")));
        }
    }
    Ok(())
}

pub(super) fn check_key(file: &Path, key: &str) -> Result<(), FileVaultError> {
    let reason = if key.is_empty() {
        "the key is empty"
    } else if key.contains('#') {
        "the key contains `#`"
    } else if key.contains('/') {
        "the key contains `/`"
    } else {
        return Ok(());
    };
    Err(FileVaultError::InvalidKey {
        file: file.to_path_buf(),
        key: key.to_string(),
        reason,
    })
}

/// Reads the key file after checking its type, permissions and size.
pub(super) fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileVaultError> {
    let mut f = File::open(path).map_err(io_err(path, "open key file"))?;
    let md = f.metadata().map_err(io_err(path, "stat key file"))?;
    if !md.is_file() {
        return Err(FileVaultError::KeyFileInvalid {
            file: path.to_path_buf(),
            problem: "is not a regular file",
        });
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o066 != 0 {
        return Err(FileVaultError::KeyFilePermissions {
            file: path.to_path_buf(),
            mode,
        });
    }
    let cap = usize::try_from(md.len()).unwrap_or(0).saturating_add(1);
    let mut buf = Zeroizing::new(Vec::with_capacity(cap));
    f.read_to_end(&mut buf)
        .map_err(io_err(path, "read key file"))?;
    if buf.is_empty() {
        return Err(FileVaultError::KeyFileInvalid {
            file: path.to_path_buf(),
            problem: "is empty",
        });
    }
    Ok(buf)
}

/// Creates a key file with 32 random bytes, without ever replacing an existing one.
pub(super) fn create_key_file(path: &Path) -> Result<(), FileVaultError> {
    create_dir_0700(&parent_dir(path))?;
    let mut key = Zeroizing::new([0u8; KEY_FILE_LEN]);
    random_bytes(&mut key[..], path)?;
    let (tmp, _) = write_temp(path, &key[..])?;
    // hard_link fails if the key file appeared meanwhile (another process won the race): keep theirs.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(&parent_dir(path))?;
            tracing::info!(key_file = %path.display(), "created a new random key file (mode 0600)");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(path, "create key file")(e)),
    }
}

/// Reads a key file, creating it (32 random bytes, mode 0600, never replacing one that appears
/// meanwhile) when missing. Refuses one that group or others can read or write.
pub fn load_or_create_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileVaultError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_key_file(path)?,
        Err(e) => return Err(io_err(path, "stat key file")(e)),
        Ok(_) => {}
    }
    read_key_file(path)
}

/// Holds an exclusive `flock` until dropped (closing the descriptor releases it).
pub(super) struct LockGuard {
    pub(super) _file: File,
}

pub(super) fn lock_exclusive(path: &Path) -> Result<LockGuard, FileVaultError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path, "open lock file"))?;
    loop {
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => return Ok(LockGuard { _file: f }),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err(path, "lock")(e.into())),
        }
    }
}

impl Inner {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // The state is only ever replaced whole, so a poisoned lock still holds a consistent value.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An AES-256-GCM cipher for this salt/parameters, deriving (and caching) the key if needed.
    pub(super) fn cipher(
        &self,
        cache: &mut Option<DerivedKey>,
        info: &KdfInfo,
    ) -> Result<Aes256Gcm, FileVaultError> {
        if !matches!(cache, Some(k) if k.info == *info) {
            let crypto = |reason: String| FileVaultError::Crypto {
                file: self.file.clone(),
                reason,
            };
            let params = Params::new(info.params.m_kib, info.params.t, info.params.p, Some(32))
                .map_err(|e| crypto(format!("invalid Argon2 parameters: {e}")))?;
            let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
            // Own the working memory so it can be wiped (argon2's `zeroize` feature is off).
            let mut blocks = vec![Block::new(); argon.params().block_count()];
            let mut key = Zeroizing::new([0u8; 32]);
            let res = argon.hash_password_into_with_memory(
                &self.secret,
                &info.salt,
                &mut key[..],
                &mut blocks,
            );
            for b in blocks.iter_mut() {
                b.as_mut().zeroize();
            }
            res.map_err(|e| crypto(format!("Argon2id key derivation failed: {e}")))?;
            *cache = Some(DerivedKey {
                info: info.clone(),
                key,
            });
        }
        match cache {
            Some(k) => Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&k.key[..]))),
            None => Err(FileVaultError::Crypto {
                file: self.file.clone(),
                reason: "key cache unexpectedly empty".to_string(),
            }),
        }
    }

    /// Makes `st.loaded` reflect the file on disk, re-reading only when it changed.
    pub(super) fn refresh<'s>(&self, st: &'s mut State) -> Result<&'s Loaded, FileVaultError> {
        let mut f = match File::open(&self.file) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if st.loaded.seen != Seen::Absent {
                    st.loaded = Loaded {
                        seen: Seen::Absent,
                        kdf: None,
                        secrets: BTreeMap::new(),
                    };
                }
                return Ok(&st.loaded);
            }
            Err(e) => return Err(io_err(&self.file, "open vault file")(e)),
        };
        // Stamp and content come from the same open file, so they always agree.
        let md = f
            .metadata()
            .map_err(io_err(&self.file, "stat vault file"))?;
        let stamp = Stamp::of(&md);
        if st.loaded.seen == Seen::File(stamp) {
            return Ok(&st.loaded);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(md.len()).unwrap_or(0));
        f.read_to_end(&mut bytes)
            .map_err(io_err(&self.file, "read vault file"))?;
        let parsed = parse_file(&self.file, &bytes)?;
        let cipher = self.cipher(&mut st.key, &parsed.kdf)?;
        let mut buf = Zeroizing::new(parsed.ciphertext);
        let ct_len = buf.len() - TAG_LEN;
        let tag = *Tag::from_slice(&buf[ct_len..]);
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&parsed.nonce),
                parsed.aad,
                &mut buf[..ct_len],
                &tag,
            )
            .map_err(|_| FileVaultError::Decrypt {
                file: self.file.clone(),
            })?;
        let plain: PlainIn = serde_json::from_slice(&buf[..ct_len]).map_err(|e| {
            // serde_json messages may quote input; report only the position.
            FileVaultError::Corrupt {
                file: self.file.clone(),
                reason: format!(
                    "decrypted contents are not a vault document (line {} column {})",
                    e.line(),
                    e.column()
                ),
            }
        })?;
        let secrets = plain
            .secrets
            .into_iter()
            .map(|(path, e)| {
                let data = match e {
                    EntryIn::Value(v) => SecretData::Value(v.0),
                    EntryIn::Map(m) => {
                        SecretData::Map(m.into_iter().map(|(k, v)| (k, v.0)).collect())
                    }
                };
                (path, data)
            })
            .collect();
        st.loaded = Loaded {
            seen: Seen::File(stamp),
            kdf: Some(parsed.kdf),
            secrets,
        };
        Ok(&st.loaded)
    }

    pub(super) fn get(&self, path: &str) -> Result<Option<SecretData>, FileVaultError> {
        check_path(&self.file, path)?;
        let mut st = self.state();
        Ok(self.refresh(&mut st)?.secrets.get(path).cloned())
    }

    pub(super) fn list(&self) -> Result<Vec<(String, Vec<String>)>, FileVaultError> {
        let mut st = self.state();
        let loaded = self.refresh(&mut st)?;
        Ok(loaded
            .secrets
            .iter()
            .map(|(p, d)| {
                let keys = match d {
                    SecretData::Value(_) => Vec::new(),
                    SecretData::Map(m) => m.keys().cloned().collect(),
                };
                (p.clone(), keys)
            })
            .collect())
    }

    /// Locked read-modify-write. `change` edits a copy of the secrets and says whether anything
    /// changed; the file is rewritten only then.
    pub(super) fn modify<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, SecretData>) -> Result<(bool, T), FileVaultError>,
    ) -> Result<T, FileVaultError> {
        let mut st = self.state();
        create_dir_0700(&parent_dir(&self.file))?;
        let _lock = lock_exclusive(&self.lock_file)?;
        let loaded = self.refresh(&mut st)?;
        let mut secrets = loaded.secrets.clone();
        let kdf = loaded.kdf.clone();
        let (changed, out) = change(&mut secrets)?;
        if !changed {
            return Ok(out);
        }
        let kdf = match kdf {
            Some(k) => k,
            None => {
                let mut salt = vec![0u8; SALT_LEN];
                random_bytes(&mut salt, &self.file)?;
                KdfInfo {
                    salt,
                    params: KdfParams::DEFAULT,
                }
            }
        };
        let bytes = self.encrypt(&mut st.key, &kdf, &secrets)?;
        let (tmp, stamp) = write_temp(&self.file, &bytes)?;
        if let Err(e) = fs::rename(&tmp, &self.file) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&self.file, "replace vault file")(e));
        }
        sync_dir(&parent_dir(&self.file))?;
        st.loaded = Loaded {
            seen: Seen::File(stamp),
            kdf: Some(kdf),
            secrets,
        };
        Ok(out)
    }

    pub(super) fn encrypt(
        &self,
        cache: &mut Option<DerivedKey>,
        kdf: &KdfInfo,
        secrets: &BTreeMap<String, SecretData>,
    ) -> Result<Vec<u8>, FileVaultError> {
        let crypto = |reason: String| FileVaultError::Crypto {
            file: self.file.clone(),
            reason,
        };
        let cipher = self.cipher(cache, kdf)?;
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce, &self.file)?;
        let header = Header {
            kdf: KDF_NAME.to_string(),
            m_kib: kdf.params.m_kib,
            t: kdf.params.t,
            p: kdf.params.p,
            salt: B64.encode(&kdf.salt),
            cipher: CIPHER_NAME.to_string(),
            nonce: B64.encode(nonce),
        };
        let header = serde_json::to_string(&header)
            .map_err(|e| crypto(format!("cannot encode header: {e}")))?;
        let mut out = format!("{MAGIC} {FORMAT_VERSION}\n{header}\n").into_bytes();
        let aad_len = out.len();

        let mut w = ZeroizingWriter(Zeroizing::new(Vec::with_capacity(4096)));
        serde_json::to_writer(&mut w, &PlainOut(secrets))
            .map_err(|e| crypto(format!("cannot encode contents: {:?} error", e.classify())))?;
        let mut buf = w.0;
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &out[..aad_len], &mut buf[..])
            .map_err(|_| crypto("AES-256-GCM encryption failed".to_string()))?;
        // `buf` now holds ciphertext only.
        buf.extend_from_slice(&tag);
        out.extend_from_slice(B64.encode(&buf[..]).as_bytes());
        out.push(b'\n');
        Ok(out)
    }
}

impl FileVault {
    /// Opens the vault described by `cfg`. The vault file need not exist yet (an absent file is
    /// an empty vault); the key file is created if missing. Nothing is decrypted until first use.
    pub fn open(cfg: &FileConfig) -> Result<Self, FileVaultError> {
        if cfg.key_file.is_some() && cfg.passphrase_env.is_some() {
            return Err(FileVaultError::Config {
                file: cfg.path.clone(),
                message: "both key_file and passphrase_env are set; remove one of them".to_string(),
            });
        }
        let (source, secret) = match (&cfg.passphrase_env, cfg.effective_key_file()) {
            (Some(var), _) => {
                let secret = match std::env::var_os(var) {
                    Some(v) if !v.is_empty() => {
                        Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(v))
                    }
                    _ => {
                        return Err(FileVaultError::PassphraseUnset {
                            var: var.clone(),
                            file: cfg.path.clone(),
                        })
                    }
                };
                (KeySource::Env(var.clone()), secret)
            }
            (None, Some(key_file)) => {
                let secret = load_or_create_key_file(&key_file)?;
                (KeySource::KeyFile(key_file), secret)
            }
            (None, None) => {
                return Err(FileVaultError::Config {
                    file: cfg.path.clone(),
                    message: "no key source; set key_file or passphrase_env".to_string(),
                })
            }
        };
        Ok(Self::with_secret(&cfg.path, source, secret))
    }

    pub(super) fn with_secret(path: &Path, source: KeySource, secret: Zeroizing<Vec<u8>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                file: path.to_path_buf(),
                lock_file: with_suffix(path, ".lock"),
                source,
                secret,
                state: Mutex::new(State {
                    loaded: Loaded {
                        seen: Seen::Never,
                        kdf: None,
                        secrets: BTreeMap::new(),
                    },
                    key: None,
                }),
            }),
        }
    }

    /// The vault file.
    pub fn path(&self) -> &Path {
        &self.inner.file
    }

    /// Everything stored at `path`, or `None` when nothing is.
    pub fn get(&self, path: &str) -> Result<Option<SecretData>, FileVaultError> {
        self.inner.get(path)
    }

    /// `key` `None`: stores a single value at `path`, replacing whatever was there.
    /// `key` `Some(k)`: sets key `k` in the map at `path`, creating the map; fails with
    /// [`FileVaultError::NotAMap`] if `path` holds a single value.
    pub fn set(
        &self,
        path: &str,
        key: Option<&str>,
        value: SecretValue,
    ) -> Result<(), FileVaultError> {
        let file = &self.inner.file;
        check_path(file, path)?;
        if let Some(k) = key {
            check_key(file, k)?;
        }
        self.inner.modify(|secrets| {
            match key {
                None => {
                    secrets.insert(path.to_string(), SecretData::Value(value));
                }
                Some(k) => match secrets
                    .entry(path.to_string())
                    .or_insert_with(|| SecretData::Map(BTreeMap::new()))
                {
                    SecretData::Map(m) => {
                        m.insert(k.to_string(), value);
                    }
                    SecretData::Value(_) => {
                        return Err(FileVaultError::NotAMap {
                            file: file.clone(),
                            path: path.to_string(),
                        })
                    }
                },
            }
            Ok((true, ()))
        })
    }

    /// Every path with its key names (sorted; empty for a single value). Never values.
    pub fn list(&self) -> Result<Vec<(String, Vec<String>)>, FileVaultError> {
        self.inner.list()
    }

    /// `key` `None`: removes `path`. `Some(k)`: removes key `k` (and the path once its map is
    /// empty); fails with [`FileVaultError::NotAMap`] if `path` holds a single value.
    /// `Ok(false)` when nothing was there (the file is then not rewritten).
    pub fn remove(&self, path: &str, key: Option<&str>) -> Result<bool, FileVaultError> {
        let file = &self.inner.file;
        check_path(file, path)?;
        if let Some(k) = key {
            check_key(file, k)?;
        }
        self.inner.modify(|secrets| {
            let removed = match key {
                None => secrets.remove(path).is_some(),
                Some(k) => match secrets.get_mut(path) {
                    None => false,
                    Some(SecretData::Value(_)) => {
                        return Err(FileVaultError::NotAMap {
                            file: file.clone(),
                            path: path.to_string(),
                        })
                    }
                    Some(SecretData::Map(m)) => {
                        let removed = m.remove(k).is_some();
                        if m.is_empty() {
                            secrets.remove(path);
                        }
                        removed
                    }
                },
            };
            Ok((removed, removed))
        })
    }
}

#[async_trait]
impl SecretBackend for FileVault {
    async fn fetch(&self, path: &str) -> Result<SecretData, BackendError> {
        let inner = Arc::clone(&self.inner);
        let owned = path.to_string();
        let res = tokio::task::spawn_blocking(move || inner.get(&owned)).await;
        match res {
            Ok(Ok(Some(data))) => Ok(data),
            Ok(Ok(None)) => Err(BackendError::NotFound {
                path: path.to_string(),
            }),
            Ok(Err(e)) => Err(e.into_backend(path)),
            Err(e) => Err(BackendError::Unavailable(format!(
                "vault file {}: read task failed: {e}",
                self.inner.file.display()
            ))),
        }
    }

    /// Checks that the vault file (if present) can be read and decrypted with our key.
    async fn probe(&self) -> Result<(), BackendError> {
        let inner = Arc::clone(&self.inner);
        let res = tokio::task::spawn_blocking(move || {
            let mut st = inner.state();
            inner.refresh(&mut st).map(|_| ())
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into_backend("")),
            Err(e) => Err(BackendError::Unavailable(format!(
                "vault file {}: probe task failed: {e}",
                self.inner.file.display()
            ))),
        }
    }
}
