//! Serde helpers shared by the configuration and the providers' own tables: durations written
//! like `"30s"`, and deserialization whose errors name the path of the offending field.

/// Serde helpers for durations written like `"30s"`, `"10m"`, `"1h 30m"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Deserializes a humantime duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{s}`: {e} (write it like \"30s\", \"10m\" or \"1h\")"
            ))
        })
    }

    /// Serializes as a humantime string.
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

/// Deserializes `value`; an error reads `PREFIX.path.to.field: what is wrong`.
pub fn at<T: for<'de> serde::Deserialize<'de>>(
    value: toml::Value,
    prefix: &str,
) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner == ".") {
            (true, _) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        let msg = e.inner().to_string();
        // toml appends "in `table`"; the path already says where.
        let msg = msg.lines().next().unwrap_or_default().trim().to_string();
        format!("{path}: {msg}")
    })
}
