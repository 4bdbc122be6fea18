//! `[[access]]` rules on the real stack: two Compose projects (real `docker-compose`) each get
//! their own secrets and are refused the other's, a service selector, an image selector (a second
//! name of the offline image), a `[[secrets]]` target, a rule change by SIGHUP, a uid-1000 caller
//! through `dso run`, no rules → everything allowed, and `dso check` naming a malformed pattern.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

/// `docker-compose -p NAME down` on drop (also when the test fails).
struct ComposeProject<'a> {
    name: String,
    file: &'a Path,
    envs: Vec<(String, String)>,
}

impl ComposeProject<'_> {
    fn cmd(&self, args: &[&str]) -> (bool, String, String) {
        run(Command::new("docker-compose")
            .args(["-f"])
            .arg(self.file)
            .args(["-p", &self.name])
            .args(args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
    }

    fn up(&self) {
        let (ok, out, err) = self.cmd(&["up", "-d", "--no-color"]);
        assert!(ok, "docker-compose up {}:\n{out}\n{err}", self.name);
    }

    /// The one container of `service` (through `docker ps`: quicker than `docker-compose ps`).
    fn container(&self, service: &str) -> String {
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])
    }
}

impl Drop for ComposeProject<'_> {
    fn drop(&mut self) {
        let _ = self.cmd(&["down", "-t", "0", "--remove-orphans"]);
    }
}

const COMPOSE: &str = r#"version: "2.4"
services:
  app:
    image: ${IMAGE}
    command: ["/bin/sleep", "600"]
    tmpfs: ["/run/secrets/dso"]
    labels:
      dso.test: ${SCOPE}
      dso.secret.db: local/${OWN}/db
    network_mode: none
  worker:
    image: ${IMAGE}
    command: ["/bin/sleep", "600"]
    tmpfs: ["/run/secrets/dso"]
    labels:
      dso.test: ${SCOPE}
      dso.secret.db: local/${OWN}/db
      dso.secret.token: local/shared/x/token
    network_mode: none
  thief:
    image: ${IMAGE}
    command: ["/bin/sleep", "600"]
    tmpfs: ["/run/secrets/dso"]
    labels:
      dso.test: ${SCOPE}
      dso.secret.db: local/${OTHER}/db
    network_mode: none
"#;

fn read(id: &str, path: &str) -> Option<String> {
    let (ok, out, _) = docker_try(&["exec", "-u", "0", id, "cat", path]);
    ok.then_some(out)
}

fn ls(id: &str, dir: &str) -> String {
    docker_try(&["exec", "-u", "0", id, "ls", "-A", dir])
        .1
        .trim()
        .to_string()
}

