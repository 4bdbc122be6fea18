//! Unit tests of the `aws` provider.

use super::*;

const T: Duration = Duration::from_secs(30);

fn cfg() -> AwsConfig {
    toml::from_str("").unwrap()
}

fn scope<'a>(id: &'a str, secret: &'a str, date: &'a str, service: &'a str) -> SigningScope<'a> {
    SigningScope {
        access_key_id: id,
        secret_access_key: secret,
        amz_date: date,
        region: "us-east-1",
        service,
    }
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `get-vanilla` and `post-vanilla` cases of AWS's SigV4 test suite, and the GET Object
/// example of the S3 SigV4 documentation.
#[test]
fn sigv4_matches_the_published_vectors() {
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let headers = h(&[
        ("Host", "example.amazonaws.com"),
        ("X-Amz-Date", "20150830T123600Z"),
    ]);
    let s = scope("AKIDEXAMPLE", secret, "20150830T123600Z", "service");
    assert_eq!(
        sigv4_authorization("GET", "/", "", &headers, b"", &s),
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    );
    assert!(sigv4_authorization("POST", "/", "", &headers, b"", &s)
        .ends_with("Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"));

    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let headers = h(&[
        ("host", "examplebucket.s3.amazonaws.com"),
        ("range", "bytes=0-9"),
        ("x-amz-content-sha256", empty),
        ("x-amz-date", "20130524T000000Z"),
    ]);
    let s = scope(
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "20130524T000000Z",
        "s3",
    );
    assert_eq!(
        sigv4_authorization("GET", "/test.txt", "", &headers, b"", &s),
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    );
}

/// A Secrets Manager request pinned once, so a change to what is signed shows up here.
#[test]
fn sigv4_secretsmanager_request_is_stable() {
    let headers = h(&[
        ("content-type", CONTENT_TYPE),
        ("host", "secretsmanager.eu-west-1.amazonaws.com"),
        ("x-amz-date", "20240101T000000Z"),
        ("x-amz-target", "secretsmanager.GetSecretValue"),
    ]);
    let s = SigningScope {
        region: "eu-west-1",
        ..scope("AKIDEXAMPLE", "secret", "20240101T000000Z", SERVICE)
    };
    let a = sigv4_authorization("POST", "/", "", &headers, br#"{"SecretId":"app/db"}"#, &s);
    assert!(a.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/eu-west-1/secretsmanager/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature="
        ), "{a}");
    assert!(!a.contains("secret,") && !a.ends_with("secret"));
    // Same input, same signature; another body, another one.
    assert_eq!(
        a,
        sigv4_authorization("POST", "/", "", &headers, br#"{"SecretId":"app/db"}"#, &s)
    );
    assert_ne!(
        a,
        sigv4_authorization("POST", "/", "", &headers, br#"{"SecretId":"app/dc"}"#, &s)
    );
}

#[test]
fn dates_and_uris() {
    let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
    assert_eq!(amz_date(t), "20150830T123600Z");
    assert_eq!(parse_utc("2015-08-30T12:36:00Z"), Some(t));
    assert_eq!(parse_utc("2015-08-30T12:36:00.123Z"), Some(t));
    assert_eq!(
        parse_utc("2000-02-29T23:59:59Z"),
        Some(UNIX_EPOCH + Duration::from_secs(951_868_799))
    );
    assert_eq!(
        amz_date(UNIX_EPOCH + Duration::from_secs(1_735_603_200)),
        "20241231T000000Z"
    );
    for bad in [
        "",
        "2015-08-30",
        "2015-13-30T12:36:00Z",
        "2015-08-30T12:36:00+02:00",
        "x",
    ] {
        assert_eq!(parse_utc(bad), None, "{bad}");
    }
    assert_eq!(uri_encode("a b/~c%"), "a%20b%2F~c%25");
    assert_eq!(canonical_uri(&Url::parse("http://h:1").unwrap()), "/");
    assert_eq!(
        canonical_uri(&Url::parse("https://h/a b/").unwrap()),
        "/a%2520b/"
    );
}

#[test]
fn config_defaults_and_validation() {
    let c = cfg();
    assert_eq!(c.region, None);
    assert_eq!(c.endpoint, None);
    assert!(!c.allow_http);
    assert!(c.validate("p").is_empty());
    let err = toml::from_str::<AwsConfig>("regoin = \"x\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("regoin"), "{err}");

    let ok: AwsConfig = toml::from_str(
        "region = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:5000\"\nprofile = \"ci\"",
    )
    .unwrap();
    assert!(ok.validate("p").is_empty());
    for good in [
        "http://localhost:1",
        "http://[::1]:5000",
        "https://vpce.example.com/",
    ] {
        let mut c = cfg();
        c.endpoint = Some(good.into());
        assert!(c.validate("p").is_empty(), "{good}: {:?}", c.validate("p"));
    }

    let mut bad = cfg();
    bad.region = Some("EU West".into());
    bad.endpoint = Some("http://sm.internal:80".into());
    bad.profile = Some(" ".into());
    let errs = bad.validate("providers.aws");
    assert_eq!(errs.len(), 3, "{errs:#?}");
    for (e, field) in errs.iter().zip(["region", "endpoint", "profile"]) {
        assert!(e.starts_with(&format!("providers.aws.{field}: ")), "{e}");
    }
    assert!(errs[1].contains("allow_http"), "{}", errs[1]);
    bad.allow_http = true;
    assert_eq!(bad.validate("p").len(), 2);
    for e in [
        "ftp://h",
        "http://",
        "https://u:p@h",
        "https://h/?x=1",
        "nope",
    ] {
        let mut c = cfg();
        c.endpoint = Some(e.into());
        let errs = c.validate("p");
        assert_eq!(errs.len(), 1, "{e}: {errs:?}");
        assert!(errs[0].starts_with("p.endpoint: "), "{errs:?}");
    }
}

#[test]
fn region_resolution_and_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().display().to_string();
    let env = Environment::fixed([("HOME", home.as_str())]);
    let err = AwsBackend::with_environment(&cfg(), T, env.clone()).unwrap_err();
    assert!(
        matches!(&err, BackendError::Config(m) if m.contains("aws.region") && m.contains("AWS_REGION")),
        "{err}"
    );
    let b = AwsBackend::with_environment(
        &cfg(),
        T,
        Environment::fixed([("AWS_DEFAULT_REGION", "eu-central-1")]),
    )
    .unwrap();
    assert_eq!(b.region(), "eu-central-1");
    assert_eq!(
        b.endpoint(),
        "https://secretsmanager.eu-central-1.amazonaws.com"
    );
    let b = AwsBackend::with_environment(
        &cfg(),
        T,
        Environment::fixed([("AWS_REGION", "cn-north-1"), ("AWS_DEFAULT_REGION", "x")]),
    )
    .unwrap();
    assert_eq!(
        b.endpoint(),
        "https://secretsmanager.cn-north-1.amazonaws.com.cn"
    );

    std::fs::create_dir(dir.path().join(".aws")).unwrap();
    std::fs::write(
        dir.path().join(".aws/config"),
        "[default]\nregion = us-west-2\n[profile ci]\nregion = ap-south-1\n",
    )
    .unwrap();
    let b = AwsBackend::with_environment(&cfg(), T, env.clone()).unwrap();
    assert_eq!(b.region(), "us-west-2");
    let mut c = cfg();
    c.profile = Some("ci".into());
    assert_eq!(
        AwsBackend::with_environment(&c, T, env).unwrap().region(),
        "ap-south-1"
    );
    c.region = Some("sa-east-1".into());
    assert_eq!(
        AwsBackend::with_environment(&c, T, Environment::fixed([("AWS_REGION", "us-east-1")]))
            .unwrap()
            .region(),
        "sa-east-1"
    );
}

#[test]
fn ini_sections() {
    let text = "# c\n[default]\naws_access_key_id = A\n\n[other]\nAWS_Secret_Access_Key=B \n\
                    [profile ci]\nregion=r\n[sso-session ci]\nregion=z\n";
    let d = ini_section(text, "default", false).unwrap();
    assert_eq!(d.get("aws_access_key_id").map(|v| v.as_str()), Some("A"));
    let o = ini_section(text, "other", false).unwrap();
    assert_eq!(
        o.get("aws_secret_access_key").map(|v| v.as_str()),
        Some("B")
    );
    assert!(ini_section(text, "ci", false).is_none());
    let ci = ini_section(text, "ci", true).unwrap();
    assert_eq!(ci.get("region").map(|v| v.as_str()), Some("r"));
    assert!(ini_section(text, "other", true).is_none());
    assert!(ini_section(text, "default", true).is_some());
}

/// A backend in region us-east-1 whose environment is exactly `vars` plus HOME = `home`.
fn backend_env(home: &std::path::Path, vars: &[(&str, &str)], endpoint: &str) -> AwsBackend {
    let mut all: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.push(("HOME".into(), home.display().to_string()));
    let mut c = cfg();
    c.region = Some("us-east-1".into());
    c.endpoint = Some(endpoint.into());
    AwsBackend::with_environment(&c, Duration::from_secs(5), Environment::fixed(all)).unwrap()
}

#[tokio::test]
async fn credential_chain_env_then_files_then_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let off = ("AWS_EC2_METADATA_DISABLED", "true");
    let ep = "http://127.0.0.1:1";

    // Nothing anywhere: Denied, naming every source tried.
    let b = backend_env(home, &[off], ep);
    let err = b.credentials().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
    for needle in [
        "AWS_ACCESS_KEY_ID",
        ".aws/credentials: no such file",
        ".aws/config: no such file",
        "AWS_EC2_METADATA_DISABLED",
    ] {
        assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
    }

    // Shared credentials file, default profile and a named one.
    std::fs::create_dir(home.join(".aws")).unwrap();
    std::fs::write(
            home.join(".aws/credentials"),
            "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file-secret-1\n\
             [ci]\naws_access_key_id=AKIDCI\naws_secret_access_key=ci-secret\naws_session_token=tok\n\
             [half]\naws_access_key_id=AKIDHALF\n",
        )
        .unwrap();
    let c = backend_env(home, &[off], ep).credentials().await.unwrap();
    assert_eq!(c.access_key_id.as_str(), "AKIDFILE");
    assert_eq!(c.secret_access_key.as_str(), "file-secret-1");
    assert!(c.session_token.is_none());
    assert!(c.source.contains("profile `default`"), "{}", c.source);
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("file-secret-1") && !shown.contains("AKIDFILE"),
        "{shown}"
    );

    let c = backend_env(home, &[off, ("AWS_PROFILE", "ci")], ep)
        .credentials()
        .await
        .unwrap();
    assert_eq!(c.access_key_id.as_str(), "AKIDCI");
    assert_eq!(c.session_token.as_deref().map(String::as_str), Some("tok"));

    let err = backend_env(home, &[off, ("AWS_PROFILE", "half")], ep)
        .credentials()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Config(m) if m.contains("only one of")),
        "{err}"
    );

    // A profile only in the config file, `[profile x]` form; an unsupported one.
    std::fs::write(
        home.join(".aws/config"),
        "[profile cfgonly]\naws_access_key_id=AKIDCFG\naws_secret_access_key=cfg-secret\n\
             [profile assume]\nrole_arn=arn:aws:iam::1:role/x\nsource_profile=default\n",
    )
    .unwrap();
    let c = backend_env(home, &[off, ("AWS_PROFILE", "cfgonly")], ep)
        .credentials()
        .await
        .unwrap();
    assert_eq!(c.access_key_id.as_str(), "AKIDCFG");
    assert!(c.source.contains(".aws/config"), "{}", c.source);
    let err = backend_env(home, &[off, ("AWS_PROFILE", "assume")], ep)
        .credentials()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("role_arn"), "{err}");

    // Environment variables win over the files; a custom credentials file path.
    let c = backend_env(
        home,
        &[
            off,
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-token"),
        ],
        ep,
    )
    .credentials()
    .await
    .unwrap();
    assert_eq!(c.access_key_id.as_str(), "AKIDENV");
    assert_eq!(
        c.session_token.as_deref().map(String::as_str),
        Some("env-token")
    );
    let err = backend_env(home, &[off, ("AWS_ACCESS_KEY_ID", "AKIDENV")], ep)
        .credentials()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Config(m) if m.contains("AWS_SECRET_ACCESS_KEY is not")),
        "{err}"
    );
    let other = home.join("creds-elsewhere");
    std::fs::write(
        &other,
        "[default]\naws_access_key_id=AKIDOTHER\naws_secret_access_key=o\n",
    )
    .unwrap();
    let c = backend_env(
        home,
        &[
            off,
            ("AWS_SHARED_CREDENTIALS_FILE", &other.display().to_string()),
        ],
        ep,
    )
    .credentials()
    .await
    .unwrap();
    assert_eq!(c.access_key_id.as_str(), "AKIDOTHER");
    std::fs::write(
        &other,
        "[default]\naws_access_key_id=AKID OTHER\naws_secret_access_key=o\n",
    )
    .unwrap();
    let err = backend_env(
        home,
        &[
            off,
            ("AWS_SHARED_CREDENTIALS_FILE", &other.display().to_string()),
        ],
        ep,
    )
    .credentials()
    .await
    .unwrap_err();
    assert!(matches!(err, BackendError::Config(_)), "{err}");
}

