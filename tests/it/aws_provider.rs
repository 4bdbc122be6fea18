//! The `aws` provider against a real moto_server (`scripts/test` starts it and exports
//! `DSO_TEST_AWS_ENDPOINT`). The shared moto accepts any credentials; the tests that need
//! credentials to be checked start a private moto_server with IAM authentication on. Every test
//! uses its own secret names, so they run in parallel.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dso::providers::aws::{AwsBackend, AwsConfig, Environment};
use dso_actors::backend::{BackendError, SecretBackend};
use dso_actors::secret::SecretData;
use serde_json::json;

use crate::support::*;

const DIR: &str = "/run/secrets/dso";

/// Calls a Secrets Manager action on moto with an unsigned request (the shared moto does not
/// check signatures; the credential scope in `Authorization` only routes it to the service).
async fn sm_at(endpoint: &str, action: &str, body: serde_json::Value) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .post(endpoint)
        .header("X-Amz-Target", format!("secretsmanager.{action}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=dso-test/20240101/us-east-1/secretsmanager/aws4_request, \
             SignedHeaders=host, Signature=00",
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{action} on {endpoint}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "{action}: HTTP {status}: {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

async fn sm(action: &str, body: serde_json::Value) -> serde_json::Value {
    sm_at(&env("DSO_TEST_AWS_ENDPOINT"), action, body).await
}

/// The same, from a plain (non-async) test.
fn sm_blocking(action: &str, body: serde_json::Value) -> serde_json::Value {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sm(action, body))
}

/// A secret name no other test (or earlier run against the same moto) uses.
fn unique_name(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("dso-it/{}-{nanos}/{what}", unique("aws"))
}

fn config(endpoint: &str) -> AwsConfig {
    let mut c: AwsConfig = toml::from_str("").unwrap();
    c.region = Some("us-east-1".into());
    c.endpoint = Some(endpoint.into());
    c
}

/// The per-request timeout of the test backends.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An environment with test credentials only (no HOME, no instance role).
fn test_env() -> Environment {
    Environment::fixed([
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ])
}

fn backend(endpoint: &str) -> AwsBackend {
    AwsBackend::with_environment(&config(endpoint), TIMEOUT, test_env()).unwrap()
}

fn text(v: &dso_actors::secret::SecretValue) -> String {
    String::from_utf8(v.expose().to_vec()).unwrap()
}

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The agent's config with one `aws` provider named `aws` on the shared moto.
fn agent_config(ws: &Workspace, refresh: &str) {
    ws.write_config(&format!(
        "[providers.aws]\ntype = \"aws\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
         timeout = \"5s\"\nrefresh_interval = \"{refresh}\"\n",
        env("DSO_TEST_AWS_ENDPOINT")
    ));
}

const AGENT_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

#[test]
fn string_json_and_binary_secrets_reach_a_container() {
    let token_name = unique_name("token");
    let db_name = unique_name("db");
    let bin_name = unique_name("bin");
    let token = unique("tok-value");
    let password = unique("pw-value");
    sm_blocking(
        "CreateSecret",
        json!({ "Name": token_name, "SecretString": token }),
    );
    sm_blocking(
        "CreateSecret",
        json!({ "Name": db_name, "SecretString": json!({ "user": "app", "password": password }).to_string() }),
    );
    // "bin-\x00\x01" in base64.
    sm_blocking(
        "CreateSecret",
        json!({ "Name": bin_name, "SecretBinary": "YmluLQAB" }),
    );

    let ws = Workspace::new();
    agent_config(&ws, "1m");
    let agent = Agent::start_with_env(&ws.config(), AGENT_ENV);
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--label",
        &format!("dso.secret.token=aws/{token_name}"),
        "--label",
        &format!("dso.secret.pw=aws/{db_name}#password"),
        "--label",
        &format!("dso.secret.user=aws/{db_name}#user"),
        "--label",
        &format!("dso.secret.db=aws/{db_name}"),
        "--label",
        &format!("dso.secret.bin=aws/{bin_name}"),
    ]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(
        c.read(&format!("{DIR}/token")).as_deref(),
        Some(token.as_str())
    );
    assert_eq!(
        c.read(&format!("{DIR}/pw")).as_deref(),
        Some(password.as_str())
    );
    assert_eq!(c.read(&format!("{DIR}/user")).as_deref(), Some("app"));
    let whole: serde_json::Value =
        serde_json::from_str(&c.read(&format!("{DIR}/db")).unwrap()).unwrap();
    assert_eq!(whole, json!({ "user": "app", "password": password }));
    let bin = docker(&["exec", &c.id, "od", "-An", "-tx1", &format!("{DIR}/bin")]);
    assert_eq!(
        bin.split_whitespace().collect::<Vec<_>>(),
        ["62", "69", "6e", "2d", "00", "01"]
    );
    assert_eq!(c.stat(&format!("{DIR}/pw")), "400 0 0");
    c.assert_not_on_disk(&password);
    c.assert_not_on_disk(&token);
    let logs = agent.logs();
    assert!(!logs.contains(&password) && !logs.contains(&token));
}

