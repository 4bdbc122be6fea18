//! The embedded local encrypted vault (`type = "file"` provider).
//!
//! Secrets live in one encrypted file on the host. Each secret path holds either a single value
//! or a map of key → value ([`SecretData`]). The CLI writes it through [`FileVault::set`] and
//! [`FileVault::remove`]; the agent reads it through the [`SecretBackend`] impl.
//!
//! # Key material
//!
//! The encryption key is derived with Argon2id from either a key file (random bytes, created with
//! mode 0600 holding 32 random bytes on first use; refused when group or other may read or write
//! it) or a passphrase taken from an environment variable (`passphrase_env`).
//!
//! # On-disk format (version 1)
//!
//! Three `\n`-terminated lines:
//!
//! ```text
//! dso-vault 1
//! {"kdf":"argon2id","m_kib":19456,"t":2,"p":1,"salt":"<b64>","cipher":"aes-256-gcm","nonce":"<b64>"}
//! <base64 of AES-256-GCM ciphertext || 16-byte tag>
//! ```
//!
//! * Line 1 is the magic and format version.
//! * Line 2 is the header (compact JSON, standard base64 with padding): the Argon2id parameters
//!   (memory in KiB, iterations, lanes), the salt (16 random bytes, kept across writes of the same
//!   vault so the derived key can be cached) and the 96-bit nonce (fresh and random on every write).
//! * Line 3 is the ciphertext. The exact bytes of lines 1 and 2 (newlines included) are the
//!   associated data, so the header cannot be altered without failing authentication.
//!
//! The plaintext is JSON: `{"secrets":{"<path>":{"value":"<b64>"}|{"map":{"<key>":"<b64>"}}}}`,
//! values being base64 of the raw bytes. Every plaintext buffer is [`Zeroizing`].
//!
//! # Writes
//!
//! Read-modify-write runs under an exclusive `flock` on `<path>.lock`; the new file is written
//! to `<path>.tmp-<pid>` (mode 0600) in the same directory, fsynced and renamed over the vault.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dso_actors::backend::{BackendError, SecretBackend};
use dso_actors::secret::{SecretData, SecretValue};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, Zeroizing};

/// Default location of the encrypted vault file.
pub const DEFAULT_PATH: &str = "/var/lib/dso/vault.enc";
/// Default location of the key file (used when `passphrase_env` is not set).
pub const DEFAULT_KEY_FILE: &str = "/var/lib/dso/vault.key";

const MAGIC: &str = "dso-vault";
const FORMAT_VERSION: &str = "1";
const KDF_NAME: &str = "argon2id";
const CIPHER_NAME: &str = "aes-256-gcm";
const KDF_M_KIB: u32 = 19_456;
const KDF_T: u32 = 2;
const KDF_P: u32 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_FILE_LEN: usize = 32;
/// Upper bounds accepted from a vault header, checked before any work or allocation (a damaged or
/// planted file must not make the agent allocate gigabytes or spin for minutes). DSO writes
/// 19456 KiB / 2 / 1; these leave room for stronger parameters.
const MAX_M_KIB: u32 = 256 * 1024;
const MAX_T: u32 = 16;
const MAX_P: u32 = 16;
/// Longest header line (the JSON of parameters, salt and nonce is about 150 bytes).
const MAX_HEADER_LEN: usize = 1024;

fn default_path() -> PathBuf {
    PathBuf::from(DEFAULT_PATH)
}

/// Configuration of a `type = "file"` provider.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Encrypted vault file. Default `/var/lib/dso/vault.enc`.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Key file (random bytes; created 0600 with 32 random bytes on first use if missing, parent
    /// directory created 0700). Default `/var/lib/dso/vault.key` unless `passphrase_env` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name of an environment variable holding a passphrase, used instead of the key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_env: Option<String>,
    /// Per-request timeout, default 30s.
    #[serde(
        default = "crate::config::default_provider_timeout",
        with = "crate::config::duration"
    )]
    pub timeout: Duration,
    /// How often secrets in use are re-checked for changes, default `1m` (±10 % jitter).
    #[serde(
        default = "crate::config::default_refresh_interval",
        with = "crate::config::duration"
    )]
    pub refresh_interval: Duration,
    /// Most backend requests per second (token bucket; 0: unlimited). Default 100.
    #[serde(default = "crate::config::default_rate_limit")]
    pub rate_limit: f64,
    /// Requests allowed at once above the rate (bucket size). Default 50.
    #[serde(default = "crate::config::default_burst")]
    pub burst: u32,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            path: default_path(),
            key_file: None,
            passphrase_env: None,
            timeout: crate::config::default_provider_timeout(),
            refresh_interval: crate::config::default_refresh_interval(),
            rate_limit: crate::config::default_rate_limit(),
            burst: crate::config::default_burst(),
        }
    }
}

