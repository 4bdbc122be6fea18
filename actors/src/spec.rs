//! Which secrets a container gets: parsing `dso.*` labels and config rules into a [`ContainerSpec`].
//!
//! Labels (the Docker-native way):
//! - `dso.secret.<NAME>=<provider>/<path>[#<key>]` → file `<dir>/<NAME>`
//! - `dso.secret.<NAME>.mode` (octal, default `0400`), `.uid`, `.gid`
//! - `dso.dir` (default `/run/secrets/dso`)
//!
//! A spec with any error is refused whole: nothing is written for that container.

use std::collections::{BTreeMap, HashMap};

use crate::model::{ContainerInfo, SecretFile, READY_MARKER};
use crate::owners::{file_owner, owner_of_user, Id, Owner, OwnerGid};
use crate::secret::{RefParseError, SecretRef};

/// Default directory for secret files inside a container.
pub const DEFAULT_DIR: &str = "/run/secrets/dso";
/// Label prefix of a secret.
pub const SECRET_PREFIX: &str = "dso.secret.";
/// Label that overrides the directory.
pub const DIR_LABEL: &str = "dso.dir";
/// Most secrets one container may ask for.
pub const MAX_SECRETS: usize = 256;
/// Longest file name.
pub const MAX_NAME_LEN: usize = 255;
/// Longest label value we look at (longer ones are refused, not parsed).
pub const MAX_LABEL_VALUE: usize = 4096;
/// Label of the reload policy.
pub const RELOAD_LABEL: &str = "dso.reload";

/// What happens to a container after its secrets were replaced by new values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReloadPolicy {
    /// Nothing: the application re-reads the files (default).
    #[default]
    None,
    /// Send this signal (e.g. `SIGHUP`) to the container's main process.
    Signal(String),
    /// Restart the container.
    Restart,
}

impl ReloadPolicy {
    /// Parses `none`, `restart`, `signal:SIGHUP` (also `signal:HUP`, `signal:1`).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        match s {
            "" | "none" => Some(ReloadPolicy::None),
            "restart" => Some(ReloadPolicy::Restart),
            _ => {
                let sig = s.strip_prefix("signal:")?.trim();
                let ok = !sig.is_empty()
                    && sig.len() <= 16
                    && (sig.chars().all(|c| c.is_ascii_digit())
                        || sig.chars().all(|c| {
                            c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-'
                        }));
                if !ok {
                    return None;
                }
                let sig = if sig.chars().all(|c| c.is_ascii_digit()) || sig.starts_with("SIG") {
                    sig.to_string()
                } else {
                    format!("SIG{sig}")
                };
                Some(ReloadPolicy::Signal(sig))
            }
        }
    }

    /// Label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReloadPolicy::None => "none",
            ReloadPolicy::Signal(_) => "signal",
            ReloadPolicy::Restart => "restart",
        }
    }
}

/// Everything DSO must write into one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Absolute directory inside the container; must be (inside) a tmpfs mount.
    pub dir: String,
    /// Files, sorted by name.
    pub files: Vec<SecretFile>,
    /// `dso.reload`.
    pub reload: ReloadPolicy,
}

/// One `[[secrets]]` entry of the config: a file for containers matched by name or label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRule {
    /// File name.
    pub name: String,
    /// Source reference.
    pub source: SecretRef,
    /// Mode (None: default 0400).
    pub mode: Option<u32>,
    /// Owner uid (None: container default).
    pub uid: Option<u32>,
    /// Owner gid (None: container default).
    pub gid: Option<u32>,
    /// Matching containers.
    pub targets: Vec<Target>,
}

/// A container selector of a [`SecretRule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Container name (without leading `/`), exact.
    Name(String),
    /// A label key, optionally with a required value.
    Label(String, Option<String>),
}

