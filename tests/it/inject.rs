//! End to end: the real agent, the real Docker daemon, the local encrypted vault and OpenBao.

use crate::support::*;

const DIR: &str = "/run/secrets/dso";

fn vault_provider_toml(mount_token_env: &str) -> String {
    format!(
        r#"[providers.bao]
type = "vault"
address = "{}"
token_env = "{mount_token_env}"
mount = "secret"
timeout = "5s"
"#,
        env("DSO_TEST_VAULT_ADDR")
    )
}

#[test]
fn labelled_container_gets_its_files_from_the_local_vault_and_openbao() {
    labelled_container_gets_its_files_from_the_local_vault_and_openbao_on(Workspace::new());
}

/// The body, on `ws`'s engine (Docker here, Podman in `podman.rs`).
pub(crate) fn labelled_container_gets_its_files_from_the_local_vault_and_openbao_on(ws: Workspace) {
    ws.write_config(&vault_provider_toml("DSO_IT_BAO_TOKEN"));
    let local_pw = unique("local-pw-value");
    let bao_pw = unique("bao-pw-value");
    let bao_path = unique("app/db");
    ws.set_secret("app/db#password", &local_pw);
    ws.set_secret("app/token", "tok-123");
    bao_put(&bao_path, &[("password", &bao_pw), ("user", "svc")]);
    let token = env("DSO_TEST_VAULT_TOKEN");
    let agent = Agent::start_with_env(
        &ws.config(),
        &[("DSO_IT_BAO_TOKEN", &token), ("DSO_LOG", "debug")],
    );

    let bao_ref = format!("bao/{bao_path}#password");
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--user",
        "1000:1000",
        "--label",
        "dso.secret.db_password=local/app/db#password",
        "--label",
        "dso.secret.api_token=local/app/token",
        "--label",
        "dso.secret.api_token.mode=0440",
        "--label",
        "dso.secret.api_token.gid=50",
        "--label",
        &format!("dso.secret.bao_pw={bao_ref}"),
        "--label",
        &format!("dso.secret.bao_user=bao/{bao_path}#user"),
        "--label",
        "dso.secret.bao_user.uid=0",
    ]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    let ctx = || format!("container {}\n--- agent logs ---\n{}", c.name, agent.logs());
    assert_eq!(
        c.read(&format!("{DIR}/db_password")).as_deref(),
        Some(local_pw.as_str()),
        "{}",
        ctx()
    );
    assert_eq!(
        c.read(&format!("{DIR}/api_token")).as_deref(),
        Some("tok-123"),
        "{}",
        ctx()
    );
    assert_eq!(
        c.read(&format!("{DIR}/bao_pw")).as_deref(),
        Some(bao_pw.as_str()),
        "{}",
        ctx()
    );
    assert_eq!(
        c.read(&format!("{DIR}/bao_user")).as_deref(),
        Some("svc"),
        "{}",
        ctx()
    );
    assert_eq!(
        c.stat(&format!("{DIR}/db_password")),
        "400 1000 1000",
        "{}",
        ctx()
    );
    assert_eq!(
        c.stat(&format!("{DIR}/api_token")),
        "440 1000 50",
        "{}",
        ctx()
    );
    assert_eq!(
        c.stat(&format!("{DIR}/bao_user")),
        "400 0 1000",
        "{}",
        ctx()
    );
    let listing = c.ls(DIR);
    let mut entries: Vec<&str> = listing
        .split_whitespace()
        .filter(|e| !e.starts_with("..data_"))
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        vec![
            "..data",
            ".ready",
            "api_token",
            "bao_pw",
            "bao_user",
            "db_password"
        ],
        "one generation, no staging leftovers; {}",
        ctx()
    );
    assert_eq!(
        listing
            .split_whitespace()
            .filter(|e| e.starts_with("..data_"))
            .count(),
        1,
        "exactly one data generation: {listing}"
    );
    let ready = c.read(&format!("{DIR}/.ready")).unwrap_or_default();
    assert_eq!(
        ready.trim().len(),
        16,
        ".ready holds the content digest: {ready:?}"
    );
    assert!(
        listing.contains(&format!("..data_{}", ready.trim())),
        "{listing}"
    );
    // The user the container runs as can read its own secret.
    let (ok, out, err) = c.engine.try_run(&[
        "exec",
        "-u",
        "1000",
        &c.id,
        "cat",
        &format!("{DIR}/db_password"),
    ]);
    assert!(
        ok && out == local_pw,
        "uid 1000 cannot read its secret: {out} {err}"
    );

    // Never on disk, never in the logs (debug level included).
    for v in [&local_pw, &bao_pw] {
        c.assert_not_on_disk(v);
        assert!(
            !agent.logs().contains(v.as_str()),
            "secret value in agent logs:\n{}",
            agent.logs()
        );
    }
    let hits = grep_tree(ws.dir.path(), local_pw.as_bytes());
    assert!(hits.is_empty(), "plaintext on the host disk: {hits:?}");
    let logs = agent.logs();
    assert!(logs.contains("secrets injected"), "{logs}");
    let n = eventually(&agent, "the injection to be counted", || {
        agent
            .metric("dso_injections_total{result=\"success\"}")
            .filter(|n| *n >= 1.0)
    });
    assert_eq!(Some(n), Some(1.0), "{}", agent.get("/metrics").1);
}

