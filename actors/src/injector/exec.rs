//! The exec write path: one `docker exec` of `sh -c write.sh` as root with all files on stdin (one
//! tar, or in an image without `tar` one base64 line per file), and the classification of how the
//! script ended. The script follows the write path's rules (SECURITY.md) inside the container.
//! [`ScriptExit`] names its exit codes; the script text is generated from it, so the codes the
//! script uses and the ones classified here cannot drift apart. Nothing the container prints is
//! logged: a refusal names an entry only when it is one of the names DSO gave the script.

use crate::engine::{ContainerEngine, EngineError};
use crate::messages::ContainerJob;
use crate::model::{ContainerInfo, SecretFile, READY_MARKER};
use crate::owners::{script_owner, unknown_from_script};
use crate::secret::SecretValue;
use crate::spec::ContainerSpec;
use crate::tarball::{build_b64_lines, build_tar};

use super::{refused, Outcome, WriteResult};

/// How the in-container script ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptExit {
    /// A new generation is in place.
    Written,
    /// The directory already holds exactly this content (compared with what was sent): nothing
    /// done.
    Unchanged,
    /// The directory is not provably on the container's tmpfs: nothing written.
    NotTmpfs,
    /// Neither the extractor of the transport (`tar`, or `base64` for the fallback) is in the
    /// image: nothing written.
    NoExtractor,
    /// An entry DSO did not create and may not remove sits at one of its names: nothing changed.
    Foreign,
    /// A user or group name is not in the container's `/etc/passwd` / `/etc/group`: nothing
    /// written (the name is printed after `owners::UNKNOWN_MARKER`).
    UnknownOwner,
}

impl ScriptExit {
    /// Every exit the script knows.
    pub const ALL: [ScriptExit; 6] = [
        ScriptExit::Written,
        ScriptExit::Unchanged,
        ScriptExit::NotTmpfs,
        ScriptExit::NoExtractor,
        ScriptExit::Foreign,
        ScriptExit::UnknownOwner,
    ];

    /// The process exit code (10 and 64–67 stay clear of `sh`'s own 1, 2, 126, 127 and signals).
    pub const fn code(self) -> i64 {
        match self {
            ScriptExit::Written => 0,
            ScriptExit::Unchanged => 10,
            ScriptExit::NotTmpfs => 64,
            ScriptExit::NoExtractor => 65,
            ScriptExit::Foreign => 66,
            ScriptExit::UnknownOwner => 67,
        }
    }

    /// The exit an exec reported, if it is one of the script's own.
    pub fn from_code(code: Option<i64>) -> Option<Self> {
        let code = code?;
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// The placeholder in the script text that stands for this code.
    const fn placeholder(self) -> &'static str {
        match self {
            ScriptExit::Written => "@WRITTEN@",
            ScriptExit::Unchanged => "@UNCHANGED@",
            ScriptExit::NotTmpfs => "@NOT_TMPFS@",
            ScriptExit::NoExtractor => "@NO_TAR@",
            ScriptExit::Foreign => "@FOREIGN@",
            ScriptExit::UnknownOwner => "@UNKNOWN_OWNER@",
        }
    }
}

/// What the in-container script prints when it replaced an earlier set (not a first injection).
const REPLACED_MARKER: &str = "replaced";

/// The line prefix by which the script names a foreign entry.
const FOREIGN_MARKER: &str = "dso-foreign:";

/// The in-container script. Its arguments: mount point, directory, digest, `tar`|`b64`, then
/// name, mode, uid, gid per file.
const SCRIPT: &str = include_str!("write.sh");

/// How the files travel on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One tar (needs `tar` in the container).
    Tar,
    /// One base64 line per file (needs `sh` and `base64`); the fallback when `tar` is missing.
    Base64Lines,
}

/// The in-container script (one text for both transports), its exit codes filled in from
/// [`ScriptExit`].
pub fn script() -> String {
    ScriptExit::ALL
        .into_iter()
        .fold(SCRIPT.to_string(), |text, e| {
            text.replace(e.placeholder(), &e.code().to_string())
        })
}

