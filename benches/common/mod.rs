//! Helpers the benchmarks share (a module, not a bench: Cargo only discovers `benches/*.rs`).

#![allow(dead_code)]

pub mod agent;
pub mod dockerd;

use std::collections::BTreeMap;
use std::process::{Child, Command};

/// `name` from the environment, or `default` when unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// A number from the environment, or `default` when unset or not a number.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The engine every `docker` of this bench talks to, when not the CLI's default.
static DOCKER_HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Points every later `docker` of this bench at `host` (once; the first call wins).
pub fn use_docker_host(host: String) {
    let _ = DOCKER_HOST.set(host);
}

/// `DOCKER_HOST` for a child that must reach the same engine (None: the CLI's default).
pub fn docker_host() -> Option<&'static str> {
    DOCKER_HOST.get().map(String::as_str)
}

/// A `docker` command aimed at the bench's engine.
pub fn docker_command() -> Command {
    let mut c = Command::new("docker");
    if let Some(h) = docker_host() {
        c.env("DOCKER_HOST", h);
    }
    c
}

/// `docker ARGS` → (ok, stdout, stderr).
pub fn docker_try(args: &[&str]) -> (bool, String, String) {
    match docker_command().args(args).output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ),
        Err(e) => (false, String::new(), e.to_string()),
    }
}

/// `docker ARGS` → stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let (ok, out, err) = docker_try(args);
    assert!(ok, "docker {args:?}: {err}");
    out
}

/// The non-zero entries of a `{label → value}` family.
pub fn nonzero(m: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    m.into_iter().filter(|(_, v)| *v != 0.0).collect()
}

/// The `p` quantile of sorted samples (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// CPU seconds (user + system) the process has used, from `/proc/PID/stat` (100 Hz ticks).
pub fn proc_cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the `(comm)`; utime and stime are fields 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// Kills the agent and removes every container of the bench's scope, also on panic.
pub struct Cleanup {
    pub agent: Option<Child>,
    pub scope_label: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let filter = format!("label={}", self.scope_label);
        let (_, ids, _) = docker_try(&["ps", "-aq", "--filter", &filter]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        for chunk in ids.chunks(50) {
            let mut args = vec!["rm", "-f"];
            args.extend_from_slice(chunk);
            let _ = docker_try(&args);
        }
    }
}

/// One scrape of `/metrics` (the text exposition).
pub struct Metrics(pub String);

impl Metrics {
    /// The value of one series (exact text before the value); an absent series is 0.
    pub fn get(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// `{label value → sample}` of a family with one label, e.g. `dso_injections_total{result=`.
    pub fn by_label(&self, prefix: &str) -> BTreeMap<String, f64> {
        self.0
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(prefix)?.strip_prefix('"')?;
                let (label, rest) = rest.split_once('"')?;
                let v = rest
                    .strip_prefix('}')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                Some((label.to_string(), v))
            })
            .collect()
    }
}