#[test]
fn container_started_before_the_agent_is_served_at_startup() {
    container_started_before_the_agent_is_served_at_startup_on(Workspace::new());
}

/// The body, on `ws`'s engine (Docker here, Podman in `podman.rs`).
pub(crate) fn container_started_before_the_agent_is_served_at_startup_on(ws: Workspace) {
    ws.write_config("");
    ws.set_secret("early#k", "early-value");
    let c = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.e=local/early#k"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(c.ls(DIR), "", "nothing before the agent runs");
    let agent = Agent::start(&ws.config());
    c.wait_for(&format!("{DIR}/e"), &agent);
    assert_eq!(c.read(&format!("{DIR}/e")).as_deref(), Some("early-value"));
    c.assert_not_on_disk("early-value");
}

#[test]
fn custom_dir_under_a_tmpfs_mount_with_mount_syntax() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("x#k", "custom-dir-value");
    let agent = Agent::start(&ws.config());
    let c = ws.container(&[
        "--mount",
        "type=tmpfs,dst=/secrets",
        "--label",
        "dso.dir=/secrets/app",
        "--label",
        "dso.secret.k=local/x#k",
    ]);
    c.wait_for("/secrets/app/.ready", &agent);
    assert_eq!(
        c.read("/secrets/app/k").as_deref(),
        Some("custom-dir-value")
    );
    c.assert_not_on_disk("custom-dir-value");
}

