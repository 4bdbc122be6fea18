//! The `vault` provider against a real OpenBao dev server (`scripts/test` starts it and exports
//! `DSO_TEST_VAULT_ADDR` / `DSO_TEST_VAULT_TOKEN`, with KV v2 at `secret/` and KV v1 at `kv1/`).
//! Every test writes under its own unique path, so they run in parallel. AppRole tests create
//! their own policy and role (unique names; AppRole is enabled at `approle/`), the namespace test
//! its own namespace, the TLS test a private `bao server -dev -dev-tls` on its own port.

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
    toml::from_str(&format!("address = \"{addr}\"")).unwrap()
}

/// Writes `contents` to a token file in a fresh temp dir (kept alive by the returned guard).
fn token_file(contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, contents).unwrap();
    (dir, file)
}

/// A backend for `cfg` whose token is `token`, read from a file.
fn backend(cfg: VaultConfig, token: &str) -> (VaultBackend, tempfile::TempDir) {
    backend_with_timeout(cfg, token, TIMEOUT)
}

/// The per-request timeout of the test backends.
const TIMEOUT: Duration = Duration::from_secs(10);

/// As [`backend`], with the per-request timeout `timeout`.
fn backend_with_timeout(
    mut cfg: VaultConfig,
    token: &str,
    timeout: Duration,
) -> (VaultBackend, tempfile::TempDir) {
    let (dir, file) = token_file(token);
    cfg.token_file = Some(file);
    let b = VaultBackend::new(&cfg, timeout).unwrap_or_else(|e| panic!("VaultBackend::new: {e}"));
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

    let cfg = config(&addr);
    let (b, _guard) = backend_with_timeout(cfg, "dso-token", Duration::from_millis(300));

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
    let b = VaultBackend::new(&cfg, TIMEOUT).unwrap();
    let data = b.fetch(&path).await.unwrap();
    assert_eq!(text(&data.select(Some("k")).unwrap()), "from-env");
}

