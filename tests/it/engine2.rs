//! A second, private `dockerd` for the tests that must not touch the shared one (a TLS listener,
//! swarm mode): in its own network namespace (a second daemon in the host's namespace would
//! fight the first over bridges and iptables; `--bridge=none` there deletes the host's
//! `docker0`), with its own data-root, exec-root and pidfile, and the offline test image loaded
//! into it. Drop removes its services, containers, the daemon and the namespace, also when the
//! test fails.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The daemon and everything it needs; all of it removed on drop.
pub struct Engine2 {
    pub dir: tempfile::TempDir,
    netns: String,
    veth: Option<String>,
    dockerd: Option<Child>,
    /// What the Docker CLI needs to reach it (`DOCKER_HOST`, TLS variables).
    cli_env: Vec<(String, String)>,
    /// Whether `swarm init` ran (drop leaves the swarm first).
    swarm: bool,
}

/// Runs `cmd`, panicking with its output on failure.
pub fn sh(cmd: &mut Command) -> String {
    let (ok, out, err) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{out}{err}");
    out
}

impl Engine2 {
    /// A temp dir (`prefix` in its name) and a network namespace with `lo` up; no daemon yet.
    pub fn new(prefix: &str, netns: &str) -> Engine2 {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        let engine = Engine2 {
            dir,
            netns: netns.to_string(),
            veth: None,
            dockerd: None,
            cli_env: Vec::new(),
            swarm: false,
        };
        sh(Command::new("ip").args(["netns", "add", netns]));
        engine.in_ns(&["ip", "link", "set", "lo", "up"]);
        engine
    }

    /// A daemon listening only on a Unix socket in its temp dir.
    pub fn unix(prefix: &str, netns: &str) -> Engine2 {
        let mut engine = Engine2::new(prefix, netns);
        let sock = format!("unix://{}", engine.path("docker.sock").display());
        engine.start_dockerd(&["-H".to_string(), sock.clone()], &[("DOCKER_HOST", &sock)]);
        engine
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ip netns exec NS ARGS` (fine for `ip` itself; not for dockerd, see `start_dockerd`).
    pub fn in_ns(&self, args: &[&str]) {
        sh(Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args));
    }

    /// A veth pair `<name>a` (host, `<net>1/30`) / `<name>b` (namespace, `<net>2/30`).
    pub fn add_veth(&mut self, name: &str, net: &str) {
        let (a, b) = (format!("{name}a"), format!("{name}b"));
        sh(Command::new("ip").args(["link", "add", &a, "type", "veth", "peer", "name", &b]));
        self.veth = Some(name.to_string());
        sh(Command::new("ip").args(["link", "set", &b, "netns", &self.netns]));
        sh(Command::new("ip").args(["addr", "add", &format!("{net}1/30"), "dev", &a]));
        sh(Command::new("ip").args(["link", "set", &a, "up"]));
        self.in_ns(&["ip", "addr", "add", &format!("{net}2/30"), "dev", &b]);
        self.in_ns(&["ip", "link", "set", &b, "up"]);
    }

    /// Starts dockerd in the namespace with `args` (its listeners, TLS files) and waits until the
    /// CLI with `cli_env` reaches it; loads the offline test image into it.
    pub fn start_dockerd(&mut self, args: &[String], cli_env: &[(&str, &str)]) {
        self.cli_env = cli_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let p = |f: &str| self.path(f).display().to_string();
        let log = std::fs::File::create(self.path("dockerd.log")).expect("dockerd log");
        // `nsenter --net`, not `ip netns exec`: the latter remounts /sys, which hides the cgroup
        // mounts dockerd needs.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args([
                "dockerd",
                "--data-root",
                &p("data"),
                "--exec-root",
                &p("exec"),
            ])
            .args(["--pidfile", &p("dockerd.pid")])
            .args(args)
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .arg("--storage-driver=vfs")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker_try(&["version"]).0 {
            assert!(
                Instant::now() < deadline,
                "second dockerd not up in 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The offline test image, from the host's daemon.
        copy_test_image(self.docker_cmd().arg("load"));
    }

    /// `docker swarm init` on this daemon: a single-node swarm, this node its manager.
    pub fn swarm_init(&mut self) {
        self.swarm = true;
        self.docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("dockerd.log")).unwrap_or_default()
    }

    /// The Docker CLI pointed at this daemon.
    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.envs(self.cli_env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// The environment that points a Docker client (the agent) at this daemon.
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.cli_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    pub fn docker_try(&self, args: &[&str]) -> (bool, String, String) {
        run(self.docker_cmd().args(args))
    }

    pub fn docker(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.docker_try(args);
        assert!(ok, "docker (second engine) {args:?}: {out}{err}");
        out.trim().to_string()
    }

    fn remove_all(&self, list: &[&str], rm: &[&str]) {
        let (_, ids, _) = self.docker_try(list);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = rm.to_vec();
            args.extend(ids);
            let _ = self.docker_try(&args);
        }
    }
}

impl Drop for Engine2 {
    fn drop(&mut self) {
        if let Some(mut child) = self.dockerd.take() {
            if self.swarm {
                // Services first, or Swarm starts their tasks again as they are removed.
                self.remove_all(&["service", "ls", "-q"], &["service", "rm"]);
                let _ = self.docker_try(&["swarm", "leave", "--force"]);
            }
            // Containers next (their shims outlive a stopped daemon), then the daemon.
            self.remove_all(&["ps", "-aq"], &["rm", "-f"]);
            stop_child(&mut child, Duration::from_secs(20));
        }
        if let Some(veth) = &self.veth {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{veth}a")])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}
