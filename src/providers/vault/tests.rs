//! Unit tests of the `vault` provider.

use super::*;

const T: Duration = Duration::from_secs(30);

fn cfg(address: &str) -> VaultConfig {
    VaultConfig {
        address: address.to_string(),
        auth: AuthMethod::Token,
        token_env: None,
        token_file: None,
        role_id: None,
        role_id_file: None,
        secret_id_file: None,
        secret_id_env: None,
        secret_id: None,
        approle_mount: default_approle_mount(),
        namespace: None,
        ca_file: None,
        tls_server_name: None,
        mount: default_mount(),
        kv_version: 2,
    }
}

#[test]
fn config_defaults_and_unknown_fields() {
    let c: VaultConfig = toml::from_str(r#"address = "http://127.0.0.1:8200""#).unwrap();
    assert_eq!(c, cfg("http://127.0.0.1:8200"));
    assert_eq!(
        c.auth_spec(),
        Auth::Token(TokenSource::Env("VAULT_TOKEN".into()))
    );
    let c: VaultConfig = toml::from_str(
        r#"
            address = "https://vault.example.com"
            token_file = "/run/token"
            mount = "kv"
            kv_version = 1
            "#,
    )
    .unwrap();
    assert_eq!(
        c.auth_spec(),
        Auth::Token(TokenSource::File("/run/token".into()))
    );
    assert!(c.validate("p").is_empty());
    let back: VaultConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let err = toml::from_str::<VaultConfig>("address = \"http://x\"\ntokn = \"a\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokn"), "{err}");
    assert!(toml::from_str::<VaultConfig>(r#"mount = "x""#).is_err());
}

#[test]
fn validate_reports_every_problem() {
    assert!(cfg("http://127.0.0.1:8200").validate("p").is_empty());
    assert!(cfg("https://vault.example.com/prefix/")
        .validate("p")
        .is_empty());
    let mut c = cfg("127.0.0.1:8200");
    c.token_env = Some("T".into());
    c.token_file = Some("/t".into());
    c.kv_version = 3;
    c.mount = "/".into();
    let errs = c.validate("providers.vault");
    assert_eq!(errs.len(), 4, "{errs:#?}");
    for (e, field) in errs
        .iter()
        .zip(["address", "token_env", "kv_version", "mount"])
    {
        assert!(
            e.starts_with(&format!("providers.vault.{field}: ")),
            "{e} should be about {field}"
        );
    }
    for bad in [
        "ftp://h",
        "http://",
        "http://h?x=1",
        "http://u:p@h",
        "not a url",
    ] {
        let errs = cfg(bad).validate("p");
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(errs[0].starts_with("p.address: "), "{errs:?}");
    }
    let mut c = cfg("http://h");
    c.mount = "a//b".into();
    assert_eq!(c.validate("p").len(), 1);
    c.mount = "".into();
    c.token_env = Some(" ".into());
    assert_eq!(c.validate("p").len(), 2);
}

#[test]
fn new_refuses_invalid_config_and_missing_token() {
    let mut c = cfg("nope");
    c.token_env = Some("DSO_VAULT_UNIT_TEST_SURELY_UNSET".into());
    let err = VaultBackend::new(&c, T).unwrap_err();
    assert!(
        matches!(&err, BackendError::Config(m) if m.contains("vault.address")),
        "{err}"
    );
    let mut c = cfg("http://127.0.0.1:1");
    c.token_env = Some("DSO_VAULT_UNIT_TEST_SURELY_UNSET".into());
    let err = VaultBackend::new(&c, T).unwrap_err();
    assert!(
        matches!(&err, BackendError::Config(m) if m.contains("DSO_VAULT_UNIT_TEST_SURELY_UNSET")),
        "{err}"
    );
}

#[test]
fn token_file_is_trimmed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s.abc123 \n\n").unwrap();
    let src = TokenSource::File(file.clone());
    assert_eq!(read_token(&src).unwrap().as_str(), "s.abc123");
    std::fs::write(&file, " \n").unwrap();
    let err = read_token(&src).unwrap_err().to_string();
    assert!(err.contains("empty") && err.contains("token"), "{err}");
    std::fs::write(&file, "a\nb\n").unwrap();
    let err = read_token(&src).unwrap_err().to_string();
    assert!(
        err.contains("not allowed") && !err.contains("a\nb"),
        "{err}"
    );
    let missing = TokenSource::File(dir.path().join("missing"));
    let err = read_token(&missing).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
}

fn backend(address: &str, token: &str) -> (VaultBackend, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, token).unwrap();
    let mut c = cfg(address);
    c.token_file = Some(file);
    (VaultBackend::new(&c, Duration::from_secs(5)).unwrap(), dir)
}

