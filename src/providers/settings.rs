//! The settings every provider has, whatever its type: taken out of each `[providers.<name>]`
//! table once (as `type` is), so that no provider type repeats them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::de::duration;

/// `timeout`, `refresh_interval`, `rate_limit` and `burst` of one provider.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    /// Per-request timeout. Default 30s.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How often secrets in use are re-checked for changes (±10 % jitter); `"0s"`: never.
    /// Default `1m`.
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
    /// Most backend requests per second (token bucket; 0: unlimited). Default 100.
    pub rate_limit: f64,
    /// Requests allowed at once above the rate (bucket size). Default 50.
    pub burst: u32,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(60),
            rate_limit: 100.0,
            burst: 50,
        }
    }
}

impl ProviderSettings {
    /// The keys of a provider table that belong here rather than to the provider type.
    pub const KEYS: [&'static str; 4] = ["timeout", "refresh_interval", "rate_limit", "burst"];

    /// Moves [`Self::KEYS`] out of a provider table into a table of their own.
    pub fn take_from(table: &mut toml::Table) -> toml::Table {
        Self::KEYS
            .iter()
            .filter_map(|k| table.remove(*k).map(|v| (k.to_string(), v)))
            .collect()
    }

    /// Every semantic problem, each `PREFIX.field: what is wrong and what to do`.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.timeout.is_zero() {
            p.push(format!(
                "{prefix}.timeout: must be more than zero: write it like \"30s\""
            ));
        }
        let rate = self.rate_limit;
        if !rate.is_finite() || rate < 0.0 {
            p.push(format!("{prefix}.rate_limit: {rate} must be 0 (unlimited) or a positive number of requests per second"));
        }
        p
    }

    /// Token bucket (requests per second, burst); None when unlimited.
    pub fn rate(&self) -> Option<(f64, u32)> {
        (self.rate_limit > 0.0).then_some((self.rate_limit, self.burst.max(1)))
    }

    /// How often secrets in use are re-checked; None for `"0s"` (never).
    pub fn refresh(&self) -> Option<Duration> {
        (!self.refresh_interval.is_zero()).then_some(self.refresh_interval)
    }
}