#[tokio::test]
async fn missing_token_env_is_a_config_error_naming_the_variable() {
    let var = format!("DSO_TEST_UNSET_{}", unique("VAR").replace('-', "_"));
    let mut cfg = config("http://127.0.0.1:8200");
    cfg.token_env = Some(var.clone());
    let err = VaultBackend::new(&cfg, TIMEOUT).unwrap_err();
    assert!(
        matches!(&err, BackendError::Config(m) if m.contains(&var)),
        "expected a Config error naming {var}, got {err:?}"
    );

    let (_dir, file) = token_file("  \n");
    let mut cfg = config("http://127.0.0.1:8200");
    cfg.token_file = Some(file.clone());
    let err = VaultBackend::new(&cfg, TIMEOUT).unwrap_err();
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

// ---------------------------------------------------------------------------------------------
// AppRole, token lifecycle, namespaces, TLS.

impl Server {
    /// `METHOD /v1/<api_path>` with the root token (and a namespace), returning the JSON answer
    /// (`null` for an empty body).
    async fn api(
        &self,
        method: reqwest::Method,
        api_path: &str,
        body: Option<serde_json::Value>,
        namespace: Option<&str>,
    ) -> serde_json::Value {
        let url = format!("{}/v1/{api_path}", self.addr.trim_end_matches('/'));
        let mut req = reqwest::Client::new()
            .request(method.clone(), &url)
            .header("X-Vault-Token", &self.root);
        if let Some(ns) = namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
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
        if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// A policy allowing reads of `secret/data/<prefix>/*` and `secret/metadata/<prefix>/*`.
    async fn read_policy(&self, name: &str, prefix: &str) {
        let policy = format!(
            "path \"secret/data/{prefix}/*\" {{ capabilities = [\"read\"] }}\n\
             path \"secret/metadata/{prefix}/*\" {{ capabilities = [\"read\"] }}\n"
        );
        self.api(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": policy })),
            None,
        )
        .await;
    }

    /// Creates an AppRole role `name` at `mount` with `policy` and the given token TTLs;
    /// returns (role_id, secret_id).
    async fn approle(
        &self,
        mount: &str,
        name: &str,
        policy: &str,
        token_ttl: &str,
        token_max_ttl: &str,
    ) -> (String, String) {
        self.api(
            reqwest::Method::POST,
            &format!("auth/{mount}/role/{name}"),
            Some(json!({
                "token_policies": [policy],
                "token_ttl": token_ttl,
                "token_max_ttl": token_max_ttl,
                "secret_id_ttl": "1h",
            })),
            None,
        )
        .await;
        let role = self
            .api(
                reqwest::Method::GET,
                &format!("auth/{mount}/role/{name}/role-id"),
                None,
                None,
            )
            .await;
        let secret = self
            .api(
                reqwest::Method::POST,
                &format!("auth/{mount}/role/{name}/secret-id"),
                Some(json!({})),
                None,
            )
            .await;
        (
            role["data"]["role_id"].as_str().unwrap().to_string(),
            secret["data"]["secret_id"].as_str().unwrap().to_string(),
        )
    }

    /// A token with `policy` and `ttl`, created with the root token.
    async fn token(&self, policy: &str, ttl: &str) -> String {
        let t = self
            .api(
                reqwest::Method::POST,
                "auth/token/create",
                Some(json!({ "policies": [policy], "ttl": ttl, "renewable": true })),
                None,
            )
            .await;
        t["auth"]["client_token"].as_str().unwrap().to_string()
    }

    async fn revoke(&self, token: &str) {
        self.api(
            reqwest::Method::POST,
            "auth/token/revoke",
            Some(json!({ "token": token })),
            None,
        )
        .await;
    }
}

/// A unique name usable as a policy, role, mount or namespace name.
fn name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{nanos}", unique(prefix))
}

/// A policy + AppRole role (at `approle/`) reading `secret/<prefix>/*`; the role id and secret
/// id written to files in `dir`. Returns (prefix, role id file, secret id file, secret id).
async fn approle_setup(
    s: &Server,
    dir: &std::path::Path,
    ttl: &str,
    max_ttl: &str,
) -> (String, PathBuf, PathBuf, String) {
    let n = name("dso-approle");
    let prefix = format!("dso-it/{n}");
    s.read_policy(&n, &prefix).await;
    let (role_id, secret_id) = s.approle("approle", &n, &n, ttl, max_ttl).await;
    let role_file = dir.join("role-id");
    let secret_file = dir.join("secret-id");
    std::fs::write(&role_file, format!("{role_id}\n")).unwrap();
    std::fs::write(&secret_file, format!("{secret_id}\n")).unwrap();
    (prefix, role_file, secret_file, secret_id)
}

#[test]
fn approle_agent_injects_and_keeps_working_across_token_ttls() {
    use crate::support::{eventually, Agent, Workspace};
    const DIR: &str = "/run/secrets/dso";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = server();
    let ws = Workspace::new();
    // token_ttl 4s, token_max_ttl 10s: renewed at ~2.7s and ~5.3s, capped at ~8s, then a new
    // login at ~9.3s.
    let (prefix, role_file, secret_file, secret_id) =
        rt.block_on(approle_setup(&s, ws.dir.path(), "4s", "10s"));
    let path = format!("{prefix}/db");
    rt.block_on(s.put_v2(&path, json!({ "password": "approle-value-1" })));
    ws.write_config(&format!(
        "[providers.bao]\ntype = \"vault\"\naddress = \"{}\"\nauth = \"approle\"\n\
         role_id_file = \"{}\"\nsecret_id_file = \"{}\"\ntimeout = \"5s\"\n\
         refresh_interval = \"1s\"\n",
        s.addr,
        role_file.display(),
        secret_file.display()
    ));
    let agent = Agent::start_with_env(&ws.config(), &[("DSO_LOG", "info,dso=debug")]);
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--label",
        &format!("dso.secret.pw=bao/{path}#password"),
    ]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(
        c.read(&format!("{DIR}/pw")).as_deref(),
        Some("approle-value-1")
    );
    agent.wait_log("vault: logged in with AppRole");
    // The 1s re-checks keep using the token: it gets renewed, then (max_ttl) replaced.
    agent.wait_log("vault token renewed");
    agent.wait_log("the token is about to expire");
    // Still working with the new token: a rotation reaches the container.
    rt.block_on(s.put_v2(&path, json!({ "password": "approle-value-2" })));
    eventually(&agent, "the rotated value in the container", || {
        (c.read(&format!("{DIR}/pw")).as_deref() == Some("approle-value-2")).then_some(())
    });
    let logs = agent.logs();
    let logins = logs.matches("vault: logged in with AppRole").count();
    assert!(logins >= 2, "expected a re-login:\n{logs}");
    for needle in [secret_id.as_str(), "approle-value-1", "approle-value-2"] {
        assert!(!logs.contains(needle), "`{needle}` leaked into the logs");
    }
    c.assert_not_on_disk("approle-value-2");
}

