//! `dso secret set|get|list|import|rm`: the local encrypted vault (a `file` provider).

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::Context as _;
use dso::config::Config;
use dso::providers::file::FileVault;
use dso_actors::exit::ExitCode;
use dso_actors::secret::SecretValue;
use zeroize::Zeroizing;

use crate::cli::SecretAction;

/// Loads the config, then runs `action` on the chosen `file` provider.
pub fn secret(
    config: Option<&Path>,
    provider: Option<&str>,
    action: SecretAction,
) -> anyhow::Result<ExitCode> {
    let (cfg, _) = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    run_action(&cfg, provider, action)
}

/// `<path>[#<key>]` → (path, key).
fn split_ref(reference: &str) -> (&str, Option<&str>) {
    match reference.split_once('#') {
        Some((p, k)) => (p, Some(k)),
        None => (reference, None),
    }
}

/// One `dso secret` action on the chosen `file` provider (default: the first in the config).
fn run_action(
    cfg: &Config,
    provider: Option<&str>,
    action: SecretAction,
) -> anyhow::Result<ExitCode> {
    let (name, fcfg) = match cfg.file_provider(provider) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("dso: {e}");
            return Ok(ExitCode::Config);
        }
    };
    let vault = FileVault::open(&fcfg).with_context(|| format!("opening provider `{name}`"))?;
    match action {
        SecretAction::Set { reference } => {
            let (path, key) = split_ref(&reference);
            let value = read_value(&reference)?;
            vault.set(path, key, value)?;
            eprintln!("stored {reference} in provider `{name}`");
            Ok(ExitCode::Ok)
        }
        SecretAction::Get { reference } => {
            let (path, key) = split_ref(&reference);
            let Some(data) = vault.get(path)? else {
                eprintln!("dso: `{path}` not found in provider `{name}`");
                return Ok(ExitCode::NotFound);
            };
            let value = match data.select(key) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("dso: `{reference}`: {e}");
                    return Ok(ExitCode::NotFound);
                }
            };
            let mut out = std::io::stdout().lock();
            out.write_all(value.expose())?;
            if std::io::stdout().is_terminal() {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(ExitCode::Ok)
        }
        SecretAction::List { json } => {
            let list = vault.list()?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(p, keys)| serde_json::json!({"path": p, "keys": keys}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for (p, keys) in list {
                    if keys.is_empty() {
                        println!("{p}");
                    } else {
                        println!("{p}  [{}]", keys.join(", "));
                    }
                }
            }
            Ok(ExitCode::Ok)
        }
        SecretAction::Import { file, path } => {
            let text = Zeroizing::new(
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?,
            );
            let pairs = match dso::dotenv::parse(&text) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("dso: {}: {e}", file.display());
                    return Ok(ExitCode::Failure);
                }
            };
            for (key, value) in &pairs {
                vault.set(
                    &path,
                    Some(key),
                    SecretValue::new(value.as_bytes().to_vec()),
                )?;
            }
            let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
            eprintln!(
                "imported {} key{} into `{path}` of provider `{name}`: {}",
                keys.len(),
                if keys.len() == 1 { "" } else { "s" },
                keys.join(", ")
            );
            eprintln!(
                "reference them as {name}/{path}#KEY; the plaintext file {} is still on disk: delete it (shred -u)",
                file.display()
            );
            Ok(ExitCode::Ok)
        }
        SecretAction::Rm { reference } => {
            let (path, key) = split_ref(&reference);
            if vault.remove(path, key)? {
                eprintln!("removed {reference} from provider `{name}`");
                Ok(ExitCode::Ok)
            } else {
                eprintln!("dso: `{reference}` not found in provider `{name}`");
                Ok(ExitCode::NotFound)
            }
        }
    }
}

/// Reads a secret from stdin, or prompts without echo on a terminal. One trailing newline from a
/// prompt is not part of the value; piped input is taken byte for byte.
fn read_value(reference: &str) -> anyhow::Result<SecretValue> {
    if std::io::stdin().is_terminal() {
        let typed = Zeroizing::new(
            rpassword::prompt_password(format!("value for {reference}: "))
                .context("reading the value from the terminal")?,
        );
        return Ok(SecretValue::new(typed.as_bytes().to_vec()));
    }
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("reading the value from stdin")?;
    if buf.is_empty() {
        anyhow::bail!("no value on stdin; pipe the value in, e.g. `printf %s \"$VALUE\" | dso secret set {reference}`");
    }
    Ok(SecretValue::new(std::mem::take(&mut *buf)))
}