/// Each refusal: a clear error in the logs naming the problem, a metric, nothing written.
#[test]
fn refusals_are_clear_counted_and_write_nothing() {
    let ws = Workspace::new();
    ws.write_config(
        r#"[providers.deadbao]
type = "vault"
address = "http://127.0.0.1:9"
token_env = "DSO_IT_DEAD_TOKEN"
timeout = "2s"
"#,
    );
    ws.set_secret("ok#k", "refusal-value");
    let agent = Agent::start_with_env(&ws.config(), &[("DSO_IT_DEAD_TOKEN", "t")]);
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["--tmpfs", DIR, "--label", "dso.secret.bad:name=local/ok#k"],
            "invalid_spec",
            "is not a plain file name",
        ),
        (
            vec![
                "--tmpfs",
                DIR,
                "--label",
                "dso.secret.x=local/../../etc/shadow",
            ],
            "invalid_spec",
            "invalid path",
        ),
        (
            vec!["--label", "dso.secret.x=local/ok#k"],
            "not_tmpfs",
            "is not on a tmpfs mount",
        ),
        (
            vec!["--tmpfs", DIR, "--label", "dso.secret.x=nosuch/ok#k"],
            "provider_error",
            "unknown provider `nosuch`",
        ),
        (
            vec!["--tmpfs", DIR, "--label", "dso.secret.x=local/ok#nokey"],
            "provider_error",
            "key `nokey` not found",
        ),
        (
            vec!["--tmpfs", DIR, "--label", "dso.secret.x=local/missing"],
            "provider_error",
            "secret `missing` not found",
        ),
        (
            vec!["--tmpfs", DIR, "--label", "dso.secret.x=deadbao/app#k"],
            "provider_error",
            "backend unavailable",
        ),
    ];
    let mut containers = Vec::new();
    for (args, result, message) in &cases {
        let c = ws.container(args);
        // The error names the container and the problem.
        let line = eventually(
            &agent,
            &format!("an error naming {} and `{message}`", c.name),
            || {
                agent
                    .logs()
                    .lines()
                    .find(|l| l.contains(message) && l.contains(&c.name))
                    .map(str::to_string)
            },
        );
        assert!(
            line.contains(result),
            "error must carry result={result}: {line}"
        );
        assert!(line.contains("nothing written"), "{line}");
        containers.push(c);
    }
    for c in &containers {
        assert_eq!(c.ls(DIR), "", "nothing may be written into {}", c.name);
        c.assert_not_on_disk("refusal-value");
        assert!(
            c.upper_dir()
                .join("run/secrets/dso")
                .read_dir()
                .map(|mut d| d.next().is_none())
                .unwrap_or(true),
            "the writable layer of {} must not hold a secrets dir with content",
            c.name
        );
    }
    let metrics = agent.get("/metrics").1;
    for (series, n) in [
        ("dso_injections_total{result=\"invalid_spec\"}", 2.0),
        ("dso_injections_total{result=\"not_tmpfs\"}", 1.0),
        ("dso_injections_total{result=\"provider_error\"}", 4.0),
    ] {
        assert_eq!(agent.metric(series), Some(n), "{series}\n{metrics}");
    }
    assert!(!agent.logs().contains("refusal-value"));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let ws = Workspace::new();
    ws.write_config("");
    let agent = Agent::start(&ws.config());
    let (code, logs) = agent.terminate();
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("shutdown complete"), "{logs}");
}

#[test]
fn image_without_tar_gets_its_files_through_the_base64_fallback() {
    let ws = Workspace::new();
    ws.write_config("");
    // The base64 fallback exists only on the exec path.
    ws.set_write_mode("exec");
    let value = unique("notar-value");
    ws.set_secret("nt#k", &value);
    let agent = Agent::start(&ws.config());
    let name = unique("c");
    let scope = format!("dso.test={}", ws.scope);
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &scope,
        "--tmpfs",
        DIR,
        "--label",
        "dso.secret.k=local/nt#k",
        "--label",
        "dso.secret.k.mode=0444",
        &env("DSO_TEST_IMAGE_NOTAR"),
        "/bin/sleep",
        "600",
    ]);
    let c = Container::docker(id, name);
    assert!(
        !docker_try(&["exec", &c.id, "tar", "--help"]).0,
        "test image must lack tar"
    );
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(c.read(&format!("{DIR}/k")).as_deref(), Some(value.as_str()));
    assert_eq!(c.stat(&format!("{DIR}/k")), "444 0 0");
    c.assert_not_on_disk(&value);
    assert!(!agent.logs().contains(&value));
    assert_eq!(by_mode(&agent, "exec"), 1.0);
    assert_eq!(by_mode(&agent, "direct"), 0.0);
}