#[test]
fn compose_projects_get_their_own_secrets_and_are_refused_the_others() {
    let ws = Workspace::new();
    let pa = unique("acca").replace('-', "");
    let pb = unique("accb").replace('-', "");
    ws.write_config(&format!(
        r#"
[[access]]
containers = {{ compose_project = "{pa}" }}
allow = ["local/{pa}/*"]

[[access]]
containers = {{ compose_project = "{pb}" }}
allow = ["local/{pb}/*"]

[[access]]
containers = {{ compose_project = "{pa}", compose_service = "worker" }}
allow = ["local/shared/**"]
"#
    ));
    ws.set_secret(&format!("{pa}/db"), "value-of-a");
    ws.set_secret(&format!("{pb}/db"), "value-of-b");
    ws.set_secret("shared/x/token", "shared-token");
    let file = ws.path("compose.yaml");
    std::fs::write(&file, COMPOSE).unwrap();
    let agent = Agent::start(&ws.config());
    let project = |name: &str, own: &str, other: &str| ComposeProject {
        name: name.to_string(),
        file: &file,
        envs: vec![
            ("IMAGE".into(), image()),
            ("SCOPE".into(), ws.scope.clone()),
            ("OWN".into(), own.to_string()),
            ("OTHER".into(), other.to_string()),
        ],
    };
    let a = project(&pa, &pa, &pb);
    let b = project(&pb, &pb, &pa);
    std::thread::scope(|s| {
        s.spawn(|| a.up());
        b.up();
    });

    let wait =
        |id: &str, path: &str| eventually(&agent, &format!("{path} in {id}"), || read(id, path));
    let (a_app, a_worker, a_thief) = (
        a.container("app"),
        a.container("worker"),
        a.container("thief"),
    );
    let (b_app, b_worker, b_thief) = (
        b.container("app"),
        b.container("worker"),
        b.container("thief"),
    );
    assert_eq!(wait(&a_app, "/run/secrets/dso/db"), "value-of-a");
    assert_eq!(wait(&b_app, "/run/secrets/dso/db"), "value-of-b");
    // The service selector: only project a's worker may read the shared token.
    assert_eq!(wait(&a_worker, "/run/secrets/dso/token"), "shared-token");
    assert_eq!(
        read(&a_worker, "/run/secrets/dso/db").as_deref(),
        Some("value-of-a")
    );

    // Refused whole: the thieves (the other project's path) and b's worker (the shared token).
    for (project, service) in [(&pa, "thief"), (&pb, "thief"), (&pb, "worker")] {
        let name = format!("{project}_{service}_1");
        let logs = agent.wait_log(&format!("container `{name}`: not allowed by [[access]]"));
        let line = logs
            .lines()
            .find(|l| l.contains(&format!("container `{name}`: not allowed")))
            .unwrap();
        assert!(line.contains("access denied"), "{line}");
        assert!(line.contains("\"result\":\"denied\""), "{line}");
        assert!(line.contains("rules considered: access["), "{line}");
    }
    let thief_line = agent
        .logs()
        .lines()
        .find(|l| l.contains(&format!("container `{pa}_thief_1`: not allowed")))
        .unwrap()
        .to_string();
    assert!(
        thief_line.contains(&format!("local/{pb}/db")),
        "{thief_line}"
    );
    assert!(
        thief_line.contains(&format!("access[0] (compose_project={pa}: local/{pa}/*)")),
        "{thief_line}"
    );
    assert!(
        !thief_line.contains("access[1]"),
        "b's rule does not apply to a: {thief_line}"
    );
    for id in [&a_thief, &b_thief, &b_worker] {
        assert_eq!(ls(id, "/run/secrets/dso"), "", "nothing written for {id}");
    }
    assert_eq!(
        agent.metric("dso_injections_total{result=\"denied\"}"),
        Some(3.0)
    );
    let audit = eventually(&agent, "three denials in the audit log", || {
        let audit = std::fs::read_to_string(ws.path("state/audit.jsonl")).unwrap_or_default();
        let denied = audit
            .lines()
            .filter(|l| l.contains("\"result\":\"denied\""))
            .count();
        (denied == 3).then_some(audit)
    });
    assert!(!audit.contains("value-of-"), "no value in the audit log");
}

/// A container from a second name of the offline image; the name is untagged on drop.
struct Tag(String);

impl Drop for Tag {
    fn drop(&mut self) {
        let _ = docker_try(&["rmi", &self.0]);
    }
}

fn run_from(ws: &Workspace, image: &str, labels: &[&str]) -> Container {
    let name = unique("acc");
    let scope = format!("dso.test={}", ws.scope);
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--label",
        &scope,
        "--tmpfs",
        "/run/secrets/dso",
    ];
    for l in labels {
        args.extend(["--label", l]);
    }
    args.extend([image, "/bin/sleep", "600"]);
    let id = docker(&args);
    Container::docker(id, name)
}

