//! The admin endpoint: metrics valid for Prometheus, health and readiness.

use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn metrics_pass_promtool_and_name_every_documented_series() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("m#k", "metrics-value");
    let agent = Agent::start(&ws.config());
    let c = ws.container(&[
        "--tmpfs",
        "/run/secrets/dso",
        "--label",
        "dso.secret.k=local/m#k",
    ]);
    c.wait_for("/run/secrets/dso/.ready", &agent);
    // The agent records the outcome just after the exec returns: wait for it.
    eventually(&agent, "the injection to be counted", || {
        agent
            .metric("dso_injections_total{result=\"success\"}")
            .filter(|n| *n >= 1.0)
    });
    let (status, body) = agent.get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "dso_events_received_total{action=\"start\"}",
        "dso_events_dropped_total",
        "dso_injections_total{result=\"success\"}",
        "dso_injection_duration_seconds_bucket",
        "dso_provider_requests_total{provider=\"local\",result=\"ok\"}",
        "dso_provider_request_duration_seconds_bucket{provider=\"local\"",
        "dso_provider_restarts_total",
        "dso_cache_hits_total",
        "dso_cache_misses_total",
        "dso_cache_entries",
        "dso_managed_containers",
        "dso_build_info{version=",
    ] {
        // Families with no samples yet still have HELP/TYPE lines.
        let base = name.split(['{', ' ']).next().unwrap_or(name);
        let family = base.trim_end_matches("_total").trim_end_matches("_bucket");
        assert!(
            body.contains(name) || body.contains(&format!("# TYPE {family} ")),
            "metric `{name}` missing:\n{body}"
        );
    }
    assert!(!body.contains("metrics-value"));
    let mut child = Command::new(env("DSO_TEST_PROMTOOL"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{text}\n--- exposition ---\n{body}"
    );
}

#[test]
fn health_and_readiness() {
    let ws = Workspace::new();
    ws.write_config("");
    let agent = Agent::start(&ws.config());
    assert_eq!(agent.get("/healthz").0, 200);
    let body = eventually(&agent, "/readyz to become 200", || {
        let (s, b) = agent.get("/readyz");
        (s == 200).then_some(b)
    });
    assert!(body.contains("\"docker\":true"), "{body}");
    let out = Command::new(dso_bin())
        .args(["health", "--addr", &agent.admin])
        .output()
        .unwrap();
    assert!(out.status.success());

    // A provider that cannot be reached makes the agent not ready, and says which.
    let ws2 = Workspace::new();
    ws2.write_config("[providers.dead]\ntype = \"vault\"\naddress = \"http://127.0.0.1:9\"\ntoken_env = \"DSO_IT_T\"\ntimeout = \"1s\"\n");
    let agent2 = Agent::start_with_env(&ws2.config(), &[("DSO_IT_T", "x")]);
    let body = eventually(&agent2, "/readyz to report the dead provider", || {
        let (s, b) = agent2.get("/readyz");
        (s == 503 && b.contains("\"dead\":false")).then_some(b)
    });
    assert!(body.contains("\"local\":true"), "{body}");
}

/// The shipped alert rules are valid, and every metric they or the Grafana dashboard use is one
/// the agent exports (a renamed metric must not silently break an operator's alerts).
#[test]
fn shipped_alerts_and_dashboard_use_only_exported_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env("DSO_TEST_PROMTOOL"))
        .args(["check", "rules", &format!("{root}/deploy/alerts.yml")])
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check rules deploy/alerts.yml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let ws = Workspace::new();
    ws.write_config("[providers.dead]\ntype = \"vault\"\naddress = \"http://127.0.0.1:9\"\ntoken_env = \"DSO_IT_T\"\ntimeout = \"1s\"\n");
    let agent = Agent::start_with_env(&ws.config(), &[("DSO_IT_T", "x")]);
    let body = agent.get("/metrics").1;
    let exported: std::collections::BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    for file in ["deploy/alerts.yml", "deploy/grafana/dso.json"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut used = std::collections::BTreeSet::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(pos) = text[i..].find("dso_") {
            let start = i + pos;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            let name = &text[start..end];
            let family = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .unwrap_or(name);
            if !family.starts_with("dso-") {
                used.insert(family.to_string());
            }
            i = end.max(start + 1);
        }
        for name in used.iter().filter(|n| n.len() > 4) {
            assert!(
                exported.contains(name.as_str()),
                "{file} uses `{name}`, which the agent does not export; exported: {exported:?}"
            );
        }
    }
}