#[test]
fn a_missing_secret_is_refused_and_nothing_is_written() {
    let missing = unique_name("missing");
    let ws = Workspace::new();
    agent_config(&ws, "1m");
    let agent = Agent::start_with_env(&ws.config(), AGENT_ENV);
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--label",
        &format!("dso.secret.x=aws/{missing}"),
    ]);
    let needle = format!("secret `{missing}` not found");
    let line = eventually(&agent, &format!("an error naming {}", c.name), || {
        agent
            .logs()
            .lines()
            .find(|l| l.contains(&needle) && l.contains(&c.name))
            .map(str::to_string)
    });
    assert!(line.contains("provider_error"), "{line}");
    assert!(line.contains("nothing written"), "{line}");
    assert_eq!(c.ls(DIR), "");
}

#[test]
fn a_rotated_secret_reaches_the_container_within_the_refresh_interval() {
    let name = unique_name("rot");
    sm_blocking(
        "CreateSecret",
        json!({ "Name": name, "SecretString": json!({ "password": "first-aws" }).to_string() }),
    );
    let ws = Workspace::new();
    agent_config(&ws, "1s");
    let agent = Agent::start_with_env(&ws.config(), AGENT_ENV);
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--label",
        &format!("dso.secret.pw=aws/{name}#password"),
    ]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(c.read(&format!("{DIR}/pw")).as_deref(), Some("first-aws"));

    sm_blocking(
        "PutSecretValue",
        json!({ "SecretId": name, "SecretString": json!({ "password": "second-aws" }).to_string() }),
    );
    eventually(&agent, "the rotated value in the container", || {
        (c.read(&format!("{DIR}/pw")).as_deref() == Some("second-aws")).then_some(())
    });
    c.assert_not_on_disk("second-aws");
}

#[tokio::test]
async fn version_matches_fetch_and_changes_on_rotation() {
    let endpoint = env("DSO_TEST_AWS_ENDPOINT");
    let name = unique_name("ver");
    sm(
        "CreateSecret",
        json!({ "Name": name, "SecretString": "v1-value" }),
    )
    .await;
    let b = backend(&endpoint);
    let fetched = b.fetch_versioned(&name).await.unwrap();
    let v1 = fetched
        .version
        .clone()
        .expect("GetSecretValue has a VersionId");
    assert_eq!(b.version(&name).await.unwrap(), Some(v1.clone()));
    let SecretData::Value(v) = &fetched.data else {
        panic!("a plain string is one value")
    };
    assert_eq!(text(v), "v1-value");

    sm(
        "PutSecretValue",
        json!({ "SecretId": name, "SecretString": "v2-value" }),
    )
    .await;
    let v2 = b.version(&name).await.unwrap().unwrap();
    assert_ne!(v1, v2);
    let fetched = b.fetch_versioned(&name).await.unwrap();
    assert_eq!(fetched.version, Some(v2));
    assert_eq!(text(&fetched.data.select(None).unwrap()), "v2-value");
    b.probe().await.unwrap();
}