#[test]
fn approle_with_a_wrong_secret_id_is_denied_and_nothing_is_written() {
    use crate::support::{eventually, Agent, Workspace};
    const DIR: &str = "/run/secrets/dso";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = server();
    let ws = Workspace::new();
    let (prefix, role_file, secret_file, _) =
        rt.block_on(approle_setup(&s, ws.dir.path(), "1m", "5m"));
    let path = format!("{prefix}/db");
    rt.block_on(s.put_v2(&path, json!({ "password": "never-delivered" })));
    let wrong = format!("wrong-secret-id-{}", name("w"));
    std::fs::write(&secret_file, &wrong).unwrap();

    // The backend alone: a clear Denied error naming the login and the file, not the value.
    let mut cfg = config(&s.addr);
    cfg.auth = dso::providers::vault::AuthMethod::Approle;
    cfg.role_id_file = Some(role_file.clone());
    cfg.secret_id_file = Some(secret_file.clone());
    let b = VaultBackend::new(&cfg, TIMEOUT).unwrap();
    let err = rt.block_on(b.fetch(&path)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
    assert!(
        msg.contains("refused the AppRole login")
            && msg.contains("auth/approle/login")
            && msg.contains(&secret_file.display().to_string()),
        "{msg}"
    );
    assert!(!msg.contains(&wrong), "{msg}");

    // The agent: the container is refused, nothing is written.
    ws.write_config(&format!(
        "[providers.bao]\ntype = \"vault\"\naddress = \"{}\"\nauth = \"approle\"\n\
         role_id_file = \"{}\"\nsecret_id_file = \"{}\"\ntimeout = \"5s\"\n",
        s.addr,
        role_file.display(),
        secret_file.display()
    ));
    let agent = Agent::start(&ws.config());
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--label",
        &format!("dso.secret.pw=bao/{path}#password"),
    ]);
    eventually(&agent, "a provider_error injection", || {
        (agent
            .metric("dso_injections_total{result=\"provider_error\"}")
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    });
    let logs = agent.wait_log("refused the AppRole login");
    assert_eq!(c.ls(DIR), "", "nothing may be written");
    assert!(!logs.contains(&wrong) && !logs.contains("never-delivered"));
}

#[tokio::test]
async fn approle_logs_in_again_when_its_token_is_revoked() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    // A private AppRole mount, so revoking every token it issued touches no other test.
    let mount = name("dso-approle-mnt");
    s.api(
        reqwest::Method::POST,
        &format!("sys/auth/{mount}"),
        Some(json!({ "type": "approle" })),
        None,
    )
    .await;
    let n = name("dso-revoke");
    let prefix = format!("dso-it/{n}");
    s.read_policy(&n, &prefix).await;
    let (role_id, secret_id) = s.approle(&mount, &n, &n, "1h", "2h").await;
    let secret_file = dir.path().join("secret-id");
    std::fs::write(&secret_file, &secret_id).unwrap();
    let path = format!("{prefix}/db");
    s.put_v2(&path, json!({ "k": "v1" })).await;

    let mut cfg = config(&s.addr);
    cfg.auth = dso::providers::vault::AuthMethod::Approle;
    cfg.role_id = Some(role_id);
    cfg.secret_id_file = Some(secret_file);
    cfg.approle_mount = mount.clone();
    let b = VaultBackend::new(&cfg, TIMEOUT).unwrap();
    assert_eq!(
        text(&b.fetch(&path).await.unwrap().select(Some("k")).unwrap()),
        "v1"
    );
    b.probe().await.unwrap();

    // Every token of this mount revoked: the next request gets 403, logs in again, retries.
    s.api(
        reqwest::Method::PUT,
        &format!("sys/leases/revoke-prefix/auth/{mount}/login"),
        None,
        None,
    )
    .await;
    s.put_v2(&path, json!({ "k": "v2" })).await;
    assert_eq!(
        text(&b.fetch(&path).await.unwrap().select(Some("k")).unwrap()),
        "v2"
    );
    assert_eq!(b.version(&path).await.unwrap().as_deref(), Some("2"));

    // A path outside the policy stays Denied (after one re-login and one retry).
    let other = unique_path();
    s.put_v2(&other, json!({ "k": "x" })).await;
    let err = b.fetch(&other).await.unwrap_err();
    assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
    assert!(err.to_string().contains("AppRole login"), "{err}");
}

