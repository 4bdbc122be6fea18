//! Sizes and shapes at the edges, on the real daemon: many secrets, a big secret, a huge label,
//! a read-only root filesystem.

use crate::support::*;

const DIR: &str = "/run/secrets/dso";

#[test]
fn fifty_secrets_in_one_container_in_one_go() {
    let ws = Workspace::new();
    ws.write_config("");
    let env_file = ws.path("many.env");
    let body: String = (0..50).map(|i| format!("K{i}=value-{i}\n")).collect();
    std::fs::write(&env_file, body).unwrap();
    let (code, _, err) = dso_with(
        Some(&ws.config()),
        &[
            "secret",
            "import",
            env_file.to_str().unwrap(),
            "--path",
            "many",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let agent = Agent::start(&ws.config());
    let labels: Vec<String> = (0..50)
        .flat_map(|i| {
            [
                "--label".to_string(),
                format!("dso.secret.s{i}=local/many#K{i}"),
            ]
        })
        .collect();
    let mut args: Vec<&str> = vec!["--tmpfs", DIR];
    args.extend(labels.iter().map(String::as_str));
    let c = ws.container(&args);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    for i in [0, 17, 49] {
        assert_eq!(c.read(&format!("{DIR}/s{i}")), Some(format!("value-{i}")));
    }
    let files = c
        .ls(DIR)
        .split_whitespace()
        .filter(|f| f.starts_with('s'))
        .count();
    assert_eq!(files, 50);
    let injected = agent.wait_log("secrets injected");
    assert_eq!(
        injected.matches("secrets injected").count(),
        1,
        "one injection for 50 files"
    );
}

#[test]
fn a_ten_megabyte_secret_lands_whole_and_only_in_the_tmpfs() {
    let ws = Workspace::new();
    ws.write_config("");
    let marker = unique("bigmarker");
    let mut value = "x".repeat(10 * 1024 * 1024);
    value.replace_range(5_000_000..5_000_000 + marker.len(), &marker);
    ws.set_secret("big", &value);
    let agent = Agent::start(&ws.config());
    let c = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.big=local/big"]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    let size = docker(&["exec", "-u", "0", &c.id, "wc", "-c", &format!("{DIR}/big")]);
    assert!(size.starts_with(&value.len().to_string()), "size: {size}");
    c.assert_not_on_disk(&marker);
    assert!(!agent.logs().contains(&marker));
}

#[test]
fn a_one_megabyte_label_is_refused_and_counted() {
    let ws = Workspace::new();
    ws.write_config("");
    let agent = Agent::start(&ws.config());
    // The CLI cannot pass a 1 MB label (its label-file reader stops at 64 KiB): use the Engine API.
    let name = unique("c");
    let spec = serde_json::json!({
        "Image": image(),
        "Cmd": ["/bin/sleep", "600"],
        "Labels": {
            "dso.test": ws.scope,
            "dso.secret.x": format!("local/{}", "a".repeat(1 << 20)),
        },
        "HostConfig": { "Tmpfs": { DIR: "" } },
    });
    let body = ws.path("create.json");
    std::fs::write(&body, spec.to_string()).unwrap();
    let (ok, out, err) = run(std::process::Command::new("curl").args([
        "-sS",
        "--fail",
        "--unix-socket",
        "/var/run/docker.sock",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("http://localhost/v1.41/containers/create?name={name}"),
    ]));
    assert!(ok, "create via the Engine API failed: {out} {err}");
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let c = Container::docker(id, name);
    docker(&["start", &c.id]);
    let line = eventually(&agent, "the refusal", || {
        agent
            .logs()
            .lines()
            .find(|l| l.contains(&c.name) && l.contains("the limit is 4096"))
            .map(str::to_string)
    });
    assert!(
        line.len() < 2000,
        "the error must not echo the huge value: {} bytes",
        line.len()
    );
    assert_eq!(c.ls(DIR), "");
    eventually(&agent, "the metric", || {
        agent
            .metric("dso_injections_total{result=\"invalid_spec\"}")
            .filter(|n| *n >= 1.0)
    });
}

#[test]
fn a_read_only_root_filesystem_still_gets_its_secrets_in_the_tmpfs() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("ro#k", "ro-value");
    let agent = Agent::start(&ws.config());
    let c = ws.container(&[
        "--read-only",
        "--tmpfs",
        DIR,
        "--label",
        "dso.secret.k=local/ro#k",
    ]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(c.read(&format!("{DIR}/k")).as_deref(), Some("ro-value"));
}