#[test]
fn config_rules_serve_containers_without_dso_labels() {
    let ws = Workspace::new();
    let ws_rule_label = format!("label:dso.test={}", ws.scope);
    ws.write_config(&format!(
        "[[secrets]]\nname = \"from_rule\"\nfrom = \"local/rule#k\"\ntargets = [\"{ws_rule_label}\"]\nmode = \"0440\"\n"
    ));
    ws.set_secret("rule#k", "rule-value");
    let agent = Agent::start(&ws.config());
    let c = ws.container(&["--tmpfs", DIR]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(
        c.read(&format!("{DIR}/from_rule")).as_deref(),
        Some("rule-value")
    );
    assert_eq!(c.stat(&format!("{DIR}/from_rule")), "440 0 0");
}

#[test]
fn an_agent_restart_re_injects_nothing() {
    an_agent_restart_re_injects_nothing_on(Workspace::new());
}

/// The body, on `ws`'s engine (Docker here, Podman in `podman.rs`).
pub(crate) fn an_agent_restart_re_injects_nothing_on(ws: Workspace) {
    ws.write_config("");
    ws.set_secret("rs#k", "restart-value");
    let agent = Agent::start(&ws.config());
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--label",
        "dso.secret.k=local/rs#k",
        "--label",
        "dso.reload=signal:SIGHUP",
    ]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    let before = c.ls(DIR);
    let ready = c.read(&format!("{DIR}/.ready"));
    drop(agent);
    let agent = Agent::start(&ws.config());
    let unchanged = eventually(
        &agent,
        "the restarted agent to find the container in place",
        || {
            agent
                .metric("dso_injections_total{result=\"unchanged\"}")
                .filter(|n| *n >= 1.0)
        },
    );
    assert_eq!(unchanged, 1.0);
    assert_eq!(
        agent.metric("dso_injections_total{result=\"success\"}"),
        Some(0.0),
        "{}",
        agent.get("/metrics").1
    );
    assert_eq!(c.ls(DIR), before, "the same generation stays in place");
    assert_eq!(
        agent.metric("dso_reloads_total{policy=\"signal\",result=\"ok\"}"),
        Some(0.0),
        "an agent restart must not fire a reload policy"
    );
    assert_eq!(c.read(&format!("{DIR}/.ready")), ready);

    // A changed value is written as a new generation, atomically, on the next injection.
    ws.set_secret("rs#k", "restart-value-2");
    drop(agent);
    let agent = Agent::start(&ws.config());
    eventually(&agent, "the new value after restart", || {
        (c.read(&format!("{DIR}/k")).as_deref() == Some("restart-value-2")).then_some(())
    });
    assert_ne!(
        c.read(&format!("{DIR}/.ready")),
        ready,
        ".ready changes with the content"
    );
    assert_eq!(
        c.ls(DIR)
            .split_whitespace()
            .filter(|e| e.starts_with("..data_"))
            .count(),
        1
    );
    c.assert_not_on_disk("restart-value");
}

#[test]
fn an_unreachable_docker_makes_the_agent_exit_3_after_max_reconnects() {
    let ws = Workspace::new();
    let cfg = ws.write_config("");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[agent]\n",
        &format!(
            "[agent]\ndocker_host = \"unix://{}\"\ndocker_max_reconnects = 3\n",
            ws.path("no-docker.sock").display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(dso_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["agent", "--log-format", "json"])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code 3 (Docker unreachable)\n{logs}"
    );
    assert!(
        logs.contains("docker unreachable after 3 reconnect attempts"),
        "{logs}"
    );
}

/// Every entry of `dir` in the container: name, type, mode, owner, size, link target — with the
/// digest replaced so that two containers holding the same content compare equal.
fn layout(c: &Container, dir: &str) -> String {
    let ready = c.read(&format!("{dir}/.ready")).unwrap_or_default();
    let digest = ready.trim();
    assert_eq!(digest.len(), 16, "digest in .ready: {ready:?}");
    let out = c.engine.run(&[
        "exec",
        "-u",
        "0",
        &c.id,
        "sh",
        "-c",
        &format!("cd {dir} && find . | sort | while read -r f; do stat -c '%n %F %a %u:%g %s %N' \"$f\"; done"),
    ]);
    out.replace(digest, "<digest>")
}

fn by_mode(agent: &Agent, mode: &str) -> f64 {
    agent
        .metric(&format!("dso_injections_by_mode_total{{mode=\"{mode}\"}}"))
        .unwrap_or(-1.0)
}

#[test]
fn direct_and_exec_write_the_same_layout_and_switching_modes_rewrites_nothing() {
    direct_and_exec_write_the_same_layout_and_switching_modes_rewrites_nothing_on(Workspace::new());
}

