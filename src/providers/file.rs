//! `type = "file"`: the local encrypted vault, DSO's embedded default.
//!
//! On-disk format (version 1), one file:
//! ```text
//! DSOVAULT1\n
//! {"kdf":"argon2id","m_kib":19456,"t":2,"p":1,"salt":"<base64>","nonce":"<base64>"}\n
//! <AES-256-GCM ciphertext and tag, binary, to the end of the file>
//! ```
//! The key is Argon2id(key-file bytes or passphrase, salt). The two header lines are the
//! associated data, so a changed header fails authentication like a changed ciphertext. A fresh
//! random nonce is drawn on every write; the salt is kept for the life of the vault. The plaintext
//! is JSON `{path: {"value": b64} | {"map": {key: b64}}}`, held only in zeroed buffers.
//!
//! Writes are atomic (temp file in the same directory, fsync, rename) under an exclusive `flock`
//! on `<path>.lock`, so concurrent `dso secret set` runs do not lose updates.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dso_actors::backend::{BackendError, SecretBackend};
use dso_actors::secret::{SecretData, SecretValue};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

const MAGIC: &str = "DSOVAULT1";
const M_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

fn default_path() -> PathBuf {
    PathBuf::from("/var/lib/dso/vault.enc")
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[providers.<name>]` with `type = "file"`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Encrypted vault file. Default `/var/lib/dso/vault.enc`.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Key file (created 0600 with 32 random bytes if missing). Default
    /// `/var/lib/dso/vault.key` unless `passphrase_env` is set.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding a passphrase, used instead of a key file.
    #[serde(default)]
    pub passphrase_env: Option<String>,
    /// Per-request timeout. Default `30s`.
    #[serde(default = "default_timeout", with = "crate::config::duration")]
    pub timeout: Duration,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            path: default_path(),
            key_file: None,
            passphrase_env: None,
            timeout: default_timeout(),
        }
    }
}

impl FileConfig {
    /// Every semantic problem, each `PREFIX.field: problem`.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.key_file.is_some() && self.passphrase_env.is_some() {
            p.push(format!(
                "{prefix}: set either key_file or passphrase_env, not both"
            ));
        }
        if self.path.as_os_str().is_empty() {
            p.push(format!("{prefix}.path: must not be empty"));
        }
        if self.timeout.is_zero() {
            p.push(format!("{prefix}.timeout: must be more than 0s"));
        }
        p
    }

    /// The key file in effect (None when a passphrase is used).
    pub fn effective_key_file(&self) -> Option<PathBuf> {
        match (&self.key_file, &self.passphrase_env) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(
                self.path
                    .parent()
                    .unwrap_or(Path::new("/var/lib/dso"))
                    .join("vault.key"),
            ),
        }
    }
}

/// Why a vault operation failed. Messages name the file and say what to do; never a value.
#[derive(Debug, thiserror::Error)]
pub enum FileVaultError {
    /// The key file has group/other permissions.
    #[error("key file {path}: mode {mode:o} lets other users read it; run `chmod 600 {path}`")]
    KeyFilePermissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is empty.
    #[error("key file {0} is empty; delete it to have a new one created (existing secrets are then unreadable)")]
    KeyFileEmpty(String),
    /// The passphrase variable is unset or empty.
    #[error("environment variable {0} (passphrase_env) is not set or empty")]
    Passphrase(String),
    /// A filesystem operation failed.
    #[error("{op} {path}: {reason}")]
    Io {
        /// What we tried.
        op: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The vault file is not in DSO's format.
    #[error("vault file {path} is not a DSO vault: {reason}")]
    Format {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Authentication failed: wrong key/passphrase, or the file was changed.
    #[error("vault file {0} cannot be decrypted: the key file or passphrase does not match this vault, or the file was modified")]
    Decrypt(String),
    /// A path or key is not acceptable.
    #[error("`{input}`: {reason}")]
    BadName {
        /// The input.
        input: String,
        /// Why.
        reason: &'static str,
    },
    /// A key was given for a path that holds a single value.
    #[error("`{0}` holds a single value, not keys; remove it first or set it without `#key`")]
    NotAMap(String),
}

