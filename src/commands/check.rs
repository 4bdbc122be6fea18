//! `dso check`: validate the config, every problem with its path; for settings that may come
//! from the environment (`VAULT_ADDR`, …) where each value came from.

use std::path::Path;

use dso::config::Config;
use dso::providers::vault::Origin;
use dso_actors::exit::ExitCode;

/// Prints the verdict (JSON or one line); [`ExitCode::Config`] when the config is invalid.
pub fn check(config: Option<&Path>, json: bool) -> ExitCode {
    if json {
        let out = match Config::load(config) {
            Ok((cfg, name)) => serde_json::json!({
                "valid": true,
                "source": name,
                "providers": cfg.providers.iter().map(|(n, p)| (n.clone(), p.type_name())).collect::<std::collections::BTreeMap<_, _>>(),
                "sources": cfg.providers.iter().filter(|(_, p)| !p.spec.sources().is_empty()).map(|(n, p)| {
                    let fields = p.spec.sources().into_iter().map(|(f, v, o)| (f.to_string(), serde_json::json!({"value": v, "origin": o.to_string()})));
                    (n.clone(), fields.collect::<serde_json::Map<_, _>>())
                }).collect::<std::collections::BTreeMap<_, _>>(),
                "problems": [],
            }),
            Err(e) => serde_json::json!({
                "valid": false,
                "source": e.source_name,
                "problems": e.problems,
            }),
        };
        println!("{out}");
        return if out["valid"] == true {
            ExitCode::Ok
        } else {
            ExitCode::Config
        };
    }
    match Config::load(config) {
        Ok((cfg, name)) => {
            println!(
                "{name}: valid ({} provider{}: {})",
                cfg.providers.len(),
                if cfg.providers.len() == 1 { "" } else { "s" },
                cfg.providers.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            for (name, p) in &cfg.providers {
                for (field, value, origin) in p.spec.sources() {
                    match origin {
                        Origin::Unset => println!("  providers.{name}.{field}: {origin}"),
                        _ => println!("  providers.{name}.{field} = {value:?} ({origin})"),
                    }
                }
            }
            ExitCode::Ok
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::Config
        }
    }
}