impl Target {
    /// Parses `name` or `label:key[=value]`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(rest) = s.strip_prefix("label:") {
            if rest.is_empty() {
                return Err(format!(
                    "`{s}`: `label:` needs a key, as in `label:app=shop`"
                ));
            }
            Ok(match rest.split_once('=') {
                Some((k, v)) => Target::Label(k.to_string(), Some(v.to_string())),
                None => Target::Label(rest.to_string(), None),
            })
        } else if s.is_empty() {
            Err("empty target: give a container name or `label:key[=value]`".to_string())
        } else {
            Ok(Target::Name(s.trim_start_matches('/').to_string()))
        }
    }

    /// True if the container matches.
    pub fn matches(&self, name: &str, labels: &HashMap<String, String>) -> bool {
        match self {
            Target::Name(n) => n == name,
            Target::Label(k, v) => match (labels.get(k), v) {
                (Some(_), None) => true,
                (Some(have), Some(want)) => have == want,
                (None, _) => false,
            },
        }
    }
}

/// Why a container's secret declaration was refused. Each names the label (or rule) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The file name is not a plain file name.
    #[error("label `{label}`: secret name `{name}` is not a plain file name ([A-Za-z0-9._-], 1-255 chars, not `.` or `.ready`, not starting with `..`, which DSO keeps for its own entries)")]
    BadName {
        /// The offending label key (truncated if huge).
        label: String,
        /// The name (truncated if huge).
        name: String,
    },
    /// The reference does not parse.
    #[error("label `{label}`: {source}")]
    BadRef {
        /// The offending label key.
        label: String,
        /// Why.
        source: RefParseError,
    },
    /// `.mode` is not an octal permission.
    #[error("label `{label}`: mode `{value}` is not an octal permission from 0000 to 0777 such as 0400 (no setuid, setgid or sticky bit)")]
    BadMode {
        /// The offending label key.
        label: String,
        /// Its value (truncated).
        value: String,
    },
    /// `.uid`/`.gid` is neither a number nor a user/group name.
    #[error("label `{label}`: `{value}` is neither a numeric id nor a user/group name (letters, digits, `_`, `.`, `-`)")]
    BadId {
        /// The offending label key.
        label: String,
        /// Its value (truncated).
        value: String,
    },
    /// An option label without its secret label.
    #[error("label `{label}` has no matching `dso.secret.{name}` label")]
    Orphan {
        /// The option label.
        label: String,
        /// The secret name it refers to.
        name: String,
    },
    /// `dso.dir` is not a clean absolute path.
    #[error("label `dso.dir`: `{0}` is not a clean absolute path (no `..`, `.`, `//` or special characters)")]
    BadDir(String),
    /// A label value over the size limit.
    #[error("label `{label}`: value is {len} bytes; the limit is {MAX_LABEL_VALUE}")]
    TooLarge {
        /// The offending label key.
        label: String,
        /// Its length.
        len: usize,
    },
    /// `dso.reload` is not a known policy.
    #[error("label `dso.reload`: `{0}` is not `none`, `restart` or `signal:<SIGNAL>` (e.g. signal:SIGHUP)")]
    BadReload(String),
    /// The container's `User` is neither `UID[:GID]` nor `NAME[:GROUP]`.
    #[error("the container's User `{0}` is neither UID[:GID] nor NAME[:GROUP]: set it like `1000`, `1000:50`, `app` or `app:staff`")]
    BadUser(String),
    /// More secrets than [`MAX_SECRETS`].
    #[error("{0} secrets requested; the limit is {MAX_SECRETS} per container")]
    TooMany(usize),
}

/// A label value (or the image's `User`) fit for a log line: at most 64 characters, control
/// characters escaped (labels and images are untrusted: no forged log lines).
fn trunc(s: &str) -> String {
    crate::text::one_line(s, 64)
}

