//! HashiCorp Vault / OpenBao key/value backend (KV v2 and KV v1) with token or AppRole
//! authentication, namespaces and TLS with a private CA.
//!
//! Requests go to the HTTP API with the token in `X-Vault-Token` (and the namespace, when set, in
//! `X-Vault-Namespace`, on every request, the login included). The token never appears in
//! `Debug` output, in logs or in error messages; response bodies are bounded (16 MiB), never
//! logged, and wiped (best effort) once their values have been moved into [`SecretValue`]s.
//!
//! Token lifecycle (lazy, on the request path; nothing runs in the background): a token from an
//! AppRole login or from a token file is renewed with `auth/token/renew-self` once 2/3 of its TTL
//! has passed ([`next_step`]). When a renewal is refused, when the token expired, or when a
//! renewal granted less than a full TTL (the token hit its `max_ttl`), the backend logs in again
//! (AppRole) or re-reads the token file. A request answered 401/403 gets one fresh token the same
//! way and is retried once. A token file that changes on disk (an external agent rotated it) is
//! picked up at the next request.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wire;
use async_trait::async_trait;
use dso_actors::backend::{BackendError, Fetched, SecretBackend};
use dso_actors::secret::zeroize_json;
use dso_actors::secret::{SecretData, SecretValue};
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

mod auth;
mod client;
mod config;
pub use auth::*;
pub use client::*;
pub use config::*;

/// Largest response body accepted from Vault.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Largest error body read to extract Vault's `errors` messages.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest Vault error text quoted in an error message.
const MAX_ERROR_TEXT: usize = 300;
/// Env var read for the token when neither `token_env` nor `token_file` is set.
const DEFAULT_TOKEN_ENV: &str = "VAULT_TOKEN";
/// Largest role id / secret id file read.
const MAX_CREDENTIAL_FILE: u64 = 64 * 1024;

#[cfg(test)]
mod tests;