/// The body, on `ws`'s engine (Docker here, Podman in `podman.rs`).
pub(crate) fn direct_and_exec_write_the_same_layout_and_switching_modes_rewrites_nothing_on(
    ws: Workspace,
) {
    ws.write_config("");
    ws.set_secret("sw#a", "switch-value-a");
    ws.set_secret("sw#b", "switch-value-b");
    let args = [
        "--tmpfs",
        DIR,
        "--user",
        "1000:1000",
        "--label",
        "dso.secret.a=local/sw#a",
        "--label",
        "dso.secret.a.mode=0440",
        "--label",
        "dso.secret.b=local/sw#b",
        "--label",
        "dso.secret.b.uid=0",
        "--label",
        "dso.secret.b.gid=0",
        "--label",
        "dso.reload=signal:SIGHUP",
    ];
    // Auto mode: the agent runs as root on the host, so the write is direct (no exec).
    ws.set_write_mode("auto");
    let agent = Agent::start(&ws.config());
    let direct_c = ws.container(&args);
    direct_c.wait_for(&format!("{DIR}/.ready"), &agent);
    eventually(&agent, "one direct write", || {
        (by_mode(&agent, "direct") == 1.0).then_some(())
    });
    assert_eq!(by_mode(&agent, "exec"), 0.0, "{}", agent.get("/metrics").1);
    assert_eq!(
        direct_c.read(&format!("{DIR}/a")).as_deref(),
        Some("switch-value-a")
    );
    drop(agent);

    // Exec mode: a second container gets the same content through the script.
    ws.set_write_mode("exec");
    let agent = Agent::start(&ws.config());
    let exec_c = ws.container(&args);
    exec_c.wait_for(&format!("{DIR}/.ready"), &agent);
    // The directly written container is found in place by the exec script: unchanged.
    eventually(&agent, "both containers served by exec", || {
        (by_mode(&agent, "exec") == 2.0).then_some(())
    });
    assert_eq!(
        agent.metric("dso_injections_total{result=\"unchanged\"}"),
        Some(1.0),
        "{}",
        agent.get("/metrics").1
    );
    assert_eq!(by_mode(&agent, "direct"), 0.0);
    let direct_layout = layout(&direct_c, DIR);
    let exec_layout = layout(&exec_c, DIR);
    assert_eq!(
        direct_layout, exec_layout,
        "direct and exec must write the same names, types, modes, owners, sizes and links"
    );
    assert!(
        exec_layout.contains("./a symbolic link 777 0:0"),
        "{exec_layout}"
    );
    assert!(exec_layout.contains("440 1000:1000 14"), "{exec_layout}");
    assert_eq!(
        exec_c.read(&format!("{DIR}/.ready")),
        direct_c.read(&format!("{DIR}/.ready"))
    );
    drop(agent);

    // Back to auto: the exec-written container is unchanged too, and no reload fires.
    ws.set_write_mode("auto");
    let before = exec_c.ls(DIR);
    let agent = Agent::start(&ws.config());
    eventually(&agent, "both containers found in place", || {
        agent
            .metric("dso_injections_total{result=\"unchanged\"}")
            .filter(|n| *n >= 2.0)
    });
    assert_eq!(
        agent.metric("dso_injections_total{result=\"success\"}"),
        Some(0.0),
        "{}",
        agent.get("/metrics").1
    );
    assert_eq!(by_mode(&agent, "direct"), 2.0);
    assert_eq!(
        agent.metric("dso_reloads_total{policy=\"signal\",result=\"ok\"}"),
        Some(0.0)
    );
    assert_eq!(exec_c.ls(DIR), before);

    // A rotation through the direct path replaces the set and fires the reload policy.
    ws.set_secret("sw#a", "switch-value-a2");
    let (code, out, err) = dso_with(Some(&ws.config()), &["rotate", "local/sw#a"]);
    assert_eq!(code, Some(0), "{out}{err}");
    eventually(&agent, "the new value, written directly", || {
        (exec_c.read(&format!("{DIR}/a")).as_deref() == Some("switch-value-a2")).then_some(())
    });
    eventually(&agent, "the new value in the other container too", || {
        (direct_c.read(&format!("{DIR}/a")).as_deref() == Some("switch-value-a2")).then_some(())
    });
    // Both containers held earlier values: one reload each.
    eventually(&agent, "the reloads after replacement", || {
        agent
            .metric("dso_reloads_total{policy=\"signal\",result=\"ok\"}")
            .filter(|n| *n == 2.0)
    });
    assert_eq!(by_mode(&agent, "exec"), 0.0);
    assert_eq!(
        exec_c
            .ls(DIR)
            .split_whitespace()
            .filter(|e| e.starts_with("..data_"))
            .count(),
        1
    );
    exec_c.assert_not_on_disk("switch-value");
    direct_c.assert_not_on_disk("switch-value");
    assert!(!agent.logs().contains("switch-value"));
}