#[tokio::test]
async fn a_token_file_rotated_on_disk_is_picked_up() {
    let s = server();
    let n = name("dso-tokfile");
    let prefix = format!("dso-it/{n}");
    s.read_policy(&n, &prefix).await;
    let path = format!("{prefix}/db");
    s.put_v2(&path, json!({ "k": "file-rotation" })).await;
    let first = s.token(&n, "1h").await;
    let (_dir, file) = token_file(&first);
    let mut cfg = config(&s.addr);
    cfg.token_file = Some(file.clone());
    let b = VaultBackend::new(&cfg, TIMEOUT).unwrap();
    b.fetch(&path).await.unwrap();

    // An external agent rotates the token: the old one is revoked, the file replaced.
    let second = s.token(&n, "1h").await;
    s.revoke(&first).await;
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, format!("{second}\n")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert_eq!(
        text(&b.fetch(&path).await.unwrap().select(Some("k")).unwrap()),
        "file-rotation"
    );

    // Revoked and not replaced: Denied, naming the file, never the token.
    s.revoke(&second).await;
    let err = b.fetch(&path).await.unwrap_err();
    assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(!msg.contains(&second), "{msg}");

    // Rewritten in place (same inode): picked up too.
    let third = s.token(&n, "1h").await;
    std::fs::write(&file, &third).unwrap();
    b.fetch(&path).await.unwrap();
}

#[tokio::test]
async fn a_token_from_a_file_is_renewed_before_it_expires() {
    let s = server();
    let n = name("dso-renew");
    let prefix = format!("dso-it/{n}");
    s.read_policy(&n, &prefix).await;
    let path = format!("{prefix}/db");
    s.put_v2(&path, json!({ "k": "renewed" })).await;
    // Margins of seconds on both sides: renewal due at 8s, the original TTL ends at 12s.
    let token = s.token(&n, "12s").await;
    let (_dir, file) = token_file(&token);
    let mut cfg = config(&s.addr);
    cfg.token_file = Some(file);
    let b = VaultBackend::new(&cfg, TIMEOUT).unwrap();
    b.fetch(&path).await.unwrap();
    // Past 2/3 of the TTL: the next request renews the token (for another 12s) first.
    tokio::time::sleep(Duration::from_millis(8500)).await;
    b.fetch(&path).await.unwrap();
    // Past the original 12s TTL (seconds to spare before the renewed one ends): still valid.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    assert_eq!(
        text(&b.fetch(&path).await.unwrap().select(Some("k")).unwrap()),
        "renewed"
    );
    let looked = s
        .api(
            reqwest::Method::POST,
            "auth/token/lookup",
            Some(json!({ "token": token })),
            None,
        )
        .await;
    assert!(
        looked["data"]["last_renewal_time"].as_i64().unwrap_or(0) > 0,
        "the token was never renewed: {looked}"
    );
}

#[tokio::test]
async fn reads_a_secret_in_a_namespace() {
    let s = server();
    let ns = name("dso-ns");
    s.api(
        reqwest::Method::POST,
        &format!("sys/namespaces/{ns}"),
        None,
        None,
    )
    .await;
    s.api(
        reqwest::Method::POST,
        "sys/mounts/secret",
        Some(json!({ "type": "kv", "options": { "version": "2" } })),
        Some(&ns),
    )
    .await;
    let path = unique_path();
    s.api(
        reqwest::Method::POST,
        &format!("secret/data/{path}"),
        Some(json!({ "data": { "k": "in-namespace" } })),
        Some(&ns),
    )
    .await;

    let mut cfg = config(&s.addr);
    cfg.namespace = Some(ns.clone());
    let (b, _g) = backend(cfg, &s.root);
    let got = b.fetch_versioned(&path).await.unwrap();
    assert_eq!(text(&got.data.select(Some("k")).unwrap()), "in-namespace");
    assert_eq!(got.version.as_deref(), Some("1"));
    assert_eq!(b.version(&path).await.unwrap().as_deref(), Some("1"));
    b.probe().await.unwrap();

    // Without the namespace the same path is not there.
    let (root_ns, _g2) = backend(config(&s.addr), &s.root);
    assert_eq!(
        root_ns.fetch(&path).await.unwrap_err(),
        BackendError::NotFound { path }
    );
}

