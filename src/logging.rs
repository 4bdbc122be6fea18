//! The agent's and the CLI's log subscriber: `DSO_LOG` (an `EnvFilter`, default `info`) on
//! stderr, human or JSON lines.
//!
//! Third-party libraries log what passes through them at `debug` and `trace`: bollard prints every
//! Engine answer it decodes (a container's `inspect` holds its environment, `"Env":["API_TOKEN=…"]`),
//! hyper, h2 and reqwest print headers and bodies. None of that may reach DSO's log, at any level
//! DSO offers and whatever targets `DSO_LOG` names (`trace`, `bollard=trace`,
//! `bollard::docker=trace`): below `info`, only DSO's own crates log. DSO logs the facts it needs
//! itself (e.g. `dso::docker` at `debug`: a container's state, never its environment).

use tracing::{Level, Metadata};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Crates whose `debug`/`trace` events are kept: DSO's own.
const OWN_CRATES: [&str; 2] = ["dso", "dso_actors"];

/// True for an event DSO may log: anything at `info` or above, and `debug`/`trace` only from
/// DSO's own crates.
pub fn allowed(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO || is_own(meta.target())
}

fn is_own(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    OWN_CRATES.contains(&krate)
}

/// Installs the subscriber: `DSO_LOG` (default `info`), stderr, JSON lines when `json`.
pub fn init(json: bool) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("DSO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter).with_filter(filter_fn(allowed)))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_own_crates_log_below_info() {
        assert!(is_own("dso"));
        assert!(is_own("dso::docker"));
        assert!(is_own("dso_actors::injector"));
        assert!(!is_own("bollard::docker"));
        assert!(!is_own("hyper_util::client::legacy"));
        assert!(!is_own("dsox"));
        assert!(!is_own("h2"));
    }
}