impl FileConfig {
    /// Semantic problems, each `PREFIX.field: what is wrong and what to do`
    /// (e.g. prefix `providers.local`). Empty when the configuration is usable.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errs = Vec::new();
        if self.path.as_os_str().is_empty() {
            errs.push(format!(
                "{prefix}.path: is empty; set it to the vault file, e.g. \"{DEFAULT_PATH}\""
            ));
        } else if !self.path.is_absolute() {
            errs.push(format!(
                "{prefix}.path: `{}` is relative; use an absolute path, e.g. \"{DEFAULT_PATH}\"",
                self.path.display()
            ));
        } else if self.path.file_name().is_none() {
            errs.push(format!(
                "{prefix}.path: `{}` does not name a file; add a file name, e.g. \"{DEFAULT_PATH}\"",
                self.path.display()
            ));
        }
        if let Some(k) = &self.key_file {
            if k.as_os_str().is_empty() {
                errs.push(format!(
                    "{prefix}.key_file: is empty; remove it to use \"{DEFAULT_KEY_FILE}\" or name a file"
                ));
            } else if !k.is_absolute() {
                errs.push(format!(
                    "{prefix}.key_file: `{}` is relative; use an absolute path",
                    k.display()
                ));
            } else if k.file_name().is_none() {
                errs.push(format!(
                    "{prefix}.key_file: `{}` does not name a file; add a file name",
                    k.display()
                ));
            } else if *k == self.path {
                errs.push(format!(
                    "{prefix}.key_file: is the same file as {prefix}.path; keep the key in a separate file"
                ));
            }
            if self.passphrase_env.is_some() {
                errs.push(format!(
                    "{prefix}.passphrase_env: set either key_file or passphrase_env, not both; remove one of them"
                ));
            }
        }
        if let Some(var) = &self.passphrase_env {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                errs.push(format!(
                    "{prefix}.passphrase_env: `{var}` is not a valid environment variable name; use a name such as \"DSO_VAULT_PASSPHRASE\""
                ));
            }
        }
        if self.timeout.is_zero() {
            errs.push(format!(
                "{prefix}.timeout: must be greater than zero; write it like \"30s\""
            ));
        }
        errs
    }

    /// The key file in effect: the explicit `key_file`, or [`DEFAULT_KEY_FILE`] when no
    /// `passphrase_env` is set. `None` when a passphrase is used.
    pub fn effective_key_file(&self) -> Option<PathBuf> {
        match (&self.key_file, &self.passphrase_env) {
            (Some(k), _) => Some(k.clone()),
            (None, None) => Some(PathBuf::from(DEFAULT_KEY_FILE)),
            (None, Some(_)) => None,
        }
    }
}