impl FileVaultError {
    fn io(op: &'static str, path: &Path, e: std::io::Error) -> Self {
        FileVaultError::Io {
            op,
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    kdf: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
    nonce: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Plain {
    entries: BTreeMap<String, PlainEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PlainEntry {
    Value(String),
    Map(BTreeMap<String, String>),
}

impl Drop for Plain {
    fn drop(&mut self) {
        for e in self.entries.values_mut() {
            match e {
                PlainEntry::Value(v) => v.zeroize(),
                PlainEntry::Map(m) => m.values_mut().for_each(Zeroize::zeroize),
            }
        }
    }
}

type Entries = BTreeMap<String, SecretData>;
/// (salt, key derived with it).
type DerivedKey = ([u8; 16], Zeroizing<[u8; 32]>);

struct Snapshot {
    mtime: Option<SystemTime>,
    len: u64,
    entries: Arc<Entries>,
}

/// An open local vault. Cheap to clone (shared inner state).
#[derive(Clone)]
pub struct FileVault(Arc<Inner>);

struct Inner {
    path: PathBuf,
    secret: Zeroizing<Vec<u8>>,
    derived: Mutex<Option<DerivedKey>>,
    snapshot: Mutex<Option<Snapshot>>,
}

impl std::fmt::Debug for FileVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileVault")
            .field("path", &self.0.path)
            .field("key", &"[redacted]")
            .finish()
    }
}

fn check_name(input: &str, what: &'static str) -> Result<(), FileVaultError> {
    let seg_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._@+=,-".contains(c))
    };
    let ok = match what {
        "path" => !input.is_empty() && input.len() <= 1024 && input.split('/').all(seg_ok),
        _ => !input.is_empty() && input.len() <= 255 && !input.contains(['#', '/', '\n']),
    };
    if ok {
        Ok(())
    } else {
        Err(FileVaultError::BadName {
            input: input.chars().take(80).collect(),
            reason: if what == "path" {
                "not a valid path: segments of [A-Za-z0-9._@+=,-], not `.` or `..`, separated by `/`"
            } else {
                "not a valid key: non-empty, without `#`, `/` or newlines"
            },
        })
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileVaultError> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(FileVaultError::KeyFilePermissions {
                    path: path.display().to_string(),
                    mode,
                });
            }
            let mut buf = Zeroizing::new(Vec::new());
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(|e| FileVaultError::io("reading key file", path, e))?;
            if buf.is_empty() {
                return Err(FileVaultError::KeyFileEmpty(path.display().to_string()));
            }
            Ok(buf)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                if !dir.as_os_str().is_empty() && !dir.exists() {
                    fs::create_dir_all(dir)
                        .map_err(|e| FileVaultError::io("creating directory", dir, e))?;
                    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
                }
            }
            let mut key = Zeroizing::new(vec![0u8; 32]);
            rand::rngs::OsRng.fill_bytes(&mut key);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| FileVaultError::io("creating key file", path, e))?;
            f.write_all(&key)
                .and_then(|_| f.sync_all())
                .map_err(|e| FileVaultError::io("writing key file", path, e))?;
            tracing::info!(key_file = %path.display(), "created a new vault key file (mode 0600)");
            Ok(key)
        }
        Err(e) => Err(FileVaultError::io("reading key file", path, e)),
    }
}