/// A private `bao server -dev -dev-tls` on its own port, killed on drop; its CA is in `ca`.
struct TlsBao {
    child: std::process::Child,
    port: u16,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsBao {
    const ROOT: &'static str = "tls-root";

    fn start() -> TlsBao {
        let dir = tempfile::tempdir().unwrap();
        let port = closed_port();
        let child = std::process::Command::new(env("DSO_TEST_BAO_BIN"))
            .args(["server", "-dev", "-dev-tls"])
            .arg(format!("-dev-tls-cert-dir={}", dir.path().display()))
            .arg(format!("-dev-root-token-id={}", Self::ROOT))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start bao -dev-tls");
        TlsBao {
            child,
            port,
            ca: dir.path().join("vault-ca.pem"),
            _dir: dir,
        }
    }

    /// Waits until the server answers over TLS with its CA (generous deadline).
    async fn ready(&self) -> reqwest::Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(pem) = std::fs::read(&self.ca) {
                if let Ok(cert) = reqwest::Certificate::from_pem(&pem) {
                    let client = reqwest::Client::builder()
                        .add_root_certificate(cert)
                        .build()
                        .unwrap();
                    let url = format!("https://127.0.0.1:{}/v1/sys/health", self.port);
                    if let Ok(r) = client.get(&url).send().await {
                        if r.status().is_success() {
                            return client;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "private bao -dev-tls did not start on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TlsBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn tls_with_a_ca_file_works_and_without_it_is_a_clear_error() {
    let bao = TlsBao::start();
    let client = bao.ready().await;
    let addr = format!("https://127.0.0.1:{}", bao.port);
    let resp = client
        .post(format!("{addr}/v1/secret/data/app/db"))
        .header("X-Vault-Token", TlsBao::ROOT)
        .json(&json!({ "data": { "k": "over-tls" } }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{resp:?}");

    let with_ca = |mut cfg: VaultConfig| {
        cfg.ca_file = Some(bao.ca.clone());
        cfg
    };
    let (b, _g) = backend(with_ca(config(&addr)), TlsBao::ROOT);
    assert_eq!(
        text(&b.fetch("app/db").await.unwrap().select(Some("k")).unwrap()),
        "over-tls"
    );
    b.probe().await.unwrap();

    // Without the CA: a TLS error that says what to do.
    let (b, _g) = backend(config(&addr), TlsBao::ROOT);
    let err = b.fetch("app/db").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
    assert!(
        msg.contains(&addr) && msg.contains("certificate") && msg.contains("ca_file"),
        "{msg}"
    );
    assert!(!msg.contains(TlsBao::ROOT), "{msg}");

    // tls_server_name: the certificate is checked against that name (dev-tls issues it for
    // `localhost` and 127.0.0.1), the connection still goes to the address.
    let mut cfg = with_ca(config(&addr));
    cfg.tls_server_name = Some("localhost".into());
    let (b, _g) = backend(cfg, TlsBao::ROOT);
    b.fetch("app/db").await.unwrap();
    let mut cfg = with_ca(config(&addr));
    cfg.tls_server_name = Some("not-the-server.example".into());
    let (b, _g) = backend(cfg, TlsBao::ROOT);
    let err = b.fetch("app/db").await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable(m) if m.contains("certificate")),
        "{err:?}"
    );

    // A ca_file that is not PEM is a config error naming the field.
    let (_d, bogus) = token_file("not a certificate");
    let mut cfg = config(&addr);
    cfg.ca_file = Some(bogus);
    let errs = cfg.validate("providers.bao");
    assert!(
        errs.len() == 1 && errs[0].starts_with("providers.bao.ca_file: "),
        "{errs:?}"
    );
}
