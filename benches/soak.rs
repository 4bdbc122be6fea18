//! Soak benchmark against the real Docker Engine and a private OpenBao dev server (not a test: it
//! prints figures; the only checks are sanity checks).
//!
//! The real agent (release build, JSON logs) runs for `DSO_SOAK_SECS` (default 1800 s) under:
//! - container churn: one labelled busybox container started every `DSO_SOAK_CHURN_MS` (default
//!   1000 ms), the oldest removed to keep `DSO_SOAK_CONTAINERS` (default 20) running; each uses
//!   two of three secrets (`bao/soak/{a,b,c}#password`);
//! - rotation: every `DSO_SOAK_ROTATE_SECS` (default 5 s) one of the three secrets gets a new value
//!   (KV v2 write), round-robin; the agent re-checks them every `refresh_interval = "2s"`;
//! - a backend outage in the middle: the private `bao server -dev` is killed for
//!   `DSO_SOAK_OUTAGE_SECS` (default 60 s), then started again on the same port and the secrets
//!   re-created (a dev server keeps nothing across restarts).
//!
//! Every `DSO_SOAK_SAMPLE_SECS` (default 30 s) it samples the agent's VmRSS, VmHWM, threads and open
//! fds from /proc, and `dso_injections_total` by result, `dso_rotations_total`,
//! `dso_cache_entries`, `dso_managed_containers` from `/metrics`; it prints a table, then the
//! start/end figures and a growth verdict (mean RSS of the last third of the samples vs the
//! middle third; open fds at the end vs the start).
//!
//! Run: `scripts/test-env.sh up && . target/test-env/env && cargo bench --bench soak`
//! (needs DSO_TEST_BAO_BIN and DSO_TEST_IMAGE). A 3-minute check: `DSO_SOAK_SECS=180`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DIR: &str = "/run/secrets/dso";
const PROVIDER: &str = "bao";
const TOKEN: &str = "soak-root";
const SECRETS: [&str; 3] = ["a", "b", "c"];
const LOG_TAIL: usize = 200;

/// Minimal HTTP/1.0 request → (status, body); None when the server cannot be reached.
fn http(addr: &str, method: &str, path: &str, token: &str, body: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\nX-Vault-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((status, body))
}

/// A private `bao server -dev` on a fixed port, killed on drop (and by `stop`).
struct Bao {
    bin: String,
    addr: String,
    child: Option<Child>,
}

impl Bao {
    fn start(bin: &str, addr: &str) -> Bao {
        let mut b = Bao {
            bin: bin.to_string(),
            addr: addr.to_string(),
            child: None,
        };
        b.restart();
        b
    }

