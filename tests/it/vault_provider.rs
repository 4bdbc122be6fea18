//! The `vault` provider against a real OpenBao dev server (`scripts/test` starts it and exports
//! `DSO_TEST_VAULT_ADDR` / `DSO_TEST_VAULT_TOKEN`, with KV v2 at `secret/` and KV v1 at `kv1/`).
//! Every test writes under its own unique path, so they run in parallel.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dso::providers::vault::{VaultBackend, VaultConfig};
use dso_actors::backend::{BackendError, SecretBackend};
use dso_actors::secret::{SecretData, SelectError};
use serde_json::json;

use crate::support::{env, unique};

/// The server `scripts/test` started, with its root token.
struct Server {
    addr: String,
    root: String,
}

fn server() -> Server {
    Server {
        addr: env("DSO_TEST_VAULT_ADDR"),
        root: env("DSO_TEST_VAULT_TOKEN"),
    }
}

/// A secret path no other test (or earlier run against the same server) uses.
fn unique_path() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("dso-it/{}-{nanos}/db", unique("vault"))
}

impl Server {
    async fn call(&self, method: reqwest::Method, api_path: &str, body: Option<serde_json::Value>) {
        let url = format!("{}/v1/{api_path}", self.addr.trim_end_matches('/'));
        let mut req = reqwest::Client::new()
            .request(method.clone(), &url)
            .header("X-Vault-Token", &self.root);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {url}: HTTP {status}: {text}");
    }

    /// Writes a new KV v2 version at `secret/<path>`.
    async fn put_v2(&self, path: &str, data: serde_json::Value) {
        self.call(
            reqwest::Method::POST,
            &format!("secret/data/{path}"),
            Some(json!({ "data": data })),
        )
        .await;
    }

    /// Soft-deletes the latest KV v2 version at `secret/<path>`.
    async fn delete_v2(&self, path: &str) {
        self.call(
            reqwest::Method::DELETE,
            &format!("secret/data/{path}"),
            None,
        )
        .await;
    }

    /// Writes `kv1/<path>` (KV v1).
    async fn put_v1(&self, path: &str, data: serde_json::Value) {
        self.call(reqwest::Method::POST, &format!("kv1/{path}"), Some(data))
            .await;
    }
}

fn config(addr: &str) -> VaultConfig {
    VaultConfig {
        address: addr.to_string(),
        token_env: None,
        token_file: None,
        mount: "secret".to_string(),
        kv_version: 2,
        timeout: Duration::from_secs(10),
        refresh_interval: std::time::Duration::from_secs(60),
        rate_limit: 100.0,
        burst: 50,
    }
}

/// Writes `contents` to a token file in a fresh temp dir (kept alive by the returned guard).
fn token_file(contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, contents).unwrap();
    (dir, file)
}

/// A backend for `cfg` whose token is `token`, read from a file.
fn backend(mut cfg: VaultConfig, token: &str) -> (VaultBackend, tempfile::TempDir) {
    let (dir, file) = token_file(token);
    cfg.token_file = Some(file);
    let b = VaultBackend::new(&cfg).unwrap_or_else(|e| panic!("VaultBackend::new: {e}"));
    (b, dir)
}

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn text(v: &dso_actors::secret::SecretValue) -> String {
    String::from_utf8(v.expose().to_vec()).unwrap()
}

