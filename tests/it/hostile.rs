//! Hostile containers (issue 10; the threat model is SECURITY.md). DSO runs as root and writes into
//! a directory that the container's own processes can write too (Docker's `--tmpfs` is mode 1777):
//! everything there is hostile. Each test names its attacker class in its name:
//! - `nonroot_`: a non-root process in a labelled container — may spoil nothing (at most, before
//!   the first write, a refusal that names what it planted);
//! - `ctroot_`: the container's root user or a hostile image — may spoil its own delivery (a clear
//!   refusal), never get a false "success"/"unchanged", never harm the agent or anyone else;
//! - `hostuser_`: an unprivileged user on the host — gets no secret;
//! - `label_`: whoever starts the container (every label is untrusted input).
//!
//! `scripts/test` runs this module twice: on the direct path (`/proc/<pid>/root`) and with
//! `DSO_IT_WRITE_MODE=exec`. A test that matters for one path only says so and returns early on the
//! other. Entries a container would plant are planted from the host through `/proc/<pid>/root`
//! when there are many of them (50,000 directories take a shell loop minutes), owned by the
//! container's non-root user as if it had made them.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

const DIR: &str = "/run/secrets/dso";
const USER: &str = "1000:1000";

fn exec_path() -> bool {
    default_write_mode() == "exec"
}

