//! The Vault CLI's conventions: `VAULT_ADDR` (and `VAULT_CACERT`, `VAULT_NAMESPACE`) as the
//! `vault` provider's defaults, shown with their origin by `dso check` and `dso doctor`; a real
//! `bao agent`'s token sink file used as `token_file`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// `dso --config CFG ARGS…` with `VAULT_*` from `envs` only: (exit code, stdout, stderr).
fn dso_env(cfg: &Path, envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(dso_bin())
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_CACERT")
        .env_remove("VAULT_NAMESPACE")
        .env_remove("VAULT_TOKEN")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run dso");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `bao agent` child, killed and reaped on drop (also when the test fails).
struct BaoAgent(Child);

impl Drop for BaoAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child token of the test root token (the credential the Vault agent starts from).
fn child_token() -> String {
    let (ok, out, err) = run(Command::new(env("DSO_TEST_BAO_BIN"))
        .args(["token", "create", "-field=token", "-ttl=10m"])
        .env("BAO_ADDR", env("DSO_TEST_VAULT_ADDR"))
        .env("BAO_TOKEN", env("DSO_TEST_VAULT_TOKEN")));
    assert!(ok, "bao token create failed:\n{out}\n{err}");
    out.trim().to_string()
}

#[test]
fn vault_addr_defaults_the_address_and_a_bao_agent_sink_is_the_token_file() {
    let ws = Workspace::new();
    let addr = env("DSO_TEST_VAULT_ADDR");
    let sink = ws.path("vault-agent-sink");
    ws.write_config(&format!(
        "[providers.bao]\ntype = \"vault\"\ntoken_file = \"{}\"\ntimeout = \"5s\"\n",
        sink.display()
    ));

    // No address anywhere: refused, naming both ways to give it.
    let (code, out, err) = dso_env(&ws.config(), &[], &["check"]);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("providers.bao.address: not set") && err.contains("VAULT_ADDR"),
        "{err}"
    );
    // From VAULT_ADDR: `dso check` says so; a bad VAULT_ADDR is named as the culprit.
    let (code, out, err) = dso_env(
        &ws.config(),
        &[("VAULT_ADDR", &addr), ("VAULT_NAMESPACE", "team-a")],
        &["check"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!(
            "providers.bao.address = \"{addr}\" (from VAULT_ADDR)"
        )) && out.contains("providers.bao.namespace = \"team-a\" (from VAULT_NAMESPACE)")
            && out.contains("providers.bao.ca_file: not set"),
        "{out}"
    );
    let (code, _, err) = dso_env(&ws.config(), &[("VAULT_ADDR", "ftp://x")], &["check"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains("providers.bao.address (from VAULT_ADDR): `ftp://x`"),
        "{err}"
    );

    // A real Vault agent (`bao agent`) logs in and writes its token sink; DSO reads the sink.
    let agent_dir = tempfile::tempdir().unwrap();
    let start_token = agent_dir.path().join("start-token");
    std::fs::write(&start_token, child_token()).unwrap();
    let hcl = agent_dir.path().join("agent.hcl");
    std::fs::write(
        &hcl,
        format!(
            "vault {{ address = \"{addr}\" }}\nauto_auth {{\n  method \"token_file\" {{ config = \
             {{ token_file_path = \"{}\" }} }}\n  sink \"file\" {{ config = {{ path = \"{}\" }} \
             }}\n}}\n",
            start_token.display(),
            sink.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(agent_dir.path().join("agent.log")).unwrap();
    let _agent = BaoAgent(
        Command::new(env("DSO_TEST_BAO_BIN"))
            .arg("agent")
            .arg(format!("-config={}", hcl.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start bao agent"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::metadata(&sink).is_ok_and(|m| m.len() > 0) {
        assert!(
            Instant::now() < deadline,
            "bao agent wrote no sink: {}",
            std::fs::read_to_string(agent_dir.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let path = unique("vault-env/db");
    let value = unique("sink-value");
    let (ok, out, err) = run(Command::new(env("DSO_TEST_BAO_BIN"))
        .args(["kv", "put", "-mount=secret", &path, &format!("pw={value}")])
        .env("BAO_ADDR", &addr)
        .env("BAO_TOKEN", env("DSO_TEST_VAULT_TOKEN")));
    assert!(ok, "bao kv put failed:\n{out}\n{err}");
    let (code, out, err) = dso_env(
        &ws.config(),
        &[
            ("VAULT_ADDR", &addr),
            ("PW", &format!("dso://bao/{path}#pw")),
        ],
        &[
            "run",
            "--no-agent",
            "--",
            "/bin/sh",
            "-c",
            "printf %s \"$PW\"",
        ],
    );
    assert_eq!((code, out.as_str()), (Some(0), value.as_str()), "{err}");
    // `dso doctor` says where the address came from.
    let (_, out, err) = dso_env(&ws.config(), &[("VAULT_ADDR", &addr)], &["doctor"]);
    assert!(
        out.contains(&format!(
            "provider bao settings: address \"{addr}\" from VAULT_ADDR"
        )) && out.contains("ok   provider bao: reachable and authenticated"),
        "{out}{err}"
    );
}
