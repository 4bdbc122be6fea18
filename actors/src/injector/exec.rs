//! The exec write path: one `docker exec` of `sh -c SCRIPT` as root with all files on stdin (one
//! tar, or in an image without `tar` one base64 line per file), and the classification of how the
//! script ended. [`ScriptExit`] names its exit codes; the script text is generated from it, so the
//! codes the script uses and the ones classified here cannot drift apart.

use crate::engine::{ContainerEngine, EngineError};
use crate::messages::ContainerJob;
use crate::model::{ContainerInfo, SecretFile};
use crate::secret::SecretValue;
use crate::spec::ContainerSpec;
use crate::tarball::{build_b64_lines, build_tar};

use super::pipeline::WriteResult;
use super::{refused, Outcome};

/// How the in-container script ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptExit {
    /// A new generation is in place.
    Written,
    /// The directory already holds exactly this content (`.ready` has the digest): nothing done.
    Unchanged,
    /// The directory is not on a tmpfs: nothing written.
    NotTmpfs,
    /// Neither the extractor of the transport (`tar`, or `base64` for the fallback) is in the
    /// image: nothing written.
    NoExtractor,
}

impl ScriptExit {
    /// Every exit the script knows.
    pub const ALL: [ScriptExit; 4] = [
        ScriptExit::Written,
        ScriptExit::Unchanged,
        ScriptExit::NotTmpfs,
        ScriptExit::NoExtractor,
    ];

    /// The process exit code (10 and 64/65 stay clear of `sh`'s own 1, 2, 126, 127 and signals).
    pub const fn code(self) -> i64 {
        match self {
            ScriptExit::Written => 0,
            ScriptExit::Unchanged => 10,
            ScriptExit::NotTmpfs => 64,
            ScriptExit::NoExtractor => 65,
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
        }
    }
}

/// What the in-container script prints when it replaced an earlier set (not a first injection).
const REPLACED_MARKER: &str = "replaced";

/// The part of the in-container script before extraction: arguments, the "already there" check
/// (the digest in `.ready`), the tmpfs check (of the nearest existing ancestor, before anything
/// is created) and a staging directory on that same tmpfs. Builtins wherever possible: every
/// process costs about a millisecond.
const SCRIPT_HEAD: &str = r#"set -e
d="$1"; g="$2"; shift 2
if [ -f "$d/.ready" ] && [ -L "$d/..data" ]; then
  cur=; read -r cur < "$d/.ready" || true
  [ "$cur" != "$g" ] || exit @UNCHANGED@
fi
had=; [ ! -f "$d/.ready" ] || had=1
p="$d"
while [ ! -d "$p" ]; do p="${p%/*}"; [ -n "$p" ] || p=/; done
fs=$(stat -f -c %T "$p" 2>/dev/null || echo unknown)
case "$fs" in tmpfs|unknown) ;; *) echo "dso: $d is on $fs, not tmpfs" >&2; exit @NOT_TMPFS@;; esac
umask 022
mkdir -p "$d"
umask 077
t="$d/.dso-staging.$$"
[ ! -e "$t" ] || rm -rf "$t"
mkdir "$t"
trap 'rm -rf "$t"' EXIT
"#;