/// A tiny HTTP server: each request gets the answer of the first rule whose needle is in
/// the request head; everything received is recorded.
async fn canned(
    rules: Vec<(&'static str, Vec<u8>)>,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let rules = rules.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let resp = rules
                    .iter()
                    .find(|(needle, _)| text.contains(needle))
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| http("404 Not Found", "", ""));
                log.lock().unwrap().push(text);
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

fn http(status: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\n{extra_headers}\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn instance_role_through_imdsv2_is_cached_until_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let far = "2999-01-01T00:00:00Z";
    let (imds, seen) = canned(vec![
            ("PUT /latest/api/token", http("200 OK", "", "imds-session-token")),
            (
                "GET /latest/meta-data/iam/security-credentials/ HTTP",
                http("200 OK", "", "web-role\n"),
            ),
            (
                "GET /latest/meta-data/iam/security-credentials/web-role",
                http(
                    "200 OK",
                    "",
                    &format!(
                        r#"{{"Code":"Success","AccessKeyId":"ASIAROLE","SecretAccessKey":"role-secret","Token":"role-token","Expiration":"{far}"}}"#
                    ),
                ),
            ),
        ])
        .await;
    let b = backend_env(
        dir.path(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)],
        "http://127.0.0.1:1",
    );
    let c = b.credentials().await.unwrap();
    assert_eq!(c.access_key_id.as_str(), "ASIAROLE");
    assert_eq!(
        c.session_token.as_deref().map(String::as_str),
        Some("role-token")
    );
    assert!(c.source.contains("web-role"), "{}", c.source);
    assert_eq!(
        c.renew_at,
        parse_utc(far).and_then(|t| t.checked_sub(EXPIRY_MARGIN))
    );
    let _again = b.credentials().await.unwrap();
    let requests = seen.lock().unwrap().clone();
    assert_eq!(
        requests.len(),
        3,
        "cached credentials are reused: {requests:#?}"
    );
    assert!(requests[0]
        .to_ascii_lowercase()
        .contains("x-aws-ec2-metadata-token-ttl-seconds: 21600"));
    assert!(
        requests[1].contains("imds-session-token"),
        "{}",
        requests[1]
    );

    // Expiring within the margin: used now, resolved again next time.
    let soon = amz_date(SystemTime::now() + Duration::from_secs(60));
    let soon = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &soon[0..4],
        &soon[4..6],
        &soon[6..8],
        &soon[9..11],
        &soon[11..13],
        &soon[13..15]
    );
    let (imds, seen) = canned(vec![
            ("PUT /latest/api/token", http("200 OK", "", "t")),
            (
                "GET /latest/meta-data/iam/security-credentials/ HTTP",
                http("200 OK", "", "r"),
            ),
            (
                "GET /latest/meta-data/iam/security-credentials/r",
                http(
                    "200 OK",
                    "",
                    &format!(
                        r#"{{"Code":"Success","AccessKeyId":"A","SecretAccessKey":"S","Token":"T","Expiration":"{soon}"}}"#
                    ),
                ),
            ),
        ])
        .await;
    let b = backend_env(
        dir.path(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)],
        "http://127.0.0.1:1",
    );
    b.credentials().await.unwrap();
    b.credentials().await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 6);

    // No role attached: the chain ends with Denied saying so.
    let (imds, _) = canned(vec![("PUT /latest/api/token", http("200 OK", "", "t"))]).await;
    let b = backend_env(
        dir.path(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)],
        "http://127.0.0.1:1",
    );
    let err = b.credentials().await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Denied(m) if m.contains("no IAM role")),
        "{err}"
    );
}