impl FileVault {
    /// Opens the vault (an absent vault file is an empty vault); creates the key file if missing.
    pub fn open(cfg: &FileConfig) -> Result<Self, FileVaultError> {
        let secret = match (&cfg.passphrase_env, cfg.effective_key_file()) {
            (Some(var), None) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Zeroizing::new(v.into_bytes()),
                _ => return Err(FileVaultError::Passphrase(var.clone())),
            },
            (_, Some(k)) => read_key_file(&k)?,
            (None, None) => return Err(FileVaultError::Passphrase(String::new())),
        };
        Ok(FileVault(Arc::new(Inner {
            path: cfg.path.clone(),
            secret,
            derived: Mutex::new(None),
            snapshot: Mutex::new(None),
        })))
    }

    /// Everything at `path`, or None.
    pub fn get(&self, path: &str) -> Result<Option<SecretData>, FileVaultError> {
        self.0.get(path)
    }

    /// Stores a single value (`key` None) or one key of a map.
    pub fn set(
        &self,
        path: &str,
        key: Option<&str>,
        value: SecretValue,
    ) -> Result<(), FileVaultError> {
        self.0.set(path, key, value)
    }

    /// Every path with its key names (sorted; single values have none). Never values.
    pub fn list(&self) -> Result<Vec<(String, Vec<String>)>, FileVaultError> {
        self.0.list()
    }

    /// Removes a path (`key` None) or one key; `Ok(false)` when nothing was there.
    pub fn remove(&self, path: &str, key: Option<&str>) -> Result<bool, FileVaultError> {
        self.0.remove(path, key)
    }
}

impl Inner {
    fn key_for(
        &self,
        salt: [u8; 16],
        m: u32,
        t: u32,
        p: u32,
    ) -> Result<Zeroizing<[u8; 32]>, FileVaultError> {
        if let Ok(guard) = self.derived.lock() {
            if let Some((s, k)) = guard.as_ref() {
                if *s == salt && (m, t, p) == (M_KIB, T_COST, P_COST) {
                    return Ok(k.clone());
                }
            }
        }
        let params = Params::new(m, t, p, Some(32)).map_err(|e| FileVaultError::Format {
            path: self.path.display().to_string(),
            reason: format!("bad Argon2 parameters: {e}"),
        })?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(&self.secret, &salt, &mut *out)
            .map_err(|e| FileVaultError::Format {
                path: self.path.display().to_string(),
                reason: format!("key derivation failed: {e}"),
            })?;
        if (m, t, p) == (M_KIB, T_COST, P_COST) {
            if let Ok(mut guard) = self.derived.lock() {
                *guard = Some((salt, out.clone()));
            }
        }
        Ok(out)
    }

    fn format_err(&self, reason: impl Into<String>) -> FileVaultError {
        FileVaultError::Format {
            path: self.path.display().to_string(),
            reason: reason.into(),
        }
    }

