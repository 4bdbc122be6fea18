//! `dso-wait`: the first program of a container that `dso compose` started with `dsofile://`
//! references. It waits until the DSO agent has written the secret files (`<DIR>/.ready` exists),
//! then `exec`s the image's own entrypoint and command, so the application starts with its files
//! in place and stays PID 1 (signals, `dso.reload=signal`).
//!
//! Usage: `dso-wait [--timeout SECS] DIR -- PROGRAM [ARGS…]`
//!
//! Built static (`scripts/build-wait`) and bind-mounted read-only into the container: the image
//! needs no shell and no libc. Standard library only; nothing here reads a secret.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Default wait before giving up (exit 1, so a restart policy tries again).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// After this long one line on stderr says what is awaited.
const NOTICE_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Args {
    timeout: Duration,
    dir: PathBuf,
    program: OsString,
    args: Vec<OsString>,
}

fn parse(mut argv: impl Iterator<Item = OsString>) -> Result<Args, String> {
    let mut timeout = DEFAULT_TIMEOUT;
    let mut dir = None;
    loop {
        let Some(a) = argv.next() else {
            return Err("missing `-- PROGRAM`".into());
        };
        if a == "--" {
            break;
        }
        if a == "--timeout" {
            let v = argv.next().ok_or("--timeout needs a number of seconds")?;
            let secs: u64 = v
                .to_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("--timeout {v:?}: not a number of seconds"))?;
            timeout = Duration::from_secs(secs);
        } else if dir.is_none() {
            dir = Some(PathBuf::from(a));
        } else {
            return Err(format!("unexpected argument {a:?} before `--`"));
        }
    }
    let dir = dir.ok_or("missing the secrets directory")?;
    let program = argv
        .next()
        .ok_or("nothing to run after `--` (the image has neither Entrypoint nor Cmd)")?;
    Ok(Args {
        timeout,
        dir,
        program,
        args: argv.collect(),
    })
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

extern "C" fn on_stop(sig: i32) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(128 + sig) }
}

/// As PID 1 the kernel drops signals that have no handler: `docker stop` during the wait would
/// take the full grace period. Handlers are reset to the default by `exec`.
fn exit_on_stop_signals() {
    for sig in [1, 2, 3, 15] {
        // SAFETY: installs a handler that only calls _exit.
        unsafe {
            signal(sig, on_stop);
        }
    }
}

fn main() -> ExitCode {
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dso-wait: {e}\nusage: dso-wait [--timeout SECS] DIR -- PROGRAM [ARGS…]");
            return ExitCode::from(2);
        }
    };
    exit_on_stop_signals();
    let ready = args.dir.join(".ready");
    let start = Instant::now();
    let mut told = false;
    while !ready.exists() {
        let waited = start.elapsed();
        if waited >= args.timeout {
            eprintln!(
                "dso-wait: no secrets in {} after {}s: is the dso agent running, and can it read \
                 the secret store? Not starting {}.",
                args.dir.display(),
                waited.as_secs(),
                args.program.to_string_lossy()
            );
            return ExitCode::from(1);
        }
        if !told && waited >= NOTICE_AFTER {
            eprintln!(
                "dso-wait: waiting for the dso agent to write the secrets into {}",
                args.dir.display()
            );
            told = true;
        }
        let step = if waited < Duration::from_secs(2) {
            10
        } else {
            100
        };
        std::thread::sleep(Duration::from_millis(step));
    }
    let err = Command::new(&args.program).args(&args.args).exec();
    eprintln!(
        "dso-wait: cannot run {}: {err}",
        args.program.to_string_lossy()
    );
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Args, String> {
        parse(a.iter().map(OsString::from))
    }

    #[test]
    fn arguments() {
        let a = p(&[
            "--timeout",
            "7",
            "/run/secrets/dso",
            "--",
            "app",
            "-x",
            "--",
        ])
        .unwrap();
        assert_eq!(a.timeout, Duration::from_secs(7));
        assert_eq!(a.dir, PathBuf::from("/run/secrets/dso"));
        assert_eq!(a.program, "app");
        assert_eq!(a.args, vec![OsString::from("-x"), OsString::from("--")]);
        assert!(p(&["/d", "--"]).unwrap_err().contains("Entrypoint nor Cmd"));
        assert!(p(&["--", "x"]).unwrap_err().contains("directory"));
        assert!(p(&["--timeout", "x", "/d", "--", "a"]).is_err());
    }
}