/// True for a plain file name that is none of DSO's own: `[A-Za-z0-9._-]`, 1–255 bytes, not `.`,
/// not `.ready`, not starting with `..` (`..data`, `..data_<digest>`, the staging names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && !name.starts_with("..")
        && name != READY_MARKER
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// True for a clean absolute directory path.
pub fn valid_dir(dir: &str) -> bool {
    dir.starts_with('/')
        && dir.len() > 1
        && dir.len() <= 1024
        && !dir.ends_with('/')
        && dir[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
}

/// Parses an octal permission such as `0400` or `440`: at most `0777` (no setuid, setgid or
/// sticky bit on a file DSO writes as root).
pub fn parse_mode(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || s.len() > 5 {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o777)
}

#[derive(Default)]
struct Partial {
    source: Option<SecretRef>,
    mode: Option<u32>,
    uid: Option<Id>,
    gid: Option<Id>,
    option_labels: Vec<String>,
}

/// Builds the spec of one container from its labels and the config rules.
///
/// Returns `Ok(None)` when the container asks for nothing, `Err` with every problem when any label
/// is wrong. Labels win over config rules for the same file name.
pub fn build_spec(
    info: &ContainerInfo,
    rules: &[SecretRule],
) -> Result<Option<ContainerSpec>, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut partial: BTreeMap<String, Partial> = BTreeMap::new();
    let mut dir = DEFAULT_DIR.to_string();
    let mut reload = ReloadPolicy::None;

    for (label, value) in &info.labels {
        if label == DIR_LABEL {
            if valid_dir(value) {
                dir = value.clone();
            } else {
                errors.push(SpecError::BadDir(trunc(value)));
            }
            continue;
        }
        if label == RELOAD_LABEL {
            match ReloadPolicy::parse(value) {
                Some(r) => reload = r,
                None => errors.push(SpecError::BadReload(trunc(value))),
            }
            continue;
        }
        let Some(rest) = label.strip_prefix(SECRET_PREFIX) else {
            continue;
        };
        if value.len() > MAX_LABEL_VALUE {
            errors.push(SpecError::TooLarge {
                label: trunc(label),
                len: value.len(),
            });
            continue;
        }
        let (name, option) = match rest.rsplit_once('.') {
            Some((n, opt @ ("mode" | "uid" | "gid"))) => (n, Some(opt)),
            _ => (rest, None),
        };
        if !valid_name(name) {
            errors.push(SpecError::BadName {
                label: trunc(label),
                name: trunc(name),
            });
            continue;
        }
        let entry = partial.entry(name.to_string()).or_default();
        match option {
            None => match value.parse::<SecretRef>() {
                Ok(r) => entry.source = Some(r),
                Err(source) => errors.push(SpecError::BadRef {
                    label: trunc(label),
                    source,
                }),
            },
            Some(opt) => {
                entry.option_labels.push(label.clone());
                match opt {
                    "mode" => match parse_mode(value) {
                        Some(m) => entry.mode = Some(m),
                        None => errors.push(SpecError::BadMode {
                            label: trunc(label),
                            value: trunc(value),
                        }),
                    },
                    _ => match Id::parse(value) {
                        Some(id) if opt == "uid" => entry.uid = Some(id),
                        Some(id) => entry.gid = Some(id),
                        None => errors.push(SpecError::BadId {
                            label: trunc(label),
                            value: trunc(value),
                        }),
                    },
                }
            }
        }
    }

    let default = owner_of_user(&info.user);
    let root = Owner {
        uid: Id::Num(0),
        gid: OwnerGid::Id(Id::Num(0)),
    };
    let mut bad_user = false;
    let mut owner = |uid: Option<&Id>, gid: Option<&Id>| {
        if default.is_none() && (uid.is_none() || gid.is_none()) {
            bad_user = true;
        }
        file_owner(uid, gid, default.as_ref().unwrap_or(&root))
    };
    let mut files = Vec::new();
    for (name, p) in &partial {
        match &p.source {
            Some(source) => {
                let (uid, gid, names) = owner(p.uid.as_ref(), p.gid.as_ref());
                files.push(SecretFile {
                    name: name.clone(),
                    source: source.clone(),
                    mode: p.mode.unwrap_or(0o400),
                    uid,
                    gid,
                    names,
                })
            }
            None => {
                // A bad reference already produced an error; an option without a secret is its own.
                let label_has_error = errors
                    .iter()
                    .any(|e| matches!(e, SpecError::BadRef { label, .. } if label == &trunc(&format!("{SECRET_PREFIX}{name}"))));
                if !label_has_error {
                    if let Some(label) = p.option_labels.first() {
                        errors.push(SpecError::Orphan {
                            label: label.clone(),
                            name: name.clone(),
                        });
                    }
                }
            }
        }
    }

    for rule in rules {
        if files.iter().any(|f| f.name == rule.name) {
            continue;
        }
        if rule
            .targets
            .iter()
            .any(|t| t.matches(&info.name, &info.labels))
        {
            let (uid, gid, names) = owner(
                rule.uid.map(Id::Num).as_ref(),
                rule.gid.map(Id::Num).as_ref(),
            );
            files.push(SecretFile {
                name: rule.name.clone(),
                source: rule.source.clone(),
                mode: rule.mode.unwrap_or(0o400),
                uid,
                gid,
                names,
            });
        }
    }
    if bad_user {
        errors.push(SpecError::BadUser(trunc(&info.user)));
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));

    if files.len() > MAX_SECRETS {
        errors.push(SpecError::TooMany(files.len()));
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.to_string());
        return Err(errors);
    }
    if files.is_empty() {
        return Ok(None);
    }
    Ok(Some(ContainerSpec { dir, files, reload }))
}

