//! Rewriting the model Compose normalised (`docker-compose config`): every `dsofile://` value
//! becomes a file path plus a `dso.secret.*` label (and a tmpfs), every `dso://` value becomes
//! `${placeholder}` that Compose fills from its own environment. The model never holds a value.
//!
//! Pure functions over `serde_json::Value`; what needs Docker (the image's entrypoint) is passed in.

use std::collections::BTreeMap;

use dso_actors::secret::SecretRef;
use serde_json::{Map, Value};

/// Scheme of a file reference.
pub const FILE_SCHEME: &str = "dsofile://";
/// Scheme of an environment reference (as in `dso run`).
pub const ENV_SCHEME: &str = crate::envrun::SCHEME;
/// The default secrets directory (as the agent's).
pub const DEFAULT_DIR: &str = "/run/secrets/dso";
/// Where the wait helper is mounted in the container.
pub const WAIT_TARGET: &str = "/run/dso-wait";
/// Seconds the helper waits for the files before giving up.
pub const WAIT_TIMEOUT_SECS: u64 = 300;

/// One `dsofile://` variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Service name.
    pub service: String,
    /// Variable name.
    pub var: String,
    /// File name in the secrets directory.
    pub name: String,
    /// The reference.
    pub source: SecretRef,
}

/// One `dso://` variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVarRef {
    /// Service name.
    pub service: String,
    /// Variable name.
    pub var: String,
    /// The variable of the Compose process that carries the value.
    pub placeholder: String,
    /// The reference.
    pub source: SecretRef,
}

/// What a service needs to be wrapped: its image and the dir the helper waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitNeed {
    /// Service name.
    pub service: String,
    /// The image the service runs (given, or the name Compose gives a built one).
    pub image: String,
    /// True when the service has `build:` (build instead of pull when missing).
    pub build: bool,
    /// The secrets directory.
    pub dir: String,
}

/// The result of [`rewrite`].
#[derive(Debug, Clone, Default)]
pub struct Rewritten {
    /// The model to give Compose.
    pub model: Value,
    /// Every `dsofile://` variable.
    pub files: Vec<FileRef>,
    /// Every `dso://` variable.
    pub envs: Vec<EnvVarRef>,
    /// Services whose entrypoint must wait for the files.
    pub waits: Vec<WaitNeed>,
    /// The project name Compose put in the model (Compose v2), if any.
    pub name: Option<String>,
}

/// A problem in the model, naming service and variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Not what `config` prints.
    #[error("the normalised Compose model has no `services` mapping")]
    NoServices,
    /// A reference that does not parse.
    #[error("service `{service}`, variable {var}: `{raw}` is not a valid reference: {reason} (write {scheme}<provider>/<path>[#<key>])")]
    BadReference {
        /// Service.
        service: String,
        /// Variable.
        var: String,
        /// The value (a reference, never a secret).
        raw: String,
        /// Scheme.
        scheme: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Two variables map to one file name, or a label says otherwise.
    #[error("service `{service}`: {message}")]
    Conflict {
        /// Service.
        service: String,
        /// What collides.
        message: String,
    },
}

/// The file name for a variable: lowercased, a trailing `_FILE` dropped, characters outside
/// `[A-Za-z0-9._-]` replaced by `_` (`POSTGRES_PASSWORD_FILE` → `postgres_password`).
pub fn file_name(var: &str) -> String {
    let base = match var.len() {
        n if n > 5 && var.to_ascii_uppercase().ends_with("_FILE") => &var[..n - 5],
        _ => var,
    };
    let name: String = base
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match name.as_str() {
        "" | "." | ".." => format!("_{name}"),
        _ => name,
    }
}

/// What references are read against: the configured providers and the one a reference without a
/// provider (the old tool's `dso://path`) uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Providers {
    /// Configured provider names (empty: not known, references are taken as written).
    pub names: std::collections::BTreeSet<String>,
    /// `agent.default_provider` (or the only provider).
    pub default: Option<String>,
}

