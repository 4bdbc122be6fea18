//! `dso check`: validate the config, every problem with its path.

use std::path::Path;

use dso::config::Config;
use dso_actors::exit::ExitCode;

/// Prints the verdict (JSON or one line); [`ExitCode::Config`] when the config is invalid.
pub fn check(config: Option<&Path>, json: bool) -> ExitCode {
    if json {
        let out = match Config::load(config) {
            Ok((cfg, name)) => serde_json::json!({
                "valid": true,
                "source": name,
                "providers": cfg.providers.iter().map(|(n, p)| (n.clone(), p.type_name())).collect::<std::collections::BTreeMap<_, _>>(),
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
            ExitCode::Ok
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::Config
        }
    }
}