/// Everything that can go wrong with the file vault. Messages name the file involved and say
/// what to do; none of them ever contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum FileVaultError {
    /// The provider configuration cannot be used as it is.
    #[error("file vault {file}: {message}")]
    Config {
        /// The vault file.
        file: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A file-system operation failed (the vault file, its lock or temp file, or the key file).
    #[error(
        "cannot {action} {file}: {cause}; check that the path exists and that dso may access it"
    )]
    Io {
        /// The file the operation was about.
        file: PathBuf,
        /// What was being done, e.g. "read vault file".
        action: &'static str,
        /// The underlying error (shown in the message, so not also a `source()`).
        cause: io::Error,
    },
    /// The key file is readable or writable by group or other.
    #[error("key file {file} has mode {mode:03o}, which lets group or other read or write it; run `chmod 600 {file}`")]
    KeyFilePermissions {
        /// The key file.
        file: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file belongs to another user than the one running DSO.
    #[error("key file {file} is owned by uid {uid}, not by the uid dso runs as ({agent_uid}); run `chown {agent_uid} {file}` if it is the right key")]
    KeyFileOwner {
        /// The key file.
        file: PathBuf,
        /// Its owner.
        uid: u32,
        /// The effective uid of this process.
        agent_uid: u32,
    },
    /// The key file is not a usable regular file with content.
    #[error("key file {file} {problem}; restore the key file the vault was written with (or remove it to have a new random key created, if no vault uses it yet)")]
    KeyFileInvalid {
        /// The key file.
        file: PathBuf,
        /// What is wrong ("is empty", "is not a regular file").
        problem: &'static str,
    },
    /// The passphrase environment variable is unset or empty.
    #[error("environment variable {var} (passphrase_env of vault {file}) is unset or empty; export the vault passphrase in it before running dso")]
    PassphraseUnset {
        /// The variable name.
        var: String,
        /// The vault file.
        file: PathBuf,
    },
    /// The vault file is not in the expected format (damaged, truncated or not a vault).
    #[error(
        "vault file {file} is damaged or not a dso vault ({reason}); restore it from a backup"
    )]
    Corrupt {
        /// The vault file.
        file: PathBuf,
        /// What did not parse.
        reason: String,
    },
    /// The vault file was written in a format version this build does not read.
    #[error("vault file {file} has format version {version}, this dso reads version {FORMAT_VERSION}; upgrade dso")]
    UnsupportedVersion {
        /// The vault file.
        file: PathBuf,
        /// The version found in the file.
        version: String,
    },
    /// Authenticated decryption failed: wrong key or passphrase, or the file was modified.
    #[error("cannot decrypt vault file {file}: the key file or passphrase does not match the vault file (or the file was modified); use the key or passphrase it was written with, or restore the file from a backup")]
    Decrypt {
        /// The vault file.
        file: PathBuf,
    },
    /// Key derivation, encryption or the system random source failed.
    #[error("crypto failure for vault file {file}: {reason}; check the header parameters and the system random source")]
    Crypto {
        /// The vault file.
        file: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A secret path was refused.
    #[error("invalid secret path `{input}` for vault {file}: {reason}; use segments of [A-Za-z0-9._@+=,-] separated by `/`")]
    InvalidPath {
        /// The vault file.
        file: PathBuf,
        /// The path as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key name was refused.
    #[error(
        "invalid key `{key}` for vault {file}: {reason}; use a non-empty name without `#` or `/`"
    )]
    InvalidKey {
        /// The vault file.
        file: PathBuf,
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key was given but the path holds a single value, not a map.
    #[error("secret `{path}` in vault file {file} holds a single value, not a key map; remove it first or address it without a key")]
    NotAMap {
        /// The vault file.
        file: PathBuf,
        /// The secret path.
        path: String,
    },
}

impl FileVaultError {
    /// The [`BackendError`] the agent reports for this error while fetching `path`.
    pub fn into_backend(self, path: &str) -> BackendError {
        match self {
            FileVaultError::Decrypt { .. } => BackendError::Denied(self.to_string()),
            FileVaultError::Io { .. }
            | FileVaultError::Corrupt { .. }
            | FileVaultError::UnsupportedVersion { .. }
            | FileVaultError::Crypto { .. } => BackendError::Unavailable(self.to_string()),
            FileVaultError::InvalidPath { .. } | FileVaultError::InvalidKey { .. } => {
                BackendError::NotFound {
                    path: path.to_string(),
                }
            }
            FileVaultError::Config { .. }
            | FileVaultError::KeyFilePermissions { .. }
            | FileVaultError::KeyFileOwner { .. }
            | FileVaultError::KeyFileInvalid { .. }
            | FileVaultError::PassphraseUnset { .. }
            | FileVaultError::NotAMap { .. } => BackendError::Config(self.to_string()),
        }
    }
}

/// Where the key material came from (shown in `Debug`; never the material itself).
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    KeyFile(PathBuf),
    Env(String),
}

