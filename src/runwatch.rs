//! `dso run --watch`: the command runs as a child of `dso`, which forwards the usual signals to
//! it, passes its exit code through, and re-resolves the references every `refresh_interval`:
//! when a value changed, the child is restarted with the new values (or sent a signal,
//! `--on-change signal:SIGHUP`). Where the values come from (the agent, which keeps them
//! re-checked, or the backends) is the caller's [`Recheck`].

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

/// How long a child stopped for a restart gets after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a changed value does to the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Stop it (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and start it again with the new
    /// values. The default.
    Restart,
    /// Send it this signal; its environment keeps the old values.
    Signal(Signal),
}

/// Signals `--on-change signal:` accepts, by name.
const SIGNALS: [(&str, Signal); 8] = [
    ("HUP", Signal::HUP),
    ("INT", Signal::INT),
    ("QUIT", Signal::QUIT),
    ("USR1", Signal::USR1),
    ("USR2", Signal::USR2),
    ("TERM", Signal::TERM),
    ("WINCH", Signal::WINCH),
    ("ALRM", Signal::ALARM),
];

impl OnChange {
    /// `restart` or `signal:SIGHUP` (`signal:HUP` too); the error says what to write.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "restart" {
            return Ok(OnChange::Restart);
        }
        let hint =
            "write `restart` or `signal:SIGHUP` (HUP, INT, QUIT, USR1, USR2, TERM, WINCH, ALRM)";
        let Some(name) = s.strip_prefix("signal:") else {
            return Err(format!("`{s}` is not a reaction: {hint}"));
        };
        let name = name.strip_prefix("SIG").unwrap_or(name);
        SIGNALS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, sig)| OnChange::Signal(*sig))
            .ok_or_else(|| format!("`{s}` names no signal DSO sends: {hint}"))
    }
}

/// How the child is watched.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    /// How often the values are re-resolved (None: never; the child is only supervised).
    pub interval: Option<Duration>,
    /// What a change does.
    pub on_change: OnChange,
}

/// Resolved (variable, value) pairs.
pub type Vars = Vec<(String, OsString)>;

/// What [`Recheck::recheck`] returns.
pub type RecheckFuture<'a> = Pin<Box<dyn Future<Output = Option<Vars>> + 'a>>;

/// Re-resolves the references: the new (variable, value) pairs, or None when that failed (the
/// caller printed why; the child keeps its values).
pub trait Recheck {
    /// One resolution of every reference.
    fn recheck(&mut self) -> RecheckFuture<'_>;
}

/// A digest of the resolved values (never kept or shown as such: only compared).
fn digest(vars: &[(String, OsString)]) -> [u8; 32] {
    use std::os::unix::ffi::OsStrExt;
    let mut h = Sha256::new();
    for (k, v) in vars {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().into()
}

/// The shell's convention for an exit status: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from((128 + s) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}

fn spawn(program: &OsStr, args: &[OsString], env: &[(OsString, OsString)]) -> io::Result<Child> {
    Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true)
        .spawn()
}

fn send(child: &Child, sig: Signal) {
    if let Some(pid) = child.id().and_then(|p| Pid::from_raw(p as i32)) {
        let _ = kill_process(pid, sig);
    }
}

/// Stops the child: SIGTERM, then SIGKILL after [`STOP_GRACE`].
async fn stop(child: &mut Child) -> io::Result<ExitStatus> {
    send(child, Signal::TERM);
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(r) => r,
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

/// Runs the command under supervision until it exits; returns its exit code (128 + signal when
/// a signal ended it). `env` is the full extra environment; a change replaces the variables the
/// [`Recheck`] returns.
pub async fn supervise(
    program: &OsStr,
    args: &[OsString],
    mut env: Vec<(OsString, OsString)>,
    watch: Watch,
    initial: &[(String, OsString)],
    recheck: &mut dyn Recheck,
) -> io::Result<u8> {
    let mut child = spawn(program, args, &env)?;
    let mut sigs = Vec::new();
    for (kind, sig) in [
        (SignalKind::terminate(), Signal::TERM),
        (SignalKind::interrupt(), Signal::INT),
        (SignalKind::hangup(), Signal::HUP),
        (SignalKind::quit(), Signal::QUIT),
        (SignalKind::user_defined1(), Signal::USR1),
        (SignalKind::user_defined2(), Signal::USR2),
        (SignalKind::window_change(), Signal::WINCH),
    ] {
        sigs.push((signal(kind)?, sig));
    }
    let mut current = digest(initial);
    let mut tick = watch.interval.map(|i| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + i, i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let got_signal = async {
            let waits = sigs
                .iter_mut()
                .map(|(s, sig)| Box::pin(async move { s.recv().await.map(|_| *sig) }));
            futures_util::future::select_all(waits).await.0
        };
        let due = async {
            match &mut tick {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            status = child.wait() => return Ok(exit_code(status?)),
            Some(sig) = got_signal => send(&child, sig),
            () = due => {
                let Some(new) = recheck.recheck().await else { continue };
                let d = digest(&new);
                if d == current {
                    continue;
                }
                current = d;
                match watch.on_change {
                    OnChange::Signal(sig) => {
                        eprintln!("dso: a referenced value changed: sending {sig:?} to the command");
                        send(&child, sig);
                    }
                    OnChange::Restart => {
                        eprintln!("dso: a referenced value changed: restarting the command");
                        for (k, v) in &new {
                            let k = OsString::from(k);
                            match env.iter_mut().find(|(e, _)| *e == k) {
                                Some(slot) => slot.1 = v.clone(),
                                None => env.push((k, v.clone())),
                            }
                        }
                        stop(&mut child).await?;
                        child = spawn(program, args, &env)?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_change_parses_restart_and_signals() {
        assert_eq!(OnChange::parse("restart"), Ok(OnChange::Restart));
        assert_eq!(
            OnChange::parse("signal:SIGHUP"),
            Ok(OnChange::Signal(Signal::HUP))
        );
        assert_eq!(
            OnChange::parse("signal:USR1"),
            Ok(OnChange::Signal(Signal::USR1))
        );
        assert!(OnChange::parse("signal:SIGKILL")
            .unwrap_err()
            .contains("names no signal"));
        assert!(OnChange::parse("reload").unwrap_err().contains("restart"));
    }
}
