//! The `process` provider's configuration and its checks.

use super::*;

/// Configuration of a `process` provider.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The program to run: an absolute path to an executable file.
    pub command: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables given to the program (its environment is otherwise cleared, except
    /// `PATH`, which is DSO's unless set here). Values are not shown in `Debug` output.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of DSO's own environment variables passed through to the program (e.g. a token the
    /// provider needs, so it stays out of the config file). A name that is not set is skipped.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Longest answer line accepted from the program, in bytes (default 1 MiB). A longer line
    /// breaks the connection.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

impl fmt::Debug for ProcessConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessConfig")
            .field("command", &self.command)
            .field("args", &self.args)
            // Values may be credentials: names only.
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("pass_env", &self.pass_env)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

pub(super) fn default_max_response_bytes() -> usize {
    DEFAULT_MAX_RESPONSE_BYTES
}

/// True for a usable environment variable name (non-empty, no `=` or NUL).
pub(super) fn valid_env_name(name: &str) -> bool {
    !name.trim().is_empty() && !name.contains('=') && !name.contains('\0')
}

impl ProcessConfig {
    /// Every semantic problem, each `PREFIX.field: what is wrong and what to do`.
    ///
    /// Checks: `command` is an absolute path to an existing executable file; `args`, `env` and
    /// `pass_env` hold no NUL bytes and valid variable names; `max_response_bytes` is between 1 and
    /// 256 MiB; `timeout` is not zero. Does not run the program.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errs = Vec::new();
        if let Err(e) = check_command(&self.command) {
            errs.push(format!("{prefix}.command: {e}"));
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            errs.push(format!(
                "{prefix}.args: an argument contains a NUL byte, which cannot be passed to a \
                 program: remove it"
            ));
        }
        for (name, value) in &self.env {
            if !valid_env_name(name) {
                errs.push(format!(
                    "{prefix}.env: `{}` is not a valid environment variable name: use a \
                     non-empty name without `=`",
                    name.escape_debug()
                ));
            }
            if value.contains('\0') {
                errs.push(format!(
                    "{prefix}.env: the value of `{name}` contains a NUL byte: remove it"
                ));
            }
        }
        for name in &self.pass_env {
            if !valid_env_name(name) {
                errs.push(format!(
                    "{prefix}.pass_env: `{}` is not a valid environment variable name: list \
                     names like \"MY_PROVIDER_TOKEN\"",
                    name.escape_debug()
                ));
            }
        }
        if self.max_response_bytes == 0 || self.max_response_bytes > MAX_MAX_RESPONSE_BYTES {
            errs.push(format!(
                "{prefix}.max_response_bytes: must be between 1 and {MAX_MAX_RESPONSE_BYTES} \
                 (got {}): the default 1048576 (1 MiB) fits most secrets",
                self.max_response_bytes
            ));
        }
        errs
    }
}

/// Checks that `command` is an absolute path to an executable regular file.
pub(super) fn check_command(command: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = command.display();
    if command.as_os_str().is_empty() {
        return Err(
            "is empty: give the absolute path of the provider program, e.g. \
             \"/usr/local/bin/my-provider\""
                .into(),
        );
    }
    if !command.is_absolute() {
        return Err(format!(
            "`{shown}` is not an absolute path: write the full path of the program, e.g. \
             \"/usr/local/bin/{shown}\" (the program's PATH is not searched)"
        ));
    }
    let meta = std::fs::metadata(command).map_err(|e| {
        format!(
            "`{shown}` cannot be used ({e}): install the provider program there or fix the path"
        )
    })?;
    if !meta.is_file() {
        return Err(format!(
            "`{shown}` is not a regular file: point it at the provider program itself"
        ));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "`{shown}` is not executable: `chmod +x {shown}`, or set command to its \
             interpreter (e.g. \"/usr/bin/python3\") and put the script in args"
        ));
    }
    Ok(())
}
