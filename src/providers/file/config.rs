//! The `file` provider's configuration and its checks.

use super::*;

pub(super) fn default_path() -> PathBuf {
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
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            path: default_path(),
            key_file: None,
            passphrase_env: None,
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