/// Argon2id parameters as stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KdfParams {
    m_kib: u32,
    t: u32,
    p: u32,
}

impl KdfParams {
    const DEFAULT: KdfParams = KdfParams {
        m_kib: KDF_M_KIB,
        t: KDF_T,
        p: KDF_P,
    };
}

/// The salt and parameters of an existing vault (kept across writes).
#[derive(Debug, Clone, PartialEq, Eq)]
struct KdfInfo {
    salt: Vec<u8>,
    params: KdfParams,
}

/// An Argon2id output, cached for the salt/parameters it was derived with.
struct DerivedKey {
    info: KdfInfo,
    key: Zeroizing<[u8; 32]>,
}

/// Identity of the vault file's content: every write renames a new inode into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(md: &fs::Metadata) -> Self {
        Self {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Never,
    Absent,
    File(Stamp),
}

/// The decrypted vault as last read. `SecretValue`s are zeroized on drop.
struct Loaded {
    seen: Seen,
    kdf: Option<KdfInfo>,
    secrets: BTreeMap<String, SecretData>,
}

struct State {
    loaded: Loaded,
    key: Option<DerivedKey>,
}

struct Inner {
    file: PathBuf,
    lock_file: PathBuf,
    source: KeySource,
    secret: Zeroizing<Vec<u8>>,
    state: Mutex<State>,
}

/// The local encrypted vault. Cheap to clone (clones share the decrypted cache).
/// `Debug` shows the file and where the key comes from, never key material or values.
#[derive(Clone)]
pub struct FileVault {
    inner: Arc<Inner>,
}

impl fmt::Debug for FileVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("FileVault");
        d.field("path", &self.inner.file);
        match &self.inner.source {
            KeySource::KeyFile(p) => d.field("key_file", p),
            KeySource::Env(v) => d.field("passphrase_env", v),
        };
        d.finish_non_exhaustive()
    }
}

fn io_err<'a>(
    file: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> FileVaultError + 'a {
    move |cause| FileVaultError::Io {
        file: file.to_path_buf(),
        action,
        cause,
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn create_dir_0700(dir: &Path) -> Result<(), FileVaultError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir, "create directory"))
}

fn sync_dir(dir: &Path) -> Result<(), FileVaultError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

fn random_bytes(buf: &mut [u8], file: &Path) -> Result<(), FileVaultError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| FileVaultError::Crypto {
            file: file.to_path_buf(),
            reason: format!("system random source failed: {e}"),
        })
}