/// The argv of the exec that installs `files` into `dir`, on the tmpfs mounted at `mount`.
pub fn inject_command(
    mount: &str,
    dir: &str,
    digest: &str,
    files: &[&SecretFile],
    transport: Transport,
) -> Vec<String> {
    let mut cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        script(),
        "dso-inject".to_string(),
        mount.to_string(),
        dir.to_string(),
        digest.to_string(),
        match transport {
            Transport::Tar => "tar",
            Transport::Base64Lines => "b64",
        }
        .to_string(),
    ];
    for f in files {
        cmd.push(f.name.clone());
        cmd.push(format!("{:o}", f.mode));
        let (uid, gid) = script_owner(f);
        cmd.push(uid);
        cmd.push(gid);
    }
    cmd
}

/// The exec path: one `docker exec` of the in-container script with the tar on stdin (or, in an
/// image without `tar`, base64 lines).
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_exec(
    job: &ContainerJob,
    info: &ContainerInfo,
    mount: &str,
    spec: &ContainerSpec,
    digest: &str,
    values: Vec<SecretValue>,
    engine: &dyn ContainerEngine,
    metrics: &crate::metrics::Metrics,
    permits: Option<&tokio::sync::Semaphore>,
) -> WriteResult {
    // The engine's exec budget, held for this container's exec (and its base64 retry) only.
    let permit = match permits {
        Some(p) => p.acquire().await.ok(),
        None => None,
    };
    let pairs: Vec<_> = spec.files.iter().zip(values.iter()).collect();
    let tar = match build_tar(&pairs) {
        Ok(t) => t,
        Err(e) => return Err(refused("tar_error", e.to_string())),
    };
    drop(pairs);
    let files: Vec<_> = spec.files.iter().collect();
    let mut result = engine
        .exec(
            &job.id,
            &inject_command(mount, &spec.dir, digest, &files, Transport::Tar),
            &tar,
        )
        .await;
    drop(tar);
    if matches!(&result, Ok(out) if ScriptExit::from_code(out.exit_code) == Some(ScriptExit::NoExtractor))
    {
        // No tar in the image: the same files as base64 lines, still one exec, still atomic.
        let payload = build_b64_lines(&values.iter().collect::<Vec<_>>());
        result = engine
            .exec(
                &job.id,
                &inject_command(mount, &spec.dir, digest, &files, Transport::Base64Lines),
                &payload,
            )
            .await;
    }
    drop(permit);
    drop(values);
    let written = classify(info, mount, spec, result);
    if written.is_ok() {
        metrics.injection_mode("exec");
    }
    // An exec that failed because the container was being stopped or removed meanwhile (exit 137,
    // "cannot exec in a stopped container", a 500 from a container being removed) is not a
    // failure to report: the container is gone.
    if matches!(
        &written,
        Err(Outcome::Refused {
            result: "exec_failed",
            ..
        })
    ) {
        match engine.inspect(&job.id).await {
            Ok(i) if i.running => {}
            Ok(_) | Err(EngineError::NotFound(_) | EngineError::NotRunning(_)) => {
                return Err(Outcome::Gone)
            }
            Err(_) => {}
        }
    }
    written
}