    fn restart(&mut self) {
        let child = Command::new(&self.bin)
            .args(["server", "-dev"])
            .arg(format!("-dev-root-token-id={TOKEN}"))
            .arg(format!("-dev-listen-address={}", self.addr))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        // The dev server mounts `secret/` (KV v2) once it is unsealed: wait for a write to work.
        while !self.put("soak/probe", "x") {
            assert!(
                Instant::now() < deadline,
                "private bao did not start on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// KV v2 write of `password=VALUE`; false when the server did not accept it.
    fn put(&self, path: &str, value: &str) -> bool {
        let body = format!("{{\"data\":{{\"password\":\"{value}\"}}}}");
        matches!(
            http(
                &self.addr,
                "POST",
                &format!("/v1/secret/data/{path}"),
                TOKEN,
                &body
            ),
            Some((200 | 204, _))
        )
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `VmRSS`, `VmHWM` (KiB) and `Threads` from /proc/PID/status.
fn proc_status(pid: u32) -> (u64, u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

struct Sample {
    t: f64,
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
    fds: u64,
    cpu: f64,
    injections: BTreeMap<String, f64>,
    rotations: BTreeMap<String, f64>,
    cache_entries: f64,
    managed: f64,
    running: usize,
    provider_up: f64,
    stale_served: f64,
}

fn sample(pid: u32, admin: &str, t: f64, running: usize) -> Sample {
    let (rss_kb, hwm_kb, threads) = proc_status(pid);
    let m = Metrics(
        http(admin, "GET", "/metrics", "", "")
            .map(|r| r.1)
            .unwrap_or_default(),
    );
    Sample {
        t,
        rss_kb,
        hwm_kb,
        threads,
        fds: open_fds(pid),
        cpu: proc_cpu_secs(pid),
        injections: m.by_label("dso_injections_total{result="),
        rotations: m.by_label("dso_rotations_total{result="),
        cache_entries: m.get("dso_cache_entries"),
        managed: m.get("dso_managed_containers"),
        running,
        provider_up: m.get(&format!("dso_provider_up{{provider=\"{PROVIDER}\"}}")),
        stale_served: m.get("dso_cache_stale_served_total"),
    }
}

fn get(m: &BTreeMap<String, f64>, k: &str) -> f64 {
    m.get(k).copied().unwrap_or(0.0)
}

/// Results that are not failures: delivered, already in place, or the container went away
/// (`container_gone` also counts every `die`/`destroy` event on the host, scoped or not).
fn not_a_failure(result: &str) -> bool {
    matches!(
        result,
        "success" | "unchanged" | "duplicate" | "container_gone"
    )
}

/// Injections that delivered nothing because something failed.
fn failed_injections(m: &BTreeMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| !not_a_failure(k))
        .map(|(_, v)| v)
        .sum()
}

fn print_row(s: &Sample, phase: &str) {
    println!(
        "{:>6.0} {:>8.1} {:>8.1} {:>4} {:>4} {:>7.1} {:>8.0} {:>6.0} {:>6.0} {:>6.0} {:>8.0} {:>6.0} {:>6.0} {:>5.0} {:>5.0} {:>4} {:>3.0} {:>6.0}  {phase}",
        s.t,
        s.rss_kb as f64 / 1024.0,
        s.hwm_kb as f64 / 1024.0,
        s.threads,
        s.fds,
        s.cpu,
        get(&s.injections, "success"),
        get(&s.injections, "unchanged"),
        get(&s.injections, "container_gone"),
        failed_injections(&s.injections),
        get(&s.rotations, "success"),
        get(&s.rotations, "failed"),
        get(&s.rotations, "unchanged"),
        s.cache_entries,
        s.managed,
        s.running,
        s.provider_up,
        s.stale_served,
    );
    let _ = std::io::stdout().flush();
}

/// A log message with what varies per line (`container names`, exit codes, Docker's own error
/// text after the first colon that follows them) blanked, so that lines group by kind.
fn shape(msg: &str) -> String {
    let named = msg
        .split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 1 { "…" } else { part })
        .collect::<Vec<_>>()
        .join("`");
    let out = named
        .split_whitespace()
        .map(|w| {
            let digits = w.trim_end_matches(':');
            if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                "N"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    // "...: injection command exited with N: <Docker's message naming the container>".
    for cut in [" exited with N", " status code N"] {
        if let Some(i) = out.find(cut) {
            return out[..i + cut.len()].to_string();
        }
    }
    out.chars().take(120).collect()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = env_num("DSO_SOAK_SECS", 1800).max(30);
    let keep = env_num("DSO_SOAK_CONTAINERS", 20).max(1) as usize;
    let churn = Duration::from_millis(env_num("DSO_SOAK_CHURN_MS", 1000).max(50));
    let rotate = Duration::from_secs(env_num("DSO_SOAK_ROTATE_SECS", 5).max(1));
    let outage = Duration::from_secs(env_num("DSO_SOAK_OUTAGE_SECS", 60));
    let every = Duration::from_secs(env_num("DSO_SOAK_SAMPLE_SECS", 30).max(1));
    let bao_bin = env_or("DSO_TEST_BAO_BIN", "bao");
    let image = env_or("DSO_TEST_IMAGE", "dso-test/busybox:latest");

    let uniq = format!(
        "soak{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 1_000_000)
            .unwrap_or(0)
    );
    let scope_label = format!("dso.bench={uniq}");

    // The private backend on a port of its own (bound once to find a free one).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let bao_addr = format!("127.0.0.1:{port}");
    let bao = Arc::new(Mutex::new(Bao::start(&bao_bin, &bao_addr)));
    // Current value of each secret (what the backend holds, re-created after the outage).
    let values: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        SECRETS.iter().map(|s| format!("{s}-v0")).collect(),
    ));
    {
        let b = bao.lock().unwrap();
        for (s, v) in SECRETS.iter().zip(values.lock().unwrap().iter()) {
            assert!(b.put(&format!("soak/{s}"), v), "initial write of soak/{s}");
        }
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("dso.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nlisten = \"127.0.0.1:0\"\nscope = \"{scope_label}\"\nreconcile_interval = \"1m\"\n\
             state_dir = \"{}\"\nadmin_socket = \"{}\"\n\n\
             [providers.{PROVIDER}]\ntype = \"vault\"\naddress = \"http://{bao_addr}\"\n\
             token_env = \"DSO_SOAK_BAO_TOKEN\"\nrefresh_interval = \"2s\"\ntimeout = \"2s\"\n",
            dir.path().join("state").display(),
            dir.path().join("dso.sock").display(),
        ),
    )
    .expect("config");

    // The agent: release build, JSON logs; the last lines kept, warnings and errors counted.
    let bin = env!("CARGO_BIN_EXE_dso");
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["agent", "--log-format", "json"])
        .env("DSO_SOAK_BAO_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    let pid = child.id();
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::new(Mutex::new(VecDeque::new()));
    let admin_addr: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let connected = Arc::new(AtomicBool::new(false));
    let (warns, errors, log_lines) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let levels: Arc<Mutex<BTreeMap<String, u64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    for stream in [
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let (tail, admin_addr, connected) = (tail.clone(), admin_addr.clone(), connected.clone());
        let (warns, errors, log_lines, levels) = (
            warns.clone(),
            errors.clone(),
            log_lines.clone(),
            levels.clone(),
        );
        std::thread::spawn(move || {
            for l in BufReader::new(stream).lines().map_while(Result::ok) {
                log_lines.fetch_add(1, Ordering::Relaxed);
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                    let msg = v.get("message").and_then(|m| m.as_str()).unwrap_or("");
                    match v.get("level").and_then(|m| m.as_str()) {
                        Some("WARN") => {
                            warns.fetch_add(1, Ordering::Relaxed);
                            *levels
                                .lock()
                                .unwrap()
                                .entry(format!("WARN {}", shape(msg)))
                                .or_default() += 1;
                        }
                        Some("ERROR") => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            *levels
                                .lock()
                                .unwrap()
                                .entry(format!("ERROR {}", shape(msg)))
                                .or_default() += 1;
                        }
                        _ => {}
                    }
                    if msg.starts_with("admin endpoint listening") {
                        if let Some(a) = v.get("addr").and_then(|a| a.as_str()) {
                            *admin_addr.lock().unwrap() = Some(a.to_string());
                        }
                    }
                    if msg.starts_with("docker event stream connected") {
                        connected.store(true, Ordering::SeqCst);
                    }
                }
                let mut t = tail.lock().unwrap();
                t.push_back(l);
                if t.len() > LOG_TAIL {
                    t.pop_front();
                }
            }
        });
    }
    let mut guard = Cleanup {
        agent: Some(child),
        scope_label: scope_label.clone(),
    };
    let dump = |tail: &Arc<Mutex<VecDeque<String>>>| {
        tail.lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let admin = loop {
        if connected.load(Ordering::SeqCst) {
            if let Some(a) = admin_addr.lock().unwrap().clone() {
                break a;
            }
        }
        if let Some(Ok(Some(st))) = guard.agent.as_mut().map(|c| c.try_wait()) {
            panic!("agent exited with {st}; logs:\n{}", dump(&tail));
        }
        assert!(
            Instant::now() < deadline,
            "agent not ready in 60 s; logs:\n{}",
            dump(&tail)
        );
        std::thread::sleep(Duration::from_millis(25));
    };

    println!(
        "DSO soak: {secs} s; churn: 1 container / {} ms, keep {keep}; rotation every {} s over {} secrets \
         (refresh_interval 2s); backend outage {} s in the middle (private bao on {bao_addr}); \
         sample every {} s; agent pid {pid}",
        churn.as_millis(),
        rotate.as_secs(),
        SECRETS.len(),
        outage.as_secs(),
        every.as_secs()
    );
    println!(
        "{:>6} {:>8} {:>8} {:>4} {:>4} {:>7} {:>8} {:>6} {:>6} {:>6} {:>8} {:>6} {:>6} {:>5} {:>5} {:>4} {:>3} {:>6}  phase",
        "t(s)", "RSS MiB", "HWM MiB", "thr", "fds", "cpu s", "inj ok", "unchg", "gone", "inj!ok", "rot ok",
        "rot!ok", "rot=", "cache", "mngd", "run", "up", "stale"
    );
    let _ = std::io::stdout().flush();

    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let outage_from = start + Duration::from_secs(secs / 2).saturating_sub(outage / 2);
    let outage_to = outage_from + outage;
    let stop = Arc::new(AtomicBool::new(false));
    let in_outage = Arc::new(AtomicBool::new(false));
    let running: Arc<Mutex<VecDeque<String>>> = Arc::new(Mutex::new(VecDeque::new()));
    let (started_n, run_failed, removed_n, puts_ok, puts_failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );

    std::thread::scope(|s| {
        // Churn: start one, remove the oldest beyond `keep` (on a thread of its own, so that a
        // slow `docker rm` does not slow the starts down).
        let (to_remove, removals) = std::sync::mpsc::channel::<String>();
        {
            let removed_n = removed_n.clone();
            s.spawn(move || {
                for old in removals {
                    if docker_try(&["rm", "-f", &old]).0 {
                        removed_n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        {
            let (stop, running, started_n, run_failed) = (
                stop.clone(),
                running.clone(),
                started_n.clone(),
                run_failed.clone(),
            );
            let (scope_label, image, uniq) = (&scope_label, &image, &uniq);
            s.spawn(move || {
                let mut next = Instant::now();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (x, y) = (SECRETS[i as usize % 3], SECRETS[(i as usize + 1) % 3]);
                    let name = format!("dso-{uniq}-{i}");
                    let lx = format!("dso.secret.pw_{x}={PROVIDER}/soak/{x}#password");
                    let ly = format!("dso.secret.pw_{y}={PROVIDER}/soak/{y}#password");
                    let (ok, id, _) = docker_try(&[
                        "run",
                        "-d",
                        "--name",
                        &name,
                        "--label",
                        scope_label,
                        "--label",
                        &lx,
                        "--label",
                        &ly,
                        "--tmpfs",
                        DIR,
                        image,
                        "/bin/sleep",
                        "7200",
                    ]);
                    if ok {
                        started_n.fetch_add(1, Ordering::Relaxed);
                        running.lock().unwrap().push_back(id);
                    } else {
                        run_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                    let oldest = {
                        let mut r = running.lock().unwrap();
                        if r.len() > keep {
                            r.pop_front()
                        } else {
                            None
                        }
                    };
                    if let Some(old) = oldest {
                        let _ = to_remove.send(old);
                    }
                    next += churn;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now; // behind schedule: docker is the bottleneck, do not burst
                    }
                }
            });
        }
        // Rotation: one secret every `rotate`, round-robin; skipped while the backend is down.
        {
            let (stop, in_outage, bao, values, puts_ok, puts_failed) = (
                stop.clone(),
                in_outage.clone(),
                bao.clone(),
                values.clone(),
                puts_ok.clone(),
                puts_failed.clone(),
            );
            s.spawn(move || {
                let mut k = 0usize;
                let mut next = Instant::now() + rotate;
                while !stop.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(200)));
                        continue;
                    }
                    next += rotate;
                    if in_outage.load(Ordering::SeqCst) {
                        puts_failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let idx = k % SECRETS.len();
                    let value = format!("{}-v{}", SECRETS[idx], k / SECRETS.len() + 1);
                    k += 1;
                    let b = bao.lock().unwrap();
                    if b.put(&format!("soak/{}", SECRETS[idx]), &value) {
                        values.lock().unwrap()[idx] = value;
                        puts_ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        puts_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // Sampler and the outage, on this thread.
        let mut samples: Vec<Sample> = Vec::new();
        let mut next_sample = start;
        let mut outage_state = 0; // 0 before, 1 during, 2 after
        loop {
            let now = Instant::now();
            if outage_state == 0 && !outage.is_zero() && now >= outage_from {
                in_outage.store(true, Ordering::SeqCst);
                bao.lock().unwrap().stop();
                outage_state = 1;
                println!("# {:.0} s: backend killed", start.elapsed().as_secs_f64());
            }
            if outage_state == 1 && now >= outage_to {
                let mut b = bao.lock().unwrap();
                b.restart();
                // A dev server starts empty: re-create the current values.
                let v = values.lock().unwrap().clone();
                for (s, v) in SECRETS.iter().zip(v.iter()) {
                    if !b.put(&format!("soak/{s}"), v) {
                        println!("# re-creating soak/{s} after the outage failed");
                    }
                }
                drop(b);
                in_outage.store(false, Ordering::SeqCst);
                outage_state = 2;
                println!(
                    "# {:.0} s: backend back, secrets re-created",
                    start.elapsed().as_secs_f64()
                );
            }
            if now >= next_sample {
                let n = running.lock().unwrap().len();
                let smp = sample(pid, &admin, start.elapsed().as_secs_f64(), n);
                print_row(&smp, ["", "outage", "after outage"][outage_state]);
                samples.push(smp);
                next_sample += every;
            }
            if now >= end {
                break;
            }
            if let Some(Ok(Some(st))) = guard.agent.as_mut().map(|c| c.try_wait()) {
                stop.store(true, Ordering::SeqCst);
                panic!(
                    "agent exited with {st} during the soak; logs:\n{}",
                    dump(&tail)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);

        // Settle: no more churn or writes; every running container should hold the current values.
        std::thread::sleep(Duration::from_secs(10));
        let final_values = values.lock().unwrap().clone();
        let ids: Vec<String> = running.lock().unwrap().iter().cloned().collect();
        let (mut checked, mut current) = (0, 0);
        for id in &ids {
            let (_, names, _) = docker_try(&["exec", id, "ls", DIR]);
            for (k, s) in SECRETS.iter().enumerate() {
                if names.split_whitespace().any(|n| n == format!("pw_{s}")) {
                    checked += 1;
                    let (_, v, _) = docker_try(&["exec", id, "cat", &format!("{DIR}/pw_{s}")]);
                    if v == final_values[k] {
                        current += 1;
                    }
                }
            }
        }
        let last = sample(pid, &admin, start.elapsed().as_secs_f64(), ids.len());
        print_row(&last, "end (after 10 s settle)");
        samples.push(last);

        // Summary.
        let first = &samples[0];
        let last = samples.last().unwrap();
        let n = samples.len();
        let third = (n / 3).max(1);
        let rss = |v: &[Sample]| {
            mean(
                &v.iter()
                    .map(|s| s.rss_kb as f64 / 1024.0)
                    .collect::<Vec<_>>(),
            )
        };
        let (mid, late) = (
            rss(&samples[third.min(n - 1)..(2 * third).min(n)]),
            rss(&samples[(n - third)..]),
        );
        let growth = (late - mid) / mid * 100.0;
        let elapsed = start.elapsed().as_secs_f64();
        println!("\nDSO soak summary ({elapsed:.0} s, {n} samples)");
        println!(
            "RSS start {:.1} MiB, end {:.1} MiB, peak (VmHWM) {:.1} MiB; mean of the middle third {mid:.1} MiB, last third {late:.1} MiB ({growth:+.1} %)",
            first.rss_kb as f64 / 1024.0,
            last.rss_kb as f64 / 1024.0,
            last.hwm_kb as f64 / 1024.0
        );
        println!(
            "open fds start {}, end {}, max {}; threads start {}, end {}; agent CPU {:.1} s ({:.1} % of one core)",
            first.fds,
            last.fds,
            samples.iter().map(|s| s.fds).max().unwrap_or(0),
            first.threads,
            last.threads,
            last.cpu - first.cpu,
            (last.cpu - first.cpu) / elapsed * 100.0
        );
        println!(
            "containers: {} started ({:.2}/s), {} removed, {} docker run failures; injections: {:.0} ok, {:.0} unchanged, {:.0} duplicate, {:.0} container_gone (any die/destroy on the host), {:.0} failed {:?}",
            started_n.load(Ordering::Relaxed),
            started_n.load(Ordering::Relaxed) as f64 / elapsed,
            removed_n.load(Ordering::Relaxed),
            run_failed.load(Ordering::Relaxed),
            get(&last.injections, "success"),
            get(&last.injections, "unchanged"),
            get(&last.injections, "duplicate"),
            get(&last.injections, "container_gone"),
            failed_injections(&last.injections),
            last.injections
                .iter()
                .filter(|(k, v)| **v > 0.0 && !not_a_failure(k))
                .collect::<Vec<_>>()
        );
        println!(
            "rotations: {} backend writes ({} skipped while the backend was down, or failed); dso_rotations_total success {:.0}, failed {:.0}, unchanged {:.0}; stale values served {:.0}; cache entries at the end {:.0}",
            puts_ok.load(Ordering::Relaxed),
            puts_failed.load(Ordering::Relaxed),
            get(&last.rotations, "success"),
            get(&last.rotations, "failed"),
            get(&last.rotations, "unchanged"),
            last.stale_served,
            last.cache_entries
        );
        println!(
            "final check: {current}/{checked} secret files in the {} running containers hold the backend's current value",
            ids.len()
        );
        println!(
            "agent log: {} lines, {} WARN, {} ERROR",
            log_lines.load(Ordering::Relaxed),
            warns.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        );
        for (msg, count) in levels.lock().unwrap().iter() {
            println!(
                "  {count:>6} × {}",
                msg.chars().take(140).collect::<String>()
            );
        }
        let rss_ok = growth <= 5.0 || late - mid <= 1.0;
        let fds_ok = last.fds <= first.fds + 2;
        println!(
            "verdict: RSS {} (last third vs middle third {growth:+.1} %, {:+.2} MiB); fds {} (start {}, end {})",
            if rss_ok { "FLAT" } else { "GROWING" },
            late - mid,
            if fds_ok { "EQUAL" } else { "GROWING" },
            first.fds,
            last.fds
        );
        let _ = std::io::stdout().flush();
    });
    drop(guard);
    drop(bao);
}