#[test]
fn debug_hides_token_and_urls_are_encoded() {
    let (b, _d) = backend("http://127.0.0.1:8200/base/", "s.topsecret");
    let shown = format!("{b:?}");
    assert!(!shown.contains("topsecret"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
    assert_eq!(
        b.url(&["data"], "app/db x").unwrap().as_str(),
        "http://127.0.0.1:8200/base/v1/secret/data/app/db%20x"
    );
    for bad in ["", "a/../b", "a//b", "./a"] {
        assert!(
            matches!(b.url(&["data"], bad), Err(BackendError::Config(_))),
            "{bad}"
        );
    }
}

/// A one-shot HTTP server answering every connection with `response`.
async fn canned(response: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = sock.write_all(&response).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

fn http(status: &str, body: &str) -> Vec<u8> {
    format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
}

#[tokio::test]
async fn server_errors_and_garbage_are_unavailable() {
    let token = "s.never-shown";
    for (resp, what) in [
        (
            http(
                "503 Service Unavailable",
                r#"{"errors":["Vault is sealed"]}"#,
            ),
            "sealed",
        ),
        (http("200 OK", "{not json"), "invalid JSON"),
        (
            http("200 OK", r#"{"data":{"data":"a string"}}"#),
            "key/value object",
        ),
        (
            http("200 OK", r#"{"data":"secret-ish string"}"#),
            "key/value object",
        ),
        (http("200 OK", r#"{"dat":{}}"#), "key/value object"),
        (
            http("200 OK", r#"{"data":{"data":{"a":"x"}"#),
            "truncated JSON",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 17000000\r\n\r\n".to_vec(),
            "larger than 16 MiB",
        ),
    ] {
        let addr = canned(resp).await;
        let (b, _d) = backend(&addr, token);
        let err = b.fetch("app/x").await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, BackendError::Unavailable(_)),
            "{what}: {err:?}"
        );
        assert!(msg.contains(what) && msg.contains(&addr), "{what}: {msg}");
        assert!(!msg.contains(token) && !msg.contains("secret-ish"), "{msg}");
    }
}

#[tokio::test]
async fn values_are_mapped_and_deleted_is_not_found() {
    let body = r#"{"data":{"data":{"s":"v","n":5,"b":true,"o":{"x":[1]},"z":null},"metadata":{}}}"#;
    let (b, _d) = backend(&canned(http("200 OK", body)).await, "t");
    let SecretData::Map(m) = b.fetch("p").await.unwrap() else {
        panic!("expected a map")
    };
    let got: Vec<(&str, &[u8])> = m.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
    assert_eq!(
        got,
        [
            ("b", &b"true"[..]),
            ("n", b"5"),
            ("o", br#"{"x":[1]}"#),
            ("s", b"v"),
            ("z", b"null")
        ]
    );
    let (b, _d) = backend(
        &canned(http("200 OK", r#"{"data":{"data":null,"metadata":{}}}"#)).await,
        "t",
    );
    assert_eq!(
        b.fetch("gone").await.unwrap_err(),
        BackendError::NotFound {
            path: "gone".into()
        }
    );
}

fn approle_cfg(dir: &Path) -> VaultConfig {
    let role = dir.join("role-id");
    let secret = dir.join("secret-id");
    std::fs::write(&role, "role-123\n").unwrap();
    std::fs::write(&secret, "s3cret-id-never-shown\n").unwrap();
    let mut c = cfg("http://127.0.0.1:8200");
    c.auth = AuthMethod::Approle;
    c.role_id_file = Some(role);
    c.secret_id_file = Some(secret);
    c
}

#[test]
fn approle_config_parses_and_validates() {
    let c: VaultConfig = toml::from_str(
        r#"
            address = "https://vault.example.com"
            auth = "approle"
            role_id = "r-1"
            secret_id_env = "DSO_SECRET_ID"
            approle_mount = "team/approle"
            namespace = "org/team-a"
            tls_server_name = "vault.internal"
            "#,
    )
    .unwrap();
    assert!(c.validate("p").is_empty(), "{:?}", c.validate("p"));
    assert_eq!(
        c.auth_spec(),
        Auth::AppRole(AppRole {
            role_id: RoleId::Inline("r-1".into()),
            secret_id: SecretIdSource::Env("DSO_SECRET_ID".into()),
            mount: vec!["team".into(), "approle".into()],
        })
    );
    let back: VaultConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let err = toml::from_str::<VaultConfig>("address = \"http://x\"\nauth = \"ldap\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ldap") && err.contains("approle"), "{err}");
}

#[test]
fn inline_secret_id_is_refused_and_never_kept() {
    let c: VaultConfig = toml::from_str(
        r#"
            address = "http://127.0.0.1:8200"
            auth = "approle"
            role_id = "r-1"
            secret_id = "inline-secret-value"
            "#,
    )
    .unwrap();
    assert!(!format!("{c:?}").contains("inline-secret-value"));
    assert!(!toml::to_string(&c).unwrap().contains("inline-secret-value"));
    let errs = c.validate("providers.v");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("providers.v.secret_id: ")
            && errs[0].contains("secret_id_file")
            && !errs[0].contains("inline-secret-value"),
        "{errs:?}"
    );
    let err = VaultBackend::new(&c, T).unwrap_err().to_string();
    assert!(err.contains("secret_id") && !err.contains("inline-secret-value"));
}

#[test]
fn validate_reports_auth_problems_by_field() {
    let fields = |c: &VaultConfig| -> Vec<String> {
        c.validate("p")
            .iter()
            .map(|e| e.split(':').next().unwrap().to_string())
            .collect()
    };
    // AppRole without credentials, with token fields, bad mount.
    let mut c = cfg("http://h");
    c.auth = AuthMethod::Approle;
    c.token_file = Some("/t".into());
    c.approle_mount = "a/../b".into();
    assert_eq!(
        fields(&c),
        [
            "p.token_file",
            "p.role_id",
            "p.secret_id_file",
            "p.approle_mount"
        ]
    );
    // Both of each pair, and empty values.
    let mut c = cfg("http://h");
    c.auth = AuthMethod::Approle;
    c.role_id = Some(" ".into());
    c.role_id_file = Some("/r".into());
    c.secret_id_file = Some("".into());
    c.secret_id_env = Some("X".into());
    assert_eq!(
        fields(&c),
        [
            "p.role_id",
            "p.role_id",
            "p.secret_id_file",
            "p.secret_id_file"
        ]
    );
    // AppRole fields with token auth.
    let mut c = cfg("http://h");
    c.role_id = Some("r".into());
    c.secret_id_env = Some("S".into());
    assert_eq!(fields(&c), ["p.role_id", "p.secret_id_env"]);
    // Namespace and TLS fields.
    let mut c = cfg("http://h");
    c.namespace = Some("a//b".into());
    c.tls_server_name = Some("not a name".into());
    c.ca_file = Some("/nonexistent/dso-ca.pem".into());
    assert_eq!(
        fields(&c),
        [
            "p.namespace",
            "p.ca_file",
            "p.ca_file",
            "p.tls_server_name",
            "p.tls_server_name"
        ]
    );
    let mut c = cfg("https://h");
    c.namespace = Some("/team-a/".into());
    c.tls_server_name = Some("127.0.0.1".into());
    assert_eq!(fields(&c), ["p.tls_server_name"]);
    c.tls_server_name = Some("vault.internal".into());
    assert!(c.validate("p").is_empty());
}

#[test]
fn ca_file_must_exist_and_hold_pem() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg("https://vault.example.com");
    c.ca_file = Some(dir.path().join("missing.pem"));
    let errs = c.validate("providers.v");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("providers.v.ca_file: cannot read")
            && errs[0].contains("missing.pem")
            && errs[0].contains("PEM"),
        "{errs:?}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    c.ca_file = Some(garbage);
    let errs = c.validate("providers.v");
    assert!(
        errs.len() == 1 && errs[0].contains("holds no PEM certificate"),
        "{errs:?}"
    );
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    c.ca_file = Some(broken);
    let errs = c.validate("providers.v");
    assert!(
        errs.len() == 1 && errs[0].starts_with("providers.v.ca_file: "),
        "{errs:?}"
    );
    c.ca_file = Some(dir.path().to_path_buf());
    assert!(c.validate("providers.v")[0].contains("not a regular file"));
}

#[test]
fn renewal_schedule() {
    let s = Duration::from_secs;
    let lease = Lease {
        ttl: s(30),
        full: s(30),
        renewable: true,
    };
    assert_eq!(next_step(lease, s(0)), Step::Keep);
    assert_eq!(next_step(lease, s(19)), Step::Keep);
    assert_eq!(next_step(lease, s(20)), Step::Renew);
    assert_eq!(next_step(lease, s(29)), Step::Renew);
    // Expired: renewing cannot work any more.
    assert_eq!(next_step(lease, s(30)), Step::Replace);
    assert_eq!(next_step(lease, s(3600)), Step::Replace);
    // Not renewable: replaced at 2/3 of its TTL, before it expires.
    let fixed = Lease {
        renewable: false,
        ..lease
    };
    assert_eq!(next_step(fixed, s(19)), Step::Keep);
    assert_eq!(next_step(fixed, s(20)), Step::Replace);
    // TTL 0 (root token, no expiry): never touched.
    let forever = Lease {
        ttl: Duration::ZERO,
        full: Duration::ZERO,
        renewable: false,
    };
    assert_eq!(next_step(forever, s(1_000_000)), Step::Keep);
    // Sub-second TTLs keep the 2/3 point.
    let short = Lease {
        ttl: Duration::from_millis(900),
        full: Duration::from_millis(900),
        renewable: true,
    };
    assert_eq!(next_step(short, Duration::from_millis(599)), Step::Keep);
    assert_eq!(next_step(short, Duration::from_millis(600)), Step::Renew);
}

#[test]
fn renewal_capped_by_max_ttl_leads_to_a_new_login() {
    let s = Duration::from_secs;
    // token_ttl 4s, token_max_ttl 10s: renewals grant 4s until the cap, then less.
    let first = Lease {
        ttl: s(4),
        full: s(4),
        renewable: true,
    };
    let renewed = after_renewal(first, s(4), true);
    assert_eq!(renewed, first);
    let capped = after_renewal(renewed, s(2), true);
    assert_eq!(
        capped,
        Lease {
            ttl: s(2),
            full: s(4),
            renewable: false
        }
    );
    assert_eq!(
        next_step(capped, Duration::from_millis(1400)),
        Step::Replace
    );
    // Periodic token: every renewal grants the full period again, forever.
    let periodic = Lease {
        ttl: s(60),
        full: s(60),
        renewable: true,
    };
    assert_eq!(after_renewal(periodic, s(60), true), periodic);
    // Vault says it is no longer renewable.
    assert!(!after_renewal(periodic, s(60), false).renewable);
}

#[test]
fn new_reads_approle_credentials_and_names_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let c = approle_cfg(dir.path());
    let b = VaultBackend::new(&c, T).unwrap();
    let shown = format!("{b:?}");
    assert!(
        shown.contains("AppRole") && !shown.contains("s3cret-id"),
        "{shown}"
    );
    let mut c2 = c.clone();
    c2.secret_id_file = Some(dir.path().join("nope"));
    let err = VaultBackend::new(&c2, T).unwrap_err();
    assert!(
        matches!(&err, BackendError::Config(m) if m.contains("secret id file") && m.contains("nope")),
        "{err}"
    );
    std::fs::write(dir.path().join("empty"), " \n").unwrap();
    let mut c3 = c.clone();
    c3.secret_id_file = Some(dir.path().join("empty"));
    let err = VaultBackend::new(&c3, T).unwrap_err().to_string();
    assert!(
        err.contains("secret_id_file") && err.contains("empty"),
        "{err}"
    );
    let mut c4 = c;
    c4.secret_id_file = None;
    c4.secret_id_env = Some("DSO_VAULT_UNIT_TEST_SECRET_ID_SURELY_UNSET".into());
    let err = VaultBackend::new(&c4, T).unwrap_err().to_string();
    assert!(
        err.contains("DSO_VAULT_UNIT_TEST_SECRET_ID_SURELY_UNSET"),
        "{err}"
    );
}

/// An HTTP server that records each request head and answers by path.
async fn recording(
    answers: Vec<(&'static str, Vec<u8>)>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answers = answers.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got).to_string();
                let line = head.lines().next().unwrap_or_default().to_string();
                let resp = answers
                    .iter()
                    .find(|(p, _)| line.contains(p))
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| http("404 Not Found", r#"{"errors":[]}"#));
                log.lock().unwrap().push(head);
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn approle_login_and_namespace_header_on_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = recording(vec![
            (
                "/v1/auth/approle/login",
                http(
                    "200 OK",
                    r#"{"auth":{"client_token":"tok-from-login","lease_duration":3600,"renewable":true}}"#,
                ),
            ),
            (
                "/v1/secret/data/app",
                http(
                    "200 OK",
                    r#"{"data":{"data":{"k":"v"},"metadata":{"version":3}}}"#,
                ),
            ),
        ])
        .await;
    let mut c = approle_cfg(dir.path());
    c.address = addr;
    c.namespace = Some("team-a/".into());
    let b = VaultBackend::new(&c, T).unwrap();
    let got = b.fetch_versioned("app").await.unwrap();
    assert_eq!(got.version.as_deref(), Some("3"));
    b.fetch("app").await.unwrap();
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "one login, two reads: {heads:#?}");
    assert!(heads[0].starts_with("POST /v1/auth/approle/login "));
    for h in &heads {
        let h = h.to_ascii_lowercase();
        assert!(h.contains("\r\nx-vault-namespace: team-a\r\n"), "{h}");
    }
    assert!(!heads[0].to_ascii_lowercase().contains("x-vault-token"));
    for h in &heads[1..] {
        assert!(
            h.to_ascii_lowercase()
                .contains("\r\nx-vault-token: tok-from-login\r\n"),
            "{h}"
        );
    }
}

#[tokio::test]
async fn refused_approle_login_is_denied_without_the_secret_id() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _seen) = recording(vec![(
        "/v1/auth/approle/login",
        http(
            "400 Bad Request",
            r#"{"errors":["invalid secret id s3cret-id-never-shown"]}"#,
        ),
    )])
    .await;
    let mut c = approle_cfg(dir.path());
    c.address = addr.clone();
    let b = VaultBackend::new(&c, T).unwrap();
    let err = b.fetch("app").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
    assert!(
        msg.contains("AppRole login") && msg.contains(&addr) && msg.contains("secret-id"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret-id-never-shown"), "{msg}");
    assert!(matches!(b.probe().await, Err(BackendError::Denied(_))));
}
