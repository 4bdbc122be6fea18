//! `dso run`: resolve `dso://<provider>/<path>[#<key>]` references in the environment, then exec a
//! command with the values.
//!
//! Environment variables cannot change inside a running container and show in `docker inspect`, so
//! file injection stays the recommended way; this is for programs (and `docker compose` files) that
//! only read the environment. Resolution goes through the running agent's admin socket when one
//! answers (shared cache, one backend connection) and to the backends directly otherwise. Every
//! reference is resolved before the command starts; nothing is written to a file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use dso_actors::backend::SecretBackend;
use dso_actors::secret::{SecretRef, SecretValue};
use zeroize::Zeroize;

use crate::admin::{self, AdminClientError};
use crate::config::Config;
use crate::resolve_proto::{self, ResolveAnswer, ResolveRequest, MAX_REFS};

/// The scheme that marks a reference.
pub const SCHEME: &str = "dso://";

/// One environment variable whose value is a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRef {
    /// The variable's name.
    pub var: String,
    /// The reference as written (`dso://…`).
    pub raw: String,
    /// The parsed reference.
    pub source: SecretRef,
}

/// Why a reference could not be resolved. Every variant names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The value starts with `dso://` but is not a valid reference.
    #[error(
        "{var}: `{raw}` is not a valid reference: {reason} (write dso://<provider>/<path>[#<key>])"
    )]
    BadReference {
        /// Variable name.
        var: String,
        /// Its value (a reference, never a secret).
        raw: String,
        /// What is wrong.
        reason: String,
    },
    /// The backend (or the agent) could not give the value.
    #[error("{var}: cannot resolve `{raw}`: {reason}")]
    Unresolved {
        /// Variable name.
        var: String,
        /// The reference.
        raw: String,
        /// Why (never a value).
        reason: String,
        /// True when the secret or key does not exist.
        not_found: bool,
    },
    /// The value holds a NUL byte, which an environment variable cannot carry.
    #[error("{var}: the value of `{raw}` contains a NUL byte and cannot be passed in the environment; inject it as a file instead")]
    NulByte {
        /// Variable name.
        var: String,
        /// The reference.
        raw: String,
    },
    /// More references than [`MAX_REFS`].
    #[error("{0} dso:// references in the environment; the limit is {MAX_REFS}")]
    TooMany(usize),
}

impl RunError {
    /// True when the secret (or its key) does not exist, as opposed to a backend failure.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RunError::Unresolved {
                not_found: true,
                ..
            }
        )
    }
}