/// Sum of `dso_injections_total` over every result: it grows by one per finished injection.
fn outcomes(agent: &Agent) -> f64 {
    let (_, body) = agent.get("/metrics");
    body.lines()
        .filter(|l| l.starts_with("dso_injections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The last result of `c` in `dso status --json`, with its message.
pub(crate) fn result_of(ws: &Workspace, c: &Container) -> Option<(String, String)> {
    let (code, out, _) = dso_with(Some(&ws.config()), &["status", "--json"]);
    if code != Some(0) {
        return None;
    }
    let s: serde_json::Value = serde_json::from_str(&out).ok()?;
    let mine = s["containers"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == c.name.as_str())?
        .clone();
    Some((
        mine["result"].as_str()?.to_string(),
        mine["message"].as_str().unwrap_or("").to_string(),
    ))
}

/// Waits for a result of `c` other than `not`.
fn wait_result(ws: &Workspace, agent: &Agent, c: &Container, not: &str) -> (String, String) {
    eventually(
        agent,
        &format!("a result for {} other than {not}", c.name),
        || result_of(ws, c).filter(|(r, _)| r != not),
    )
}

/// `dso inject C` and the result of that very injection.
/// [`outcomes`] once no job is finishing any more: a container's `.ready` appears a moment
/// before its job's outcome is counted (on the exec path, before the exec returns), so a count
/// taken right after `.ready` can be passed by that late outcome instead of the one awaited.
fn settled_outcomes(agent: &Agent) -> f64 {
    let mut last = outcomes(agent);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = outcomes(agent);
        if now == last {
            return now;
        }
        last = now;
    }
}

fn inject_now(ws: &Workspace, agent: &Agent, c: &Container) -> (String, String) {
    let before = settled_outcomes(agent);
    let (code, out, err) = dso_with(Some(&ws.config()), &["inject", &c.id]);
    assert_eq!(code, Some(0), "dso inject: {out}{err}");
    eventually(agent, "the outcome of `dso inject`", || {
        (outcomes(agent) > before).then_some(())
    });
    result_of(ws, c).unwrap_or_default()
}

/// `dso rotate local/<path>` (after `set_secret`) and the result of the rotation it causes in `c`.
pub(crate) fn rotate_now(
    ws: &Workspace,
    agent: &Agent,
    c: &Container,
    path: &str,
) -> (String, String) {
    let before = settled_outcomes(agent);
    let (code, out, err) = dso_with(Some(&ws.config()), &["rotate", &format!("local/{path}")]);
    assert_eq!(code, Some(0), "dso rotate: {out}{err}");
    eventually(agent, "the outcome of the rotation", || {
        (outcomes(agent) > before).then_some(())
    });
    result_of(ws, c).unwrap_or_default()
}

/// The agent, and a container that asks for `local/<path>#pw` as `pw` before that secret exists:
/// its first injection is refused (`provider_error`), so the test can plant what it wants before
/// the first write, then `set_secret` + [`inject_now`].
fn pending(ws: &Workspace, agent: &Agent, path: &str, args: &[&str]) -> Container {
    let label = format!("dso.secret.pw=local/{path}#pw");
    let mut all = vec!["--tmpfs", DIR, "--label", &label];
    all.extend_from_slice(args);
    let c = ws.container(&all);
    wait_result(ws, agent, &c, "");
    assert_eq!(result_of(ws, &c).unwrap().0, "provider_error");
    c
}

fn sh(c: &Container, user: &str, script: &str) -> (bool, String) {
    let (ok, out, err) = docker_try(&["exec", "-u", user, &c.id, "/bin/sh", "-c", script]);
    (ok, format!("{out}{err}"))
}

fn sh_ok(c: &Container, user: &str, script: &str) -> String {
    let (ok, out) = sh(c, user, script);
    assert!(ok, "`{script}` as {user} in {}: {out}", c.name);
    out
}

fn readlink(c: &Container, path: &str) -> String {
    sh(c, "0", &format!("readlink {path}")).1.trim().to_string()
}

fn pid_of(c: &Container) -> u32 {
    docker(&["inspect", "-f", "{{.State.Pid}}", &c.id])
        .parse()
        .unwrap()
}

/// `path` inside the container, seen from the host.
fn host_path(c: &Container, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{path}", pid_of(c)))
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// A chain of `depth` directories `d/d/d/…` at `top`, owned by uid/gid 1000 (built with *at
/// calls: the path is far longer than PATH_MAX).
fn plant_chain(top: &Path, depth: usize) {
    std::fs::create_dir(top).unwrap();
    // SAFETY: plain syscalls on fds this function owns; each is closed once.
    unsafe {
        assert_eq!(libc::chown(cstr(top).as_ptr(), 1000, 1000), 0);
        let mut fd = libc::open(cstr(top).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        assert!(fd >= 0);
        let d = c"d";
        for _ in 0..depth {
            assert_eq!(libc::mkdirat(fd, d.as_ptr(), 0o755), 0, "mkdirat");
            assert_eq!(libc::fchownat(fd, d.as_ptr(), 1000, 1000, 0), 0);
            let next = libc::openat(fd, d.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            assert!(next >= 0, "openat");
            libc::close(fd);
            fd = next;
        }
        libc::close(fd);
    }
}

/// The agent, started under a 2 MiB stack (`ulimit -s 2048`), so that a recursion proportional to
/// anything a container controls shows as a crash whatever the machine's limits.
fn small_stack_agent(ws: &Workspace) -> Agent {
    Agent::start_wrapped(
        &ws.config(),
        &[],
        &["sh", "-c", "ulimit -s 2048 && exec \"$@\"", "sh"],
    )
}

#[test]
fn nonroot_a_50000_deep_chain_at_a_generation_name_neither_kills_nor_stalls_the_agent() {
    let ws = Workspace::new();
    ws.write_config("");
    let agent = small_stack_agent(&ws);
    let c = pending(&ws, &agent, "deep", &["--user", USER]);
    plant_chain(&host_path(&c, &format!("{DIR}/..data_zz")), 50_000);
    let value = unique("deep-value");
    ws.set_secret("deep#pw", &value);
    let (result, message) = inject_now(&ws, &agent, &c);
    assert_eq!(result, "success", "{message}\n{}", agent.logs());
    assert_eq!(
        c.read(&format!("{DIR}/pw")).as_deref(),
        Some(value.as_str())
    );
    // A rotation too (the old generation is cleaned up, the chain never walked).
    ws.set_secret("deep#pw", &format!("{value}-2"));
    let (result, message) = rotate_now(&ws, &agent, &c, "deep");
    assert_eq!(result, "success", "{message}\n{}", agent.logs());
    let mut agent = agent;
    assert!(agent.is_running(), "{}", agent.logs());
    assert_eq!(agent.get("/healthz").0, 200);
    assert!(
        !c.ls(&format!("{DIR}/..data_zz")).is_empty(),
        "the planted chain is not DSO's: never touched"
    );
}

#[test]
fn nonroot_300000_planted_entries_keep_healthz_fast_and_others_served() {
    let ws = Workspace::new();
    ws.write_config("");
    let agent = Arc::new(Agent::start(&ws.config()));
    let c = pending(&ws, &agent, "big", &["--user", USER]);
    // 300,000 entries with DSO's generation prefix, right in the secrets directory.
    let dir = host_path(&c, DIR);
    for i in 0..300_000 {
        std::fs::File::create(dir.join(format!("..data_f{i:06}"))).unwrap();
    }
    let value = unique("big-value");
    ws.set_secret("big#pw", &value);
    ws.set_secret("other#pw", "other-value");

    // /healthz every 10 ms while the planted container is injected and another one served. The
    // same probe for a while before gives the machine's own noise (a loaded shared CI host delays
    // any process by tens of milliseconds); the agent may add at most 100 ms to it. (The walk
    // this guards against stalled /healthz for seconds.)
    let probe = |stop: Arc<AtomicBool>| {
        let addr = agent.admin.clone();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let (code, _) = http_get(&addr, "/healthz");
                assert_eq!(code, 200);
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            worst
        })
    };
    let quiet = Arc::new(AtomicBool::new(false));
    let baseline = probe(quiet.clone());
    std::thread::sleep(Duration::from_secs(2));
    quiet.store(true, Ordering::SeqCst);
    let baseline = baseline.join().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = probe(stop.clone());
    let (result, message) = inject_now(&ws, &agent, &c);
    let other = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.pw=local/other#pw"]);
    other.wait_for(&format!("{DIR}/.ready"), &agent);
    stop.store(true, Ordering::SeqCst);
    let worst = probe.join().unwrap();
    assert_eq!(result, "success", "{message}\n{}", agent.logs());
    assert_eq!(
        c.read(&format!("{DIR}/pw")).as_deref(),
        Some(value.as_str())
    );
    assert_eq!(
        other.read(&format!("{DIR}/pw")).as_deref(),
        Some("other-value")
    );
    assert!(
        worst < baseline + Duration::from_millis(100),
        "/healthz took {worst:?} while a container with 300,000 planted entries was injected \
         ({baseline:?} at most before)"
    );
}

#[test]
fn nonroot_a_planted_symlink_at_a_secret_name_is_replaced_before_the_first_write() {
    let ws = Workspace::new();
    ws.write_config("");
    let agent = Agent::start(&ws.config());
    let c = pending(&ws, &agent, "sym", &["--user", USER]);
    sh_ok(
        &c,
        USER,
        &format!("mkdir -p /tmp/e && echo attacker > /tmp/e/pw && ln -s /tmp/e/pw {DIR}/pw"),
    );
    let value = unique("sym-value");
    ws.set_secret("sym#pw", &value);
    let (result, message) = inject_now(&ws, &agent, &c);
    assert_eq!(result, "success", "{message}");
    assert_eq!(
        c.read(&format!("{DIR}/pw")).as_deref(),
        Some(value.as_str())
    );
    assert_eq!(readlink(&c, &format!("{DIR}/pw")), "..data/pw");
    assert_eq!(c.read("/tmp/e/pw").as_deref(), Some("attacker\n"));
}

#[test]
fn ctroot_a_symlink_swapped_in_after_the_first_write_is_found_and_replaced() {
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("sym2-value");
    ws.set_secret("sym2#pw", &value);
    let agent = Agent::start(&ws.config());
    let c = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.pw=local/sym2#pw"]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    sh_ok(
        &c,
        "0",
        &format!("echo attacker > /tmp/pw && ln -sfn /tmp/pw {DIR}/pw"),
    );
    let (result, message) = inject_now(&ws, &agent, &c);
    assert_eq!(result, "success", "not `unchanged`: {message}");
    assert_eq!(
        c.read(&format!("{DIR}/pw")).as_deref(),
        Some(value.as_str())
    );
    assert_eq!(readlink(&c, &format!("{DIR}/pw")), "..data/pw");
}

#[test]
fn nonroot_after_the_first_write_can_neither_replace_an_entry_nor_plant_a_new_one() {
    // DSO takes the directory over at its first write (root-owned, 0755): the sticky bit of
    // Docker's 1777 tmpfs alone stops a non-root user replacing DSO's entries, but not creating
    // the names DSO will use next (a staging directory, the next generation, a new secret name).
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("own-value");
    ws.set_secret("own#pw", &value);
    let agent = Agent::start(&ws.config());
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--user",
        USER,
        "--label",
        "dso.secret.pw=local/own#pw",
    ]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    for attempt in [
        format!("ln -sfn /tmp/x {DIR}/pw"),
        format!("mv {DIR}/.ready /tmp/r"),
        format!("echo x > {DIR}/.ready"),
        format!("mkdir {DIR}/..dso_staging"),
        format!("mkdir {DIR}/..data_0000000000000000"),
        format!("touch {DIR}/pw2"),
    ] {
        let (ok, out) = sh(&c, USER, &attempt);
        assert!(!ok, "a non-root user could `{attempt}`: {out}");
    }
    assert_eq!(
        sh_ok(&c, "0", &format!("stat -c '%a %u %g' {DIR}")).trim(),
        "755 0 0"
    );
    // Rotations still land.
    ws.set_secret("own#pw", &format!("{value}-2"));
    let (result, message) = rotate_now(&ws, &agent, &c, "own");
    assert_eq!(result, "success", "{message}");
    assert_eq!(
        c.read(&format!("{DIR}/pw")).as_deref(),
        Some(format!("{value}-2").as_str())
    );
}

#[test]
fn nonroot_a_fake_generation_with_a_copied_ready_is_not_taken_for_unchanged() {
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("fake-value");
    ws.set_secret("fake#pw", &value);
    let labels = [
        "--tmpfs",
        DIR,
        "--user",
        USER,
        "--label",
        "dso.secret.pw=local/fake#pw",
    ];
    // Container A is served; its `.ready` holds the digest any container with the same files gets.
    let agent = Agent::start(&ws.config());
    let a = ws.container(&labels);
    a.wait_for(&format!("{DIR}/.ready"), &agent);
    let digest = a.read(&format!("{DIR}/.ready")).unwrap().trim().to_string();
    drop(agent);
    // Container B (same files) starts while no agent runs and forges a complete set.
    let b = ws.container(&labels);
    sh_ok(
        &b,
        USER,
        &format!(
            "cd {DIR} && mkdir ..data_fake && echo attacker > ..data_fake/pw && \
             ln -s ..data_fake ..data && ln -s ..data/pw pw && echo {digest} > .ready"
        ),
    );
    let agent = Agent::start(&ws.config());
    let (result, message) = wait_result(&ws, &agent, &b, "");
    assert_eq!(result, "success", "{message}");
    assert_eq!(
        b.read(&format!("{DIR}/pw")).as_deref(),
        Some(value.as_str())
    );
}

#[test]
fn ctroot_content_changed_under_an_intact_ready_is_rewritten() {
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("ro-value");
    ws.set_secret("ro#pw", &value);
    let agent = Agent::start(&ws.config());
    let c = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.pw=local/ro#pw"]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    sh_ok(&c, "0", &format!("echo attacker > {DIR}/..data/pw"));
    let (result, message) = inject_now(&ws, &agent, &c);
    assert_eq!(result, "success", "not `unchanged`: {message}");
    assert_eq!(
        c.read(&format!("{DIR}/pw")).as_deref(),
        Some(value.as_str())
    );
}

#[test]
fn nonroot_a_directory_or_fifo_at_a_name_before_the_first_write() {
    let ws = Workspace::new();
    ws.write_config("");
    let agent = Agent::start(&ws.config());
    let empty = pending(&ws, &agent, "ent", &["--user", USER]);
    let full = pending(&ws, &agent, "ent", &["--user", USER]);
    let fifo = pending(&ws, &agent, "ent", &["--user", USER]);
    sh_ok(&empty, USER, &format!("mkdir {DIR}/pw"));
    sh_ok(&full, USER, &format!("mkdir {DIR}/pw && touch {DIR}/pw/x"));
    sh_ok(&fifo, USER, &format!("mkfifo {DIR}/pw"));
    let value = unique("ent-value");
    ws.set_secret("ent#pw", &value);
    // A foreign empty directory is removed.
    let (result, message) = inject_now(&ws, &agent, &empty);
    assert_eq!(result, "success", "{message}");
    assert_eq!(
        empty.read(&format!("{DIR}/pw")).as_deref(),
        Some(value.as_str())
    );
    // Anything else refuses the container, naming the entry; nothing of the value is written.
    for c in [&full, &fifo] {
        let (result, message) = inject_now(&ws, &agent, c);
        assert_eq!(result, "foreign_entry", "{message}");
        assert!(message.contains("`pw`"), "the entry is named: {message}");
        assert!(c.read(&format!("{DIR}/.ready")).is_none());
        assert!(!agent.logs().contains(&value));
    }
    let mut agent = agent;
    assert!(agent.is_running());
}

#[test]
fn ctroot_a_directory_or_fifo_swapped_in_after_the_first_write() {
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("ent2-value");
    ws.set_secret("ent2#pw", &value);
    let agent = Agent::start(&ws.config());
    let labels = ["--tmpfs", DIR, "--label", "dso.secret.pw=local/ent2#pw"];
    let full = ws.container(&labels);
    let fifo = ws.container(&labels);
    let empty = ws.container(&labels);
    for c in [&full, &fifo, &empty] {
        c.wait_for(&format!("{DIR}/.ready"), &agent);
    }
    sh_ok(
        &full,
        "0",
        &format!("rm {DIR}/pw && mkdir {DIR}/pw && touch {DIR}/pw/x"),
    );
    sh_ok(&fifo, "0", &format!("rm {DIR}/pw && mkfifo {DIR}/pw"));
    sh_ok(&empty, "0", &format!("rm {DIR}/pw && mkdir {DIR}/pw"));
    for c in [&full, &fifo] {
        let (result, message) = inject_now(&ws, &agent, c);
        assert_eq!(result, "foreign_entry", "not `unchanged`: {message}");
        assert!(message.contains("`pw`"), "the entry is named: {message}");
    }
    let (result, message) = inject_now(&ws, &agent, &empty);
    assert_eq!(result, "success", "{message}");
    assert_eq!(
        empty.read(&format!("{DIR}/pw")).as_deref(),
        Some(value.as_str())
    );
}

/// A cgroup path for a host process that merely *contains* the container id.
fn impostor_cgroup(id: &str, tag: &str) -> PathBuf {
    let v2 = run(Command::new("stat").args(["-fc", "%T", "/sys/fs/cgroup"]))
        .1
        .trim()
        == "cgroup2fs";
    if v2 {
        PathBuf::from(format!("/sys/fs/cgroup/{tag}/docker-{id}.scope"))
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/pids/{tag}/docker/{id}"))
    }
}

#[test]
fn hostuser_a_process_at_the_containers_pid_in_a_cgroup_named_after_it_gets_nothing() {
    // The direct path only (exec never looks at pids). The agent runs in a PID namespace of its own
    // where a host process was given the pid Docker reports for the container (as a reused pid
    // would be), in a cgroup whose path contains the container id, with a tmpfs at the container's
    // secrets directory in its own mount namespace.
    if exec_path() {
        return;
    }
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_write_mode("auto");
    let value = unique("impostor-value");
    ws.set_secret("imp#pw", &value);
    let dir = ws.path("imp");
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.to_str().unwrap().to_string();
    let c = ws.container(&[
        "--tmpfs",
        &dir,
        "--label",
        &format!("dso.dir={dir}"),
        "--label",
        "dso.secret.pw=local/imp#pw",
    ]);
    let pid = pid_of(&c);
    let tag = unique("dso-impostor");
    let cg = impostor_cgroup(&c.id, &tag);
    std::fs::create_dir_all(&cg).unwrap();
    struct Rmdir(PathBuf, PathBuf);
    impl Drop for Rmdir {
        fn drop(&mut self) {
            for _ in 0..100 {
                let mut p = self.0.clone();
                while p.starts_with(&self.1) && std::fs::remove_dir(&p).is_ok() {
                    p.pop();
                }
                if !self.1.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let top = cg
        .ancestors()
        .nth(if cg.ends_with(".scope") { 1 } else { 2 });
    let _rm = Rmdir(cg.clone(), top.unwrap().to_path_buf());
    let ready = ws.path("impostor-ready");
    let script = format!(
        "echo {prev} > /proc/sys/kernel/ns_last_pid || exit 1; \
         unshare --mount --propagation private sh -c 'mount -t tmpfs tmpfs {dir} && echo $$ > {procs} && touch {ready} && exec sleep 600' & \
         while [ ! -e {ready} ]; do sleep 0.05; done; exec \"$@\"",
        prev = pid - 1,
        procs = cg.join("cgroup.procs").display(),
        ready = ready.display(),
    );
    let agent = Agent::start_wrapped(
        &ws.config(),
        &[],
        &[
            "unshare",
            "--pid",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
            &script,
            "sh",
        ],
    );
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    let host_pid: u32 = procs.trim().parse().expect("the impostor runs");
    let impostor_dir = PathBuf::from(format!("/proc/{host_pid}/root{dir}"));
    // The real container gets its files (through exec: the pid is not provably its own); the
    // impostor gets nothing.
    let outcome = eventually(&agent, "an outcome for the container", || {
        result_of(&ws, &c).filter(|(r, _)| !r.is_empty())
    });
    let planted: Vec<_> = std::fs::read_dir(&impostor_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        planted.is_empty(),
        "the impostor received {planted:?} ({outcome:?})\n{}",
        agent.logs()
    );
    assert_eq!(outcome.0, "success", "{}", outcome.1);
    assert_eq!(
        c.read(&format!("{dir}/pw")).as_deref(),
        Some(value.as_str())
    );
    assert_eq!(
        agent.metric("dso_direct_fallbacks_total{reason=\"cgroup_mismatch\"}"),
        Some(1.0),
        "impostor host pid {host_pid}, container pid {pid}\n{}\n{}",
        agent.get("/metrics").1,
        agent.logs()
    );
}

const NOSTAT_IMAGE: &str = "dso-test/nostat:latest";

/// An image without `stat`: `sh` is dash (busybox's shell would run its `stat` applet even without
/// a link), every other tool a busybox applet; /tmp 1777. Built offline from the host's files.
fn nostat_image() -> &'static str {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        if docker_try(&["image", "inspect", NOSTAT_IMAGE]).0 {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let (ok, out, err) = run(Command::new("sh").arg("-c").arg(format!(
            "set -e; cd {r}; mkdir -p bin run tmp lib64 lib/x86_64-linux-gnu; chmod 1777 tmp; \
             cp /bin/busybox bin/; cp /bin/dash bin/sh; \
             for l in $(ldd /bin/dash | grep -o '/lib[^ ]*'); do cp \"$l\" \".$l\"; done; \
             for a in $(/bin/busybox --list); do \
               case $a in busybox|stat|sh) ;; *) ln -s busybox bin/$a ;; esac; done; \
             tar -c . | docker import -c 'ENV PATH=/bin' - {NOSTAT_IMAGE}",
            r = root.path().display()
        )));
        assert!(ok, "building {NOSTAT_IMAGE}: {out}{err}");
        let (ok, out, err) = docker_try(&[
            "run",
            "--rm",
            NOSTAT_IMAGE,
            "/bin/sh",
            "-c",
            "command -v stat || echo none",
        ]);
        assert!(
            ok && out.trim() == "none",
            "{NOSTAT_IMAGE} has stat: {out}{err}"
        );
    });
    NOSTAT_IMAGE
}

