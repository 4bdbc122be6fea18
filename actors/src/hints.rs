//! Things a container carries that DSO does not act on but a user meant it to: a literal
//! `dso://` / `dsofile://` value in its environment (it was started by a plain `docker compose up`
//! instead of `docker dso up`), and `dso.*` labels DSO does not know (a typo, or the old tool's
//! `dso.reloader`). Both are warnings, never refusals. Only names are reported, never values.

use std::collections::HashMap;

use crate::spec::{DIR_LABEL, RELOAD_LABEL, SECRET_PREFIX};

/// Value prefixes that only `docker dso` / `dso compose` understand.
pub const REFERENCE_SCHEMES: [&str; 2] = ["dso://", "dsofile://"];

/// The labels DSO knows, as shown in hints.
const KNOWN: [&str; 3] = [DIR_LABEL, RELOAD_LABEL, "dso.secret.<NAME>"];

/// The original Docker Secret Operator's labels and what DSO has instead.
const OLD_LABELS: [(&str, &str); 6] = [
    (
        "dso.reloader",
        "dso.secret.<NAME> (a container with any dso.secret.* label is managed)",
    ),
    ("dso.secrets", "dso.secret.<NAME>"),
    ("dso.update.strategy", RELOAD_LABEL),
    ("dso.strategy", RELOAD_LABEL),
    (
        "dso.compose.path",
        "nothing (docker dso passes the model to Compose)",
    ),
    ("dso.host_ports", "nothing (DSO proxies no ports)"),
];

/// Names of the environment variables (`NAME=value` entries) whose value is a literal reference.
pub fn literal_references(env: &[String]) -> Vec<String> {
    let mut out: Vec<String> = env
        .iter()
        .filter_map(|e| {
            let (name, value) = e.split_once('=')?;
            REFERENCE_SCHEMES
                .iter()
                .any(|s| value.starts_with(s))
                .then(|| name.to_string())
        })
        .collect();
    out.sort();
    out
}

/// One unknown `dso.*` label and the closest label DSO knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLabel {
    /// The label as written (truncated to 128 characters).
    pub label: String,
    /// What to write instead.
    pub hint: String,
}

/// Every `dso.*` label that is not `dso.dir`, `dso.reload` or `dso.secret.*`, except the keys in
/// `ignore` (e.g. the `agent.scope` label), with a hint; sorted by label.
pub fn unknown_labels(labels: &HashMap<String, String>, ignore: &[&str]) -> Vec<UnknownLabel> {
    let mut out: Vec<UnknownLabel> = labels
        .keys()
        .filter(|k| k.starts_with("dso."))
        .filter(|k| k.as_str() != DIR_LABEL && k.as_str() != RELOAD_LABEL)
        .filter(|k| !k.starts_with(SECRET_PREFIX))
        .filter(|k| !ignore.contains(&k.as_str()))
        .map(|k| UnknownLabel {
            label: k.chars().take(128).collect(),
            hint: closest(k),
        })
        .collect();
    out.sort_by(|a, b| a.label.cmp(&b.label));
    out
}

/// The closest known label to `label`.
fn closest(label: &str) -> String {
    if let Some((_, hint)) = OLD_LABELS.iter().find(|(old, _)| *old == label) {
        return (*hint).to_string();
    }
    // Compare the first two segments (`dso.secrets.db` → `dso.secrets`) with the known heads.
    let mut parts = label.splitn(3, '.');
    let head = format!(
        "{}.{}",
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("")
    );
    let rest = parts.next();
    let best = ["dso.dir", "dso.reload", "dso.secret"]
        .into_iter()
        .min_by_key(|k| levenshtein(&head, k))
        .unwrap_or("dso.secret");
    match (best, rest) {
        ("dso.secret", Some(r)) => format!("{SECRET_PREFIX}{r}"),
        ("dso.secret", None) => KNOWN[2].to_string(),
        (k, _) => k.to_string(),
    }
}

/// `s` bounded to 128 characters with control characters escaped (labels and variable names
/// come from the container: untrusted).
pub fn safe(s: &str) -> String {
    s.chars()
        .take(128)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Edit distance (insertions, deletions, substitutions), on chars.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_references_name_variables_only() {
        let env = vec![
            "PATH=/bin".to_string(),
            "API_TOKEN=dso://vault/app/api#token".into(),
            "DB_FILE=dsofile://vault/app/db#password".into(),
            "NOTE=see dso://x".into(),
            "BROKEN".into(),
        ];
        assert_eq!(literal_references(&env), vec!["API_TOKEN", "DB_FILE"]);
    }

    #[test]
    fn unknown_labels_get_the_closest_known_one() {
        let labels: HashMap<String, String> = [
            ("dso.reloader", "true"),
            ("dso.relaod", "restart"),
            ("dso.secrets.db", "vault/app/db"),
            ("dso.update.strategy", "rolling"),
            ("dso.dri", "/x"),
            ("dso.test", "scope"),
            ("dso.secret.ok", "vault/x"),
            ("dso.reload", "none"),
            ("com.example", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let got: Vec<(String, String)> = unknown_labels(&labels, &["dso.test"])
            .into_iter()
            .map(|u| (u.label, u.hint))
            .collect();
        let want: Vec<(String, String)> = [
            ("dso.dri", "dso.dir"),
            ("dso.relaod", "dso.reload"),
            (
                "dso.reloader",
                "dso.secret.<NAME> (a container with any dso.secret.* label is managed)",
            ),
            ("dso.secrets.db", "dso.secret.db"),
            ("dso.update.strategy", "dso.reload"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(safe("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
    }
}
