//! Secret values and references.
//!
//! [`SecretValue`] is the only type that ever holds secret bytes. It cannot be printed (its `Debug`
//! shows `[redacted]`, it has no `Display`), it is zeroed on drop, and it is not `Serialize`.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// Secret bytes. `Debug` prints `[redacted]`; the buffer is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps bytes; the caller's buffer is moved, not copied.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies a string's bytes. Prefer [`SecretValue::new`] with an owned buffer.
    pub fn from_str_copy(s: &str) -> Self {
        Self::new(s.as_bytes().to_vec())
    }

    /// The raw bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What a backend returns for one path: a single value, or a map of keys (Vault KV, JSON objects).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretData {
    /// One opaque value.
    Value(SecretValue),
    /// Named keys, as in a Vault KV secret.
    Map(BTreeMap<String, SecretValue>),
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretData::Value(_) => f.write_str("Value([redacted])"),
            // Key names are not secret; values are.
            SecretData::Map(m) => f
                .debug_struct("Map")
                .field("keys", &m.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// Why a key could not be taken out of a [`SecretData`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The secret exists but has no such key. The available key names are listed (names only).
    #[error("key `{key}` not found (available keys: {available})")]
    KeyNotFound {
        /// The requested key.
        key: String,
        /// Comma-separated key names that exist.
        available: String,
    },
    /// A key was requested but the value is neither a map nor a JSON object.
    #[error("key `{key}` requested but the secret is a single value, not a JSON object or key/value map")]
    NotAMap {
        /// The requested key.
        key: String,
    },
}

impl SecretData {
    /// The bytes to write for `key`: the whole value (maps become a JSON object), or one key.
    pub fn select(&self, key: Option<&str>) -> Result<SecretValue, SelectError> {
        match (self, key) {
            (SecretData::Value(v), None) => Ok(v.clone()),
            (SecretData::Map(m), None) => Ok(map_to_json(m)),
            (SecretData::Map(m), Some(k)) => {
                m.get(k).cloned().ok_or_else(|| SelectError::KeyNotFound {
                    key: k.to_string(),
                    available: m.keys().cloned().collect::<Vec<_>>().join(", "),
                })
            }
            (SecretData::Value(v), Some(k)) => {
                let Ok(mut obj) = serde_json::from_slice::<
                    serde_json::Map<String, serde_json::Value>,
                >(v.expose()) else {
                    return Err(SelectError::NotAMap { key: k.to_string() });
                };
                let out = match obj.get(k) {
                    Some(serde_json::Value::String(s)) => Ok(SecretValue::from_str_copy(s)),
                    Some(other) => Ok(SecretValue::new(other.to_string().into_bytes())),
                    None => Err(SelectError::KeyNotFound {
                        key: k.to_string(),
                        available: obj.keys().cloned().collect::<Vec<_>>().join(", "),
                    }),
                };
                for (_, val) in obj.iter_mut() {
                    zeroize_json(val);
                }
                out
            }
        }
    }
}

/// Best-effort wipe of the strings in a parsed JSON value before it is dropped.
pub fn zeroize_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(zeroize_json),
        serde_json::Value::Object(o) => o.iter_mut().for_each(|(_, v)| zeroize_json(v)),
        _ => {}
    }
}

fn map_to_json(m: &BTreeMap<String, SecretValue>) -> SecretValue {
    let mut obj = serde_json::Map::new();
    for (k, v) in m {
        obj.insert(
            k.clone(),
            serde_json::Value::String(String::from_utf8_lossy(v.expose()).into_owned()),
        );
    }
    let mut s = serde_json::Value::Object(obj).to_string();
    let out = SecretValue::new(s.as_bytes().to_vec());
    s.zeroize();
    out
}

/// Where a secret comes from: `<provider>/<path>[#<key>]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    /// Name of a configured provider.
    pub provider: String,
    /// Path inside that provider (no leading slash).
    pub path: String,
    /// Optional key inside the secret.
    pub key: Option<String>,
}

