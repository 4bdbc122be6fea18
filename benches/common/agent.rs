//! The real agent as a child process of a bench: started with a config file, JSON logs to a file,
//! ready once its admin endpoint listens and its event stream is connected; killed on drop. Plus
//! what a bench reads about a process from `/proc`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Metrics;

/// A running agent.
pub struct Agent {
    pub child: Option<Child>,
    pub pid: u32,
    /// `host:port` of `/metrics`.
    pub admin: String,
    pub log: PathBuf,
    /// When the process was spawned.
    pub spawned: Instant,
}

/// What `/proc` says about one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub threads: u64,
    pub fds: u64,
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Voluntary + involuntary context switches summed over every thread (each is a wake-up).
    pub ctx_switches: u64,
    /// Seconds its threads were runnable but waited for a CPU (`/proc/<pid>/task/*/schedstat`):
    /// on a busy host, the time other work took from it.
    pub run_wait_s: f64,
}

fn status_field(s: &str, name: &str) -> u64 {
    s.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// RSS, high-water mark, threads, fds, CPU and context switches of `pid`.
pub fn proc_stats(pid: u32) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut ctx_switches = 0;
    let mut run_wait_ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            ctx_switches += status_field(&s, "voluntary_ctxt_switches:")
                + status_field(&s, "nonvoluntary_ctxt_switches:");
            let sched = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            run_wait_ns += sched
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ProcStats {
        rss_kb: status_field(&status, "VmRSS:"),
        hwm_kb: status_field(&status, "VmHWM:"),
        threads: status_field(&status, "Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        cpu_s: super::proc_cpu_secs(pid),
        ctx_switches,
        run_wait_s: run_wait_ns as f64 / 1e9,
    }
}

/// `GET path` over HTTP/1.0 → body (None when unreachable).
pub fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_once("\r\n\r\n").map(|x| x.1.to_string())
}

impl Agent {
    /// Starts `bin --config CONFIG agent --log-format json` with `envs`; waits up to 60 s for the
    /// admin endpoint and the Docker event stream. Panics with the log's tail when it does not come.
    pub fn start(bin: &str, config: &Path, log: &Path, envs: &[(&str, &str)]) -> Agent {
        // The file may hold earlier runs: only what this run writes counts.
        let offset = std::fs::metadata(log).map_or(0, |m| m.len() as usize);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log file");
        let err = out.try_clone().expect("agent log file");
        let spawned = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(config)
            .args(["agent", "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the agent");
        let mut agent = Agent {
            pid: child.id(),
            child: Some(child),
            admin: String::new(),
            log: log.to_path_buf(),
            spawned,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = agent.log_text();
            let text = all.get(offset..).unwrap_or("");
            let addr = text
                .lines()
                .rfind(|l| l.contains("admin endpoint listening"))
                .and_then(|l| {
                    let rest = l.split_once("\"addr\":\"")?.1;
                    Some(rest.split_once('"')?.0.to_string())
                });
            let connected = text
                .lines()
                .filter(|l| l.contains("docker event stream connected"))
                .count();
            if let Some(a) = addr {
                if connected > 0 {
                    agent.admin = a;
                    return agent;
                }
            }
            if let Some(Ok(Some(st))) = agent.child.as_mut().map(|c| c.try_wait()) {
                panic!("agent exited with {st}; log:\n{}", agent.tail(40));
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready in 60 s; log:\n{}",
                agent.tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` log lines.
    pub fn tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// One scrape of `/metrics` (empty when it does not answer).
    pub fn metrics(&self) -> Metrics {
        Metrics(get(&self.admin, "/metrics").unwrap_or_default())
    }

    pub fn stats(&self) -> ProcStats {
        proc_stats(self.pid)
    }

    /// SIGTERM, then wait up to 20 s (SIGKILL after); returns how long the exit took.
    pub fn stop(&mut self) -> Duration {
        let t = Instant::now();
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            while t.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    return t.elapsed();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        t.elapsed()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
