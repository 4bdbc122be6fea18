//! Secret-backend adapters, each implementing [`dso_actors::backend::SecretBackend`], and the
//! registry of provider types.
//!
//! The registry is [`ProviderKind`]: every place that depends on the type of a provider (its
//! name in the config, how its table is parsed, how its backend is built, the doctor's hint) is
//! an exhaustive `match` on it or on [`ProviderSpec`], so adding a backend is one new module and
//! one variant, and the compiler points at every arm still missing. Nothing here reads the
//! agent's configuration: `config` calls into this module, not the other way round.

use std::sync::Arc;
use std::time::Duration;

use dso_actors::backend::{BackendError, SecretBackend};
use dso_actors::provider::BackendFactory;
use serde::Serialize;

pub mod aws;
pub mod file;
pub mod process;
pub mod settings;
pub mod vault;
mod wire;

use aws::AwsConfig;
use file::FileConfig;
use process::ProcessConfig;
pub use settings::ProviderSettings;
use vault::VaultConfig;

/// The provider types, as written in `type = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// HashiCorp Vault / OpenBao KV.
    Vault,
    /// AWS Secrets Manager.
    Aws,
    /// The local encrypted vault.
    File,
    /// An external program speaking JSON-RPC on stdin/stdout.
    Process,
}

impl ProviderKind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::Vault,
        ProviderKind::Aws,
        ProviderKind::Process,
        ProviderKind::File,
    ];

    /// The `type` value that selects this kind.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Vault => "vault",
            ProviderKind::Aws => "aws",
            ProviderKind::File => "file",
            ProviderKind::Process => "process",
        }
    }

    /// The kind a `type` value names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The known `type` values, for an error: "`vault`, `aws`, `process` or `file`".
    pub fn known_names() -> String {
        let names: Vec<String> = Self::ALL
            .iter()
            .map(|k| format!("`{}`", k.name()))
            .collect();
        match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    /// Parses the type's own table (without `type` and the [`ProviderSettings`] keys); errors
    /// name their path below `prefix`.
    pub fn parse(self, table: toml::Value, prefix: &str) -> Result<ProviderSpec, String> {
        match self {
            ProviderKind::Vault => crate::de::at(table, prefix).map(ProviderSpec::Vault),
            ProviderKind::Aws => crate::de::at(table, prefix).map(ProviderSpec::Aws),
            ProviderKind::File => crate::de::at(table, prefix).map(ProviderSpec::File),
            ProviderKind::Process => crate::de::at(table, prefix).map(ProviderSpec::Process),
        }
    }

    /// What `dso doctor` suggests when the backend refuses the agent's credentials.
    pub fn credentials_hint(self) -> &'static str {
        match self {
            ProviderKind::Aws => "check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws/credentials profile, or the instance role) and the IAM policy (secretsmanager:GetSecretValue, DescribeSecret, ListSecrets)",
            ProviderKind::Process => "check the credentials the provider program uses (its env / pass_env)",
            ProviderKind::File => "check the key file / passphrase and its permissions",
            ProviderKind::Vault => "check the Vault token (token_env / token_file) or AppRole credentials and the policy",
        }
    }
}

/// The settings of one provider type (its table without `type` and [`ProviderSettings`]).
// Parsed once per config load: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ProviderSpec {
    /// `type = "vault"`.
    Vault(VaultConfig),
    /// `type = "aws"`.
    Aws(AwsConfig),
    /// `type = "file"`.
    File(FileConfig),
    /// `type = "process"`.
    Process(ProcessConfig),
}

impl ProviderSpec {
    /// Which type this is.
    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderSpec::Vault(_) => ProviderKind::Vault,
            ProviderSpec::Aws(_) => ProviderKind::Aws,
            ProviderSpec::File(_) => ProviderKind::File,
            ProviderSpec::Process(_) => ProviderKind::Process,
        }
    }

    /// The type's own semantic problems, each `PREFIX.field: what is wrong and what to do`.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        match self {
            ProviderSpec::Vault(c) => c.validate(prefix),
            ProviderSpec::Aws(c) => c.validate(prefix),
            ProviderSpec::File(c) => c.validate(prefix),
            ProviderSpec::Process(c) => c.validate(prefix),
        }
    }
}

/// One `[providers.<name>]` table: the type's settings and the ones every provider has.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderConfig {
    /// `type` and the type's own keys.
    #[serde(flatten)]
    pub spec: ProviderSpec,
    /// `timeout`, `refresh_interval`, `rate_limit`, `burst`.
    #[serde(flatten)]
    pub settings: ProviderSettings,
}

