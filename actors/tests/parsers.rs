//! Property tests for the parsers of untrusted input (labels and `<provider>/<path>[#<key>]`
//! references; SECURITY.md): no input panics, every accepted secret name is a plain file name that
//! is none of DSO's own names, every accepted mode is a plain permission, every accepted reference
//! prints back to itself without control characters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use dso_actors::model::ContainerInfo;
use dso_actors::secret::SecretRef;
use dso_actors::spec::build_spec;
use proptest::prelude::*;

/// Strings an attacker would try: DSO's names, dots, slashes, NUL, newlines, unicode, long runs.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[./a-z#_-]{0,12}",
        Just("..data".to_string()),
        Just("..data_0123456789abcdef".to_string()),
        Just(".ready".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        "\\.\\.[a-z_]{0,8}",
        "[a-z]{0,4}[\\x00\\n/\\\\][a-z]{0,4}",
        "[A-Za-z0-9._-]{250,260}",
    ]
}

fn label_key() -> impl Strategy<Value = String> {
    (
        hostile_string(),
        prop_oneof![Just(""), Just(".mode"), Just(".uid"), Just(".gid")],
    )
        .prop_map(|(n, opt)| format!("dso.secret.{n}{opt}"))
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        hostile_string(),
        "[0-7]{1,6}",
        "[0-9]{1,12}",
        (hostile_string(), hostile_string(), hostile_string())
            .prop_map(|(p, q, k)| format!("{p}/{q}#{k}")),
        Just("local/app/db#password".to_string()),
    ]
}

fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with("..")
        && name != "."
        && name != ".ready"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn labels_never_panic_and_accepted_names_are_plain_file_names(
        labels in proptest::collection::vec((label_key(), label_value()), 0..8),
        extra in proptest::collection::vec((hostile_string(), hostile_string()), 0..3),
    ) {
        let mut map: HashMap<String, String> = labels.into_iter().collect();
        for (k, v) in extra {
            map.insert(format!("dso.{k}"), v);
        }
        let info = ContainerInfo { labels: map, ..Default::default() };
        if let Ok(Some(spec)) = build_spec(&info, &[]) {
            for f in &spec.files {
                prop_assert!(plain_file_name(&f.name), "accepted name {:?}", f.name);
                prop_assert!(f.mode <= 0o777, "accepted mode {:o} for {:?}", f.mode, f.name);
            }
            prop_assert!(spec.dir.starts_with('/') && !spec.dir.contains(".."), "dir {:?}", spec.dir);
        }
    }

    #[test]
    fn references_never_panic_and_print_back_to_themselves(s in label_value()) {
        if let Ok(r) = s.parse::<SecretRef>() {
            let shown = r.to_string();
            prop_assert!(!shown.chars().any(char::is_control), "control character in {:?}", shown);
            prop_assert_eq!(shown.parse::<SecretRef>().unwrap(), r);
        }
    }
}