/// True if `dir` is one of `mounts` or lies beneath one (path components, not string prefixes).
pub fn dir_on_tmpfs(dir: &str, mounts: &[String]) -> bool {
    tmpfs_mount_of(dir, mounts).is_some()
}

/// The tmpfs mount point that holds `dir` (the longest one when mounts are nested).
pub fn tmpfs_mount_of<'a>(dir: &str, mounts: &'a [String]) -> Option<&'a str> {
    mounts
        .iter()
        .map(|m| m.trim_end_matches('/'))
        .filter(|m| {
            !m.is_empty()
                && (dir == *m || (dir.starts_with(m) && dir.as_bytes().get(m.len()) == Some(&b'/')))
        })
        .max_by_key(|m| m.len())
}

/// Quick check used by the reconciler: does this container carry any `dso.` label or match a rule?
pub fn wants_secrets(name: &str, labels: &HashMap<String, String>, rules: &[SecretRule]) -> bool {
    labels.keys().any(|k| k.starts_with(SECRET_PREFIX))
        || rules
            .iter()
            .any(|r| r.targets.iter().any(|t| t.matches(name, labels)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupName, OwnerNames};

    fn info(labels: &[(&str, &str)], user: &str) -> ContainerInfo {
        ContainerInfo {
            id: "c1".into(),
            name: "web".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            user: user.into(),
            running: true,
            ..Default::default()
        }
    }

    #[test]
    fn labels_to_files_with_defaults_and_options() {
        let i = info(
            &[
                ("dso.secret.db_password", "vault/app/db#password"),
                ("dso.secret.db_password.mode", "0440"),
                ("dso.secret.api.key", "local/api"),
                ("dso.secret.api.key.uid", "7"),
                ("other", "x"),
            ],
            "1000:2000",
        );
        let spec = build_spec(&i, &[]).unwrap().unwrap();
        assert_eq!(spec.dir, DEFAULT_DIR);
        assert_eq!(spec.files.len(), 2);
        assert_eq!(spec.files[0].name, "api.key");
        assert_eq!(
            (spec.files[0].mode, spec.files[0].uid, spec.files[0].gid),
            (0o400, 7, 2000)
        );
        assert_eq!(spec.files[1].name, "db_password");
        assert_eq!(
            (spec.files[1].mode, spec.files[1].uid, spec.files[1].gid),
            (0o440, 1000, 2000)
        );
        assert_eq!(spec.files[1].source.key.as_deref(), Some("password"));
    }

    #[test]
    fn no_labels_means_nothing() {
        assert_eq!(build_spec(&info(&[("a", "b")], ""), &[]), Ok(None));
    }

    #[test]
    fn bad_input_is_refused_whole_and_named() {
        let big = "x".repeat(1 << 20);
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("dso.secret.../etc/passwd", "local/a")],
                "not a plain file name",
            ),
            (vec![("dso.secret.a/b", "local/a")], "not a plain file name"),
            (vec![("dso.secret..", "local/a")], "not a plain file name"),
            (
                vec![("dso.secret..ready", "local/a")],
                "not a plain file name",
            ),
            (
                vec![("dso.secret...data_x", "local/a")],
                "not a plain file name",
            ),
            (
                vec![("dso.secret...dso_staging", "local/a")],
                "not a plain file name",
            ),
            (
                vec![("dso.secret.ok", "local/a"), ("dso.secret.ok.mode", "4755")],
                "no setuid",
            ),
            (
                vec![("dso.secret.ok", "local/a"), ("dso.secret.ok.mode", "1777")],
                "no setuid",
            ),
            (vec![("dso.secret.ok", "local/a#k\nx")], "control character"),
            (vec![("dso.secret.ok", "nope")], "missing `/`"),
            (vec![("dso.secret.ok", "local/../../x")], "invalid path"),
            (
                vec![("dso.secret.ok", "local/a"), ("dso.secret.ok.mode", "999")],
                "octal",
            ),
            (
                vec![("dso.secret.ok", "local/a"), ("dso.secret.ok.uid", "r@@t")],
                "neither a numeric id nor a user/group name",
            ),
            (vec![("dso.secret.ok.mode", "0400")], "no matching"),
            (
                vec![("dso.secret.ok", "local/a"), ("dso.dir", "/run/../etc")],
                "clean absolute",
            ),
            (vec![("dso.secret.ok", big.as_str())], "the limit is 4096"),
        ];
        for (labels, want) in cases {
            let errs = build_spec(&info(&labels, ""), &[]).unwrap_err();
            let text = errs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            assert!(
                text.contains(want),
                "labels {:?}: got `{text}`, want `{want}`",
                labels
                    .iter()
                    .map(|l| &l.0[..l.0.len().min(40)])
                    .collect::<Vec<_>>()
            );
            assert!(
                text.len() < 600,
                "error text must stay short: {}",
                text.len()
            );
        }
    }

    #[test]
    fn rules_match_by_name_and_label_and_labels_win() {
        let rule = |name: &str, t: &str| SecretRule {
            name: name.into(),
            source: "local/from-rule".parse().unwrap(),
            mode: None,
            uid: None,
            gid: None,
            targets: vec![Target::parse(t).unwrap()],
        };
        let rules = vec![
            rule("a", "web"),
            rule("b", "label:tier=db"),
            rule("c", "label:tier=front"),
            rule("d", "other"),
        ];
        let i = info(
            &[("tier", "db"), ("dso.secret.a", "local/from-label")],
            "app",
        );
        let spec = build_spec(&i, &rules).unwrap().unwrap();
        let names: Vec<_> = spec
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.source.path.as_str(), f.uid))
            .collect();
        assert_eq!(names, vec![("a", "from-label", 0), ("b", "from-rule", 0)]);
        assert!(wants_secrets("web", &HashMap::new(), &rules));
        assert!(!wants_secrets("zzz", &HashMap::new(), &rules));
    }

    #[test]
    fn tmpfs_containment_is_by_component() {
        let m = vec!["/run/secrets".to_string()];
        assert!(dir_on_tmpfs("/run/secrets", &m));
        assert!(dir_on_tmpfs("/run/secrets/dso", &m));
        assert!(!dir_on_tmpfs("/run/secretsX", &m));
        assert!(!dir_on_tmpfs("/run", &m));
        let nested = vec!["/run".to_string(), "/run/secrets/".to_string()];
        assert_eq!(
            tmpfs_mount_of("/run/secrets/dso", &nested),
            Some("/run/secrets")
        );
        assert_eq!(tmpfs_mount_of("/run/x", &nested), Some("/run"));
    }

    #[test]
    fn reload_policies() {
        assert_eq!(ReloadPolicy::parse("none"), Some(ReloadPolicy::None));
        assert_eq!(ReloadPolicy::parse("restart"), Some(ReloadPolicy::Restart));
        assert_eq!(
            ReloadPolicy::parse("signal:SIGHUP"),
            Some(ReloadPolicy::Signal("SIGHUP".into()))
        );
        assert_eq!(
            ReloadPolicy::parse("signal:HUP"),
            Some(ReloadPolicy::Signal("SIGHUP".into()))
        );
        assert_eq!(
            ReloadPolicy::parse("signal:1"),
            Some(ReloadPolicy::Signal("1".into()))
        );
        for bad in [
            "signal:",
            "signal:hup; rm -rf /",
            "reboot",
            "signal:SIGHUPSIGHUPSIGHUPX",
        ] {
            assert_eq!(ReloadPolicy::parse(bad), None, "{bad}");
        }
        let i = info(&[("dso.secret.a", "p/x"), ("dso.reload", "bogus")], "");
        let e = build_spec(&i, &[]).unwrap_err();
        assert!(e[0].to_string().contains("dso.reload"), "{e:?}");
    }

    /// `User` and `.uid`/`.gid` labels as names stay names (resolved at write time inside the
    /// container); a malformed `User` is refused when a file would take its owner from it.
    #[test]
    fn owners_by_name() {
        let names = |labels: &[(&str, &str)], user: &str| {
            build_spec(&info(labels, user), &[])
                .unwrap()
                .unwrap()
                .files
                .into_iter()
                .map(|f| (f.uid, f.gid, f.names))
                .collect::<Vec<_>>()
        };
        let named = |u: Option<&str>, g: Option<GroupName>| OwnerNames {
            user: u.map(str::to_string),
            group: g,
        };
        let s = [("dso.secret.a", "local/a")];
        assert_eq!(
            names(&s, "app"),
            [(
                0,
                0,
                named(Some("app"), Some(GroupName::PrimaryOf("app".into())))
            )]
        );
        assert_eq!(
            names(&s, "app:staff"),
            [(
                0,
                0,
                named(Some("app"), Some(GroupName::Group("staff".into())))
            )]
        );
        assert_eq!(
            names(&s, "1000:staff"),
            [(1000, 0, named(None, Some(GroupName::Group("staff".into()))))]
        );
        assert_eq!(names(&s, "1000:50"), [(1000, 50, named(None, None))]);
        assert_eq!(
            names(
                &[
                    ("dso.secret.a", "local/a"),
                    ("dso.secret.a.uid", "postgres"),
                    ("dso.secret.a.gid", "7")
                ],
                ""
            ),
            [(0, 7, named(Some("postgres"), None))]
        );
        let err = build_spec(&info(&s, "a b"), &[]).unwrap_err();
        assert!(err[0].to_string().contains("User `a b`"), "{err:?}");
        // Both ids given by labels: the User does not matter.
        assert!(build_spec(
            &info(
                &[
                    ("dso.secret.a", "local/a"),
                    ("dso.secret.a.uid", "1"),
                    ("dso.secret.a.gid", "1")
                ],
                "a b"
            ),
            &[]
        )
        .is_ok());
    }
}