#[tokio::test]
async fn fetches_a_whole_kv2_secret_and_single_keys() {
    let s = server();
    let path = unique_path();
    let password = format!("pw-{}", unique("x"));
    s.put_v2(
        &path,
        json!({ "password": password, "user": "app", "port": 5432, "tls": { "on": true } }),
    )
    .await;
    let (b, _guard) = backend(config(&s.addr), &s.root);

    let data = b.fetch(&path).await.unwrap();
    let SecretData::Map(map) = &data else {
        panic!("expected a key/value map, got {data:?}")
    };
    assert_eq!(
        map.keys().map(String::as_str).collect::<Vec<_>>(),
        ["password", "port", "tls", "user"]
    );
    assert_eq!(text(&data.select(Some("password")).unwrap()), password);
    assert_eq!(text(&data.select(Some("user")).unwrap()), "app");
    assert_eq!(text(&data.select(Some("port")).unwrap()), "5432");
    assert_eq!(text(&data.select(Some("tls")).unwrap()), r#"{"on":true}"#);

    let whole: serde_json::Value =
        serde_json::from_slice(data.select(None).unwrap().expose()).unwrap();
    assert_eq!(
        whole,
        json!({ "password": password, "user": "app", "port": "5432", "tls": "{\"on\":true}" })
    );
    assert!(
        matches!(
            data.select(Some("nope")),
            Err(SelectError::KeyNotFound { .. })
        ),
        "a missing key must be KeyNotFound"
    );
    // Debug output shows key names only.
    assert!(!format!("{data:?}").contains(&password));
}

#[tokio::test]
async fn fetches_a_kv1_secret() {
    let s = server();
    let path = unique_path();
    s.put_v1(&path, json!({ "api_key": "k-v1-value", "n": 7 }))
        .await;
    let mut cfg = config(&s.addr);
    cfg.mount = "kv1".to_string();
    cfg.kv_version = 1;
    let (b, _guard) = backend(cfg, &s.root);

    let data = b.fetch(&path).await.unwrap();
    assert_eq!(text(&data.select(Some("api_key")).unwrap()), "k-v1-value");
    assert_eq!(text(&data.select(Some("n")).unwrap()), "7");
    assert_eq!(b.current_version(&path).await.unwrap(), None);
    let missing = format!("{path}-missing");
    assert_eq!(
        b.fetch(&missing).await.unwrap_err(),
        BackendError::NotFound { path: missing }
    );
}

#[tokio::test]
async fn missing_and_deleted_paths_are_not_found() {
    let s = server();
    let (b, _guard) = backend(config(&s.addr), &s.root);
    let missing = unique_path();
    assert_eq!(
        b.fetch(&missing).await.unwrap_err(),
        BackendError::NotFound {
            path: missing.clone()
        }
    );
    assert_eq!(
        b.current_version(&missing).await.unwrap_err(),
        BackendError::NotFound { path: missing }
    );

    let deleted = unique_path();
    s.put_v2(&deleted, json!({ "a": "1" })).await;
    assert!(b.fetch(&deleted).await.is_ok());
    s.delete_v2(&deleted).await;
    assert_eq!(
        b.fetch(&deleted).await.unwrap_err(),
        BackendError::NotFound { path: deleted }
    );
}

#[tokio::test]
async fn wrong_token_is_denied_without_showing_it() {
    let s = server();
    let path = unique_path();
    s.put_v2(&path, json!({ "a": "1" })).await;
    let wrong = format!("dso-wrong-token-{}", unique("t"));
    let (b, _guard) = backend(config(&s.addr), &wrong);

    let err = b.fetch(&path).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
    assert!(msg.contains("refused the token"), "{msg}");
    assert!(msg.contains(&s.addr), "{msg}");
    assert!(!msg.contains(&wrong), "the token leaked into: {msg}");
    assert!(!format!("{b:?}").contains(&wrong));
}

#[tokio::test]
async fn probe_ok_and_denied() {
    let s = server();
    let (good, _g1) = backend(config(&s.addr), &s.root);
    good.probe().await.unwrap();

    let wrong = format!("dso-wrong-token-{}", unique("t"));
    let (bad, _g2) = backend(config(&s.addr), &wrong);
    let err = bad.probe().await.unwrap_err();
    assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
    assert!(!err.to_string().contains(&wrong), "{err}");
}

#[tokio::test]
async fn server_down_is_unavailable() {
    let addr = format!("http://127.0.0.1:{}", closed_port());
    let token = "dso-token-for-a-closed-port";
    let (b, _guard) = backend(config(&addr), token);

    let err = b.fetch("app/db").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
    assert!(
        msg.contains(&addr),
        "the message should name the address: {msg}"
    );
    assert!(!msg.contains(token), "{msg}");
    assert!(err.is_connection_failure());

    let err = b.probe().await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn slow_server_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            open.push(sock);
        }
    });

    let mut cfg = config(&addr);
    cfg.timeout = Duration::from_millis(300);
    let (b, _guard) = backend(cfg, "dso-token");

    let started = Instant::now();
    let err = b.fetch("app/db").await.unwrap_err();
    assert_eq!(err, BackendError::Timeout(Duration::from_millis(300)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        b.probe().await.unwrap_err(),
        BackendError::Timeout(Duration::from_millis(300))
    );
    hold.abort();
}

#[tokio::test]
async fn token_from_a_file_with_trailing_whitespace() {
    let s = server();
    let path = unique_path();
    s.put_v2(&path, json!({ "k": "from-file" })).await;
    let (b, _guard) = backend(config(&s.addr), &format!("{}\n \n", s.root));
    let data = b.fetch(&path).await.unwrap();
    assert_eq!(text(&data.select(Some("k")).unwrap()), "from-file");
}

#[tokio::test]
async fn token_from_an_env_var() {
    let s = server();
    let path = unique_path();
    s.put_v2(&path, json!({ "k": "from-env" })).await;
    let mut cfg = config(&s.addr);
    // `scripts/test` exports the root token in this variable.
    cfg.token_env = Some("DSO_TEST_VAULT_TOKEN".to_string());
    let b = VaultBackend::new(&cfg).unwrap();
    let data = b.fetch(&path).await.unwrap();
    assert_eq!(text(&data.select(Some("k")).unwrap()), "from-env");
}

#[tokio::test]
async fn missing_token_env_is_a_config_error_naming_the_variable() {
    let var = format!("DSO_TEST_UNSET_{}", unique("VAR").replace('-', "_"));
    let mut cfg = config("http://127.0.0.1:8200");
    cfg.token_env = Some(var.clone());
    let err = VaultBackend::new(&cfg).unwrap_err();
    assert!(
        matches!(&err, BackendError::Config(m) if m.contains(&var)),
        "expected a Config error naming {var}, got {err:?}"
    );

    let (_dir, file) = token_file("  \n");
    let mut cfg = config("http://127.0.0.1:8200");
    cfg.token_file = Some(file.clone());
    let err = VaultBackend::new(&cfg).unwrap_err();
    assert!(
        matches!(&err, BackendError::Config(m) if m.contains(&file.display().to_string())),
        "expected a Config error naming {}, got {err:?}",
        file.display()
    );
}

#[tokio::test]
async fn rotation_is_detected_by_current_version() {
    let s = server();
    let path = unique_path();
    s.put_v2(&path, json!({ "password": "first" })).await;
    let (b, _guard) = backend(config(&s.addr), &s.root);

    let v1 = b.current_version(&path).await.unwrap().unwrap();
    assert_eq!(
        text(
            &b.fetch(&path)
                .await
                .unwrap()
                .select(Some("password"))
                .unwrap()
        ),
        "first"
    );
    assert_eq!(b.current_version(&path).await.unwrap(), Some(v1));

    s.put_v2(&path, json!({ "password": "second" })).await;
    let v2 = b.current_version(&path).await.unwrap().unwrap();
    assert!(
        v2 > v1,
        "current_version should increase after a write: {v1} -> {v2}"
    );
    assert_eq!(
        text(
            &b.fetch(&path)
                .await
                .unwrap()
                .select(Some("password"))
                .unwrap()
        ),
        "second"
    );
}
