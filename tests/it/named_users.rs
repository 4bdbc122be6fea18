//! Owners given by name (issue 14): `--user app`, `--user app:staff`, `.uid`/`.gid` labels given as
//! names, resolved from the container's own `/etc/passwd` and `/etc/group`; an unknown name is a
//! refusal naming it; a hostile `/etc/passwd` (a symlink to a file of the host, a FIFO) neither
//! leaks the host's accounts nor hangs the agent; an agent restart and a switch of write path
//! rewrite nothing.
//!
//! `scripts/test` runs this module on the direct path and again with `DSO_IT_WRITE_MODE=exec`.

use std::process::Command;

use crate::hostile::{result_of, rotate_now};
use crate::support::*;

const DIR: &str = "/run/secrets/dso";

/// The accounts of the test image: `app` (1000:1000) as in `dso-test/busybox`, `svc` whose primary
/// group (2001) differs from its uid, a group `staff` (50).
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nsvc:x:2000:2001::/:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app\nsvcgrp:x:2001:\n";

/// An image built offline from the test image with [`PASSWD`] and [`GROUP`]; removed on drop
/// (declare it before the containers: they are dropped first).
struct Image(String);

impl Image {
    fn build() -> Image {
        let tag = format!("dso-test/named-users:{}", unique("t"));
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("passwd"), PASSWD).unwrap();
        std::fs::write(ctx.path().join("group"), GROUP).unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            format!("FROM {}\nCOPY passwd group /etc/\nENV PATH=/bin\n", image()),
        )
        .unwrap();
        let (ok, out, err) = run(Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(ctx.path()));
        assert!(ok, "docker build {tag}: {out}{err}");
        Image(tag)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker_try(&["rmi", "-f", &self.0]);
    }
}

/// A started container of `image` (scope label added), `prepare`d between create and start.
fn container(
    ws: &Workspace,
    image: &Image,
    args: &[&str],
    prepare: impl FnOnce(&str),
) -> Container {
    let name = unique("c");
    let scope = format!("dso.test={}", ws.scope);
    let mut full = vec!["create", "--name", &name, "--label", &scope, "--tmpfs", DIR];
    full.extend_from_slice(args);
    full.extend_from_slice(&[&image.0, "/bin/sleep", "600"]);
    let c = Container::docker(docker(&full), name);
    prepare(&c.id);
    docker(&["start", &c.id]);
    c
}

/// `/etc/passwd` of container `id` replaced by a symlink to `target` (an absolute path that only
/// the host has), before it starts.
fn passwd_symlink(id: &str, target: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(target, dir.path().join("passwd")).unwrap();
    let (ok, out, err) = run(Command::new("sh").arg("-c").arg(format!(
        "tar -c -C {} passwd | docker cp - {id}:/etc",
        dir.path().display()
    )));
    assert!(ok, "planting the symlink: {out}{err}");
}

fn by_mode(agent: &Agent, mode: &str) -> f64 {
    agent
        .metric(&format!("dso_injections_by_mode_total{{mode=\"{mode}\"}}"))
        .unwrap_or(0.0)
}

fn result(agent: &Agent, r: &str) -> f64 {
    agent
        .metric(&format!("dso_injections_total{{result=\"{r}\"}}"))
        .unwrap_or(0.0)
}

#[test]
fn named_owners_resolve_from_the_containers_own_accounts_on_both_paths() {
    let mode = default_write_mode();
    let other = if mode == "exec" { "auto" } else { "exec" };
    let path_of = |m: &str| if m == "exec" { "exec" } else { "direct" };
    let image = Image::build();
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("named-value");
    ws.set_secret("nu#k", &value);
    // A file of the host's that a naive reader following the container's symlink would find.
    let host_passwd = ws.path("host-passwd");
    std::fs::write(&host_passwd, "hostonly:x:4242:4242::/:/bin/sh\n").unwrap();
    let host_passwd = host_passwd.display().to_string();
    let agent = Agent::start(&ws.config());
    let k = "dso.secret.k=local/nu#k";
    let l = "dso.secret.l=local/nu#k";
    let none = |_: &str| {};
    // `k` takes its owner from `User`; `l` from `.uid`/`.gid` labels given as names.
    let app = container(
        &ws,
        &image,
        &[
            "--user",
            "app",
            "--label",
            k,
            "--label",
            l,
            "--label",
            "dso.secret.l.uid=svc",
            "--label",
            "dso.secret.l.gid=staff",
        ],
        none,
    );
    let staff = container(&ws, &image, &["--user", "app:staff", "--label", k], none);
    // Docker itself refuses to start `--user ghost`; a label can still name an unknown group.
    let unknown = container(
        &ws,
        &image,
        &[
            "--user",
            "app",
            "--label",
            k,
            "--label",
            "dso.secret.k.gid=ghost",
        ],
        none,
    );
    let symlinked = container(
        &ws,
        &image,
        &["--label", k, "--label", "dso.secret.k.uid=hostonly"],
        |id| passwd_symlink(id, &host_passwd),
    );
    for (c, file, owner) in [
        (&app, "k", "1000 1000"),
        (&app, "l", "2000 50"),
        (&staff, "k", "1000 50"),
    ] {
        c.wait_for(&format!("{DIR}/.ready"), &agent);
        assert_eq!(
            c.stat(&format!("{DIR}/{file}")),
            format!("400 {owner}"),
            "{mode}: {} {file}",
            c.name
        );
        assert_eq!(
            c.read(&format!("{DIR}/{file}")).as_deref(),
            Some(value.as_str())
        );
    }
    // The application itself (uid 1000) reads its 0400 file.
    assert_eq!(
        docker(&["exec", &app.id, "cat", &format!("{DIR}/k")]),
        value,
        "{mode}"
    );
    for (c, what) in [
        (&unknown, "no group `ghost` in the container's /etc/group"),
        (
            &symlinked,
            "no user `hostonly` in the container's /etc/passwd",
        ),
    ] {
        let line = eventually(&agent, &format!("a refusal: {what}"), || {
            agent
                .logs()
                .lines()
                .find(|l| l.contains(&c.name) && l.contains(what))
                .map(str::to_string)
        });
        assert!(
            line.contains("unknown_owner") && line.contains("nothing written"),
            "{mode}: {line}"
        );
        assert_eq!(c.ls(DIR), "", "{mode}: nothing written for {}", c.name);
    }
    assert_eq!(result(&agent, "unknown_owner"), 2.0, "{mode}");
    assert_eq!(
        by_mode(&agent, path_of(&mode)),
        2.0,
        "{mode}: every write on the path under test"
    );
    let logs = agent.logs();
    assert!(
        !logs.contains(&value) && !logs.contains("4242"),
        "{mode}: {logs}"
    );
    let layout = |c: &Container| c.ls(DIR) + &c.read(&format!("{DIR}/.ready")).unwrap();
    let before = [layout(&app), layout(&staff)];

    // An agent restart on the other write path finds every file in place (the digest keeps the
    // names; both paths resolve them to the same numbers): nothing rewritten.
    drop(agent);
    ws.set_write_mode(other);
    let agent = Agent::start(&ws.config());
    eventually(&agent, "every named-owner container found in place", || {
        (result(&agent, "unchanged") >= 2.0 && result(&agent, "unknown_owner") >= 2.0).then_some(())
    });
    assert_eq!(
        result(&agent, "success"),
        0.0,
        "{other}: {}",
        agent.get("/metrics").1
    );
    assert_eq!(by_mode(&agent, path_of(other)), 2.0, "{other}");
    assert_eq!(
        [layout(&app), layout(&staff)],
        before,
        "{other}: the same generations stay in place"
    );
}

