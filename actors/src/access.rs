//! Who may read what: the `[[access]]` rules, pure (no I/O, no actor), shared by the Injector
//! (containers) and the admin socket (callers of `/v1/resolve`, `dso run`).
//!
//! - A pattern is `<provider>/<path>`: segments split on `/`, `*` matches any run of characters
//!   within one segment, a trailing `/**` matches one or more segments below the prefix (not the
//!   prefix itself). A reference's `#key` is not part of the match (access is per path); a pattern
//!   may not carry one.
//! - A container rule selects by `compose_project`, `compose_service`, `label` (`k=v`, or `k` for
//!   "has the label") and `image`; several selectors: all must match; none: every container.
//! - A caller rule selects by `uids` and `gids` (the peer credentials of the socket connection);
//!   both given: both must match; none: every caller. `admin = true` also allows `status`,
//!   `reconcile`, `rotate` and `inject`.
//! - Rules only allow, and add up. With no rule at all everything is allowed. Root (uid 0) is
//!   allowed everything unless a caller rule names uid 0 explicitly; then it is decided like any
//!   other caller.

use std::fmt;

use crate::model::ContainerInfo;
use crate::secret::SecretRef;

/// Compose's label of the project name.
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
/// Compose's label of the service name.
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";

/// `parts` are the pieces between `*`s: one piece means no wildcard.
fn glob(parts: &[String], s: &str) -> bool {
    match parts {
        [] => s.is_empty(),
        [only] => only == s,
        [first, middle @ .., last] => {
            let Some(mut rest) = s.strip_prefix(first.as_str()) else {
                return false;
            };
            let Some(end) = rest.len().checked_sub(last.len()) else {
                return false;
            };
            if !rest.is_char_boundary(end) || &rest[end..] != last {
                return false;
            }
            rest = &rest[..end];
            for m in middle {
                match rest.find(m.as_str()) {
                    Some(i) => rest = &rest[i + m.len()..],
                    None => return false,
                }
            }
            true
        }
    }
}

/// An allow pattern: `<provider>/<path>` with `*` and a trailing `/**`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    /// Per segment, the pieces between its `*`s (one piece: no wildcard).
    segments: Vec<Vec<String>>,
    below: bool,
}

/// Why a pattern does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{pattern}`: {why}")]
pub struct PatternError {
    /// The pattern (truncated if huge).
    pub pattern: String,
    /// What is wrong.
    pub why: &'static str,
}