#[test]
fn nonroot_a_symlinked_dir_in_an_image_without_stat_never_puts_a_secret_on_disk() {
    let ws = Workspace::new();
    ws.write_config("");
    let agent = Agent::start(&ws.config());
    let name = unique("nostat");
    let scope = format!("dso.test={}", ws.scope);
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &scope,
        "--user",
        USER,
        "--tmpfs",
        "/run/secrets",
        "--label",
        "dso.dir=/run/secrets/dso",
        "--label",
        "dso.secret.pw=local/nostat#pw",
        nostat_image(),
        "/bin/sleep",
        "600",
    ]);
    let c = Container::docker(id, name);
    wait_result(&ws, &agent, &c, "");
    sh_ok(
        &c,
        USER,
        "mkdir /tmp/leak && ln -s /tmp/leak /run/secrets/dso",
    );
    let value = unique("nostat-value");
    ws.set_secret("nostat#pw", &value);
    let (result, message) = inject_now(&ws, &agent, &c);
    assert_eq!(result, "not_tmpfs", "{message}");
    assert_eq!(c.ls("/tmp/leak"), "", "nothing written through the symlink");
    c.assert_not_on_disk(&value);
}

#[test]
fn label_setuid_setgid_and_sticky_modes_are_refused() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("mode#pw", "mode-value");
    let agent = Agent::start(&ws.config());
    for mode in ["4755", "2755", "1777", "04400"] {
        let label = format!("dso.secret.pw.mode={mode}");
        let c = ws.container(&[
            "--tmpfs",
            DIR,
            "--label",
            "dso.secret.pw=local/mode#pw",
            "--label",
            &label,
        ]);
        let (result, message) = wait_result(&ws, &agent, &c, "");
        assert_eq!(result, "invalid_spec", "mode {mode}: {message}");
        assert!(message.contains("dso.secret.pw.mode"), "{message}");
        assert_eq!(c.ls(DIR), "", "nothing written for mode {mode}");
    }
}

#[test]
fn label_reserved_names_are_refused() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("res#pw", "res-value");
    let agent = Agent::start(&ws.config());
    for name in ["..data_x", "..data", "..dso_staging", ".ready", "...x"] {
        let label = format!("dso.secret.{name}=local/res#pw");
        let c = ws.container(&["--tmpfs", DIR, "--label", &label]);
        let (result, message) = wait_result(&ws, &agent, &c, "");
        assert_eq!(result, "invalid_spec", "name {name}: {message}");
        assert!(message.contains(name), "{message}");
        assert_eq!(c.ls(DIR), "", "nothing written for {name}");
    }
}
