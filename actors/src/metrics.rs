//! Prometheus metrics (prometheus-client). Counters and gauges are atomics shared by `Arc`; they
//! are the one thing actors share, and only ever add to. Secret names never become label values
//! (they are unbounded); secret values never appear anywhere.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `reason` values of `dso_container_warnings_total`: a literal `dso://`/`dsofile://` value in
/// a started container's environment, an unknown `dso.*` label.
pub const CONTAINER_WARNING_REASONS: [&str; 2] = ["literal_reference", "unknown_label"];

/// Label set `{action}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// start / die / destroy.
    pub action: String,
}

/// Label set `{result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Outcome name.
    pub result: String,
}

/// Label set `{provider}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    /// Configured provider name (bounded by the config).
    pub provider: String,
}

/// Label set `{provider,result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderResultLabel {
    /// Configured provider name.
    pub provider: String,
    /// ok / not_found / denied / unavailable / timeout / config.
    pub result: String,
}

/// Label set `{version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// Crate version.
    pub version: String,
}

/// Label set `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// Label set `{mode}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    /// direct / exec.
    pub mode: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    /// `dso_events_received_total{action}`.
    pub events_received: Family<ActionLabel, Counter>,
    /// `dso_events_dropped_total{reason}`: work refused because a queue was full.
    pub events_dropped: Family<ReasonLabel, Counter>,
    /// `dso_injections_total{result}`.
    pub injections: Family<ResultLabel, Counter>,
    /// `dso_injection_duration_seconds`: event received → files in place.
    pub injection_duration: Histogram,
    /// `dso_provider_requests_total{provider,result}`.
    pub provider_requests: Family<ProviderResultLabel, Counter>,
    /// `dso_provider_request_duration_seconds{provider}`.
    pub provider_request_duration: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    /// `dso_provider_restarts_total{provider}`.
    pub provider_restarts: Family<ProviderLabel, Counter>,
    /// `dso_provider_up{provider}`: 1 when the last request or probe reached the backend.
    pub provider_up: Family<ProviderLabel, Gauge>,
    /// `dso_cache_hits_total`.
    pub cache_hits: Counter,
    /// `dso_cache_misses_total`.
    pub cache_misses: Counter,
    /// `dso_cache_coalesced_total`: misses that joined a fetch already in flight.
    pub cache_coalesced: Counter,
    /// `dso_cache_entries`.
    pub cache_entries: Gauge,
    /// `dso_managed_containers`: running containers whose secrets are in place.
    pub managed_containers: Gauge,
    /// `dso_queue_depth`: jobs waiting in injector shards.
    pub queue_depth: Gauge,
    /// `dso_reconcile_runs_total`.
    pub reconcile_runs: Counter,
    /// `dso_reconcile_repairs_total`: containers the reconciler had to (re)inject.
    pub reconcile_repairs: Counter,
    /// `dso_docker_reconnects_total`.
    pub docker_reconnects: Counter,
    /// `dso_build_info{version}`.
    pub build_info: Family<VersionLabel, Gauge>,
    /// `dso_rotations_total{result}`: re-injections after a backend change.
    pub rotations: Family<ResultLabel, Counter>,
    /// `dso_reloads_total{policy,result}`.
    pub reloads: Family<PolicyResultLabel, Counter>,
    /// `dso_reconcile_duration_seconds`.
    pub reconcile_duration: Histogram,
    /// `dso_provider_circuit_state{provider}`: 0 closed, 1 open, 2 half-open.
    pub provider_circuit_state: Family<ProviderLabel, Gauge>,
    /// `dso_cache_stale_served_total`: values served past their TTL because the backend was down.
    pub cache_stale_served: Counter,
    /// `dso_secret_stale_seconds`: age of the last value served past its TTL.
    pub secret_stale_seconds: Gauge,
    /// `dso_injections_by_mode_total{mode}`: writes into containers (new or unchanged), by path:
    /// `direct` (through `/proc/<pid>/root`) or `exec`.
    pub injections_by_mode: Family<ModeLabel, Counter>,
    /// `dso_direct_fallbacks_total{reason}`: writes that went through exec because the direct
    /// path was not usable for the container.
    pub direct_fallbacks: Family<ReasonLabel, Counter>,
    /// `dso_container_warnings_total{reason}`: started containers that carry something DSO does
    /// not act on (`literal_reference`: a `dso://`/`dsofile://` value in the environment;
    /// `unknown_label`: an unknown `dso.*` label). One per variable or label.
    pub container_warnings: Family<ReasonLabel, Counter>,
    /// `dso_leader`: 1 while this agent holds `<state_dir>/agent.lock` (the active one), 0 while
    /// it waits as a hot standby.
    pub leader: Gauge,
    version: String,
}

