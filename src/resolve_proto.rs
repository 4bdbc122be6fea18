//! The resolve protocol (`POST /v1/resolve` on the admin socket): the request and answer types and
//! the limits, shared by the server (`admin.rs`) and its client (`envrun.rs`, for `dso run`). It
//! depends on neither, so neither depends on the other.

use std::collections::BTreeMap;

/// The endpoint.
pub const PATH: &str = "/v1/resolve";

/// Most references resolved in one `dso run`, and in one request.
pub const MAX_REFS: usize = 256;

/// Largest request body the server reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The request body: `{"refs": ["<provider>/<path>[#<key>]", …]}`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ResolveRequest {
    /// The references, without the `dso://` scheme.
    pub refs: Vec<String>,
}

/// The answer: each reference is in `values` (base64) or in `errors`; `error` alone when the
/// whole request was refused. Values are wiped by whoever holds them (`zeroize`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct ResolveAnswer {
    /// Reference → value, base64.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// Reference → why it could not be resolved.
    #[serde(default)]
    pub errors: BTreeMap<String, ResolveFailure>,
    /// Why the whole request was refused.
    #[serde(default)]
    pub error: Option<String>,
}

/// One failed reference in an answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ResolveFailure {
    /// Why (never a value).
    pub message: String,
    /// True when the secret or key does not exist.
    pub not_found: bool,
}

#[cfg(test)]
mod tests {
    /// The loop admin ↔ envrun stays broken: the server side never reaches into `dso run`'s
    /// module; both meet here.
    #[test]
    fn admin_does_not_import_envrun() {
        let admin = include_str!("admin.rs");
        assert!(!admin.contains("envrun"), "src/admin.rs refers to envrun");
        let this = include_str!("resolve_proto.rs");
        let code = this.split("#[cfg(test)]").next().unwrap_or(this);
        assert!(
            !code.contains("crate::"),
            "resolve_proto must depend on no other module"
        );
    }
}