    /// Reads and decrypts the whole vault: (salt, entries). Missing file → (None, empty).
    fn load(&self) -> Result<(Option<[u8; 16]>, Plain), FileVaultError> {
        let raw = match fs::read(&self.path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((None, Plain::default()))
            }
            Err(e) => return Err(FileVaultError::io("reading vault", &self.path, e)),
        };
        let first = raw
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| self.format_err("no header"))?;
        if &raw[..first] != MAGIC.as_bytes() {
            return Err(self.format_err(format!("does not start with {MAGIC}")));
        }
        let second = raw[first + 1..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|p| p + first + 1)
            .ok_or_else(|| self.format_err("header line missing"))?;
        let header: Header = serde_json::from_slice(&raw[first + 1..second])
            .map_err(|e| self.format_err(format!("bad header: {e}")))?;
        if header.kdf != "argon2id" {
            return Err(self.format_err(format!("unknown kdf `{}`", header.kdf)));
        }
        let salt: [u8; 16] = B64
            .decode(&header.salt)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| self.format_err("bad salt"))?;
        let nonce: [u8; 12] = B64
            .decode(&header.nonce)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| self.format_err("bad nonce"))?;
        let key = self.key_for(salt, header.m_kib, header.t, header.p)?;
        let cipher =
            Aes256Gcm::new_from_slice(&*key).map_err(|_| self.format_err("bad key length"))?;
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &raw[second + 1..],
                        aad: &raw[..=second],
                    },
                )
                .map_err(|_| FileVaultError::Decrypt(self.path.display().to_string()))?,
        );
        let plain: Plain = serde_json::from_slice(&plaintext)
            .map_err(|_| self.format_err("decrypted content is not a DSO vault"))?;
        Ok((Some(salt), plain))
    }

    fn store(&self, salt: Option<[u8; 16]>, plain: &Plain) -> Result<(), FileVaultError> {
        let salt = salt.unwrap_or_else(|| {
            let mut s = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut s);
            s
        });
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let header = serde_json::to_string(&Header {
            kdf: "argon2id".into(),
            m_kib: M_KIB,
            t: T_COST,
            p: P_COST,
            salt: B64.encode(salt),
            nonce: B64.encode(nonce),
        })
        .map_err(|e| self.format_err(e.to_string()))?;
        let aad = format!("{MAGIC}\n{header}\n");
        let plaintext =
            Zeroizing::new(serde_json::to_vec(plain).map_err(|e| self.format_err(e.to_string()))?);
        let key = self.key_for(salt, M_KIB, T_COST, P_COST)?;
        let cipher =
            Aes256Gcm::new_from_slice(&*key).map_err(|_| self.format_err("bad key length"))?;
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| self.format_err("encryption failed"))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::create_dir_all(dir)
                .map_err(|e| FileVaultError::io("creating directory", dir, e))?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(aad.as_bytes())?;
            f.write_all(&ct)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            FileVaultError::io("writing vault", &self.path, e)
        })
    }

    fn lock(&self) -> Result<File, FileVaultError> {
        let lock_path = self.path.with_extension("lock");
        if let Some(dir) = lock_path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                fs::create_dir_all(dir)
                    .map_err(|e| FileVaultError::io("creating directory", dir, e))?;
            }
        }
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| FileVaultError::io("opening lock file", &lock_path, e))?;
        // SAFETY: flock on a file descriptor we own; released when `f` is dropped.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        if rc != 0 {
            return Err(FileVaultError::io(
                "locking",
                &lock_path,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(f)
    }

    fn to_data(entry: &PlainEntry, path: &str, vault: &Path) -> Result<SecretData, FileVaultError> {
        let dec = |s: &str| {
            B64.decode(s)
                .map(SecretValue::new)
                .map_err(|_| FileVaultError::Format {
                    path: vault.display().to_string(),
                    reason: format!("entry `{path}` is not valid base64"),
                })
        };
        Ok(match entry {
            PlainEntry::Value(v) => SecretData::Value(dec(v)?),
            PlainEntry::Map(m) => SecretData::Map(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), dec(v)?)))
                    .collect::<Result<_, FileVaultError>>()?,
            ),
        })
    }

    fn get(&self, path: &str) -> Result<Option<SecretData>, FileVaultError> {
        check_name(path, "path")?;
        let (_, plain) = self.load()?;
        plain
            .entries
            .get(path)
            .map(|e| Self::to_data(e, path, &self.path))
            .transpose()
    }

    fn set(&self, path: &str, key: Option<&str>, value: SecretValue) -> Result<(), FileVaultError> {
        check_name(path, "path")?;
        if let Some(k) = key {
            check_name(k, "key")?;
        }
        let _lock = self.lock()?;
        let (salt, mut plain) = self.load()?;
        let encoded = B64.encode(value.expose());
        match key {
            None => {
                plain
                    .entries
                    .insert(path.to_string(), PlainEntry::Value(encoded));
            }
            Some(k) => match plain
                .entries
                .entry(path.to_string())
                .or_insert_with(|| PlainEntry::Map(BTreeMap::new()))
            {
                PlainEntry::Map(m) => {
                    if let Some(mut old) = m.insert(k.to_string(), encoded) {
                        old.zeroize();
                    }
                }
                PlainEntry::Value(_) => {
                    let mut e = encoded;
                    e.zeroize();
                    return Err(FileVaultError::NotAMap(path.to_string()));
                }
            },
        }
        self.store(salt, &plain)
    }

    fn list(&self) -> Result<Vec<(String, Vec<String>)>, FileVaultError> {
        let (_, plain) = self.load()?;
        Ok(plain
            .entries
            .iter()
            .map(|(p, e)| {
                let keys = match e {
                    PlainEntry::Value(_) => vec![],
                    PlainEntry::Map(m) => m.keys().cloned().collect(),
                };
                (p.clone(), keys)
            })
            .collect())
    }

    fn remove(&self, path: &str, key: Option<&str>) -> Result<bool, FileVaultError> {
        check_name(path, "path")?;
        let _lock = self.lock()?;
        let (salt, mut plain) = self.load()?;
        let removed = match key {
            None => plain.entries.remove(path).is_some(),
            Some(k) => {
                let (hit, empty) = match plain.entries.get_mut(path) {
                    Some(PlainEntry::Map(m)) => {
                        let hit = m.remove(k).map(|mut v| v.zeroize()).is_some();
                        (hit, m.is_empty())
                    }
                    _ => (false, false),
                };
                if empty {
                    plain.entries.remove(path);
                }
                hit
            }
        };
        if removed {
            self.store(salt, &plain)?;
        }
        Ok(removed)
    }

    /// The decrypted entries, re-read only when the file changed.
    fn entries(&self) -> Result<Arc<Entries>, FileVaultError> {
        let (mtime, len) = match fs::metadata(&self.path) {
            Ok(m) => (m.modified().ok(), m.len()),
            Err(_) => (None, 0),
        };
        if let Ok(guard) = self.snapshot.lock() {
            if let Some(s) = guard.as_ref() {
                if s.mtime == mtime && s.len == len && mtime.is_some() {
                    return Ok(s.entries.clone());
                }
            }
        }
        let (_, plain) = self.load()?;
        let entries: Entries = plain
            .entries
            .iter()
            .map(|(p, e)| Ok((p.clone(), Self::to_data(e, p, &self.path)?)))
            .collect::<Result<_, FileVaultError>>()?;
        let entries = Arc::new(entries);
        if let Ok(mut guard) = self.snapshot.lock() {
            *guard = Some(Snapshot {
                mtime,
                len,
                entries: entries.clone(),
            });
        }
        Ok(entries)
    }
}