/// Label set `{policy,result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyResultLabel {
    /// signal / restart.
    pub policy: String,
    /// ok / error.
    pub result: String,
}

impl Metrics {
    /// Creates the metrics and registers them in a fresh registry (prefix `dso`).
    pub fn new(version: &str) -> (Arc<Metrics>, Registry) {
        let m = Metrics {
            events_received: Family::default(),
            events_dropped: Family::default(),
            injections: Family::default(),
            injection_duration: latency_histogram(),
            provider_requests: Family::default(),
            provider_request_duration: Family::new_with_constructor(latency_histogram),
            provider_restarts: Family::default(),
            provider_up: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_coalesced: Counter::default(),
            cache_entries: Gauge::default(),
            managed_containers: Gauge::default(),
            queue_depth: Gauge::default(),
            reconcile_runs: Counter::default(),
            reconcile_repairs: Counter::default(),
            docker_reconnects: Counter::default(),
            build_info: Family::default(),
            rotations: Family::default(),
            reloads: Family::default(),
            reconcile_duration: latency_histogram(),
            cache_stale_served: Counter::default(),
            provider_circuit_state: Family::default(),
            secret_stale_seconds: Gauge::default(),
            injections_by_mode: Family::default(),
            direct_fallbacks: Family::default(),
            container_warnings: Family::default(),
            leader: Gauge::default(),
            version: version.to_string(),
        };
        m.build_info
            .get_or_create(&VersionLabel {
                version: version.to_string(),
            })
            .set(1);
        m.dropped_init();
        m.known_series();
        let mut r = Registry::with_prefix("dso");
        r.register(
            "events_received",
            "Docker container events received, by action",
            m.events_received.clone(),
        );
        r.register(
            "events_dropped",
            "Work refused because a queue was full (a reconcile is scheduled)",
            m.events_dropped.clone(),
        );
        r.register(
            "injections",
            "Container injections, by result",
            m.injections.clone(),
        );
        r.register(
            "injection_duration_seconds",
            "Event received to secret files in place",
            m.injection_duration.clone(),
        );
        r.register(
            "provider_requests",
            "Backend requests, by provider and result",
            m.provider_requests.clone(),
        );
        r.register(
            "provider_request_duration_seconds",
            "Backend request latency, by provider",
            m.provider_request_duration.clone(),
        );
        r.register(
            "provider_restarts",
            "ProviderConnection restarts after consecutive failures",
            m.provider_restarts.clone(),
        );
        r.register(
            "provider_up",
            "1 when the provider's backend answered its last request or probe",
            m.provider_up.clone(),
        );
        r.register(
            "cache_hits",
            "Secret lookups served from the cache",
            m.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Secret lookups that needed a backend fetch",
            m.cache_misses.clone(),
        );
        r.register(
            "cache_coalesced",
            "Cache misses that joined a fetch already in flight",
            m.cache_coalesced.clone(),
        );
        r.register(
            "cache_entries",
            "Secrets held in the cache",
            m.cache_entries.clone(),
        );
        r.register(
            "managed_containers",
            "Running containers whose secrets are in place",
            m.managed_containers.clone(),
        );
        r.register(
            "queue_depth",
            "Injection jobs waiting in the injector shards",
            m.queue_depth.clone(),
        );
        r.register(
            "reconcile_runs",
            "Reconciliation passes",
            m.reconcile_runs.clone(),
        );
        r.register(
            "reconcile_repairs",
            "Containers a reconciliation pass sent for injection",
            m.reconcile_repairs.clone(),
        );
        r.register(
            "docker_reconnects",
            "Reconnections to the Docker event stream",
            m.docker_reconnects.clone(),
        );
        r.register("build_info", "Build information", m.build_info.clone());
        r.register(
            "leader",
            "1 when this agent is the active one on its state_dir, 0 while it is a hot standby",
            m.leader.clone(),
        );
        r.register(
            "rotations",
            "Re-injections after a secret changed in its backend, by result",
            m.rotations.clone(),
        );
        r.register(
            "reloads",
            "Reload policies applied after new values, by policy and result",
            m.reloads.clone(),
        );
        r.register(
            "provider_circuit_state",
            "Circuit breaker of each provider: 0 closed, 1 open (failing fast), 2 half-open (one trial)",
            m.provider_circuit_state.clone(),
        );
        r.register(
            "cache_stale_served",
            "Secrets served past their TTL because the backend was unavailable (stale-if-error)",
            m.cache_stale_served.clone(),
        );
        r.register(
            "secret_stale_seconds",
            "Age of the last secret value served past its TTL",
            m.secret_stale_seconds.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconciliation passes (listing and routing)",
            m.reconcile_duration.clone(),
        );
        r.register(
            "injections_by_mode",
            "Writes into containers (new or unchanged content), by path: direct or exec",
            m.injections_by_mode.clone(),
        );
        r.register(
            "direct_fallbacks",
            "Writes that used exec because the direct path was not usable, by reason",
            m.direct_fallbacks.clone(),
        );
        r.register(
            "container_warnings",
            "Started containers' literal dso:// references and unknown dso.* labels, by reason",
            m.container_warnings.clone(),
        );
        (Arc::new(m), r)
    }

