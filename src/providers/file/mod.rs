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
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

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

mod config;
mod format;
mod store;
pub use config::*;
use format::*;
pub use store::*;

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
/// Upper bounds accepted from a vault header (to refuse absurd work factors in a damaged file).
const MAX_M_KIB: u32 = 4 * 1024 * 1024;
const MAX_T: u32 = 64;
const MAX_P: u32 = 64;

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

#[cfg(test)]
mod tests;