fn to_backend_error(e: FileVaultError) -> BackendError {
    match e {
        FileVaultError::Decrypt(_) | FileVaultError::KeyFilePermissions { .. } => {
            BackendError::Denied(e.to_string())
        }
        FileVaultError::Passphrase(_) | FileVaultError::KeyFileEmpty(_) => {
            BackendError::Config(e.to_string())
        }
        other => BackendError::Unavailable(other.to_string()),
    }
}

/// The backend: file IO and crypto run on tokio's blocking pool.
#[async_trait]
impl SecretBackend for FileVault {
    async fn fetch(&self, path: &str) -> Result<SecretData, BackendError> {
        let inner = self.0.clone();
        let entries = tokio::task::spawn_blocking(move || inner.entries())
            .await
            .map_err(|e| BackendError::Unavailable(format!("vault read task failed: {e}")))?
            .map_err(to_backend_error)?;
        entries
            .get(path)
            .cloned()
            .ok_or_else(|| BackendError::NotFound {
                path: path.to_string(),
            })
    }

    async fn probe(&self) -> Result<(), BackendError> {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || inner.entries().map(|_| ()))
            .await
            .map_err(|e| BackendError::Unavailable(format!("vault read task failed: {e}")))?
            .map_err(to_backend_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> FileConfig {
        FileConfig {
            path: dir.join("v.enc"),
            key_file: Some(dir.join("v.key")),
            passphrase_env: None,
            timeout: Duration::from_secs(5),
        }
    }

    fn v(s: &str) -> SecretValue {
        SecretValue::from_str_copy(s)
    }

    #[test]
    fn round_trip_maps_values_list_remove_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let vault = FileVault::open(&cfg(dir.path())).unwrap();
        assert_eq!(vault.get("app/db").unwrap(), None);
        vault
            .set("app/db", Some("password"), v("pw-secret-1"))
            .unwrap();
        vault.set("app/db", Some("user"), v("svc")).unwrap();
        vault.set("app/token", None, v("tok")).unwrap();
        let db = vault.get("app/db").unwrap().unwrap();
        assert_eq!(
            db.select(Some("password")).unwrap().expose(),
            b"pw-secret-1"
        );
        assert!(matches!(
            vault.set("app/token", Some("k"), v("x")),
            Err(FileVaultError::NotAMap(_))
        ));
        assert_eq!(
            vault.list().unwrap(),
            vec![
                (
                    "app/db".to_string(),
                    vec!["password".to_string(), "user".to_string()]
                ),
                ("app/token".to_string(), vec![])
            ]
        );
        // Reopen with the same key file.
        let again = FileVault::open(&cfg(dir.path())).unwrap();
        assert_eq!(
            again
                .get("app/token")
                .unwrap()
                .unwrap()
                .select(None)
                .unwrap()
                .expose(),
            b"tok"
        );
        assert!(again.remove("app/db", Some("password")).unwrap());
        assert!(!again.remove("app/db", Some("password")).unwrap());
        assert!(again.remove("app/db", Some("user")).unwrap());
        assert_eq!(again.get("app/db").unwrap(), None, "empty map removed");
        // Plaintext never on disk; key file is 0600.
        let raw = fs::read(dir.path().join("v.enc")).unwrap();
        assert!(!raw.windows(3).any(|w| w == b"tok"));
        let mode = fs::metadata(dir.path().join("v.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!format!("{vault:?}").contains("pw-secret"));
    }

    #[test]
    fn wrong_key_tampering_and_loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vault = FileVault::open(&cfg(dir.path())).unwrap();
        vault.set("a", None, v("value")).unwrap();
        // Another key file → "does not match".
        let mut other = cfg(dir.path());
        other.key_file = Some(dir.path().join("other.key"));
        let e = FileVault::open(&other).unwrap().get("a").unwrap_err();
        assert!(matches!(e, FileVaultError::Decrypt(_)), "{e}");
        assert!(e.to_string().contains("does not match"), "{e}");
        // Flip one ciphertext byte.
        let p = dir.path().join("v.enc");
        let mut raw = fs::read(&p).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&p, &raw).unwrap();
        assert!(matches!(vault.get("a"), Err(FileVaultError::Decrypt(_))));
        // Loose key file.
        let k = dir.path().join("v.key");
        fs::set_permissions(&k, fs::Permissions::from_mode(0o644)).unwrap();
        let e = FileVault::open(&cfg(dir.path())).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // Bad names.
        fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).unwrap();
        let ok = FileVault::open(&cfg(dir.path())).unwrap();
        for bad in ["../x", "a//b", "", "a b"] {
            assert!(
                matches!(ok.get(bad), Err(FileVaultError::BadName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        FileVault::open(&c)
            .unwrap()
            .set("init", None, v("x"))
            .unwrap();
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let vault = FileVault::open(&c).unwrap();
                    for i in 0..10 {
                        vault.set("p", Some(&format!("k{t}-{i}")), v("x")).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let keys = &FileVault::open(&c).unwrap().list().unwrap()[1].1;
        assert_eq!(keys.len(), 20, "{keys:?}");
    }

    #[tokio::test]
    async fn backend_fetch_and_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let vault = FileVault::open(&cfg(dir.path())).unwrap();
        vault.set("x", Some("k"), v("1")).unwrap();
        let b: &dyn SecretBackend = &vault;
        assert!(b.fetch("x").await.is_ok());
        assert_eq!(
            b.fetch("nope").await.unwrap_err(),
            BackendError::NotFound {
                path: "nope".into()
            }
        );
        // Picks up a change made by another writer.
        FileVault::open(&cfg(dir.path()))
            .unwrap()
            .set("y", None, v("2"))
            .unwrap();
        assert!(b.fetch("y").await.is_ok());
    }

    #[test]
    fn passphrase_variable_must_be_set() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileConfig {
            path: dir.path().join("v.enc"),
            key_file: None,
            passphrase_env: Some("DSO_UNIT_PASSPHRASE_UNSET".into()),
            timeout: Duration::from_secs(1),
        };
        let e = FileVault::open(&c).unwrap_err();
        assert!(e.to_string().contains("DSO_UNIT_PASSPHRASE_UNSET"), "{e}");
    }
}
