//! The Compose command line as `dso compose` sees it: global options, the subcommand and its
//! arguments, and where the project lives (its directory and name) — decided the way Compose v1
//! decides them, so that `docker dso down` and a plain `docker-compose down` address one project.

use std::path::{Path, PathBuf};

/// Global options of Compose (v1 and v2) that take a value.
const VALUE_OPTIONS: &[&str] = &[
    "-f",
    "--file",
    "-p",
    "--project-name",
    "--profile",
    "-c",
    "--context",
    "--log-level",
    "--ansi",
    "-H",
    "--host",
    "--tlscacert",
    "--tlscert",
    "--tlskey",
    "--project-directory",
    "--env-file",
    "--parallel",
    "--progress",
];

/// Subcommands that create or start containers: only these resolve references.
const RESOLVING: &[&str] = &["up", "run", "create", "start", "restart"];

/// Compose's default file names, in its order of preference.
const DEFAULT_FILES: &[&str] = &[
    "docker-compose.yml",
    "docker-compose.yaml",
    "compose.yml",
    "compose.yaml",
];

/// One Compose command line, split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// Global options other than `-f`, `-p`, `--project-directory`, in order, with their values.
    pub global: Vec<String>,
    /// `-f` / `--file` values, in order.
    pub files: Vec<String>,
    /// `-p` / `--project-name`.
    pub project_name: Option<String>,
    /// `--project-directory`.
    pub project_dir: Option<PathBuf>,
    /// `--env-file`.
    pub env_file: Option<PathBuf>,
    /// The subcommand (`up`, `down`, …), if any.
    pub subcommand: Option<String>,
    /// Everything after the subcommand.
    pub rest: Vec<String>,
}

/// Bad command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A global option without its value.
    #[error("compose option {0} needs a value")]
    MissingValue(String),
    /// `-f -`: the model already comes from stdin.
    #[error("`-f -` is not supported by dso compose (it feeds the rewritten model to Compose on stdin); name the files")]
    StdinFile,
}