/// Finds every variable whose value starts with `dso://`; invalid references are errors.
pub fn find_refs(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> (Vec<EnvRef>, Vec<RunError>) {
    let mut refs = Vec::new();
    let mut errors = Vec::new();
    for (k, v) in vars {
        let Some(v) = v.to_str() else { continue };
        let Some(rest) = v.strip_prefix(SCHEME) else {
            continue;
        };
        let var = k.to_string_lossy().into_owned();
        match rest.parse::<SecretRef>() {
            Ok(source) => refs.push(EnvRef {
                var,
                raw: v.to_string(),
                source,
            }),
            Err(e) => errors.push(RunError::BadReference {
                var,
                raw: v.to_string(),
                reason: e.to_string(),
            }),
        }
    }
    refs.sort_by(|a, b| a.var.cmp(&b.var));
    if refs.len() > MAX_REFS {
        errors.push(RunError::TooMany(refs.len()));
    }
    (refs, errors)
}

/// One resolved or failed reference, in the order of the input.
pub type Resolved = Vec<Result<SecretValue, RunError>>;

fn unresolved(r: &EnvRef, reason: String, not_found: bool) -> RunError {
    RunError::Unresolved {
        var: r.var.clone(),
        raw: r.raw.clone(),
        reason,
        not_found,
    }
}

/// Why the agent could not be used for resolution.
#[derive(Debug, thiserror::Error)]
pub enum AgentResolveError {
    /// No agent listens on the socket (resolve directly instead).
    #[error(transparent)]
    NoAgent(AdminClientError),
    /// The agent does not serve `/v1/resolve` (an older agent: resolve directly instead).
    #[error("the agent at {0} does not serve /v1/resolve")]
    Unsupported(String),
    /// The agent answered something else than a resolution.
    #[error("the agent at {path} answered {status}: {message}")]
    Failed {
        /// Socket path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
}

/// Resolves through a running agent (`POST /v1/resolve` on its admin socket).
pub fn resolve_via_agent(socket: &Path, refs: &[EnvRef]) -> Result<Resolved, AgentResolveError> {
    let wanted: Vec<String> = refs.iter().map(|r| r.source.to_string()).collect();
    let body = serde_json::to_string(&ResolveRequest { refs: wanted }).map_err(|e| {
        AgentResolveError::Failed {
            path: socket.display().to_string(),
            status: 0,
            message: e.to_string(),
        }
    })?;
    let (status, mut text) = match admin::request(socket, "POST", resolve_proto::PATH, Some(&body))
    {
        Ok(r) => r,
        Err(e @ AdminClientError::Connect { .. }) => return Err(AgentResolveError::NoAgent(e)),
        Err(e) => {
            return Err(AgentResolveError::Failed {
                path: socket.display().to_string(),
                status: 0,
                message: e.to_string(),
            })
        }
    };
    if status == 404 && !text.contains("\"values\"") {
        text.zeroize();
        return Err(AgentResolveError::Unsupported(socket.display().to_string()));
    }
    let parsed = serde_json::from_str::<ResolveAnswer>(&text);
    text.zeroize();
    let mut answer = match parsed {
        Ok(a) if status == 200 => a,
        Ok(a) => {
            return Err(AgentResolveError::Failed {
                path: socket.display().to_string(),
                status,
                message: a.error.unwrap_or_else(|| "no error message".into()),
            })
        }
        Err(_) => {
            return Err(AgentResolveError::Failed {
                path: socket.display().to_string(),
                status,
                message: "the answer is not the expected JSON".into(),
            })
        }
    };
    let out = refs
        .iter()
        .map(|r| {
            let key = r.source.to_string();
            if let Some(b64) = answer.values.get(&key) {
                return match base64::engine::general_purpose::STANDARD.decode(b64) {
                    Ok(bytes) => Ok(SecretValue::new(bytes)),
                    Err(_) => Err(unresolved(r, "the agent sent invalid base64".into(), false)),
                };
            }
            match answer.errors.get(&key) {
                Some(f) => Err(unresolved(r, f.message.clone(), f.not_found)),
                None => Err(unresolved(r, "the agent did not answer it".into(), false)),
            }
        })
        .collect();
    for v in answer.values.values_mut() {
        v.zeroize();
    }
    Ok(out)
}

/// Resolves against the backends of `cfg` directly (no agent running): one fetch per distinct
/// (provider, path), each bounded by the provider's timeout.
pub async fn resolve_direct(cfg: &Config, refs: &[EnvRef]) -> Resolved {
    let mut backends: BTreeMap<String, Result<std::sync::Arc<dyn SecretBackend>, String>> =
        BTreeMap::new();
    let mut fetched: BTreeMap<
        (String, String),
        Result<dso_actors::secret::SecretData, RunErrorKind>,
    > = BTreeMap::new();
    for r in refs {
        let p = &r.source.provider;
        if !backends.contains_key(p) {
            let b = match cfg.providers.get(p) {
                None => Err(format!(
                    "no provider `{p}` in the config (providers: {})",
                    cfg.providers.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(pc) => (crate::providers::factory(p, pc))().map_err(|e| e.to_string()),
            };
            backends.insert(p.clone(), b);
        }
        let key = (p.clone(), r.source.path.clone());
        if fetched.contains_key(&key) {
            continue;
        }
        let res = match backends.get(p) {
            Some(Ok(b)) => {
                let timeout = cfg
                    .providers
                    .get(p)
                    .map(|pc| pc.timeout())
                    .unwrap_or(Duration::from_secs(30));
                match tokio::time::timeout(timeout, b.fetch(&r.source.path)).await {
                    Ok(Ok(d)) => Ok(d),
                    Ok(Err(e)) => Err(RunErrorKind {
                        not_found: matches!(e, dso_actors::backend::BackendError::NotFound { .. }),
                        message: format!("provider `{p}`: {e}"),
                    }),
                    Err(_) => Err(RunErrorKind {
                        not_found: false,
                        message: format!("provider `{p}`: timed out after {timeout:?}"),
                    }),
                }
            }
            Some(Err(e)) => Err(RunErrorKind {
                not_found: false,
                message: e.clone(),
            }),
            None => Err(RunErrorKind {
                not_found: false,
                message: "not fetched".into(),
            }),
        };
        fetched.insert(key, res);
    }
    refs.iter()
        .map(
            |r| match fetched.get(&(r.source.provider.clone(), r.source.path.clone())) {
                Some(Ok(d)) => d
                    .select(r.source.key.as_deref())
                    .map_err(|e| unresolved(r, e.to_string(), true)),
                Some(Err(k)) => Err(unresolved(r, k.message.clone(), k.not_found)),
                None => Err(unresolved(r, "not fetched".into(), false)),
            },
        )
        .collect()
}

/// A fetch failure shared by every reference to the same path.
#[derive(Debug, Clone)]
struct RunErrorKind {
    message: String,
    not_found: bool,
}

/// The environment for the command: every reference replaced by its value (as raw bytes).
/// Fails (naming each variable) when any reference is unresolved or a value holds a NUL byte.
pub fn resolved_env(
    refs: &[EnvRef],
    resolved: Resolved,
) -> Result<Vec<(String, OsString)>, Vec<RunError>> {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::with_capacity(refs.len());
    let mut errors = Vec::new();
    for (r, v) in refs.iter().zip(resolved) {
        match v {
            Ok(v) if v.expose().contains(&0) => errors.push(RunError::NulByte {
                var: r.var.clone(),
                raw: r.raw.clone(),
            }),
            Ok(v) => out.push((r.var.clone(), OsString::from_vec(v.expose().to_vec()))),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn finds_references_and_names_bad_ones() {
        let (refs, errs) = find_refs(vars(&[
            ("PATH", "/bin"),
            ("DB_PASSWORD", "dso://vault/app/db#password"),
            ("API", "dso://local/api"),
            ("BAD", "dso://nopath"),
            ("TRAVERSAL", "dso://vault/../etc#x"),
        ]));
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].var, "API");
        assert_eq!(refs[1].source.key.as_deref(), Some("password"));
        assert_eq!(errs.len(), 2, "{errs:?}");
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.starts_with("BAD: `dso://nopath`")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.starts_with("TRAVERSAL:")), "{text:?}");
    }

    #[test]
    fn nul_bytes_and_failures_are_refused_by_name() {
        let (refs, _) = find_refs(vars(&[("A", "dso://p/a"), ("B", "dso://p/b")]));
        let resolved = vec![
            Ok(SecretValue::new(b"x\0y".to_vec())),
            Err(unresolved(&refs[1], "secret `b` not found".into(), true)),
        ];
        let errs = resolved_env(&refs, resolved).unwrap_err();
        assert!(matches!(&errs[0], RunError::NulByte { var, .. } if var == "A"));
        assert!(errs[1].is_not_found());
        assert!(errs[1]
            .to_string()
            .starts_with("B: cannot resolve `dso://p/b`"));
    }
}