impl Providers {
    /// `<provider>/<path>[#<key>]` when the first segment names a provider; otherwise, with a
    /// default provider, the whole text is a path under it (`app/db#password` →
    /// `vault/app/db#password`).
    pub fn parse(&self, text: &str) -> Result<SecretRef, String> {
        let first = text.split(['/', '#']).next().unwrap_or("");
        let known = self.names.is_empty() || self.names.contains(first);
        match (&self.default, known && text.contains('/')) {
            (Some(def), false) => format!("{def}/{text}")
                .parse::<SecretRef>()
                .map_err(|e| e.to_string()),
            (None, false) if !self.names.is_empty() => Err(format!(
                "no provider `{first}` in the config ({}), and no agent.default_provider for \
                 references without one",
                self.names.iter().cloned().collect::<Vec<_>>().join(", ")
            )),
            _ => text.parse::<SecretRef>().map_err(|e| e.to_string()),
        }
    }
}

fn parse_ref(
    providers: &Providers,
    service: &str,
    var: &str,
    raw: &str,
    scheme: &'static str,
) -> Result<SecretRef, ModelError> {
    providers
        .parse(&raw[scheme.len()..])
        .map_err(|reason| ModelError::BadReference {
            service: service.into(),
            var: var.into(),
            raw: raw.into(),
            scheme,
            reason,
        })
}

/// `environment` as a mapping (Compose normalises to one; a `KEY=VALUE` list is accepted too).
fn env_map(v: &mut Value) -> Option<&mut Map<String, Value>> {
    if let Value::Array(items) = v {
        let mut m = Map::new();
        for it in items.iter() {
            if let Some(s) = it.as_str() {
                match s.split_once('=') {
                    Some((k, val)) => m.insert(k.into(), Value::String(val.into())),
                    None => m.insert(s.into(), Value::Null),
                };
            }
        }
        *v = Value::Object(m);
    }
    v.as_object_mut()
}

/// Rewrites `model` (see the module doc). `project` names built images like Compose does;
/// references are read against `providers`.
pub fn rewrite(
    mut model: Value,
    project: &str,
    providers: &Providers,
) -> Result<Rewritten, ModelError> {
    let name = model
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string);
    // Compose v2 puts the name in the model and names built images `<project>-<service>`.
    let image_sep = if name.is_some() { "-" } else { "_" };
    let services = model
        .get_mut("services")
        .and_then(Value::as_object_mut)
        .ok_or(ModelError::NoServices)?;
    let mut out = Rewritten {
        name,
        ..Default::default()
    };
    let mut errors = Vec::new();
    for (service, svc) in services.iter_mut() {
        let Some(svc) = svc.as_object_mut() else {
            continue;
        };
        let dir = svc
            .get("labels")
            .and_then(|l| l.get("dso.dir"))
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_DIR)
            .trim_end_matches('/')
            .to_string();
        let mut labels: BTreeMap<String, String> = BTreeMap::new();
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        let mut any_file = false;
        if let Some(env) = svc.get_mut("environment").and_then(env_map) {
            for (var, val) in env.iter_mut() {
                let Some(raw) = val.as_str() else { continue };
                if raw.starts_with(FILE_SCHEME) {
                    let source = match parse_ref(providers, service, var, raw, FILE_SCHEME) {
                        Ok(s) => s,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    let fname = file_name(var);
                    if let Some(other) = by_name.insert(fname.clone(), var.clone()) {
                        errors.push(ModelError::Conflict {
                            service: service.clone(),
                            message: format!(
                                "variables {other} and {var} would both be the file {dir}/{fname}"
                            ),
                        });
                        continue;
                    }
                    labels.insert(format!("dso.secret.{fname}"), source.to_string());
                    *val = Value::String(format!("{dir}/{fname}"));
                    out.files.push(FileRef {
                        service: service.clone(),
                        var: var.clone(),
                        name: fname,
                        source,
                    });
                    any_file = true;
                } else if raw.starts_with(ENV_SCHEME) {
                    let source = match parse_ref(providers, service, var, raw, ENV_SCHEME) {
                        Ok(s) => s,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    let placeholder = format!("DSO_REF_{}", out.envs.len());
                    *val = Value::String(format!("${{{placeholder}}}"));
                    out.envs.push(EnvVarRef {
                        service: service.clone(),
                        var: var.clone(),
                        placeholder,
                        source,
                    });
                }
            }
        }
        if !any_file {
            continue;
        }
        // Labels: add ours; one already there with another value is a conflict.
        let lbl = svc
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Array(items) = lbl {
            let m = items
                .iter()
                .filter_map(Value::as_str)
                .map(|s| match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Value::String(v.into())),
                    None => (s.to_string(), Value::String(String::new())),
                })
                .collect();
            *lbl = Value::Object(m);
        }
        if let Some(m) = lbl.as_object_mut() {
            for (k, v) in labels {
                match m.get(&k).and_then(Value::as_str) {
                    Some(old) if old != v => errors.push(ModelError::Conflict {
                        service: service.clone(),
                        message: format!("label {k}={old} and a dsofile:// variable disagree"),
                    }),
                    _ => {
                        m.insert(k, Value::String(v));
                    }
                }
            }
        }
        if !has_mount_at(svc, &dir) {
            let entry = Value::String(format!("{dir}:mode=0755"));
            match svc.get_mut("tmpfs") {
                Some(Value::Array(a)) => a.push(entry),
                Some(Value::String(s)) => {
                    let first = Value::String(s.clone());
                    svc.insert("tmpfs".into(), Value::Array(vec![first, entry]));
                }
                _ => {
                    svc.insert("tmpfs".into(), Value::Array(vec![entry]));
                }
            }
        }
        let image = match svc.get("image").and_then(Value::as_str) {
            Some(i) => i.to_string(),
            None => format!("{project}{image_sep}{service}"),
        };
        out.waits.push(WaitNeed {
            service: service.clone(),
            image,
            build: svc.contains_key("build"),
            dir,
        });
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    out.model = model;
    Ok(out)
}