/// What the exec's end means: (changed, replaced), or the job's outcome.
///
/// Classified from the script's own exit codes and fixed words only: the exec's output is the
/// container's (a hostile `sh` can print anything, e.g. its stdin, the tar of the values), so no
/// message, audit record, status entry or metric ever quotes it; a message may give its length.
fn classify(
    info: &ContainerInfo,
    mount: &str,
    spec: &ContainerSpec,
    result: Result<crate::model::ExecOutput, EngineError>,
) -> WriteResult {
    let out = match result {
        Ok(out) => out,
        Err(EngineError::NotFound(_) | EngineError::NotRunning(_)) => return Err(Outcome::Gone),
        Err(e @ (EngineError::ExecTimeout { .. } | EngineError::ExecBusy)) => {
            return Err(refused(
                "timeout",
                format!("container `{}`: {e}; nothing written", info.name),
            ))
        }
        Err(e) => {
            return Err(refused(
                "exec_failed",
                format!("container `{}`: {e}", info.name),
            ))
        }
    };
    match ScriptExit::from_code(out.exit_code) {
        Some(ScriptExit::Written) => {
            let replaced = out.output.lines().any(|l| l.trim() == REPLACED_MARKER);
            Ok((true, replaced))
        }
        Some(ScriptExit::Unchanged) => Ok((false, false)),
        Some(ScriptExit::NotTmpfs) => Err(refused(
            "not_tmpfs",
            format!(
                "container `{}`: `{}` is not provably on the container's tmpfs (no tmpfs mount at `{mount}` in the container's mountinfo, or a symlink or another mount below it); nothing written",
                info.name, spec.dir
            ),
        )),
        Some(ScriptExit::Foreign) => Err(refused(
            "foreign_entry",
            format!(
                "container `{}`: {} in {} is an entry DSO did not create and does not remove (a non-empty directory, a fifo, …); remove it (or recreate the container); the previous files (if any) are still in place",
                info.name,
                foreign_entry(&out.output, &spec.files),
                spec.dir
            ),
        )),
        Some(ScriptExit::UnknownOwner) => Err(refused(
            "unknown_owner",
            format!(
                "container `{}`: {} (its User or a dso.secret.*.uid/.gid label names it); nothing written",
                info.name,
                unknown_from_script(&out.output, &spec.files).map_or_else(
                    || "a user or group name is not in its /etc/passwd or /etc/group".to_string(),
                    |u| u.to_string()
                )
            ),
        )),
        Some(ScriptExit::NoExtractor) => Err(refused(
            "no_tar",
            format!(
                "container `{}` has neither `tar` nor `base64` (DSO streams the files into the container through `sh`); nothing written",
                info.name
            ),
        )),
        None => Err(refused(
            "exec_failed",
            format!(
                "container `{}`: injection command exited with {}{} ({} bytes of output, not shown: a container's output is never logged); nothing written",
                info.name,
                out.exit_code.map_or("no code".to_string(), |c| c.to_string()),
                exit_meaning(out.exit_code),
                out.output_len
            ),
        )),
    }
}

/// What a foreign exit code usually means, from a fixed vocabulary (never from the output).
fn exit_meaning(code: Option<i64>) -> String {
    match code {
        Some(126) => ": `sh` was not found or cannot be executed in the container (the exec path needs a shell; the direct write path does not)".to_string(),
        Some(127) => ": a command the injection script runs was not found in the container".to_string(),
        Some(c @ 129..=192) => format!(": killed by signal {}", c - 128),
        _ => String::new(),
    }
}