    /// Creates the series whose label values are known in advance, so that they read 0 instead
    /// of being absent (absent series silently break `rate()` alerts and dashboards).
    fn known_series(&self) {
        for action in ["start", "die", "destroy"] {
            let _ = self.events_received.get_or_create(&ActionLabel {
                action: action.to_string(),
            });
        }
        for result in [
            "success",
            "unchanged",
            "duplicate",
            "invalid_spec",
            "denied",
            "not_tmpfs",
            "provider_error",
            "no_tar",
            "unknown_owner",
            "exec_failed",
            "timeout",
            "write_failed",
            "foreign_entry",
            "engine_error",
            "container_gone",
        ] {
            let _ = self.injections.get_or_create(&ResultLabel {
                result: result.to_string(),
            });
        }
        for mode in ["direct", "exec"] {
            let _ = self.injections_by_mode.get_or_create(&ModeLabel {
                mode: mode.to_string(),
            });
        }
        for reason in crate::direct::FallbackReason::ALL {
            let _ = self.direct_fallbacks.get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            });
        }
        for reason in CONTAINER_WARNING_REASONS {
            let _ = self.container_warnings.get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            });
        }
        for result in ["success", "unchanged", "failed", "denied"] {
            let _ = self.rotations.get_or_create(&ResultLabel {
                result: result.to_string(),
            });
        }
        for policy in ["signal", "restart"] {
            for result in ["ok", "error"] {
                let _ = self.reloads.get_or_create(&PolicyResultLabel {
                    policy: policy.to_string(),
                    result: result.to_string(),
                });
            }
        }
    }

    /// Counts one injection outcome.
    pub fn injection(&self, result: &str) {
        self.injections
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    fn dropped_init(&self) {
        for reason in ["queue_full", "mailbox_full"] {
            let _ = self.events_dropped.get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            });
        }
    }

    /// The version recorded in `dso_build_info`.
    pub fn build_info_version(&self) -> Option<String> {
        Some(self.version.clone())
    }

    /// Counts one rotation outcome.
    pub fn rotation(&self, result: &str) {
        self.rotations
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one reload.
    pub fn reload(&self, policy: &str, result: &str) {
        self.reloads
            .get_or_create(&PolicyResultLabel {
                policy: policy.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one write into a container by the path that did it (`direct` / `exec`).
    pub fn injection_mode(&self, mode: &str) {
        self.injections_by_mode
            .get_or_create(&ModeLabel {
                mode: mode.to_string(),
            })
            .inc();
    }

    /// Counts one fallback from the direct path to exec; true the first time for this reason
    /// (the caller logs it once).
    pub fn direct_fallback(&self, reason: &str) -> bool {
        self.direct_fallbacks
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc()
            == 0
    }

    /// Counts one warning about a started container ([`CONTAINER_WARNING_REASONS`]).
    pub fn container_warning(&self, reason: &str) {
        self.container_warnings
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts dropped work.
    pub fn dropped(&self, reason: &str) {
        self.events_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Renders the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