/// True when the service mounts a tmpfs (or anything) at `dir` already.
fn has_mount_at(svc: &Map<String, Value>, dir: &str) -> bool {
    let target_of = |s: &str| -> String { s.split(':').next().unwrap_or("").to_string() };
    let tmpfs = match svc.get("tmpfs") {
        Some(Value::String(s)) => vec![target_of(s)],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(target_of).collect(),
        _ => vec![],
    };
    let volumes = svc
        .get("volumes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| match v {
                    Value::Object(o) => o.get("target").and_then(Value::as_str).map(str::to_string),
                    Value::String(s) => s.split(':').nth(1).map(str::to_string),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    tmpfs
        .iter()
        .chain(volumes.iter())
        .any(|t| t.trim_end_matches('/') == dir)
}

/// The image's `Entrypoint` and `Cmd` (from the Engine API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageCommand {
    /// `Config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Config.Cmd`.
    pub cmd: Vec<String>,
}

/// Makes service `need.service` start through the wait helper (`helper` on the host): entrypoint
/// `[helper, --timeout, N, DIR, --, <the service's or image's entrypoint…>]`, `command` the
/// service's own or else the image's `Cmd` (Docker drops the image's `Cmd` once the entrypoint is
/// set), the helper bind-mounted read-only.
pub fn wrap_entrypoint(
    model: &mut Value,
    need: &WaitNeed,
    image: &ImageCommand,
    helper: &str,
) -> Result<(), ModelError> {
    let conflict = |message: String| ModelError::Conflict {
        service: need.service.clone(),
        message,
    };
    let Some(svc) = model
        .get_mut("services")
        .and_then(|s| s.get_mut(&need.service))
        .and_then(Value::as_object_mut)
    else {
        return Err(conflict("not in the model".into()));
    };
    let entrypoint: Vec<String> = match svc.get("entrypoint") {
        Some(Value::String(s)) => {
            split_words(s).map_err(|e| conflict(format!("entrypoint: {e}")))?
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        // From the image, not from the model: escaped for Compose's interpolation.
        _ => image.entrypoint.iter().map(|w| escape(w)).collect(),
    };
    let has_command = !matches!(svc.get("command"), None | Some(Value::Null));
    if entrypoint.is_empty() && !has_command && image.cmd.is_empty() {
        return Err(conflict(format!(
            "image {} has neither an Entrypoint nor a Cmd, and the service sets no command",
            need.image
        )));
    }
    if !has_command {
        svc.insert(
            "command".into(),
            Value::Array(image.cmd.iter().map(|w| Value::String(escape(w))).collect()),
        );
    }
    let mut wrapped = vec![
        WAIT_TARGET.to_string(),
        "--timeout".into(),
        WAIT_TIMEOUT_SECS.to_string(),
        need.dir.clone(),
        "--".into(),
    ];
    wrapped.extend(entrypoint);
    svc.insert(
        "entrypoint".into(),
        Value::Array(wrapped.into_iter().map(Value::String).collect()),
    );
    let mount = Value::String(format!("{}:{WAIT_TARGET}:ro", escape(helper)));
    match svc.get_mut("volumes") {
        Some(Value::Array(a)) => a.push(mount),
        _ => {
            svc.insert("volumes".into(), Value::Array(vec![mount]));
        }
    }
    Ok(())
}

/// `$` doubled: text that Compose must not interpolate (it reads the model once more).
pub fn escape(s: &str) -> String {
    s.replace('$', "$$")
}

/// Splits a shell-form string like Compose does (POSIX shell words: quotes and backslashes).
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unclosed single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unclosed double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unclosed double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issue_model() -> Value {
        json!({
            "version": "3.9",
            "services": {
                "db": {
                    "image": "postgres:16",
                    "environment": {
                        "POSTGRES_PASSWORD_FILE": "dsofile://vault/app/db#password",
                        "API_TOKEN": "dso://vault/app/api#token",
                        "PLAIN": "a$$b",
                        "FROM_SHELL": null
                    }
                },
                "web": {"build": {"context": "/srv/web"}, "environment": ["TOKEN=dsofile://vault/app/web"]},
                "plain": {"image": "busybox", "environment": {"X": "1"}}
            }
        })
    }

    #[test]
    fn file_names_are_derived_from_the_variable() {
        assert_eq!(file_name("POSTGRES_PASSWORD_FILE"), "postgres_password");
        assert_eq!(file_name("API_TOKEN"), "api_token");
        assert_eq!(file_name("_FILE"), "_file");
        assert_eq!(file_name("a b/c"), "a_b_c");
        assert_eq!(file_name(".."), "_..");
    }

    #[test]
    fn rewrites_files_and_env_without_values() {
        let r = rewrite(issue_model(), "proj", &Providers::default()).unwrap();
        let db = &r.model["services"]["db"];
        assert_eq!(
            db["environment"]["POSTGRES_PASSWORD_FILE"],
            "/run/secrets/dso/postgres_password"
        );
        assert_eq!(db["environment"]["API_TOKEN"], "${DSO_REF_0}");
        assert_eq!(db["environment"]["PLAIN"], "a$$b", "Compose's escapes kept");
        assert_eq!(db["environment"]["FROM_SHELL"], Value::Null);
        assert_eq!(
            db["labels"]["dso.secret.postgres_password"],
            "vault/app/db#password"
        );
        assert_eq!(db["tmpfs"], json!(["/run/secrets/dso:mode=0755"]));
        assert_eq!(r.envs.len(), 1);
        assert_eq!(
            (r.envs[0].service.as_str(), r.envs[0].var.as_str()),
            ("db", "API_TOKEN")
        );
        assert_eq!(r.files.len(), 2);
        let web = r.waits.iter().find(|w| w.service == "web").unwrap();
        assert_eq!((web.image.as_str(), web.build), ("proj_web", true));
        assert_eq!(
            r.model["services"]["web"]["environment"]["TOKEN"],
            "/run/secrets/dso/token"
        );
        assert!(r.waits.iter().all(|w| w.service != "plain"));
        assert_eq!(
            r.model["services"]["plain"],
            issue_model()["services"]["plain"]
        );
    }

    #[test]
    fn existing_tmpfs_dir_labels_and_conflicts() {
        let m = json!({"services": {"a": {
            "image": "i",
            "labels": {"dso.dir": "/secrets"},
            "tmpfs": "/secrets",
            "environment": {"K": "dsofile://p/x"}
        }}});
        let r = rewrite(m, "p", &Providers::default()).unwrap();
        let a = &r.model["services"]["a"];
        assert_eq!(a["environment"]["K"], "/secrets/k");
        assert_eq!(a["tmpfs"], "/secrets", "the service's own tmpfs is used");
        assert_eq!(r.waits[0].dir, "/secrets");

        let m = json!({"services": {"a": {"image": "i", "environment": {
            "K": "dsofile://p/x", "K_FILE": "dsofile://p/y"}}}});
        let e = rewrite(m, "p", &Providers::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("K and K_FILE") && e.contains("/run/secrets/dso/k"),
            "{e}"
        );

        let m = json!({"services": {"a": {"image": "i", "environment": {"K": "dso://nopath"}}}});
        let e = rewrite(m, "p", &Providers::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("service `a`, variable K: `dso://nopath`"),
            "{e}"
        );

        let m = json!({"services": {"a": {"image": "i",
            "labels": {"dso.secret.k": "other/ref"},
            "environment": {"K": "dsofile://p/x"}}}});
        let e = rewrite(m, "p", &Providers::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("label dso.secret.k=other/ref"), "{e}");
    }

    #[test]
    fn wraps_the_image_entrypoint_and_keeps_the_command() {
        let r = rewrite(issue_model(), "proj", &Providers::default()).unwrap();
        let mut model = r.model.clone();
        let need = r.waits.iter().find(|w| w.service == "db").unwrap();
        let image = ImageCommand {
            entrypoint: vec!["docker-entrypoint.sh".into()],
            cmd: vec!["postgres".into()],
        };
        wrap_entrypoint(&mut model, need, &image, "/usr/local/lib/dso/dso-wait").unwrap();
        let db = &model["services"]["db"];
        assert_eq!(
            db["entrypoint"],
            json!([
                WAIT_TARGET,
                "--timeout",
                "300",
                "/run/secrets/dso",
                "--",
                "docker-entrypoint.sh"
            ])
        );
        assert_eq!(db["command"], json!(["postgres"]));
        assert_eq!(
            db["volumes"],
            json!(["/usr/local/lib/dso/dso-wait:/run/dso-wait:ro"])
        );

        // The service's own entrypoint (shell form) and command win over the image's.
        let mut model =
            json!({"services": {"db": {"entrypoint": "sh -c 'echo \"a b\"'", "command": "x y"}}});
        wrap_entrypoint(&mut model, need, &image, "/h").unwrap();
        let db = &model["services"]["db"];
        assert_eq!(db["entrypoint"][5], "sh");
        assert_eq!(db["entrypoint"][7], "echo \"a b\"");
        assert_eq!(db["command"], "x y");

        // The image's words are escaped for Compose's interpolation.
        let mut model = json!({"services": {"db": {}}});
        let dollar = ImageCommand {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo $0 $HOME".into()],
        };
        wrap_entrypoint(&mut model, need, &dollar, "/h").unwrap();
        assert_eq!(
            model["services"]["db"]["command"],
            json!(["echo $$0 $$HOME"])
        );

        let mut model = json!({"services": {"db": {}}});
        let e = wrap_entrypoint(&mut model, need, &ImageCommand::default(), "/h").unwrap_err();
        assert!(
            e.to_string().contains("neither an Entrypoint nor a Cmd"),
            "{e}"
        );
    }

    #[test]
    fn references_without_a_provider_use_the_default() {
        let p = Providers {
            names: ["vault".to_string(), "local".to_string()].into(),
            default: Some("vault".into()),
        };
        assert_eq!(p.parse("local/a/b#k").unwrap().to_string(), "local/a/b#k");
        assert_eq!(
            p.parse("app/db#password").unwrap().to_string(),
            "vault/app/db#password"
        );
        assert_eq!(
            p.parse("db_password").unwrap().to_string(),
            "vault/db_password"
        );
        let no_default = Providers {
            default: None,
            ..p.clone()
        };
        let e = no_default.parse("app/db").unwrap_err();
        assert!(
            e.contains("no provider `app`") && e.contains("default_provider"),
            "{e}"
        );
        assert_eq!(
            Providers::default().parse("app/db").unwrap().to_string(),
            "app/db",
            "without a config, as written"
        );
        let m =
            json!({"services": {"a": {"image": "i", "environment": {"K": "dsofile://app/db#pw"}}}});
        let r = rewrite(m, "p", &p).unwrap();
        assert_eq!(
            r.model["services"]["a"]["labels"]["dso.secret.k"],
            "vault/app/db#pw"
        );
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            split_words(r#"a 'b c' "d \"e\"" f\ g"#).unwrap(),
            vec!["a", "b c", "d \"e\"", "f g"]
        );
        assert!(split_words("'x").is_err());
    }
}
