//! The Docker CLI plugin: the `dso` binary installed (as a symlink) as `docker-dso` in a CLI
//! plugin directory. Docker runs `docker-dso docker-cli-plugin-metadata` to list it, and
//! `docker-dso dso ARGS…` for `docker dso ARGS…`.

use std::path::{Path, PathBuf};

/// The plugin's file name (Docker's `docker-<name>` convention).
pub const PLUGIN_NAME: &str = "docker-dso";

/// What `docker-cli-plugin-metadata` prints.
pub fn metadata() -> String {
    serde_json::json!({
        "SchemaVersion": "0.1.0",
        "Vendor": "DSO",
        "Version": env!("CARGO_PKG_VERSION"),
        "ShortDescription": "Compose with dsofile:// and dso:// secret references",
        "URL": "https://github.com/dso/dso",
    })
    .to_string()
}

/// What the process was asked to do when started as `docker-dso`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginCall {
    /// Print [`metadata`].
    Metadata,
    /// `docker dso ARGS…`: run `dso compose ARGS…`.
    Compose(Vec<String>),
}

/// `Some` when `argv[0]` is `docker-dso` (how Docker starts a CLI plugin).
pub fn plugin_call(argv: &[String]) -> Option<PluginCall> {
    let name = Path::new(argv.first()?).file_name()?.to_str()?;
    if name != PLUGIN_NAME {
        return None;
    }
    Some(match argv.get(1).map(String::as_str) {
        Some("docker-cli-plugin-metadata") => PluginCall::Metadata,
        // Docker passes the plugin's name first.
        Some("dso") => PluginCall::Compose(argv[2..].to_vec()),
        _ => PluginCall::Compose(argv[1..].to_vec()),
    })
}

/// The plugin directories: the user's (`$HOME/.docker/cli-plugins`, or `$DOCKER_CONFIG/cli-plugins`)
/// and the system's.
pub fn plugin_dir(system: bool) -> Option<PathBuf> {
    if system {
        return Some(PathBuf::from("/usr/local/lib/docker/cli-plugins"));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("cli-plugins"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/cli-plugins"))
}

/// Why the plugin could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// No `HOME` and no `DOCKER_CONFIG`.
    #[error("cannot tell where the Docker CLI looks for plugins (no HOME): pass --dir")]
    NoDir,
    /// Something else is already there.
    #[error("{0} exists and is not a link to dso; remove it first")]
    Occupied(PathBuf),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Links `<dir>/docker-dso` to `exe` (replacing an earlier link). Returns the link's path.
pub fn install(dir: &Path, exe: &Path) -> Result<PathBuf, InstallError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let link = dir.join(PLUGIN_NAME);
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&link).map_err(io(&link))?,
        Ok(_) => return Err(InstallError::Occupied(link)),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(exe, &link).map_err(io(&link))?;
    Ok(link)
}

/// `Some(true)` for an ELF executable without an interpreter (static), `Some(false)` for a
/// dynamically linked one, `None` when `bytes` is not a 64-bit little-endian ELF.
pub fn elf_is_static(bytes: &[u8]) -> Option<bool> {
    if bytes.get(0..4)? != b"\x7fELF" || bytes.get(4)? != &2 || bytes.get(5)? != &1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        if u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(a: &[&str]) -> Vec<String> {
        a.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn started_as_a_docker_plugin() {
        assert_eq!(plugin_call(&s(&["/usr/bin/dso", "compose"])), None);
        assert_eq!(
            plugin_call(&s(&[
                "/root/.docker/cli-plugins/docker-dso",
                "docker-cli-plugin-metadata"
            ])),
            Some(PluginCall::Metadata)
        );
        assert_eq!(
            plugin_call(&s(&["docker-dso", "dso", "up", "-d"])),
            Some(PluginCall::Compose(s(&["up", "-d"])))
        );
        let m: serde_json::Value = serde_json::from_str(&metadata()).unwrap();
        assert_eq!(m["SchemaVersion"], "0.1.0");
    }

    #[test]
    fn install_links_and_replaces_only_links() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cli-plugins");
        let link = install(&dir, Path::new("/usr/bin/dso")).unwrap();
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/usr/bin/dso")
        );
        install(&dir, Path::new("/opt/dso")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/opt/dso"));
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, "not ours").unwrap();
        assert!(matches!(
            install(&dir, Path::new("/x")),
            Err(InstallError::Occupied(_))
        ));
    }

    #[test]
    fn tells_static_from_dynamic_executables() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_is_static(&me), Some(false), "test binaries are dynamic");
        assert_eq!(elf_is_static(b"#!/bin/sh\n"), None);
    }
}