#[test]
fn secret_shapes() {
    let text = |v: &SecretValue| String::from_utf8(v.expose().to_vec()).unwrap();
    let SecretData::Map(m) =
        secret_data(Some(r#"{"user":"app","password":"pw"}"#.into()), None).unwrap()
    else {
        panic!("a JSON object of strings is a map")
    };
    assert_eq!(m.keys().collect::<Vec<_>>(), ["password", "user"]);
    assert_eq!(text(&m["password"]), "pw");
    for (input, why) in [
        ("plain-password", "not JSON"),
        (r#"{"n":5,"s":"x"}"#, "not all strings"),
        (r#"["a"]"#, "an array"),
        ("\"quoted\"", "a JSON string"),
        ("", "empty"),
    ] {
        let SecretData::Value(v) = secret_data(Some(input.into()), None).unwrap() else {
            panic!("{why}: expected a single value")
        };
        assert_eq!(text(&v), input, "{why}");
    }
    // A JSON object that is not all strings still serves `#key` through select.
    let data = secret_data(Some(r#"{"n":5,"s":"x"}"#.into()), None).unwrap();
    assert_eq!(text(&data.select(Some("n")).unwrap()), "5");

    let SecretData::Value(v) = secret_data(None, Some("AAEC/w==".into())).unwrap() else {
        panic!("binary is a value")
    };
    assert_eq!(v.expose(), &[0u8, 1, 2, 255]);
    assert!(secret_data(None, Some("***".into())).is_err());
    assert!(secret_data(None, None).is_err());
    // SecretString wins when both are present.
    assert!(matches!(
        secret_data(Some("s".into()), Some("AA==".into())).unwrap(),
        SecretData::Value(v) if v.expose() == b"s"
    ));
}

fn env_creds() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "AKIDUNIT"),
        ("AWS_SECRET_ACCESS_KEY", "unit-secret-never-shown"),
        ("AWS_SESSION_TOKEN", "unit-token-never-shown"),
    ]
}

#[tokio::test]
async fn requests_are_signed_and_answers_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let ok = r#"{"Name":"app/db","VersionId":"v-1","SecretString":"{\"password\":\"pw\"}"}"#;
    let describe =
        r#"{"Name":"app/db","VersionIdsToStages":{"v-0":["AWSPREVIOUS"],"v-1":["AWSCURRENT"]}}"#;
    let (ep, seen) = canned(vec![
        ("secretsmanager.GetSecretValue", http("200 OK", "", ok)),
        (
            "secretsmanager.DescribeSecret",
            http("200 OK", "", describe),
        ),
        (
            "secretsmanager.ListSecrets",
            http("200 OK", "", r#"{"SecretList":[]}"#),
        ),
    ])
    .await;
    let b = backend_env(dir.path(), &env_creds(), &ep);
    let f = b.fetch_versioned("app/db").await.unwrap();
    assert_eq!(f.version.as_deref(), Some("v-1"));
    assert_eq!(b.version("app/db").await.unwrap().as_deref(), Some("v-1"));
    b.probe().await.unwrap();
    let SecretData::Map(m) = f.data else {
        panic!("map expected")
    };
    assert_eq!(m["password"].expose(), b"pw");
    let first = seen.lock().unwrap()[0].to_ascii_lowercase();
    for needle in [
            "post / http/1.1",
            "x-amz-target: secretsmanager.getsecretvalue",
            "content-type: application/x-amz-json-1.1",
            "x-amz-security-token: unit-token-never-shown",
            "authorization: aws4-hmac-sha256 credential=akidunit/",
            "/us-east-1/secretsmanager/aws4_request, signedheaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, signature=",
        ] {
            assert!(first.contains(needle), "`{needle}` not in:\n{first}");
        }
    assert!(!first.contains("unit-secret-never-shown"));
}

#[tokio::test]
async fn errors_are_mapped_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let err_body = |t: &str, m: &str| format!(r#"{{"__type":"{t}","message":"{m}"}}"#);
    for (resp, expect, needle) in [
        (
            http(
                "400 Bad Request",
                "",
                &err_body("ResourceNotFoundException", "nope"),
            ),
            "not_found",
            "app/db",
        ),
        (
            http(
                "400 Bad Request",
                "",
                &err_body(
                    "com.amazonaws.x#UnrecognizedClientException",
                    "bad key AKIDUNIT",
                ),
            ),
            "denied",
            "UnrecognizedClientException: bad key [redacted]",
        ),
        (
            http(
                "400 Bad Request",
                "",
                &err_body("InvalidSignatureException", "sig"),
            ),
            "denied",
            "InvalidSignatureException",
        ),
        (
            http(
                "400 Bad Request",
                "",
                &err_body("AccessDeniedException", "no"),
            ),
            "denied",
            "environment variables AWS_ACCESS_KEY_ID",
        ),
        (http("403 Forbidden", "", ""), "denied", "HTTP 403"),
        (
            http(
                "403 Forbidden",
                "",
                "<ErrorResponse><Errors><Error><Code>InvalidClientTokenId</Code>\
                     <Message>The security token included in the request is invalid.</Message>\
                     </Error></Errors></ErrorResponse>",
            ),
            "denied",
            "HTTP 403 InvalidClientTokenId: The security token",
        ),
        (
            http(
                "400 Bad Request",
                "",
                &err_body("InvalidRequestException", "it was marked for deletion"),
            ),
            "not_found",
            "app/db",
        ),
        (
            http(
                "400 Bad Request",
                "x-amzn-errortype: ValidationException:http://x\r\n",
                "{}",
            ),
            "config",
            "ValidationException",
        ),
        (
            http(
                "500 Internal Server Error",
                "",
                &err_body("InternalServiceError", "oops"),
            ),
            "unavailable",
            "InternalServiceError",
        ),
        (
            http("502 Bad Gateway", "", "<html>"),
            "unavailable",
            "HTTP 502",
        ),
        (
            http("200 OK", "", "{not json"),
            "unavailable",
            "invalid JSON",
        ),
        (
            http("200 OK", "", r#"{"Name":"x"}"#),
            "unavailable",
            "neither SecretString",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n".to_vec(),
            "unavailable",
            "larger than",
        ),
    ] {
        let (ep, _) = canned(vec![("POST", resp)]).await;
        let b = backend_env(dir.path(), &env_creds(), &ep);
        let err = b.fetch("app/db").await.unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.metric_label(), expect, "{needle}: {msg}");
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
        for secret in [
            "unit-secret-never-shown",
            "unit-token-never-shown",
            "AKIDUNIT",
        ] {
            assert!(!msg.contains(secret), "{secret} leaked: {msg}");
        }
        if expect == "unavailable" {
            assert!(msg.contains(&ep), "{msg}");
        }
    }
    let b = backend_env(dir.path(), &env_creds(), "http://127.0.0.1:1");
    assert!(matches!(b.fetch("").await, Err(BackendError::Config(_))));
    assert!(matches!(
        b.fetch("a\nb").await,
        Err(BackendError::Config(_))
    ));
    let shown = format!("{b:?}");
    assert!(
        !shown.contains("unit-secret") && !shown.contains("AKIDUNIT"),
        "{shown}"
    );
}