/// Writes `bytes` to a fresh `<target>.tmp-<pid>` (mode 0600) and fsyncs it; returns its path.
fn write_temp(target: &Path, bytes: &[u8]) -> Result<(PathBuf, Stamp), FileVaultError> {
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
fn check_path(file: &Path, input: &str) -> Result<(), FileVaultError> {
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

fn check_key(file: &Path, key: &str) -> Result<(), FileVaultError> {
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
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileVaultError> {
    // O_NOFOLLOW: a symlink planted at the key file's path is refused, never followed.
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(FileVaultError::KeyFileInvalid {
                file: path.to_path_buf(),
                problem: "is a symlink (never followed: a key file must be the file itself)",
            })
        }
        Err(e) => return Err(io_err(path, "open key file")(e)),
    };
    let md = f.metadata().map_err(io_err(path, "stat key file"))?;
    if !md.is_file() {
        return Err(FileVaultError::KeyFileInvalid {
            file: path.to_path_buf(),
            problem: "is not a regular file",
        });
    }
    // Owned by whoever runs DSO: a file another user owns, they can replace or read.
    let me = rustix::process::geteuid().as_raw();
    if md.uid() != me {
        return Err(FileVaultError::KeyFileOwner {
            file: path.to_path_buf(),
            uid: md.uid(),
            agent_uid: me,
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
fn create_key_file(path: &Path) -> Result<(), FileVaultError> {
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

/// The vault header (line 2 of the file).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    kdf: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
    cipher: String,
    nonce: String,
}

/// A parsed (still encrypted) vault file.
struct Parsed<'a> {
    aad: &'a [u8],
    kdf: KdfInfo,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

fn parse_file<'a>(file: &Path, bytes: &'a [u8]) -> Result<Parsed<'a>, FileVaultError> {
    let corrupt = |reason: &str| FileVaultError::Corrupt {
        file: file.to_path_buf(),
        reason: reason.to_string(),
    };
    let nl1 = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("missing the `dso-vault 1` first line"))?;
    let magic_line = std::str::from_utf8(&bytes[..nl1])
        .map_err(|_| corrupt("missing the `dso-vault 1` first line"))?;
    let version = magic_line
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| corrupt("missing the `dso-vault 1` first line"))?;
    if version != FORMAT_VERSION {
        return Err(FileVaultError::UnsupportedVersion {
            file: file.to_path_buf(),
            version: version.chars().take(32).collect(),
        });
    }
    let rest = &bytes[nl1 + 1..];
    let nl2 = rest
        .iter()
        .take(MAX_HEADER_LEN + 1)
        .position(|b| *b == b'\n')
        .ok_or_else(|| {
            if rest.len() > MAX_HEADER_LEN {
                corrupt(&format!(
                    "the header line is over the limit of {MAX_HEADER_LEN} bytes"
                ))
            } else {
                corrupt("truncated after the header")
            }
        })?;
    let header: Header =
        serde_json::from_slice(&rest[..nl2]).map_err(|e| corrupt(&format!("bad header: {e}")))?;
    let aad = &bytes[..nl1 + 1 + nl2 + 1];
    if header.kdf != KDF_NAME {
        return Err(corrupt(&format!("unknown kdf `{}`", header.kdf)));
    }
    if header.cipher != CIPHER_NAME {
        return Err(corrupt(&format!("unknown cipher `{}`", header.cipher)));
    }
    let params = KdfParams {
        m_kib: header.m_kib,
        t: header.t,
        p: header.p,
    };
    for (field, value, max) in [
        ("m_kib", params.m_kib, MAX_M_KIB),
        ("t", params.t, MAX_T),
        ("p", params.p, MAX_P),
    ] {
        if value > max || value == 0 {
            return Err(corrupt(&format!(
                "Argon2 parameter {field} = {value} is out of range (1 to the limit of {max})"
            )));
        }
    }
    let salt = B64
        .decode(&header.salt)
        .map_err(|_| corrupt("salt is not base64"))?;
    if !(8..=64).contains(&salt.len()) {
        return Err(corrupt("salt length out of range"));
    }
    let nonce: [u8; NONCE_LEN] = B64
        .decode(&header.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| corrupt("nonce is not 12 base64 bytes"))?;
    let mut body = &rest[nl2 + 1..];
    body = body.strip_suffix(b"\n").unwrap_or(body);
    if body.contains(&b'\n') {
        return Err(corrupt("unexpected data after the ciphertext line"));
    }
    let ciphertext = B64
        .decode(body)
        .map_err(|_| corrupt("ciphertext is not base64"))?;
    if ciphertext.len() < TAG_LEN {
        return Err(corrupt("ciphertext is truncated"));
    }
    Ok(Parsed {
        aad,
        kdf: KdfInfo { salt, params },
        nonce,
        ciphertext,
    })
}

// ---- plaintext (de)serialization; values never pass through an unzeroized String ----

struct PlainOut<'a>(&'a BTreeMap<String, SecretData>);
struct SecretsOut<'a>(&'a BTreeMap<String, SecretData>);
struct EntryOut<'a>(&'a SecretData);
struct KeysOut<'a>(&'a BTreeMap<String, SecretValue>);
struct B64Out<'a>(&'a SecretValue);

impl Serialize for PlainOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("secrets", &SecretsOut(self.0))?;
        m.end()
    }
}

impl Serialize for SecretsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (path, data) in self.0 {
            m.serialize_entry(path, &EntryOut(data))?;
        }
        m.end()
    }
}

impl Serialize for EntryOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self.0 {
            SecretData::Value(v) => m.serialize_entry("value", &B64Out(v))?,
            SecretData::Map(keys) => m.serialize_entry("map", &KeysOut(keys))?,
        }
        m.end()
    }
}

impl Serialize for KeysOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, &B64Out(v))?;
        }
        m.end()
    }
}