/// After the files are in the staging dir, the Kubernetes AtomicWriter pattern: the staging dir
/// becomes `..data_<digest>`, one rename swaps the `..data` symlink to it (readers see the old set
/// or the new set, never a mix), each visible name is a symlink into `..data`, older generations
/// are removed, and `.ready` (holding the digest) is replaced last.
const SCRIPT_TAIL: &str = r#"chmod 0755 "$t"
new="..data_$g"
[ ! -e "$d/$new" ] || rm -rf "$d/$new"
mv "$t" "$d/$new"
trap - EXIT
ln -s "$new" "$d/..data_tmp.$$"
mv -T -f "$d/..data_tmp.$$" "$d/..data"
links=; plain=
while [ $# -ge 4 ]; do
  if [ ! -L "$d/$1" ]; then links="$links ..data/$1"; [ ! -e "$d/$1" ] || plain="$plain $d/$1"; fi
  shift 4
done
[ -z "$plain" ] || rm -f $plain
[ -z "$links" ] || ln -s $links "$d/"
for o in "$d"/..data_*; do [ "$o" = "$d/$new" ] || [ "$o" = "$d/..data_tmp.$$" ] || rm -rf "$o"; done
printf '%s\n' "$g" > "$d/.ready.tmp.$$"
chmod 0444 "$d/.ready.tmp.$$"
mv -f "$d/.ready.tmp.$$" "$d/.ready"
[ -z "$had" ] || echo replaced
"#;

/// Extraction with `tar` (the normal path). Run as root, tar restores each entry's owner and mode
/// from the header (busybox and GNU tar alike), whatever the umask.
const EXTRACT_TAR: &str = r#"command -v tar >/dev/null 2>&1 || { echo "dso: no tar in this container" >&2; exit @NO_TAR@; }
tar -x -f - -C "$t"
"#;

/// Extraction without `tar`: one base64 line per file on stdin, in argument order, then owner and
/// mode set explicitly. `printf` is a shell builtin, so values never appear in a process's argv.
const EXTRACT_B64: &str = r#"command -v base64 >/dev/null 2>&1 || { echo "dso: neither tar nor base64 in this container" >&2; exit @NO_TAR@; }
i=0
for a in "$@"; do
  case $((i % 4)) in
    0) n="$a"; IFS= read -r line; printf '%s' "$line" | base64 -d > "$t/$n"; line= ;;
    1) m="$a" ;;
    2) u="$a" ;;
    3) chown "$u:$a" "$t/$n"; chmod "$m" "$t/$n" ;;
  esac
  i=$((i + 1))
done
"#;

/// How the files travel on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One tar (needs `tar` in the container).
    Tar,
    /// One base64 line per file (needs `sh` and `base64`); the fallback when `tar` is missing.
    Base64Lines,
}

/// The full in-container script for a transport, its exit codes filled in from [`ScriptExit`].
pub fn script(transport: Transport) -> String {
    let extract = match transport {
        Transport::Tar => EXTRACT_TAR,
        Transport::Base64Lines => EXTRACT_B64,
    };
    ScriptExit::ALL
        .into_iter()
        .fold(format!("{SCRIPT_HEAD}{extract}{SCRIPT_TAIL}"), |text, e| {
            text.replace(e.placeholder(), &e.code().to_string())
        })
}

/// The argv of the exec that installs `files` into `dir`.
pub fn inject_command(
    dir: &str,
    digest: &str,
    files: &[&SecretFile],
    transport: Transport,
) -> Vec<String> {
    let mut cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        script(transport),
        "dso-inject".to_string(),
        dir.to_string(),
        digest.to_string(),
    ];
    for f in files {
        cmd.push(f.name.clone());
        cmd.push(format!("{:o}", f.mode));
        cmd.push(f.uid.to_string());
        cmd.push(f.gid.to_string());
    }
    cmd
}

/// The exec path: one `docker exec` of the in-container script with the tar on stdin (or, in an
/// image without `tar`, base64 lines).
pub(super) async fn write_exec(
    job: &ContainerJob,
    info: &ContainerInfo,
    spec: &ContainerSpec,
    digest: &str,
    values: Vec<SecretValue>,
    engine: &dyn ContainerEngine,
    metrics: &crate::metrics::Metrics,
) -> WriteResult {
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
            &inject_command(&spec.dir, digest, &files, Transport::Tar),
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
                &inject_command(&spec.dir, digest, &files, Transport::Base64Lines),
                &payload,
            )
            .await;
    }
    drop(values);
    let written = classify(info, result);
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
fn classify(
    info: &ContainerInfo,
    result: Result<crate::model::ExecOutput, EngineError>,
) -> WriteResult {
    let out = match result {
        Ok(out) => out,
        Err(EngineError::NotFound(_) | EngineError::NotRunning(_)) => return Err(Outcome::Gone),
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
            format!("container `{}`: {}; nothing written", info.name, out.output.trim()),
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
                "container `{}`: injection command exited with {}: {}",
                info.name,
                out.exit_code.map_or("no code".to_string(), |c| c.to_string()),
                out.output.trim()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::test_file as file;

    #[test]
    fn command_passes_names_as_arguments() {
        let a = file("db_password", 0o440);
        let cmd = inject_command("/run/secrets/dso", "0123abcd", &[&a], Transport::Tar);
        assert_eq!(&cmd[..2], &["sh", "-c"]);
        assert_eq!(
            &cmd[3..],
            &[
                "dso-inject",
                "/run/secrets/dso",
                "0123abcd",
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
        for t in [Transport::Tar, Transport::Base64Lines] {
            let s = script(t);
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
}