#[test]
fn symlinks_planted_by_the_container_never_lead_the_direct_write_outside_its_tmpfs() {
    let ws = Workspace::new();
    ws.write_config("");
    // Runs on both paths (scripts/test repeats it with DSO_IT_WRITE_MODE=exec); only the
    // metric below differs.
    let agent = Agent::start(&ws.config());
    let value = unique("planted-value");
    // The secret does not exist yet: the first injection is refused, the container plants its
    // links, then the secret appears and an injection is requested.
    let plant = |script: &str, args: &[&str]| -> Container {
        let mut full: Vec<&str> = args.to_vec();
        full.extend_from_slice(&["--label", "dso.secret.k=local/planted#k"]);
        let c = ws.container_cmd(&full, &["sh", "-c", script]);
        eventually(&agent, "the refusal of the missing secret", || {
            agent
                .logs()
                .lines()
                .any(|l| l.contains(&c.name) && l.contains("provider_error"))
                .then_some(())
        });
        eventually(&agent, "the planted links", || {
            docker_try(&["exec", &c.id, "test", "-e", "/planted"])
                .0
                .then_some(())
        });
        c
    };
    // dso.dir is a symlink to /etc, or to /: resolved inside the container, on its overlay → refused.
    let to_etc = plant(
        "ln -s /etc /run/secrets/dso && touch /planted && exec sleep 600",
        &[
            "--tmpfs",
            "/run/secrets",
            "--label",
            "dso.dir=/run/secrets/dso",
        ],
    );
    let to_root = plant(
        "ln -s ../../.. /run/secrets/dso && touch /planted && exec sleep 600",
        &[
            "--tmpfs",
            "/run/secrets",
            "--label",
            "dso.dir=/run/secrets/dso",
        ],
    );
    // `..data`, a stale generation and `.ready` point outside the tmpfs: never followed.
    let data_out = plant(
        "mkdir -p /outside && echo keep > /outside/victim && ln -s /outside /run/secrets/dso/..data && ln -s /outside /run/secrets/dso/..data_0000 && ln -s /outside/victim /run/secrets/dso/.ready && touch /planted && exec sleep 600",
        &["--tmpfs", DIR],
    );
    let etc_before = to_etc.ls("/etc");
    let root_before = to_root.ls("/");
    ws.set_secret("planted#k", &value);
    for c in [&to_etc, &to_root, &data_out] {
        let (code, out, err) = dso_with(Some(&ws.config()), &["inject", &c.id]);
        assert!(code.is_some(), "{out}{err}");
    }
    for c in [&to_etc, &to_root] {
        let line = eventually(&agent, "a not_tmpfs refusal", || {
            agent
                .logs()
                .lines()
                .find(|l| l.contains(&c.name) && l.contains("not_tmpfs"))
                .map(str::to_string)
        });
        assert!(
            line.contains("tmpfs") && line.contains("nothing written"),
            "{line}"
        );
    }
    assert_eq!(
        to_etc.ls("/etc"),
        etc_before,
        "nothing written into the container's /etc"
    );
    assert_eq!(
        to_root.ls("/"),
        root_before,
        "nothing written into the container's /"
    );
    data_out.wait_for(&format!("{DIR}/k"), &agent);
    eventually(&agent, "the value in place", || {
        (data_out.read(&format!("{DIR}/k")).as_deref() == Some(value.as_str())).then_some(())
    });
    assert_eq!(data_out.ls("/outside"), "victim");
    assert_eq!(data_out.read("/outside/victim").as_deref(), Some("keep\n"));
    let links = docker(&["exec", &data_out.id, "readlink", &format!("{DIR}/..data")]);
    assert!(links.starts_with("..data_"), "{links}");
    // A `..data_*` name DSO never wrote is not DSO's: never followed, never touched.
    assert_eq!(
        docker(&[
            "exec",
            &data_out.id,
            "readlink",
            &format!("{DIR}/..data_0000")
        ]),
        "/outside"
    );
    for c in [&to_etc, &to_root, &data_out] {
        c.assert_not_on_disk(&value);
    }
    let mode = if default_write_mode() == "exec" {
        "exec"
    } else {
        "direct"
    };
    assert!(
        agent.metric(&format!("dso_injections_by_mode_total{{mode=\"{mode}\"}}")) >= Some(1.0),
        "{}",
        agent.get("/metrics").1
    );
    assert!(!agent.logs().contains(&value));
}