impl Serialize for B64Out<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = base64::encoded_len(self.0.len(), true).unwrap_or(0);
        let mut enc = Zeroizing::new(String::with_capacity(len));
        B64.encode_string(self.0.expose(), &mut enc);
        s.serialize_str(&enc)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainIn {
    secrets: BTreeMap<String, EntryIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum EntryIn {
    Value(B64In),
    Map(BTreeMap<String, B64In>),
}

/// A base64 value decoded straight from the (zeroized) plaintext buffer.
struct B64In(SecretValue);

impl<'de> Deserialize<'de> for B64In {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = B64In;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<B64In, E> {
                B64.decode(s)
                    .map(|b| B64In(SecretValue::new(b)))
                    .map_err(|_| E::custom("invalid base64 value"))
            }
        }
        d.deserialize_str(V)
    }
}

/// An `io::Write` sink whose every buffer (including ones outgrown) is wiped.
struct ZeroizingWriter(Zeroizing<Vec<u8>>);

impl Write for ZeroizingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let need = self.0.len() + buf.len();
        if need > self.0.capacity() {
            let cap = need.max(self.0.capacity() * 2).max(1024);
            let mut bigger = Zeroizing::new(Vec::with_capacity(cap));
            bigger.extend_from_slice(&self.0);
            self.0 = bigger; // the old buffer is zeroized on drop
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Holds an exclusive `flock` until dropped (closing the descriptor releases it).
struct LockGuard {
    _file: File,
}

fn lock_exclusive(path: &Path) -> Result<LockGuard, FileVaultError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path, "open lock file"))?;
    loop {
        // SAFETY: flock on a descriptor we own and keep open for the guard's lifetime.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(LockGuard { _file: f });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(io_err(path, "lock")(e));
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is only ever replaced whole, so a poisoned lock still holds a consistent value.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An AES-256-GCM cipher for this salt/parameters, deriving (and caching) the key if needed.
    fn cipher(
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
    fn refresh<'s>(&self, st: &'s mut State) -> Result<&'s Loaded, FileVaultError> {
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

    fn get(&self, path: &str) -> Result<Option<SecretData>, FileVaultError> {
        check_path(&self.file, path)?;
        let mut st = self.state();
        Ok(self.refresh(&mut st)?.secrets.get(path).cloned())
    }

    fn list(&self) -> Result<Vec<(String, Vec<String>)>, FileVaultError> {
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
    fn modify<T>(
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

    fn encrypt(
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

    fn with_secret(path: &Path, source: KeySource, secret: Zeroizing<Vec<u8>>) -> Self {
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

#[cfg(test)]
mod tests {
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
        assert!(bytes
            .starts_with(b"dso-vault 1\n{\"kdf\":\"argon2id\",\"m_kib\":19456,\"t\":2,\"p\":1,"));
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
        assert_eq!(d.timeout, Duration::from_secs(30));
        assert_eq!(
            d.effective_key_file(),
            Some(PathBuf::from(DEFAULT_KEY_FILE))
        );
        assert!(d.validate("providers.local").is_empty());
        let t: FileConfig = serde_json::from_str(r#"{"timeout":"5s","key_file":"/k"}"#).unwrap();
        assert_eq!(t.timeout, Duration::from_secs(5));
        assert_eq!(t.effective_key_file(), Some(PathBuf::from("/k")));
        assert!(serde_json::from_str::<FileConfig>(r#"{"nope":1}"#).is_err());
        let back: FileConfig = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);

        let bad = FileConfig {
            path: PathBuf::from("rel/vault.enc"),
            key_file: Some(PathBuf::from("/k")),
            passphrase_env: Some("A=B".to_string()),
            timeout: Duration::ZERO,
            refresh_interval: Duration::from_secs(60),
            rate_limit: crate::config::default_rate_limit(),
            burst: crate::config::default_burst(),
        };
        let errs = bad.validate("providers.local");
        assert_eq!(errs.len(), 4, "{errs:?}");
        for field in ["path", "passphrase_env", "timeout"] {
            assert!(
                errs.iter()
                    .any(|e| e.starts_with(&format!("providers.local.{field}: "))),
                "{errs:?}"
            );
        }
    }
}
