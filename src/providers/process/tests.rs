//! Unit tests of the `process` provider.

use super::*;
use std::os::unix::fs::PermissionsExt;

const T: Duration = Duration::from_secs(20);

fn python() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed by these tests");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn cfg(command: PathBuf, args: Vec<String>) -> ProcessConfig {
    ProcessConfig {
        command,
        args,
        env: BTreeMap::new(),
        pass_env: Vec::new(),
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
    }
}

/// A backend running a Python script (given as source) from a temp dir.
fn script(src: &str) -> (ProcessBackend, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("provider.py");
    std::fs::write(&file, src).unwrap();
    let c = cfg(python(), vec![file.display().to_string()]);
    (ProcessBackend::new("t", &c, T).unwrap(), dir)
}

/// Python prelude: `send(obj)`, `requests()` yields parsed lines, `init(msg)` answers.
const PRELUDE: &str = r#"
import json, sys, os, time
def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
def ok(rid, result):
    send({"jsonrpc": "2.0", "id": rid, "result": result})
def requests():
    for line in sys.stdin:
        req = json.loads(line)
        if req["method"] == "initialize":
            ok(req["id"], {"protocol": 1, "capabilities": {"version": True}})
            continue
        yield req
"#;

#[test]
fn config_defaults_unknown_fields_and_debug() {
    let c: ProcessConfig = toml::from_str(
        r#"
            command = "/bin/sh"
            env = { TOKEN = "hunter2" }
            "#,
    )
    .unwrap();
    assert_eq!(c.max_response_bytes, 1024 * 1024);
    assert!(c.args.is_empty() && c.pass_env.is_empty());
    assert!(c.validate("p").is_empty(), "{:?}", c.validate("p"));
    let shown = format!("{c:?}");
    assert!(
        shown.contains("TOKEN") && !shown.contains("hunter2"),
        "{shown}"
    );
    let back: ProcessConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let err = toml::from_str::<ProcessConfig>("command = \"/bin/sh\"\ncomand = \"x\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("comand"), "{err}");
}

#[test]
fn validate_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("plain");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (command, needle) in [
        (PathBuf::from("my-provider"), "not an absolute path"),
        (PathBuf::from(""), "is empty"),
        (dir.path().join("missing"), "cannot be used"),
        (dir.path().to_path_buf(), "not a regular file"),
        (not_exec.clone(), "not executable"),
    ] {
        let errs = cfg(command.clone(), vec![]).validate("providers.ext");
        assert_eq!(errs.len(), 1, "{command:?}: {errs:?}");
        assert!(
            errs[0].starts_with("providers.ext.command: ") && errs[0].contains(needle),
            "{command:?}: {errs:?}"
        );
    }
    let mut c = cfg("/bin/sh".into(), vec!["a\0b".into()]);
    c.env.insert("A=B".into(), "v".into());
    c.env.insert("OK".into(), "v\0".into());
    c.pass_env.push("".into());
    c.max_response_bytes = 0;
    let errs = c.validate("p");
    let fields: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "p.args",
            "p.env",
            "p.env",
            "p.pass_env",
            "p.max_response_bytes",
        ],
        "{errs:#?}"
    );
    let err = ProcessBackend::new("ext", &cfg("rel".into(), vec![]), T).unwrap_err();
    assert!(
        matches!(&err, BackendError::Config(m) if m.contains("providers.ext.command")),
        "{err}"
    );
}