#[tokio::test]
async fn missing_and_deleted_secrets_are_not_found() {
    let endpoint = env("DSO_TEST_AWS_ENDPOINT");
    let b = backend(&endpoint);
    let missing = unique_name("missing");
    assert_eq!(
        b.fetch(&missing).await.unwrap_err(),
        BackendError::NotFound {
            path: missing.clone()
        }
    );
    assert_eq!(
        b.version(&missing).await.unwrap_err(),
        BackendError::NotFound { path: missing }
    );

    let deleted = unique_name("deleted");
    sm(
        "CreateSecret",
        json!({ "Name": deleted, "SecretString": "soon-gone" }),
    )
    .await;
    assert!(b.fetch(&deleted).await.is_ok());
    sm(
        "DeleteSecret",
        json!({ "SecretId": deleted, "RecoveryWindowInDays": 7 }),
    )
    .await;
    for err in [
        b.fetch(&deleted).await.unwrap_err(),
        b.version(&deleted).await.unwrap_err(),
    ] {
        assert_eq!(
            err,
            BackendError::NotFound {
                path: deleted.clone()
            }
        );
    }
}

#[tokio::test]
async fn no_credentials_at_all_is_denied_naming_every_source() {
    let home = tempfile::tempdir().unwrap();
    let b = AwsBackend::with_environment(
        &config(&env("DSO_TEST_AWS_ENDPOINT")),
        TIMEOUT,
        Environment::fixed([
            ("HOME", home.path().to_str().unwrap()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]),
    )
    .unwrap();
    for err in [
        b.fetch("any/secret").await.unwrap_err(),
        b.probe().await.unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
        for needle in [
            "no AWS credentials found",
            "AWS_ACCESS_KEY_ID",
            ".aws/credentials",
            ".aws/config",
            "instance role",
        ] {
            assert!(msg.contains(needle), "`{needle}` not in: {msg}");
        }
    }
}

#[tokio::test]
async fn server_down_is_unavailable() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let b = backend(&endpoint);
    for err in [
        b.fetch("app/db").await.unwrap_err(),
        b.probe().await.unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
        assert!(msg.contains(&endpoint), "{msg}");
        assert!(!msg.contains("testing"), "{msg}");
    }
}

#[tokio::test]
async fn slow_server_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            open.push(sock);
        }
    });
    let cfg = config(&endpoint);
    let b = AwsBackend::with_environment(&cfg, Duration::from_millis(300), test_env()).unwrap();
    let started = Instant::now();
    assert_eq!(
        b.fetch("app/db").await.unwrap_err(),
        BackendError::Timeout(Duration::from_millis(300))
    );
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

/// A moto_server of this test's own with IAM authentication on: signatures and access keys
/// are checked. Killed on drop.
struct AuthMoto {
    child: Child,
    endpoint: String,
    key_id: String,
    secret: String,
}

