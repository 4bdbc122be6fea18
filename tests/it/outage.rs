//! A backend outage on the real stack: a private OpenBao dev server is stopped under the agent.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const DIR: &str = "/run/secrets/dso";

/// A `bao server -dev` of this test's own, killed on drop.
struct Bao {
    child: Child,
    addr: String,
}

impl Bao {
    fn start() -> Bao {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(env("DSO_TEST_BAO_BIN"))
            .args(["server", "-dev", "-dev-root-token-id=outage-root"])
            .arg(format!("-dev-listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_try(&addr, "/v1/sys/health") != Some(200) {
            assert!(
                Instant::now() < deadline,
                "private bao did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Bao { child, addr }
    }

    fn put(&self, path: &str, kv: &str) {
        let mut cmd = Command::new(env("DSO_TEST_BAO_BIN"));
        cmd.args(["kv", "put", "-mount=secret", path, kv])
            .env("BAO_ADDR", format!("http://{}", self.addr))
            .env("BAO_TOKEN", "outage-root")
            .env("VAULT_ADDR", format!("http://{}", self.addr))
            .env("VAULT_TOKEN", "outage-root");
        let (ok, out, err) = run(&mut cmd);
        assert!(ok, "bao kv put: {out}{err}");
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_try(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    r.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn while_the_backend_is_down_new_containers_get_the_last_known_value() {
    let bao = Bao::start();
    bao.put("app/db", "password=outage-value");
    let ws = Workspace::new();
    ws.write_config(&format!(
        "[providers.bao]\ntype = \"vault\"\naddress = \"http://{}\"\ntoken_env = \"DSO_IT_OUTAGE\"\ntimeout = \"2s\"\nrefresh_interval = \"0s\"\n",
        bao.addr
    ));
    let cfg = std::fs::read_to_string(ws.config())
        .unwrap()
        .replace("ttl = \"10m\"", "ttl = \"1s\"");
    std::fs::write(ws.config(), cfg).unwrap();
    let agent = Agent::start_with_env(&ws.config(), &[("DSO_IT_OUTAGE", "outage-root")]);
    let label = "dso.secret.pw=bao/app/db#password";
    let first = ws.container(&["--tmpfs", DIR, "--label", label]);
    first.wait_for(&format!("{DIR}/.ready"), &agent);

    drop(bao);
    std::thread::sleep(Duration::from_millis(1500)); // past the TTL
    let second = ws.container(&["--tmpfs", DIR, "--label", label]);
    second.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(
        second.read(&format!("{DIR}/pw")).as_deref(),
        Some("outage-value")
    );
    let logs = agent.wait_log("serving the last known value");
    assert!(
        agent.metric("dso_cache_stale_served_total").unwrap_or(0.0) >= 1.0,
        "{}",
        agent.get("/metrics").1
    );
    assert!(!logs.contains("outage-value"));
    second.assert_not_on_disk("outage-value");
}