#[test]
fn answers_are_parsed_and_garbage_is_quoted_briefly() {
    let Parsed::Answer(7, Ok(v)) =
        parse_answer(br#"{"jsonrpc":"2.0","id":7,"result":{"value":"x"}}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(v, json!({"value": "x"}));
    assert!(matches!(parse_answer(b"  \r"), Ok(Parsed::Skip)));
    for (code, want) in [
        (-32001, "not_found"),
        (-32002, "denied"),
        (-32000, "unavailable"),
    ] {
        let line = format!(r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":{code},"message":"m"}}}}"#);
        let Ok(Parsed::Answer(1, Err(e))) = parse_answer(line.as_bytes()) else {
            panic!("{line}")
        };
        assert_eq!(e.metric_label(), want);
    }
    let Ok(Parsed::Answer(2, Err(e))) = parse_answer(
        br#"{"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"it's \u001b[31mred\nline"}}"#,
    ) else {
        panic!()
    };
    assert_eq!(
        e.to_string(),
        r"backend unavailable: provider process answered error -1: it's \u{1b}[31mred\nline"
    );
    assert!(matches!(
        parse_answer(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}"#),
        Ok(Parsed::ErrorWithoutId(_))
    ));
    let long = format!("hello \x1b[31m{}", "z".repeat(500));
    let err = parse_answer(long.as_bytes()).unwrap_err();
    assert!(err.contains(r"hello \x1b[31m"), "{err}");
    assert!(err.len() < 300 && !err.contains(&"z".repeat(80)), "{err}");
    // A broken JSON line may hold a value: never quoted.
    let err = parse_answer(br#"{"id":1,"result":{"value":"s3cr"#).unwrap_err();
    assert!(
        err.contains("not valid JSON") && !err.contains("s3cr"),
        "{err}"
    );
    for bad in [&br#"[1]"#[..], br#"{"id":"1","result":{}}"#, br#"{"id":1}"#] {
        assert!(
            parse_answer(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn resolve_results_are_decoded() {
    let f = decode_resolve("p", json!({"value": "plain", "version": "v1"})).unwrap();
    assert_eq!(f.version.as_deref(), Some("v1"));
    assert_eq!(f.data.select(None).unwrap().expose(), b"plain");
    let f = decode_resolve(
        "p",
        json!({"values": {"a": "AAEC", "b": "aGk="}, "encoding": "base64", "version": 3}),
    )
    .unwrap();
    assert_eq!(f.version.as_deref(), Some("3"));
    assert_eq!(f.data.select(Some("a")).unwrap().expose(), [0u8, 1, 2]);
    assert_eq!(f.data.select(Some("b")).unwrap().expose(), b"hi");
    for bad in [
        json!({"value": "%%%", "encoding": "base64"}),
        json!({"value": 5}),
        json!({"values": {"a": 1}}),
        json!({"value": "a", "values": {}}),
        json!({}),
        json!("str"),
        json!({"value": "a", "encoding": "rot13"}),
    ] {
        let err = decode_resolve("app/x", bad.clone()).unwrap_err();
        assert!(
            matches!(&err, BackendError::Unavailable(m) if m.contains("`app/x`") && !m.contains("%%%")),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn line_reader_caps_lines_and_skips_the_rest() {
    let input: &[u8] = b"short\nthis line is too long\nok\npartial";
    let mut r = LineReader::new(input, 8);
    assert!(matches!(r.next_line().await.unwrap(), Line::Full(l) if l.as_slice() == b"short"));
    assert!(
        matches!(r.next_line().await.unwrap(), Line::TooLong(l) if l.as_slice() == b"this lin")
    );
    assert!(matches!(r.next_line().await.unwrap(), Line::Full(l) if l.as_slice() == b"ok"));
    assert!(matches!(r.next_line().await.unwrap(), Line::Eof));
    // A long line arriving in many reads, longer than the read chunk.
    let mut big = vec![b'x'; 100_000];
    big.extend_from_slice(b"\nafter\n");
    let mut r = LineReader::new(&big[..], 50_000);
    assert!(matches!(r.next_line().await.unwrap(), Line::TooLong(l) if l.len() == 50_000));
    assert!(matches!(r.next_line().await.unwrap(), Line::Full(l) if l.as_slice() == b"after"));
    let mut r = LineReader::new(&big[..], 200_000);
    assert!(matches!(r.next_line().await.unwrap(), Line::Full(l) if l.len() == 100_000));
}

#[tokio::test]
async fn pipelined_requests_are_matched_by_id_out_of_order() {
    // Holds requests until three arrived, then answers them in reverse order.
    let (b, _d) = script(&format!(
            "{PRELUDE}
held = []
for req in requests():
    held.append(req)
    if len(held) == 3:
        for r in reversed(held):
            ok(r['id'], {{'value': 'v-' + r['params']['path'], 'version': 'ver-' + r['params']['path']}})
        held = []
"
        ));
    let (a, bb, c) = tokio::join!(b.fetch_versioned("a"), b.fetch("b"), b.fetch("c"));
    let a = a.unwrap();
    assert_eq!(a.data.select(None).unwrap().expose(), b"v-a");
    assert_eq!(a.version.as_deref(), Some("ver-a"));
    assert_eq!(bb.unwrap().select(None).unwrap().expose(), b"v-b");
    assert_eq!(c.unwrap().select(None).unwrap().expose(), b"v-c");
    assert!(b.conn().await.unwrap().shared.lock().pending.is_empty());
}

#[tokio::test]
async fn a_line_over_the_cap_breaks_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.py");
    std::fs::write(
        &file,
        format!(
            "{PRELUDE}
for req in requests():
    ok(req['id'], {{'value': 'x' * int(req['params']['path'])}})
"
        ),
    )
    .unwrap();
    let mut c = cfg(python(), vec![file.display().to_string()]);
    c.max_response_bytes = 4096;
    let b = ProcessBackend::new("t", &c, T).unwrap();
    assert_eq!(
        b.fetch("100").await.unwrap().select(None).unwrap().len(),
        100
    );
    let err = b.fetch("5000").await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable(m) if m.contains("max_response_bytes")),
        "{err}"
    );
    // Broken for good: the next request fails at once, with the same cause.
    assert_eq!(b.fetch("1").await.unwrap_err(), err);
    assert_eq!(b.probe().await.unwrap_err(), err);
}

#[tokio::test]
async fn a_crash_fails_every_request_in_flight_with_the_exit_status() {
    let (b, _d) = script(&format!(
        "{PRELUDE}
n = 0
for req in requests():
    n += 1
    if n == 3:
        sys.exit(7)
"
    ));
    let (x, y, z) = tokio::join!(b.fetch("a"), b.fetch("b"), b.fetch("c"));
    for r in [x, y, z] {
        let err = r.unwrap_err();
        assert_eq!(
            err,
            BackendError::Unavailable("provider process exited with status 7".into())
        );
    }
    assert!(b.version("a").await.is_err());
}

#[tokio::test]
async fn errors_map_and_a_timed_out_request_leaves_no_entry() {
    let (b, _d) = script(&format!(
            "{PRELUDE}
for req in requests():
    p = req['params']['path']
    if p == 'missing':
        send({{'jsonrpc': '2.0', 'id': req['id'], 'error': {{'code': -32001, 'message': 'no such secret'}}}})
    elif p == 'denied':
        send({{'jsonrpc': '2.0', 'id': req['id'], 'error': {{'code': -32002, 'message': 'bad token'}}}})
    elif p == 'hang':
        pass
    else:
        ok(req['id'], {{'version': None}} if req['method'] == 'version' else {{'values': {{'k': 'v'}}}})
"
        ));
    assert_eq!(
        b.fetch("missing").await.unwrap_err(),
        BackendError::NotFound {
            path: "missing".into()
        }
    );
    assert_eq!(
        b.fetch("denied").await.unwrap_err(),
        BackendError::Denied("provider process: bad token".into())
    );
    let r = tokio::time::timeout(Duration::from_millis(200), b.fetch("hang")).await;
    assert!(r.is_err(), "the hang request must not answer");
    assert!(b.conn().await.unwrap().shared.lock().pending.is_empty());
    // The connection still works.
    let data = b.fetch("ok").await.unwrap();
    assert_eq!(data.select(Some("k")).unwrap().expose(), b"v");
    assert_eq!(b.version("ok").await.unwrap(), None);
}

#[tokio::test]
async fn drop_sends_shutdown_then_kills_and_reaps() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let marker = dir.path().join("got-shutdown");
    let (b, _d) = script(&format!(
        "{PRELUDE}
open({pid:?}, 'w').write(str(os.getpid()))
for req in requests():
    if req['method'] == 'shutdown':
        open({marker:?}, 'w').write('yes')
        time.sleep(3600)  # ignores it: must be killed after the grace period
    ok(req['id'], {{'value': 'x'}})
",
        pid = pidfile.display().to_string(),
        marker = marker.display().to_string(),
    ));
    b.probe().await.unwrap();
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    drop(b);
    // Generous wait: the grace period is 3 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let alive = rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
        if !alive {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "provider process {pid} survived drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(marker.exists(), "shutdown was not sent");
}