#[test]
fn the_direct_writer_refuses_a_dead_process_and_a_process_of_another_container() {
    use dso::procroot::ProcRootWriter;
    use dso_actors::direct::{DirectError, DirectTarget, DirectWriter, FallbackReason};
    let ws = Workspace::new();
    let a = ws.container(&["--tmpfs", DIR]);
    let b = ws.container(&["--tmpfs", DIR]);
    let pid = |c: &Container| -> u32 {
        docker(&["inspect", "-f", "{{.State.Pid}}", &c.id])
            .parse()
            .expect("pid")
    };
    let started = |c: &Container| docker(&["inspect", "-f", "{{.State.StartedAt}}", &c.id]);
    let (a_started, b_started) = (started(&a), started(&b));
    let file = dso_actors::model::SecretFile {
        name: "k".into(),
        source: "local/x".parse().expect("ref"),
        mode: 0o400,
        uid: 0,
        gid: 0,
        names: Default::default(),
    };
    let v = dso_actors::secret::SecretValue::from_str_copy("dead-value");
    let w = ProcRootWriter::new();
    // b's process is not a's.
    let wrong = DirectTarget {
        container_id: &a.id,
        pid: pid(&b),
        dir: DIR,
        mount: DIR,
        started_at: Some(&b_started),
    };
    match w.write(&wrong, "00000000000000aa", &[(&file, &v)]) {
        Err(DirectError::Fallback { reason, .. }) => {
            assert_eq!(reason, FallbackReason::CgroupMismatch)
        }
        other => panic!("expected a cgroup mismatch, got {other:?}"),
    }
    assert_eq!(b.ls(DIR), "");
    // a's own process: written.
    let right = DirectTarget {
        container_id: &a.id,
        pid: pid(&a),
        dir: DIR,
        mount: DIR,
        started_at: Some(&a_started),
    };
    w.write(&right, "00000000000000aa", &[(&file, &v)])
        .expect("direct write into a running container");
    assert_eq!(a.read(&format!("{DIR}/k")).as_deref(), Some("dead-value"));
    // a's main process exits: a clear "gone", nothing written anywhere.
    let dead_pid = pid(&a);
    docker(&["kill", &a.id]);
    let dead = DirectTarget {
        container_id: &a.id,
        pid: dead_pid,
        dir: DIR,
        mount: DIR,
        started_at: Some(&a_started),
    };
    let r = w.write(&dead, "00000000000000bb", &[(&file, &v)]);
    assert!(
        matches!(
            r,
            Err(DirectError::Gone { .. })
                | Err(DirectError::Fallback {
                    reason: FallbackReason::CgroupMismatch,
                    ..
                })
        ),
        "{r:?}"
    );
    if let Err(e) = r {
        assert!(!e.to_string().contains("dead-value"));
    }
}