/// The container's root replaces its `/etc/passwd` with a FIFO after the first write: the next
/// write refuses the container at once (the reader opens it `O_NONBLOCK` and reads regular files
/// only), the previous files stay, and the agent keeps serving. Direct path only: on the exec
/// path runc itself blocks opening that FIFO for every `docker exec` into the container, which
/// `agent.exec_timeout` bounds (`tests/it/starve.rs`).
#[test]
fn a_fifo_planted_as_etc_passwd_does_not_hang_the_agent() {
    if default_write_mode() == "exec" {
        return;
    }
    let image = Image::build();
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("fifo#k", "fifo-value-1");
    let agent = Agent::start(&ws.config());
    let c = container(
        &ws,
        &image,
        &["--user", "app", "--label", "dso.secret.k=local/fifo#k"],
        |_| {},
    );
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    // The last exec into this container: afterwards runc blocks on the FIFO.
    docker(&[
        "exec",
        "-u",
        "0",
        &c.id,
        "/bin/sh",
        "-c",
        "rm /etc/passwd && mkfifo /etc/passwd",
    ]);
    ws.set_secret("fifo#k", "fifo-value-2");
    let (result, message) = rotate_now(&ws, &agent, &c, "fifo");
    assert_eq!(result, "unknown_owner", "{message}");
    assert!(
        message.contains("/etc/passwd") && message.contains("not a regular file"),
        "{message}"
    );
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &c.id]);
    let on_host = format!("/proc/{pid}/root{DIR}/k");
    assert_eq!(
        std::fs::read_to_string(&on_host).unwrap(),
        "fifo-value-1",
        "the previous files stay"
    );
    assert_eq!(agent.get("/healthz").0, 200);
    assert_eq!(result_of(&ws, &c).unwrap().0, "unknown_owner");
}

/// An `/etc/passwd` bind-mounted from the host is on another mount than the container's root:
/// the direct path never reads account files across a mount (a symlink into the container's
/// `/proc`, a volume or a FUSE mount that never answers would be one too), so the container is
/// served through exec (`accounts_mount`), which reads the file inside the container.
#[test]
fn accounts_on_another_mount_are_read_through_exec() {
    let mode = default_write_mode();
    let image = Image::build();
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("bound-value");
    ws.set_secret("nb#k", &value);
    let bound = ws.path("bound-passwd");
    std::fs::write(
        &bound,
        "root:x:0:0::/:/bin/sh\nbound:x:3000:3001::/:/bin/sh\n",
    )
    .unwrap();
    let agent = Agent::start(&ws.config());
    let volume = format!("{}:/etc/passwd:ro", bound.display());
    let c = container(
        &ws,
        &image,
        &[
            "-v",
            &volume,
            "--label",
            "dso.secret.k=local/nb#k",
            "--label",
            "dso.secret.k.uid=bound",
        ],
        |_| {},
    );
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(c.stat(&format!("{DIR}/k")), "400 3000 0", "{mode}");
    assert_eq!(c.read(&format!("{DIR}/k")).as_deref(), Some(value.as_str()));
    assert_eq!(by_mode(&agent, "exec"), 1.0, "{mode}: served through exec");
    if mode != "exec" {
        assert_eq!(
            agent.metric("dso_direct_fallbacks_total{reason=\"accounts_mount\"}"),
            Some(1.0),
            "{}",
            agent.logs()
        );
    }
}