impl Pattern {
    /// Parses `provider/path`, `provider/dir/*`, `provider/dir/**`, `*/shared/x`.
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        let fail = |why| PatternError {
            pattern: s.chars().take(128).collect(),
            why,
        };
        if s.is_empty() {
            return Err(fail("empty; use `<provider>/<path>` such as `vault/app/*`"));
        }
        if s.contains('#') {
            return Err(fail("access is decided per path: drop the `#key`"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/*._@+=,-".contains(c))
        {
            return Err(fail(
                "uses a character no reference can contain (allowed: A-Z a-z 0-9 . _ @ + = , - / and `*`)",
            ));
        }
        let (body, below) = match s.strip_suffix("/**") {
            Some(b) => (b, true),
            None => (s, false),
        };
        let raw: Vec<&str> = body.split('/').collect();
        if raw.len() < 2 && !below {
            return Err(fail(
                "needs a provider and a path, as in `vault/app/db` or `local/shared/*`",
            ));
        }
        let mut segments = Vec::with_capacity(raw.len());
        for seg in raw {
            if seg.is_empty() {
                return Err(fail(
                    "has an empty segment (`//`, or a leading or trailing `/`)",
                ));
            }
            if seg.contains("**") {
                return Err(fail(
                    "`**` is only allowed as the whole last segment (`…/**`)",
                ));
            }
            if seg == "." || seg == ".." {
                return Err(fail("`.` and `..` are not path segments here"));
            }
            segments.push(seg.split('*').map(str::to_string).collect());
        }
        Ok(Pattern {
            text: s.to_string(),
            segments,
            below,
        })
    }

    /// True when the reference's provider and path match (its `#key` is ignored).
    pub fn matches(&self, r: &SecretRef) -> bool {
        let parts: Vec<&str> = std::iter::once(r.provider.as_str())
            .chain(r.path.split('/'))
            .collect();
        let n = self.segments.len();
        let len_ok = if self.below {
            parts.len() > n
        } else {
            parts.len() == n
        };
        len_ok
            && self
                .segments
                .iter()
                .zip(&parts)
                .all(|(seg, p)| glob(seg, p))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Which containers a rule is for. Every given selector must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSelector {
    /// `com.docker.compose.project` equals this.
    pub compose_project: Option<String>,
    /// `com.docker.compose.service` equals this.
    pub compose_service: Option<String>,
    /// The label is present (`None`) or has this value.
    pub label: Option<(String, Option<String>)>,
    /// The image the container was created from (`Config.Image`), `:latest` and Docker Hub's
    /// `docker.io/library/` implied where not written.
    pub image: Option<String>,
}

impl ContainerSelector {
    /// Parses the `label` selector: `k=v` or `k`.
    pub fn parse_label(s: &str) -> Result<(String, Option<String>), String> {
        let (k, v) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (s, None),
        };
        if k.is_empty() {
            return Err(format!("`{s}`: needs a label key, as in `team=payments`"));
        }
        Ok((k.to_string(), v))
    }

    /// True when every given selector matches the container.
    pub fn matches(&self, c: &ContainerInfo) -> bool {
        let label_is = |k: &str, want: &str| c.labels.get(k).is_some_and(|v| v == want);
        self.compose_project
            .as_deref()
            .is_none_or(|p| label_is(COMPOSE_PROJECT_LABEL, p))
            && self
                .compose_service
                .as_deref()
                .is_none_or(|s| label_is(COMPOSE_SERVICE_LABEL, s))
            && self.label.as_ref().is_none_or(|(k, v)| match v {
                Some(v) => label_is(k, v),
                None => c.labels.contains_key(k),
            })
            && self
                .image
                .as_deref()
                .is_none_or(|i| normalize_image(i) == normalize_image(&c.image))
    }
}

impl fmt::Display for ContainerSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = &self.compose_project {
            parts.push(format!("compose_project={p}"));
        }
        if let Some(s) = &self.compose_service {
            parts.push(format!("compose_service={s}"));
        }
        match &self.label {
            Some((k, Some(v))) => parts.push(format!("label={k}={v}")),
            Some((k, None)) => parts.push(format!("label={k}")),
            None => {}
        }
        if let Some(i) = &self.image {
            parts.push(format!("image={i}"));
        }
        if parts.is_empty() {
            f.write_str("every container")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// `name`, `name:tag`, `registry/name@sha256:…` in one form: Docker Hub's `docker.io/` and
/// `library/` removed, `:latest` added when neither a tag nor a digest is given.
pub fn normalize_image(image: &str) -> String {
    let mut s = image.trim();
    for prefix in ["docker.io/", "index.docker.io/"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest;
        }
    }
    if let Some(rest) = s.strip_prefix("library/") {
        s = rest;
    }
    let last = s.rsplit('/').next().unwrap_or(s);
    if s.contains('@') || last.contains(':') || s.is_empty() {
        s.to_string()
    } else {
        format!("{s}:latest")
    }
}

/// Which admin-socket callers a rule is for. Every given list must contain the caller's id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerSelector {
    /// The caller's uid is one of these.
    pub uids: Option<Vec<u32>>,
    /// The caller's (primary) gid is one of these.
    pub gids: Option<Vec<u32>>,
}

impl CallerSelector {
    /// True when every given list names the caller.
    pub fn matches(&self, c: Caller) -> bool {
        self.uids.as_ref().is_none_or(|u| u.contains(&c.uid))
            && self.gids.as_ref().is_none_or(|g| g.contains(&c.gid))
    }
}

impl fmt::Display for CallerSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join("|");
        let mut parts = Vec::new();
        if let Some(u) = &self.uids {
            parts.push(format!("uid={}", list(u)));
        }
        if let Some(g) = &self.gids {
            parts.push(format!("gid={}", list(g)));
        }
        if parts.is_empty() {
            f.write_str("every caller")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// The peer credentials of an admin-socket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Effective (primary) gid.
    pub gid: u32,
}

/// Whom a rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Containers (the Injector).
    Containers(ContainerSelector),
    /// Admin-socket callers; `admin` also allows the management endpoints.
    Callers {
        /// Who.
        selector: CallerSelector,
        /// `admin = true`.
        admin: bool,
    },
}

/// One `[[access]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    /// Its place in the config (`access[3]`), named in refusals.
    pub name: String,
    /// Whom it is for.
    pub subject: Subject,
    /// What it allows.
    pub allow: Vec<Pattern>,
}

impl AccessRule {
    fn allows(&self, r: &SecretRef) -> bool {
        self.allow.iter().any(|p| p.matches(r))
    }

    fn describe(&self) -> String {
        let who = match &self.subject {
            Subject::Containers(s) => s.to_string(),
            Subject::Callers { selector, .. } => selector.to_string(),
        };
        let allow: Vec<String> = self.allow.iter().map(Pattern::to_string).collect();
        format!("{} ({who}: {})", self.name, allow.join(" "))
    }
}

/// A refusal: which references, and which rules were considered (those whose selector matched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The references no considered rule allows.
    pub refs: Vec<String>,
    /// The rules that applied to the subject, described (`access[0] (compose_project=a: vault/a/*)`).
    pub considered: Vec<String>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not allowed by [[access]]: {}; ", self.refs.join(", "))?;
        if self.considered.is_empty() {
            f.write_str("no [[access]] rule applies to it")
        } else {
            write!(f, "rules considered: {}", self.considered.join("; "))
        }
    }
}

/// All `[[access]]` rules of a config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    rules: Vec<AccessRule>,
}

impl AccessRules {
    /// The rules, in config order.
    pub fn new(rules: Vec<AccessRule>) -> Self {
        Self { rules }
    }

    /// True when there is no rule: everything is allowed.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules.
    pub fn rules(&self) -> &[AccessRule] {
        &self.rules
    }

    fn decide<'a>(
        &self,
        applies: impl Fn(&AccessRule) -> bool,
        refs: impl IntoIterator<Item = &'a SecretRef>,
    ) -> Result<(), Denied> {
        if self.is_open() {
            return Ok(());
        }
        let considered: Vec<&AccessRule> = self.rules.iter().filter(|r| applies(r)).collect();
        let mut denied: Vec<String> = Vec::new();
        for r in refs {
            let text = format!("{}/{}", r.provider, r.path);
            if !considered.iter().any(|rule| rule.allows(r)) && !denied.contains(&text) {
                denied.push(text);
            }
        }
        if denied.is_empty() {
            Ok(())
        } else {
            Err(Denied {
                refs: denied,
                considered: considered.iter().map(|r| r.describe()).collect(),
            })
        }
    }

    /// Whether the container may receive every one of `refs`.
    pub fn check_container<'a>(
        &self,
        c: &ContainerInfo,
        refs: impl IntoIterator<Item = &'a SecretRef>,
    ) -> Result<(), Denied> {
        self.decide(
            |rule| matches!(&rule.subject, Subject::Containers(s) if s.matches(c)),
            refs,
        )
    }

    /// True when root is decided by the rules (a caller rule lists uid 0).
    fn root_is_ruled(&self) -> bool {
        self.rules.iter().any(|r| {
            matches!(&r.subject, Subject::Callers { selector, .. }
                if selector.uids.as_ref().is_some_and(|u| u.contains(&0)))
        })
    }

    fn unrestricted(&self, c: Caller) -> bool {
        self.is_open() || (c.uid == 0 && !self.root_is_ruled())
    }

    /// Whether an admin-socket caller may resolve every one of `refs`.
    pub fn check_caller<'a>(
        &self,
        c: Caller,
        refs: impl IntoIterator<Item = &'a SecretRef>,
    ) -> Result<(), Denied> {
        if self.unrestricted(c) {
            return Ok(());
        }
        self.decide(
            |rule| matches!(&rule.subject, Subject::Callers { selector, .. } if selector.matches(c)),
            refs,
        )
    }

    /// Whether a caller may use `status`, `reconcile`, `rotate`, `inject`.
    pub fn caller_is_admin(&self, c: Caller) -> bool {
        self.unrestricted(c)
            || self.rules.iter().any(|r| {
                matches!(&r.subject, Subject::Callers { selector, admin: true } if selector.matches(c))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn r(s: &str) -> SecretRef {
        s.parse().unwrap()
    }

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn exact_patterns_match_exactly_and_ignore_the_key() {
        let pat = p("vault/app/db");
        assert!(pat.matches(&r("vault/app/db")));
        assert!(pat.matches(&r("vault/app/db#password")));
        assert!(!pat.matches(&r("vault/app/dbx")));
        assert!(!pat.matches(&r("vault/app")));
        assert!(!pat.matches(&r("vault/app/db/x")));
        assert!(!pat.matches(&r("local/app/db")));
    }

    #[test]
    fn a_star_stays_within_one_segment() {
        let pat = p("vault/payments/*");
        assert!(pat.matches(&r("vault/payments/db")));
        assert!(pat.matches(&r("vault/payments/db#k")));
        assert!(!pat.matches(&r("vault/payments/db/root")));
        assert!(!pat.matches(&r("vault/payments")));
        assert!(!pat.matches(&r("vault/paymentsx/db")));
        let pat = p("vault/app/db-*");
        assert!(pat.matches(&r("vault/app/db-main")));
        assert!(pat.matches(&r("vault/app/db-")));
        assert!(!pat.matches(&r("vault/app/db")));
        let pat = p("vault/*/db");
        assert!(pat.matches(&r("vault/a/db")));
        assert!(!pat.matches(&r("vault/a/b/db")));
        let pat = p("*/shared/smtp");
        assert!(pat.matches(&r("vault/shared/smtp")));
        assert!(pat.matches(&r("local/shared/smtp")));
        let pat = p("vault/a*b*c");
        assert!(pat.matches(&r("vault/abc")));
        assert!(pat.matches(&r("vault/aXXbYYc")));
        assert!(!pat.matches(&r("vault/aXXc")));
        assert!(!pat.matches(&r("vault/acb")));
        let pat = p("vault/ab*ba");
        assert!(
            !pat.matches(&r("vault/aba")),
            "prefix and suffix may not overlap"
        );
        assert!(pat.matches(&r("vault/abba")));
    }

    #[test]
    fn a_trailing_double_star_matches_below_but_not_the_prefix() {
        let pat = p("vault/payments/**");
        assert!(pat.matches(&r("vault/payments/db")));
        assert!(pat.matches(&r("vault/payments/db/root#k")));
        assert!(!pat.matches(&r("vault/payments")));
        assert!(!pat.matches(&r("vault/paymentsx/db")));
        let all = p("vault/**");
        assert!(all.matches(&r("vault/x")));
        assert!(all.matches(&r("vault/x/y/z")));
        assert!(!all.matches(&r("local/x")));
        assert!(p("*/**").matches(&r("local/x")));
    }

    #[test]
    fn malformed_patterns_say_what_is_wrong() {
        let cases = [
            ("", "empty"),
            ("vault", "needs a provider and a path"),
            ("vault//db", "empty segment"),
            ("/vault/db", "empty segment"),
            ("vault/db/", "empty segment"),
            ("vault/**/db", "`**` is only allowed"),
            ("vault/a**", "`**` is only allowed"),
            ("vault/db#password", "drop the `#key`"),
            ("vault/../x", "`.` and `..`"),
            ("vault/a b", "no reference can contain"),
            ("vault/é", "no reference can contain"),
        ];
        for (text, want) in cases {
            let e = Pattern::parse(text).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert!(e.to_string().contains(&format!("`{text}`")), "{e}");
        }
    }

    fn container(labels: &[(&str, &str)], image: &str) -> ContainerInfo {
        ContainerInfo {
            name: "c".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            image: image.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_given_selector_must_match() {
        let c = container(
            &[
                (COMPOSE_PROJECT_LABEL, "payments"),
                (COMPOSE_SERVICE_LABEL, "api"),
                ("team", "blue"),
            ],
            "registry.local/pay/api:1.2",
        );
        let mut s = ContainerSelector::default();
        assert!(s.matches(&c), "no selector: every container");
        s.compose_project = Some("payments".into());
        assert!(s.matches(&c));
        s.compose_service = Some("api".into());
        assert!(s.matches(&c));
        s.label = Some(("team".into(), Some("blue".into())));
        assert!(s.matches(&c));
        s.image = Some("registry.local/pay/api:1.2".into());
        assert!(s.matches(&c));
        for broken in [
            ContainerSelector {
                compose_project: Some("shop".into()),
                ..s.clone()
            },
            ContainerSelector {
                compose_service: Some("worker".into()),
                ..s.clone()
            },
            ContainerSelector {
                label: Some(("team".into(), Some("red".into()))),
                ..s.clone()
            },
            ContainerSelector {
                label: Some(("owner".into(), None)),
                ..s.clone()
            },
            ContainerSelector {
                image: Some("registry.local/pay/api:1.3".into()),
                ..s.clone()
            },
        ] {
            assert!(!broken.matches(&c), "{broken}");
        }
        let key_only = ContainerSelector {
            label: Some(("team".into(), None)),
            ..Default::default()
        };
        assert!(key_only.matches(&c));
        assert!(!s.matches(&container(&[], "")));
    }

    #[test]
    fn image_names_are_compared_in_one_form() {
        let sel = |i: &str| ContainerSelector {
            image: Some(i.into()),
            ..Default::default()
        };
        assert!(sel("busybox").matches(&container(&[], "busybox:latest")));
        assert!(sel("docker.io/library/busybox:latest").matches(&container(&[], "busybox")));
        assert!(sel("dso-test/busybox").matches(&container(&[], "dso-test/busybox:latest")));
        assert!(!sel("busybox").matches(&container(&[], "busybox:1.36")));
        assert!(!sel("localhost:5000/app").matches(&container(&[], "localhost:5000/other")));
        assert!(sel("localhost:5000/app").matches(&container(&[], "localhost:5000/app:latest")));
        assert!(sel("app@sha256:ab").matches(&container(&[], "app@sha256:ab")));
        assert!(!sel("app").matches(&container(&[], "app@sha256:ab")));
        assert_eq!(
            ContainerSelector::parse_label("a=b=c").unwrap(),
            ("a".into(), Some("b=c".into()))
        );
        assert!(ContainerSelector::parse_label("=x").is_err());
    }

    fn rules() -> AccessRules {
        AccessRules::new(vec![
            AccessRule {
                name: "access[0]".into(),
                subject: Subject::Containers(ContainerSelector {
                    compose_project: Some("payments".into()),
                    ..Default::default()
                }),
                allow: vec![p("vault/payments/*"), p("local/shared/smtp")],
            },
            AccessRule {
                name: "access[1]".into(),
                subject: Subject::Containers(ContainerSelector {
                    compose_project: Some("shop".into()),
                    ..Default::default()
                }),
                allow: vec![p("vault/shop/**")],
            },
            AccessRule {
                name: "access[2]".into(),
                subject: Subject::Containers(ContainerSelector::default()),
                allow: vec![p("local/shared/tls")],
            },
            AccessRule {
                name: "access[3]".into(),
                subject: Subject::Callers {
                    selector: CallerSelector {
                        uids: Some(vec![1000]),
                        gids: None,
                    },
                    admin: false,
                },
                allow: vec![p("local/dev/*")],
            },
            AccessRule {
                name: "access[4]".into(),
                subject: Subject::Callers {
                    selector: CallerSelector {
                        uids: None,
                        gids: Some(vec![998]),
                    },
                    admin: true,
                },
                allow: vec![],
            },
        ])
    }

    #[test]
    fn container_rules_add_up_and_refusals_name_the_rules_considered() {
        let rules = rules();
        let pay = container(&[(COMPOSE_PROJECT_LABEL, "payments")], "x");
        let refs = [
            r("vault/payments/db#pw"),
            r("local/shared/smtp"),
            r("local/shared/tls"),
        ];
        assert_eq!(rules.check_container(&pay, &refs), Ok(()));
        let e = rules
            .check_container(
                &pay,
                &[
                    r("vault/payments/db"),
                    r("vault/shop/db#a"),
                    r("vault/shop/db#b"),
                ],
            )
            .unwrap_err();
        assert_eq!(e.refs, vec!["vault/shop/db".to_string()], "each path once");
        assert_eq!(e.considered.len(), 2, "{e}");
        let text = e.to_string();
        assert!(text.contains("vault/shop/db"), "{text}");
        assert!(
            text.contains(
                "access[0] (compose_project=payments: vault/payments/* local/shared/smtp)"
            ),
            "{text}"
        );
        assert!(
            text.contains("access[2] (every container: local/shared/tls)"),
            "{text}"
        );
        assert!(!text.contains("access[1]"), "{text}");
        // Caller rules never apply to containers.
        let other = container(&[], "x");
        let e = rules
            .check_container(&other, &[r("local/dev/x")])
            .unwrap_err();
        assert_eq!(e.considered.len(), 1, "{e}");
    }

    #[test]
    fn no_rules_allow_everything() {
        let open = AccessRules::default();
        assert!(open.is_open());
        assert_eq!(
            open.check_container(&container(&[], "x"), &[r("vault/any/thing")]),
            Ok(())
        );
        let dev = Caller {
            uid: 1000,
            gid: 1000,
        };
        assert_eq!(open.check_caller(dev, &[r("vault/any/thing")]), Ok(()));
        assert!(open.caller_is_admin(dev));
        let none: [SecretRef; 0] = [];
        let one_rule = AccessRules::new(vec![rules().rules()[1].clone()]);
        let c = container(&[], "x");
        assert_eq!(
            one_rule.check_container(&c, &none),
            Ok(()),
            "nothing asked, nothing refused"
        );
        let e = one_rule.check_container(&c, &[r("vault/x/y")]).unwrap_err();
        assert!(e.to_string().contains("no [[access]] rule applies"), "{e}");
    }

    #[test]
    fn callers_are_decided_by_uid_and_gid_and_root_unless_named() {
        let rules = rules();
        let dev = Caller {
            uid: 1000,
            gid: 1000,
        };
        assert_eq!(rules.check_caller(dev, &[r("local/dev/db")]), Ok(()));
        let e = rules
            .check_caller(dev, &[r("local/dev/db"), r("vault/payments/db")])
            .unwrap_err();
        assert_eq!(e.refs, vec!["vault/payments/db".to_string()]);
        assert!(
            e.to_string().contains("access[3] (uid=1000: local/dev/*)"),
            "{e}"
        );
        assert!(!rules.caller_is_admin(dev));
        let ops = Caller {
            uid: 1001,
            gid: 998,
        };
        assert!(rules.caller_is_admin(ops));
        assert!(rules.check_caller(ops, &[r("local/dev/db")]).is_err());
        let stranger = Caller {
            uid: 1002,
            gid: 1002,
        };
        assert!(rules.check_caller(stranger, &[r("local/dev/db")]).is_err());
        assert!(!rules.caller_is_admin(stranger));
        // Root: everything, unless a caller rule names uid 0.
        let root = Caller { uid: 0, gid: 0 };
        assert_eq!(rules.check_caller(root, &[r("vault/anything")]), Ok(()));
        assert!(rules.caller_is_admin(root));
        let mut named = rules.rules().to_vec();
        named.push(AccessRule {
            name: "access[5]".into(),
            subject: Subject::Callers {
                selector: CallerSelector {
                    uids: Some(vec![0]),
                    gids: None,
                },
                admin: false,
            },
            allow: vec![p("vault/ops/*")],
        });
        let named = AccessRules::new(named);
        assert_eq!(named.check_caller(root, &[r("vault/ops/x")]), Ok(()));
        assert!(named.check_caller(root, &[r("vault/payments/db")]).is_err());
        assert!(!named.caller_is_admin(root));
        // Both lists given: both must match.
        let both = CallerSelector {
            uids: Some(vec![1000]),
            gids: Some(vec![998]),
        };
        assert!(both.matches(Caller {
            uid: 1000,
            gid: 998
        }));
        assert!(!both.matches(Caller {
            uid: 1000,
            gid: 1000
        }));
        assert!(!both.matches(Caller { uid: 1, gid: 998 }));
        assert!(CallerSelector::default().matches(stranger));
    }
}