/// Why a `<provider>/<path>[#<key>]` reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefParseError {
    /// No `/` separates provider and path.
    #[error("`{0}` is not <provider>/<path>[#<key>]: missing `/` after the provider name")]
    MissingSlash(String),
    /// Provider, path or key is empty.
    #[error("`{0}` has an empty provider, path or key")]
    Empty(String),
    /// A path segment is `.` or `..`, or contains a character outside the allowed set.
    #[error("`{0}` has an invalid path: segments must be [A-Za-z0-9._@+=,-] and not `.` or `..`")]
    BadPath(String),
    /// The reference is too long.
    #[error("reference is {0} bytes long; the limit is 1024")]
    TooLong(usize),
    /// The key holds a control character (never echoed: it could forge log lines).
    #[error("the key of a reference holds a control character")]
    BadKey,
}

impl std::str::FromStr for SecretRef {
    type Err = RefParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 1024 {
            return Err(RefParseError::TooLong(s.len()));
        }
        let s = s.trim();
        let (body, key) = match s.split_once('#') {
            Some((b, k)) => (b, Some(k)),
            None => (s, None),
        };
        let (provider, path) = body
            .split_once('/')
            .ok_or_else(|| RefParseError::MissingSlash(s.escape_debug().to_string()))?;
        if provider.is_empty() || path.is_empty() || key.is_some_and(str::is_empty) {
            return Err(RefParseError::Empty(s.escape_debug().to_string()));
        }
        let seg_ok = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._@+=,-".contains(c))
        };
        if !seg_ok(provider) || !path.split('/').all(seg_ok) {
            return Err(RefParseError::BadPath(s.escape_debug().to_string()));
        }
        if key.is_some_and(|k| k.chars().any(char::is_control)) {
            return Err(RefParseError::BadKey);
        }
        Ok(SecretRef {
            provider: provider.to_string(),
            path: path.to_string(),
            key: key.map(str::to_string),
        })
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.path)?;
        if let Some(k) = &self.key {
            write!(f, "#{k}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::from_str_copy("hunter2");
        assert_eq!(format!("{v:?}"), "[redacted]");
        let mut m = BTreeMap::new();
        m.insert("password".to_string(), v.clone());
        let d = SecretData::Map(m);
        let shown = format!("{d:?} {:?}", SecretData::Value(v));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password"), "{shown}");
    }

    #[test]
    fn select_keys_from_maps_and_json() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), SecretValue::from_str_copy("1"));
        let d = SecretData::Map(m);
        assert_eq!(d.select(Some("a")).unwrap().expose(), b"1");
        assert_eq!(d.select(None).unwrap().expose(), br#"{"a":"1"}"#);
        let err = d.select(Some("b")).unwrap_err();
        assert_eq!(err.to_string(), "key `b` not found (available keys: a)");

        let j = SecretData::Value(SecretValue::from_str_copy(r#"{"user":"u","port":5432}"#));
        assert_eq!(j.select(Some("user")).unwrap().expose(), b"u");
        assert_eq!(j.select(Some("port")).unwrap().expose(), b"5432");
        let raw = SecretData::Value(SecretValue::from_str_copy("plain"));
        assert!(matches!(
            raw.select(Some("x")),
            Err(SelectError::NotAMap { .. })
        ));
        assert_eq!(raw.select(None).unwrap().expose(), b"plain");
    }

    #[test]
    fn parse_refs() {
        let r: SecretRef = "vault/app/db#password".parse().unwrap();
        assert_eq!(r.provider, "vault");
        assert_eq!(r.path, "app/db");
        assert_eq!(r.key.as_deref(), Some("password"));
        assert_eq!(r.to_string(), "vault/app/db#password");
        let r: SecretRef = "local/token".parse().unwrap();
        assert_eq!(r.key, None);
        for bad in [
            "vault",
            "/x",
            "vault/",
            "vault/a#",
            "vault/../etc",
            "vault/a//b",
            "vault/a b",
            "v/./a",
        ] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad} should be refused");
        }
    }
}