/// The entry a foreign-entry verdict names, when it is one of DSO's names (text from inside the
/// container is never logged otherwise).
fn foreign_entry(output: &str, files: &[SecretFile]) -> String {
    let fixed = [
        "..data",
        READY_MARKER,
        "..dso_staging",
        "..dso_link",
        "..dso_ready",
    ];
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix(FOREIGN_MARKER))
        .find(|n| {
            fixed.contains(n)
                || files.iter().any(|f| f.name == *n)
                || n.strip_prefix("..data_").is_some_and(|h| {
                    !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
                })
        })
        .map_or_else(|| "an entry".to_string(), |n| format!("`{n}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::test_file as file;

    fn spec_at(dir: &str) -> ContainerSpec {
        ContainerSpec {
            dir: dir.to_string(),
            files: Vec::new(),
            reload: Default::default(),
        }
    }

    fn refusal(r: WriteResult) -> (&'static str, String) {
        match r {
            Err(Outcome::Refused { result, message }) => (result, message),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn the_output_is_never_quoted_and_a_hung_exec_is_a_timeout() {
        let info = ContainerInfo {
            name: "app".into(),
            ..Default::default()
        };
        for code in [1, 64, 126] {
            let out = crate::model::ExecOutput {
                exit_code: Some(code),
                output: "s3cr3t-from-stdin".into(),
                output_len: 17,
            };
            let (_, msg) = refusal(classify(
                &info,
                "/run/secrets/dso",
                &spec_at("/run/secrets/dso"),
                Ok(out),
            ));
            assert!(!msg.contains("s3cr3t"), "{msg}");
        }
        let out = crate::model::ExecOutput {
            exit_code: Some(1),
            output: "s3cr3t".into(),
            output_len: 6,
        };
        let (result, msg) = refusal(classify(&info, "/d", &spec_at("/d"), Ok(out)));
        assert_eq!(result, "exec_failed");
        assert!(msg.contains("exited with 1 (6 bytes of output"), "{msg}");
        let timeout = EngineError::ExecTimeout {
            after: std::time::Duration::from_secs(2),
            killed: true,
        };
        let (result, msg) = refusal(classify(&info, "/d", &spec_at("/d"), Err(timeout)));
        assert_eq!(result, "timeout");
        assert!(msg.contains("within 2s; its process was killed"), "{msg}");
        let (result, _) = refusal(classify(
            &info,
            "/d",
            &spec_at("/d"),
            Err(EngineError::ExecBusy),
        ));
        assert_eq!(result, "timeout");
    }

    /// An unknown owner name is quoted only when it is one DSO asked the script to look up.
    #[test]
    fn an_unknown_owner_is_named_only_when_dso_asked_for_it() {
        let info = ContainerInfo {
            name: "app".into(),
            ..Default::default()
        };
        let mut spec = spec_at("/d");
        let mut f = file("k", 0o400);
        f.names.group = Some(crate::model::GroupName::Group("staff".into()));
        spec.files.push(f);
        let classify_output = |output: &str| {
            refusal(classify(
                &info,
                "/d",
                &spec,
                Ok(crate::model::ExecOutput {
                    exit_code: Some(ScriptExit::UnknownOwner.code()),
                    output: output.into(),
                    output_len: output.len(),
                }),
            ))
        };
        let (result, msg) = classify_output("dso-unknown-owner:g:staff\n");
        assert_eq!(result, "unknown_owner");
        assert!(
            msg.contains("no group `staff` in the container's /etc/group"),
            "{msg}"
        );
        let (result, msg) = classify_output("dso-unknown-owner:g:s3cr3t\n");
        assert_eq!(result, "unknown_owner");
        assert!(!msg.contains("s3cr3t"), "{msg}");
        let cmd = inject_command("/d", "/d", "00", &[&spec.files[0]], Transport::Tar);
        assert_eq!(&cmd[cmd.len() - 4..], &["k", "400", "1000", "g:staff"]);
        assert!(script().contains("dso-unknown-owner:"));
    }

    #[test]
    fn command_passes_names_as_arguments() {
        let a = file("db_password", 0o440);
        let cmd = inject_command(
            "/run/secrets/dso",
            "/run/secrets/dso",
            "0123abcd",
            &[&a],
            Transport::Tar,
        );
        assert_eq!(&cmd[..2], &["sh", "-c"]);
        assert_eq!(
            &cmd[3..],
            &[
                "dso-inject",
                "/run/secrets/dso",
                "/run/secrets/dso",
                "0123abcd",
                "tar",
                "db_password",
                "440",
                "1000",
                "1001"
            ]
        );
        assert!(!cmd[2].contains("db_password"));
    }

    #[test]
    fn the_script_uses_exactly_the_named_exit_codes() {
        {
            let s = script();
            for e in ScriptExit::ALL {
                assert!(
                    !s.contains(e.placeholder()),
                    "{e:?}: placeholder left in the script"
                );
            }
            for e in [
                ScriptExit::Unchanged,
                ScriptExit::NotTmpfs,
                ScriptExit::NoExtractor,
                ScriptExit::Foreign,
                ScriptExit::UnknownOwner,
            ] {
                assert!(s.contains(&format!("exit {}", e.code())), "{e:?} missing");
            }
            for e in ScriptExit::ALL {
                assert_eq!(ScriptExit::from_code(Some(e.code())), Some(e));
            }
        }
        assert_eq!(ScriptExit::from_code(Some(1)), None);
        assert_eq!(ScriptExit::from_code(None), None);
    }

    #[test]
    fn a_foreign_entry_is_named_only_when_dso_gave_the_name() {
        let a = file("db_password", 0o440);
        let files = [a];
        assert_eq!(
            foreign_entry("dso-foreign:db_password\n", &files),
            "`db_password`"
        );
        assert_eq!(
            foreign_entry("dso-foreign:..data_00ff\n", &files),
            "`..data_00ff`"
        );
        assert_eq!(
            foreign_entry("dso-foreign:\x1b[31mforged\n", &files),
            "an entry"
        );
        assert_eq!(foreign_entry("garbage", &files), "an entry");
    }
}
