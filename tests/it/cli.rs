//! The CLI: `dso check`, `dso secret`, `--help`.

use crate::support::*;

fn dso(args: &[&str]) -> (Option<i32>, String, String) {
    dso_with(None, args)
}

#[test]
fn check_accepts_a_good_config_and_names_every_problem_of_a_bad_one() {
    let ws = Workspace::new();
    let good = ws.write_config("");
    let (code, out, err) = dso(&["check", "--config", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("valid"), "{out}");

    let bad = ws.path("bad.toml");
    std::fs::write(
        &bad,
        r#"[agent]
shards = 64
[cache]
ttl = "soon"
[providers.v]
type = "vault"
address = "ftp://x"
"#,
    )
    .unwrap();
    let (code, out, err) = dso(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(
        code,
        Some(4),
        "exit code 4 for an invalid config\n{out}{err}"
    );
    let want = "cache.ttl: invalid duration `soon`";
    assert!(err.contains(want), "missing `{want}` in:\n{err}");
    // Type errors stop parsing of that table; fix them and the semantic problems all show.
    std::fs::write(
        &bad,
        "[agent]\nshards = 64\n[providers.v]\ntype = \"vault\"\naddress = \"ftp://x\"\n",
    )
    .unwrap();
    let (code, _, err) = dso(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(4));
    assert!(err.contains("agent.shards: 64 is out of range"), "{err}");
    assert!(err.contains("providers.v.address"), "{err}");
    // --json for scripts: the same problems, machine-readable, same exit code.
    let (code, out, _) = dso(&["check", "--json", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(4));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], false, "{out}");
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("agent.shards")),
        "{out}"
    );
    let (code, out, _) = dso(&["check", "--json", "--config", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["valid"].clone(), v["providers"]["local"].clone()),
        (true.into(), "file".into())
    );

    let (code, _, err) = dso(&["check", "--config", "/nonexistent/dso.toml"]);
    assert_eq!(code, Some(4));
    assert!(
        err.contains("/nonexistent/dso.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn secret_set_get_list_rm_round_trip_without_plaintext_on_disk() {
    let ws = Workspace::new();
    let cfg = ws.write_config("");
    let cfg = cfg.to_str().unwrap();
    let value = unique("cli-secret-value");
    ws.set_secret("app/db#password", &value);
    ws.set_secret("app/db#user", "svc");
    ws.set_secret("app/token", "t0k");
    let (code, out, err) = dso(&["--config", cfg, "secret", "get", "app/db#password"]);
    assert_eq!((code, out.as_str()), (Some(0), value.as_str()), "{err}");
    let (code, out, _) = dso(&["--config", cfg, "secret", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("app/db") && out.contains("password") && out.contains("app/token"),
        "{out}"
    );
    assert!(!out.contains(&value), "list must never print values");
    let (_, out, _) = dso(&["--config", cfg, "secret", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("list --json is JSON");
    assert!(v.as_array().is_some_and(|a| a.len() == 2), "{out}");

    let hits = grep_tree(ws.dir.path(), value.as_bytes());
    assert!(hits.is_empty(), "plaintext found on disk: {hits:?}");
    let key = ws.path("vault.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (code, _, _) = dso(&["--config", cfg, "secret", "rm", "app/db#password"]);
    assert_eq!(code, Some(0));
    let (code, _, err) = dso(&["--config", cfg, "secret", "get", "app/db#password"]);
    assert_eq!(code, Some(5), "missing secret → exit 5: {err}");
    assert!(err.contains("password"), "{err}");
    let (code, _, err) = dso(&["--config", cfg, "secret", "set", "app/x"]);
    assert_ne!(code, Some(0), "an empty stdin is refused");
    assert!(err.contains("stdin"), "{err}");
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        vec!["agent"],
        vec!["check"],
        vec!["secret", "set"],
        vec!["secret", "get"],
        vec!["secret", "list"],
        vec!["secret", "rm"],
        vec!["health"],
        vec!["status"],
        vec!["reconcile"],
        vec!["rotate"],
        vec!["inject"],
        vec!["completions"],
        vec!["secret", "import"],
        vec!["doctor"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let (code, out, err) = dso(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(
            out.contains("Example:"),
            "{args:?} --help has no example:\n{out}"
        );
    }
}

#[test]
fn secret_import_moves_a_dotenv_file_into_the_vault_and_completions_generate() {
    let ws = Workspace::new();
    let cfg = ws.write_config("");
    let cfg = cfg.to_str().unwrap();
    let env_file = ws.path("app.env");
    std::fs::write(
        &env_file,
        "# app\nexport DB_PASSWORD=\"imported pw\"\nAPI_KEY=k-123\n",
    )
    .unwrap();
    let (code, out, err) = dso(&[
        "--config",
        cfg,
        "secret",
        "import",
        env_file.to_str().unwrap(),
        "--path",
        "app/env",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("DB_PASSWORD") && err.contains("API_KEY"),
        "{err}"
    );
    assert!(
        !err.contains("imported pw") && !out.contains("imported pw"),
        "values must not be printed"
    );
    let (code, out, _) = dso(&["--config", cfg, "secret", "get", "app/env#DB_PASSWORD"]);
    assert_eq!((code, out.as_str()), (Some(0), "imported pw"));
    std::fs::write(&env_file, "OK=1\nbroken line\n").unwrap();
    let (code, _, err) = dso(&[
        "--config",
        cfg,
        "secret",
        "import",
        env_file.to_str().unwrap(),
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("line 2"), "{err}");

    let (code, out, _) = dso(&["completions", "bash"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("_dso") && out.contains("secret"),
        "{}",
        &out[..out.len().min(300)]
    );
}

#[test]
fn doctor_reports_each_check_with_a_fix() {
    let ws = Workspace::new();
    let cfg = ws.write_config(
        "[providers.dead]\ntype = \"vault\"\naddress = \"http://127.0.0.1:9\"\ntoken_env = \"DSO_IT_DOCTOR\"\ntimeout = \"1s\"\n",
    );
    let c = ws.container(&["--label", "dso.secret.k=local/x#k"]);
    let out = std::process::Command::new(dso_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["doctor", "--json"])
        .env("DSO_IT_DOCTOR", "t")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "failures → exit 1\n{text}");
    let checks: Vec<serde_json::Value> = serde_json::from_str(&text).expect("doctor --json");
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no `{name}` check in {text}"))
            .clone()
    };
    assert_eq!(find("config")["ok"], true);
    assert_eq!(find("docker")["ok"], true);
    assert_eq!(find("provider local")["ok"], true);
    let dead = find("provider dead");
    assert_eq!(dead["ok"], false);
    assert!(dead["fix"].as_str().is_some(), "{dead}");
    let mine = find(&format!("container {}", c.name));
    assert_eq!(mine["ok"], false, "{mine}");
    assert!(
        mine["fix"].as_str().unwrap_or("").contains("--tmpfs"),
        "{mine}"
    );
}