impl Invocation {
    /// Splits `args` (what follows `dso compose` or `docker dso`).
    pub fn parse(args: &[String]) -> Result<Self, ArgsError> {
        let mut inv = Invocation::default();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if !a.starts_with('-') || a == "-" {
                inv.subcommand = Some(a.clone());
                inv.rest = args[i + 1..].to_vec();
                break;
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            if VALUE_OPTIONS.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| ArgsError::MissingValue(name.to_string()))?
                    }
                };
                match name {
                    "-f" | "--file" if value == "-" => return Err(ArgsError::StdinFile),
                    "-f" | "--file" => inv.files.push(value),
                    "-p" | "--project-name" => inv.project_name = Some(value),
                    "--project-directory" => inv.project_dir = Some(PathBuf::from(value)),
                    _ => {
                        if name == "--env-file" {
                            inv.env_file = Some(PathBuf::from(&value));
                        }
                        inv.global.push(name.to_string());
                        inv.global.push(value);
                    }
                }
            } else {
                inv.global.push(a.clone());
            }
            i += 1;
        }
        Ok(inv)
    }

    /// True for subcommands that create or start containers (references are resolved).
    pub fn resolves(&self) -> bool {
        self.subcommand
            .as_deref()
            .is_some_and(|s| RESOLVING.contains(&s))
    }

    /// True when there is nothing for DSO to do: no subcommand, `help`, `version`, or a global
    /// `--help`/`--version`.
    pub fn passthrough(&self) -> bool {
        matches!(self.subcommand.as_deref(), None | Some("help" | "version"))
            || self
                .global
                .iter()
                .any(|g| matches!(g.as_str(), "-h" | "--help" | "-v" | "--version"))
            || self.rest.iter().any(|r| r == "--help" || r == "-h")
    }

    /// The files as Compose would pick them: `-f`, else `COMPOSE_FILE` (split on
    /// `COMPOSE_PATH_SEPARATOR`, default `:`), else none (Compose searches).
    pub fn effective_files(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        if !self.files.is_empty() {
            return self.files.clone();
        }
        match env("COMPOSE_FILE") {
            Some(f) if !f.is_empty() => {
                let sep = env("COMPOSE_PATH_SEPARATOR").unwrap_or_else(|| ":".into());
                f.split(sep.as_str()).map(str::to_string).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The project directory, as Compose v1 decides it: `--project-directory`, else the directory
    /// of the first file, else the directory where a default file is found (from `cwd` upwards),
    /// else `cwd`. Absolute.
    pub fn project_dir(&self, cwd: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            }
        };
        if let Some(d) = &self.project_dir {
            return normalize(&abs(d));
        }
        if let Some(first) = self.effective_files(env).first() {
            let p = abs(Path::new(first));
            return normalize(p.parent().unwrap_or(cwd));
        }
        let mut dir = Some(cwd);
        while let Some(d) = dir {
            if DEFAULT_FILES.iter().any(|f| d.join(f).exists()) {
                return d.to_path_buf();
            }
            dir = d.parent();
        }
        cwd.to_path_buf()
    }

    /// The project name, as Compose v1 decides it: `-p`, else `COMPOSE_PROJECT_NAME` from the
    /// environment, else from the env file (`--env-file`, else `<project dir>/.env`), else the
    /// project directory's name; lowercased, keeping only `[-_a-z0-9]`.
    pub fn project_name(
        &self,
        project_dir: &Path,
        cwd: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> String {
        let from_file = || {
            let file = match &self.env_file {
                Some(f) if f.is_absolute() => f.clone(),
                Some(f) => cwd.join(f),
                None => project_dir.join(".env"),
            };
            let text = std::fs::read_to_string(file).ok()?;
            dotenv_value(&text, "COMPOSE_PROJECT_NAME")
        };
        let raw = self
            .project_name
            .clone()
            .or_else(|| env("COMPOSE_PROJECT_NAME").filter(|v| !v.is_empty()))
            .or_else(from_file)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                project_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let name: String = raw
            .to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
            .collect();
        if name.is_empty() {
            "default".into()
        } else {
            name
        }
    }
}

/// `KEY=value` from a `.env` text (quotes stripped, `#` lines skipped).
fn dotenv_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let l = l.strip_prefix("export ").unwrap_or(l);
        let (k, v) = l.split_once('=')?;
        if k.trim() != key || l.starts_with('#') {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        Some(v.to_string())
    })
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(a: &[&str]) -> Vec<String> {
        a.iter().map(|x| x.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn splits_globals_subcommand_and_rest() {
        let inv = Invocation::parse(&s(&[
            "-f",
            "a.yml",
            "--file=b.yml",
            "-p",
            "Demo",
            "--profile",
            "x",
            "--no-ansi",
            "--project-directory",
            "/srv/app",
            "up",
            "-d",
            "--file",
            "ignored-after-subcommand",
        ]))
        .unwrap();
        assert_eq!(inv.files, s(&["a.yml", "b.yml"]));
        assert_eq!(inv.project_name.as_deref(), Some("Demo"));
        assert_eq!(inv.global, s(&["--profile", "x", "--no-ansi"]));
        assert_eq!(inv.project_dir, Some(PathBuf::from("/srv/app")));
        assert_eq!(inv.subcommand.as_deref(), Some("up"));
        assert_eq!(inv.rest, s(&["-d", "--file", "ignored-after-subcommand"]));
        assert!(inv.resolves());
        assert!(!inv.passthrough());
        for sub in ["down", "ps", "logs", "config", "pull"] {
            assert!(!Invocation::parse(&s(&[sub])).unwrap().resolves(), "{sub}");
        }
        assert!(Invocation::parse(&s(&[])).unwrap().passthrough());
        assert!(Invocation::parse(&s(&["up", "--help"]))
            .unwrap()
            .passthrough());
        assert_eq!(
            Invocation::parse(&s(&["-p"])).unwrap_err(),
            ArgsError::MissingValue("-p".into())
        );
        assert_eq!(
            Invocation::parse(&s(&["-f", "-", "up"])).unwrap_err(),
            ArgsError::StdinFile
        );
    }

    #[test]
    fn project_dir_and_name_follow_compose_v1() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("My.App");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("docker-compose.yml"), "services: {}\n").unwrap();
        let cwd = root.join("sub/deeper");

        let inv = Invocation::parse(&s(&["up"])).unwrap();
        let dir = inv.project_dir(&cwd, &no_env);
        assert_eq!(dir, root, "found upwards like Compose");
        assert_eq!(inv.project_name(&dir, &cwd, &no_env), "myapp");

        let inv = Invocation::parse(&s(&["-f", "../x/c.yml", "up"])).unwrap();
        assert_eq!(inv.project_dir(&cwd, &no_env), root.join("sub/x"));

        std::fs::write(root.join(".env"), "# c\nCOMPOSE_PROJECT_NAME='From-File'\n").unwrap();
        assert_eq!(inv.project_name(&root, &cwd, &no_env), "from-file");
        let env = |k: &str| (k == "COMPOSE_PROJECT_NAME").then(|| "FromEnv".to_string());
        assert_eq!(inv.project_name(&root, &cwd, &env), "fromenv");
        let inv = Invocation::parse(&s(&["-p", "given", "up"])).unwrap();
        assert_eq!(inv.project_name(&root, &cwd, &env), "given");

        let env = |k: &str| (k == "COMPOSE_FILE").then(|| "/a/b.yml:/c/d.yml".to_string());
        let inv = Invocation::parse(&s(&["up"])).unwrap();
        assert_eq!(inv.effective_files(&env), s(&["/a/b.yml", "/c/d.yml"]));
        assert_eq!(inv.project_dir(&cwd, &env), PathBuf::from("/a"));
    }
}
