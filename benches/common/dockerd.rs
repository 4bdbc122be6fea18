//! A private Docker daemon for a bench that would otherwise wedge the shared one (1,000
//! containers): its own network namespace (a second dockerd in the host's namespace deletes the
//! host's `docker0`), its own data and exec roots, pidfile, containerd namespace and Unix socket;
//! the offline test image copied into it with `docker save | docker load`. Dropped: its containers
//! removed, the daemon stopped (SIGTERM, SIGKILL after 60 s), the namespace deleted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private dockerd.
pub struct PrivateDockerd {
    dir: tempfile::TempDir,
    netns: String,
    child: Option<Child>,
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl PrivateDockerd {
    /// Starts one and copies `image` into it from the daemon the Docker CLI reaches now. Panics
    /// (after cleaning up) when it does not answer in 60 s.
    pub fn start(image: &str) -> PrivateDockerd {
        let n = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("dso-bench-dockerd-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let netns = format!("dsobench{n}");
        assert!(
            ok(Command::new("ip").args(["netns", "add", &netns])),
            "ip netns add {netns}"
        );
        let mut d = PrivateDockerd {
            dir,
            netns,
            child: None,
        };
        let _ = Command::new("ip")
            .args(["netns", "exec", &d.netns, "ip", "link", "set", "lo", "up"])
            .status();
        let p = |f: &str| d.dir.path().join(f).display().to_string();
        let log = std::fs::File::create(d.dir.path().join("dockerd.log")).expect("dockerd log");
        let ns = format!("dsobench{n}");
        // `nsenter --net`, not `ip netns exec`: the latter remounts /sys, which hides the cgroup
        // mounts dockerd needs.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.netns))
            .args([
                "dockerd",
                "--data-root",
                &p("data"),
                "--exec-root",
                &p("exec"),
            ])
            .args(["--pidfile", &p("dockerd.pid"), "-H", &d.host()])
            .args(["--containerd-namespace", &ns])
            .args(["--containerd-plugins-namespace", &format!("{ns}-plugins")])
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        d.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ok(d.docker().arg("version")) {
            assert!(
                Instant::now() < deadline,
                "private dockerd not up in 60 s:\n{}",
                std::fs::read_to_string(d.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let pipe = save.stdout.take().expect("pipe");
        let loaded = d.docker().args(["load", "-q"]).stdin(pipe).output();
        let saved = save.wait().is_ok_and(|s| s.success());
        assert!(
            saved && loaded.as_ref().is_ok_and(|o| o.status.success()),
            "copying {image} into the private dockerd: {loaded:?}"
        );
        d
    }

    /// `unix://…` of its socket.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("dockerd.log")
    }

    /// The Docker CLI pointed at it.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", self.host());
        c
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Containers first (their shims outlive a stopped daemon), then the daemon.
            let ids = self
                .docker()
                .args(["ps", "-aq"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            for chunk in ids.chunks(50) {
                let _ = self.docker().args(["rm", "-f"]).args(chunk).output();
            }
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}