impl ProviderConfig {
    /// A provider with the default common settings.
    pub fn new(spec: ProviderSpec) -> Self {
        Self {
            spec,
            settings: ProviderSettings::default(),
        }
    }

    /// Parses one `[providers.<name>]` table; every problem names its path below `prefix`.
    pub fn parse(mut table: toml::Table, prefix: &str) -> Result<Self, Vec<String>> {
        let ty = table.remove("type");
        let settings = ProviderSettings::take_from(&mut table);
        let known = ProviderKind::known_names();
        let kind = match ty.as_ref().and_then(|t| t.as_str()) {
            Some(name) => ProviderKind::from_name(name).ok_or_else(|| {
                format!("{prefix}.type: unknown provider type `{name}` (expected {known})")
            }),
            None => Err(format!("{prefix}.type: missing; set `type` to {known}")),
        };
        let kind = kind.map_err(|e| vec![e])?;
        let spec = kind.parse(toml::Value::Table(table), prefix);
        let settings = crate::de::at::<ProviderSettings>(toml::Value::Table(settings), prefix);
        match (spec, settings) {
            (Ok(spec), Ok(settings)) => Ok(Self { spec, settings }),
            (spec, settings) => Err(spec.err().into_iter().chain(settings.err()).collect()),
        }
    }

    /// Which type this is.
    pub fn kind(&self) -> ProviderKind {
        self.spec.kind()
    }

    /// The `type` of this provider, as written in the config.
    pub fn type_name(&self) -> &'static str {
        self.kind().name()
    }

    /// Every semantic problem, each `PREFIX.field: what is wrong and what to do`.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut p = self.settings.validate(prefix);
        p.extend(self.spec.validate(prefix));
        p
    }

    /// Per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Token bucket (requests per second, burst); None when unlimited.
    pub fn rate_limit(&self) -> Option<(f64, u32)> {
        self.settings.rate()
    }

    /// How often secrets in use are re-checked (`"0s"`: never).
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.settings.refresh()
    }
}

/// How the ProviderConnection named `name` builds (and, after failures, rebuilds) its backend.
pub fn factory(name: &str, p: &ProviderConfig) -> BackendFactory {
    let name = name.to_string();
    let timeout = p.timeout();
    match p.spec.clone() {
        ProviderSpec::Vault(v) => Arc::new(move || {
            vault::VaultBackend::new(&v, timeout).map(|b| Arc::new(b) as Arc<dyn SecretBackend>)
        }),
        ProviderSpec::File(f) => Arc::new(move || {
            file::FileVault::open(&f)
                .map(|b| Arc::new(b) as Arc<dyn SecretBackend>)
                .map_err(|e| BackendError::Config(e.to_string()))
        }),
        ProviderSpec::Aws(a) => Arc::new(move || {
            aws::AwsBackend::new(&a, timeout).map(|b| Arc::new(b) as Arc<dyn SecretBackend>)
        }),
        ProviderSpec::Process(p) => Arc::new(move || {
            process::ProcessBackend::new(&name, &p, timeout)
                .map(|b| Arc::new(b) as Arc<dyn SecretBackend>)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for k in ProviderKind::ALL {
            assert_eq!(ProviderKind::from_name(k.name()), Some(k));
        }
        assert_eq!(
            ProviderKind::known_names(),
            "`vault`, `aws`, `process` or `file`"
        );
    }

    /// `config` depends on the providers, never the other way round.
    #[test]
    fn no_provider_source_imports_config() {
        fn walk(dir: &std::path::Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    if text.contains(&["crate", "::config"].concat()) {
                        found.push(path.display().to_string());
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/providers"),
            &mut found,
        );
        assert!(
            found.is_empty(),
            "these import the config module: {found:?}"
        );
    }

    #[test]
    fn common_settings_are_taken_out_of_the_table() {
        let t: toml::Table =
            toml::from_str("type = \"file\"\ntimeout = \"5s\"\nburst = 3\nkey_file = \"/k\"")
                .unwrap();
        let p = ProviderConfig::parse(t, "providers.x").unwrap();
        assert_eq!(p.kind(), ProviderKind::File);
        assert_eq!(p.timeout(), Duration::from_secs(5));
        assert_eq!(p.settings.burst, 3);
        let t: toml::Table = toml::from_str("type = \"file\"\ntimeout = \"0s\"").unwrap();
        let p = ProviderConfig::parse(t, "providers.x").unwrap();
        assert_eq!(
            p.validate("providers.x"),
            ["providers.x.timeout: must be more than zero: write it like \"30s\""]
        );
        let back = toml::to_string(&p).unwrap();
        assert!(
            back.contains("type = \"file\"") && back.contains("timeout = \"0s\""),
            "{back}"
        );
    }
}