impl AuthMoto {
    /// Starts it and creates one IAM user allowed everything, with an access key (the three
    /// unauthenticated calls moto allows before checking).
    async fn start() -> AuthMoto {
        let port = closed_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server (scripts/test-env.sh installs it)");
        let mut moto = AuthMoto {
            child,
            endpoint,
            key_id: String::new(),
            secret: String::new(),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client
            .get(format!("{}/moto-api/", moto.endpoint))
            .send()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "private moto_server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let iam = |form: String| {
            client
                .post(&moto.endpoint)
                .header(
                    "Authorization",
                    "AWS4-HMAC-SHA256 Credential=x/20240101/us-east-1/iam/aws4_request, \
                     SignedHeaders=host, Signature=00",
                )
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
        };
        let policy =
            "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A\
                      %22Allow%22%2C%22Action%22%3A%22*%22%2C%22Resource%22%3A%22*%22%7D%5D%7D";
        for form in [
            "Action=CreateUser&UserName=dso&Version=2010-05-08".to_string(),
            format!(
                "Action=PutUserPolicy&UserName=dso&PolicyName=all&PolicyDocument={policy}&Version=2010-05-08"
            ),
        ] {
            let r = iam(form).await.unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
        let xml = iam("Action=CreateAccessKey&UserName=dso&Version=2010-05-08".into())
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let tag = |name: &str| {
            let open = format!("<{name}>");
            let start = xml.find(&open).unwrap_or_else(|| panic!("{name} in {xml}")) + open.len();
            let end = start + xml[start..].find(&format!("</{name}>")).unwrap();
            xml[start..end].to_string()
        };
        moto.key_id = tag("AccessKeyId");
        moto.secret = tag("SecretAccessKey");
        moto
    }

    fn backend(&self, key_id: &str, secret: &str) -> AwsBackend {
        AwsBackend::with_environment(
            &config(&self.endpoint),
            TIMEOUT,
            Environment::fixed([
                ("AWS_ACCESS_KEY_ID", key_id),
                ("AWS_SECRET_ACCESS_KEY", secret),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ]),
        )
        .unwrap()
    }
}

impl Drop for AuthMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_checking_server_accepts_our_signature_and_refuses_wrong_credentials() {
    let moto = AuthMoto::start().await;

    // The right key: the signature is verified and accepted.
    let good = moto.backend(&moto.key_id, &moto.secret);
    good.probe().await.unwrap();
    let missing = unique_name("authed-missing");
    assert_eq!(
        good.fetch(&missing).await.unwrap_err(),
        BackendError::NotFound { path: missing }
    );

    // The right key id with a wrong secret: the signature does not match.
    let wrong_secret = format!("{}x", moto.secret);
    let bad = moto.backend(&moto.key_id, &wrong_secret);
    for err in [
        bad.fetch("app/db").await.unwrap_err(),
        bad.probe().await.unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
        assert!(msg.contains("Signature"), "{msg}");
        assert!(
            msg.contains("environment variables AWS_ACCESS_KEY_ID"),
            "{msg}"
        );
        assert!(
            !msg.contains(&wrong_secret) && !msg.contains(&moto.secret),
            "{msg}"
        );
    }

    // An access key the server does not know.
    let unknown = moto.backend("AKIADSOUNKNOWNKEY000", "whatever-secret");
    let err = unknown.probe().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
    assert!(msg.contains("InvalidClientTokenId"), "{msg}");
    assert!(!msg.contains("whatever-secret"), "{msg}");
}

#[test]
fn check_and_doctor_handle_the_aws_type() {
    let ws = Workspace::new();
    agent_config(&ws, "1m");
    let cfg = ws.config();
    let (code, out, err) = dso_with(Some(&cfg), &["check"]);
    assert_eq!(code, Some(0), "{out}{err}");

    let doctor = |envs: &[(&str, &str)]| {
        let home = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(dso_bin());
        cmd.arg("--config")
            .arg(&cfg)
            .args(["doctor", "--json"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("HOME", home.path())
            .env("AWS_EC2_METADATA_DISABLED", "true");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let checks: Vec<serde_json::Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("doctor --json: {e}\n{text}"));
        checks
            .into_iter()
            .find(|c| c["check"] == "provider aws")
            .unwrap_or_else(|| panic!("no `provider aws` check in {text}"))
    };
    let ok = doctor(AGENT_ENV);
    assert_eq!(ok["ok"], true, "{ok}");
    let denied = doctor(&[]);
    assert_eq!(denied["ok"], false, "{denied}");
    let detail = denied.to_string();
    assert!(detail.contains("no AWS credentials found"), "{detail}");

    // An invalid aws provider is reported by `dso check` with its field.
    ws.write_config(
        "[providers.aws]\ntype = \"aws\"\nregion = \"Not A Region\"\nendpoint = \"http://10.1.2.3:80\"\n",
    );
    let (code, out, err) = dso_with(Some(&cfg), &["check"]);
    assert_eq!(code, Some(4), "{out}{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("providers.aws.region"), "{all}");
    assert!(
        all.contains("providers.aws.endpoint") && all.contains("allow_http"),
        "{all}"
    );
}
