//! A remote engine over TLS: a second dockerd with `--tlsverify` (`engine2.rs`: its own network
//! namespace), reached through a veth pair. Certificates are made by the test with `openssl`.
//! The guard removes the daemon's containers, stops it and deletes the namespace, also when the
//! test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::engine2::{sh, Engine2};
use crate::support::*;

/// The TLS daemon (a second engine, see `engine2.rs`) and its certificates.
struct TlsEngine {
    engine: Engine2,
    addr: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    sh(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA (`<name>.pem`, `<name>-key.pem`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A leaf certificate `<out>.pem` / `<out>-key.pem` signed by CA `ca`, with `ext` extensions.
fn make_leaf(dir: &Path, ca: &str, out: &str, ext: &str) {
    std::fs::write(dir.join(format!("{out}.ext")), ext).expect("write ext");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={out}"),
            "-keyout",
            &format!("{out}-key.pem"),
            "-out",
            &format!("{out}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{out}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{out}.ext"),
            "-out",
            &format!("{out}.pem"),
        ],
    );
}

impl TlsEngine {
    fn start() -> TlsEngine {
        let n = std::process::id();
        let mut engine = Engine2::new("dso-tls-", &format!("dsotls{n}"));
        let net = format!("10.231.{}.", n % 250);
        let addr = format!("{net}2:2376");
        let d = engine.dir.path().to_path_buf();
        // The CA the daemon trusts, its server certificate, a client certificate in the Docker
        // CLI's layout (certs/ca.pem, cert.pem, key.pem), and a second CA nobody uses.
        make_ca(&d, "ca");
        make_ca(&d, "other-ca");
        make_leaf(
            &d,
            "ca",
            "server",
            &format!("subjectAltName=IP:{net}2\nextendedKeyUsage=serverAuth\n"),
        );
        make_leaf(&d, "ca", "client", "extendedKeyUsage=clientAuth\n");
        let certs = d.join("certs");
        std::fs::create_dir(&certs).expect("mkdir certs");
        for (from, to) in [
            ("ca.pem", "ca.pem"),
            ("client.pem", "cert.pem"),
            ("client-key.pem", "key.pem"),
        ] {
            std::fs::copy(d.join(from), certs.join(to)).expect("copy cert");
        }
        // Host side .1, daemon side .2.
        engine.add_veth(&format!("dt{n}"), &net);
        let p = |f: &str| d.join(f).display().to_string();
        let host = format!("tcp://{addr}");
        let args: Vec<String> = [
            "-H",
            &host,
            "--tlsverify",
            "--tlscacert",
            &p("ca.pem"),
            "--tlscert",
            &p("server.pem"),
            "--tlskey",
            &p("server-key.pem"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let certs = certs.display().to_string();
        engine.start_dockerd(
            &args,
            &[
                ("DOCKER_HOST", &host),
                ("DOCKER_TLS_VERIFY", "1"),
                ("DOCKER_CERT_PATH", &certs),
            ],
        );
        TlsEngine { engine, addr }
    }

    fn certs(&self) -> PathBuf {
        self.engine.path("certs")
    }

    fn host(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    fn docker_try(&self, args: &[&str]) -> (bool, String, String) {
        self.engine.docker_try(args)
    }

    fn docker(&self, args: &[&str]) -> String {
        self.engine.docker(args)
    }
}

#[test]
fn a_tls_engine_is_served_over_exec_and_tls_failures_are_named() {
    let engine = TlsEngine::start();
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("tls/pw", "over-tls");

    // Configured the Docker CLI's way: DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH.
    let certs = engine.certs().display().to_string();
    let env = [
        ("DOCKER_HOST", engine.host()),
        ("DOCKER_TLS_VERIFY", "1".to_string()),
        ("DOCKER_CERT_PATH", certs.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) = {
        let mut c = Command::new(dso_bin());
        c.arg("--config").arg(ws.config()).arg("doctor");
        for (k, v) in &env {
            c.env(k, v);
        }
        let o = c.output().expect("doctor");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(
        out.contains("(TLS, client certificate) answers, API")
            && out.contains("tcp:// engine: every write uses one exec"),
        "doctor ({code:?}):\n{out}{err}"
    );

    let agent = Agent::start_with_env(&ws.config(), &env);
    let scope = format!("dso.test={}", ws.scope);
    let name = unique("tls");
    engine.docker(&[
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
        "--label",
        "dso.secret.pw=local/tls/pw",
        &image(),
        "/bin/sleep",
        "600",
    ]);
    let got = eventually(&agent, "the secret in the TLS engine's container", || {
        let (ok, out, _) = engine.docker_try(&["exec", &name, "cat", "/run/secrets/dso/pw"]);
        ok.then_some(out)
    });
    assert_eq!(got, "over-tls");
    eventually(&agent, "one write, on the exec path", || {
        let exec = agent.metric("dso_injections_by_mode_total{mode=\"exec\"}");
        let direct = agent.metric("dso_injections_by_mode_total{mode=\"direct\"}");
        ((exec, direct) == (Some(1.0), Some(0.0))).then_some(())
    });
    assert!(agent
        .logs()
        .contains("tcp:// engine: every write uses the exec path"));
    // Stop and removal come through the TLS event stream too.
    engine.docker(&["rm", "-f", &name]);
    eventually(&agent, "managed gauge back to 0", || {
        (agent.metric("dso_managed_containers") == Some(0.0)).then_some(())
    });
    drop(agent);

    // A CA that did not sign the daemon's certificate: refused, and named as TLS everywhere.
    let d = engine.engine.dir.path();
    ws.add_agent_settings(&format!(
        "docker_host = \"{}\"\ntls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        engine.host(),
        d.join("other-ca.pem").display(),
        d.join("client.pem").display(),
        d.join("client-key.pem").display(),
    ));
    let (_, out, _) = dso_with(Some(&ws.config()), &["doctor"]);
    assert!(
        out.contains("FAIL docker")
            && out.contains("TLS: the engine's certificate is not signed by the configured CA"),
        "{out}"
    );
    let agent = Agent::start_unconnected(&ws.config());
    let logs = agent.wait_log("docker event stream unavailable");
    assert!(
        logs.lines()
            .any(|l| l.contains("docker event stream unavailable")
                && l.contains("TLS: the engine's certificate is not signed by the configured CA")),
        "{logs}"
    );
    let body = eventually(&agent, "/readyz names the TLS failure", || {
        let (status, body) = agent.get("/readyz");
        (status == 503 && body.contains("TLS: the engine's certificate is not signed"))
            .then_some(body)
    });
    assert!(body.contains("\"ready\":false"), "{body}");
    drop(agent);

    // The right CA but no client certificate: the daemon refuses, and the error says why.
    let cfg = std::fs::read_to_string(ws.config()).expect("config");
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("tls_cert") && !l.starts_with("tls_key"))
        .map(|l| l.replace("other-ca.pem", "ca.pem") + "\n")
        .collect();
    std::fs::write(ws.config(), cfg).expect("config");
    let (_, out, _) = dso_with(Some(&ws.config()), &["doctor"]);
    assert!(
        out.contains("(TLS, no client certificate)")
            && out.contains("TLS: the engine requires a client certificate"),
        "{out}"
    );

    // Plain HTTP to the TLS port (explicitly allowed): the engine's 400 becomes a TLS hint.
    let cfg = std::fs::read_to_string(ws.config()).expect("config");
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("tls_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        ws.config(),
        cfg.replacen("[agent]\n", "[agent]\nallow_insecure_tcp = true\n", 1),
    )
    .expect("config");
    let (_, out, _) = dso_with(Some(&ws.config()), &["doctor"]);
    assert!(
        out.contains("TLS: the engine speaks TLS on this port"),
        "{out}"
    );

    // Plain TCP to another host without that setting: refused before any connection.
    std::fs::write(ws.config(), cfg).expect("config");
    let (code, out, err) = dso_with(Some(&ws.config()), &["check"]);
    assert_ne!(code, Some(0));
    assert!(
        format!("{out}{err}").contains("is plain TCP to another host"),
        "{out}{err}"
    );
}