#[test]
fn an_image_selector_and_a_rule_change_by_sighup() {
    let ws = Workspace::new();
    let tag = Tag(format!("dso-test/{}:latest", unique("accimg")));
    docker(&["tag", &image(), &tag.0]);
    let target = unique("acccfg");
    let rules = |allow: &str| {
        format!(
            "[[access]]\ncontainers = {{ image = \"{}\" }}\nallow = [\"{allow}\"]\n\n\
             [[secrets]]\nname = \"cfg\"\nfrom = \"local/img/key\"\ntargets = [\"label:acc.cfg={target}\"]\n",
            tag.0.trim_end_matches(":latest")
        )
    };
    ws.write_config(&rules("local/img/*"));
    ws.set_secret("img/key", "image-key");
    let agent = Agent::start(&ws.config());
    let tagged = run_from(&ws, &tag.0, &["dso.secret.key=local/img/key"]);
    let plain = run_from(&ws, &image(), &["dso.secret.key=local/img/key"]);
    tagged.wait_for("/run/secrets/dso/key", &agent);
    assert_eq!(
        tagged.read("/run/secrets/dso/key").as_deref(),
        Some("image-key")
    );
    agent.wait_log(&format!(
        "container `{}`: not allowed by [[access]]: local/img/key",
        plain.name
    ));
    assert_eq!(plain.ls("/run/secrets/dso"), "");
    // A `[[secrets]]` target obeys the same rules.
    let cfg_label = format!("acc.cfg={target}");
    let by_rule = run_from(&ws, &image(), &[&cfg_label]);
    agent.wait_log(&format!(
        "container `{}`: not allowed by [[access]]: local/img/key",
        by_rule.name
    ));
    assert_eq!(by_rule.ls("/run/secrets/dso"), "");

    // The rule no longer allows the path: after the reload the container keeps what it has, is
    // reported (status says denied) and is not rotated.
    ws.write_config(&rules("local/other/*"));
    agent.signal("HUP");
    agent.wait_log(&format!(
        "container `{}`: not allowed by [[access]]: local/img/key",
        tagged.name
    ));
    assert_eq!(
        tagged.read("/run/secrets/dso/key").as_deref(),
        Some("image-key")
    );
    let (code, out, err) = dso_with(Some(&ws.config()), &["status", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entry = status["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == tagged.id.as_str())
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(entry["result"], "denied", "{entry}");
    // Not rotated any more: a new value, checked now, does not reach it.
    ws.set_secret("img/key", "image-key-2");
    let (code, out, err) = dso_with(Some(&ws.config()), &["rotate", "local/img/key"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("true") || out.contains("changed"),
        "{out}{err}"
    );
    std::thread::sleep(std::time::Duration::from_secs(3)); // past rotation_debounce (2 s)
    assert_eq!(
        tagged.read("/run/secrets/dso/key").as_deref(),
        Some("image-key")
    );
    let audit = std::fs::read_to_string(ws.path("state/audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains("\"event\":\"rotated\""), "{audit}");
}

#[test]
fn without_rules_everything_stays_allowed_and_doctor_says_so() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("anything/at/all", "open-value");
    let agent = Agent::start(&ws.config());
    let c = ws.container(&[
        "--tmpfs",
        "/run/secrets/dso",
        "--network",
        "none",
        "--label",
        "dso.secret.x=local/anything/at/all",
    ]);
    c.wait_for("/run/secrets/dso/x", &agent);
    assert_eq!(c.read("/run/secrets/dso/x").as_deref(), Some("open-value"));
    let (_, out, err) = dso_with(Some(&ws.config()), &["doctor"]);
    assert!(out.contains("access: no [[access]] rules"), "{out}{err}");
}

#[test]
fn dso_check_names_a_malformed_pattern_by_its_path() {
    let ws = Workspace::new();
    ws.write_config(
        "[[access]]\ncontainers = { compose_project = \"p\" }\nallow = [\"local/ok/*\", \"local/a/**/b\"]\n",
    );
    let (code, out, err) = dso_with(Some(&ws.config()), &["check"]);
    assert_ne!(code, Some(0), "{out}{err}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("access[0].allow[1]: `local/a/**/b`: `**` is only allowed"),
        "{text}"
    );
}

/// `dso run` as uid/gid 1000 (setpriv), through the agent's socket.
fn dso_run_as_1000(
    ws: &Workspace,
    envs: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, String, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
            dso_bin(),
        ])
        .arg("--config")
        .arg(ws.config())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_uid_1000_caller_resolves_only_what_its_rule_allows() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    ws.write_config("[[access]]\ncallers = { uids = [1000] }\nallow = [\"local/dev/*\"]\n");
    ws.set_secret("dev/db", "dev-value");
    ws.set_secret("prod/db", "prod-value");
    let agent = Agent::start(&ws.config());
    // Let uid 1000 reach the socket (the test's stand-in for membership of the socket's group).
    std::fs::set_permissions(ws.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(ws.path("dso.sock"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let print = ["run", "--", "/bin/sh", "-c", "printf %s \"$V\""];

    let (code, out, err) = dso_run_as_1000(&ws, &[("V", "dso://local/dev/db")], &print);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "dev-value"),
        "{err}\n{}",
        agent.logs()
    );

    let (code, out, err) = dso_run_as_1000(&ws, &[("V", "dso://local/prod/db")], &print);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(!out.contains("prod-value") && !err.contains("prod-value"));
    assert!(err.contains("403"), "{err}");
    assert!(
        err.contains("caller uid=1000 gid=1000: not allowed by [[access]]: local/prod/db; rules considered: access[0] (uid=1000: local/dev/*)"),
        "{err}"
    );
    let logs = agent.wait_log("access denied: caller uid=1000");
    assert!(logs.contains("\"result\":\"denied\""), "{logs}");
    assert!(!logs.contains("prod-value"));

    // The management endpoints need `admin = true` (or root).
    let (code, out, err) = dso_run_as_1000(&ws, &[], &["status"]);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        format!("{out}{err}").contains("is not an admin caller"),
        "{out}{err}"
    );
    // Root is allowed everything (no rule names uid 0).
    let (code, out, err) = dso_with(Some(&ws.config()), &["status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let out = Command::new(dso_bin())
        .arg("--config")
        .arg(ws.config())
        .args(print)
        .env("V", "dso://local/prod/db")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "prod-value");
}
