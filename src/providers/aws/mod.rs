//! AWS Secrets Manager backend (`type = "aws"`).
//!
//! Speaks the JSON 1.1 protocol over HTTPS (`POST /` with `X-Amz-Target:
//! secretsmanager.<Action>`), signed by hand with Signature Version 4 (service
//! `secretsmanager`): `GetSecretValue` reads a secret, `DescribeSecret` reads its `AWSCURRENT`
//! version id cheaply, `ListSecrets` (one result) is the probe.
//!
//! Credentials come from the standard chain, resolved at request time (never in
//! [`AwsBackend::new`]) and cached: the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`), then the shared files
//! (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, then `AWS_CONFIG_FILE` or
//! `~/.aws/config`), then the EC2 instance role through IMDSv2 (cached until five minutes before
//! its `Expiration`). A refused request drops the cache, so the next one resolves again.
//!
//! Secret keys, session tokens and values never appear in `Debug` output or in error messages;
//! response bodies are bounded, never logged, and wiped (best effort) once their values have been
//! moved into [`SecretValue`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::wire;
use async_trait::async_trait;
use base64::Engine as _;
use dso_actors::backend::{BackendError, Fetched, SecretBackend};
use dso_actors::secret::{zeroize_json, SecretData, SecretValue};
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

mod client;
mod config;
mod credentials;
mod sigv4;
pub use client::*;
pub use config::*;
pub use credentials::*;
use sigv4::*;

/// Largest response body accepted (a SecretString is at most 64 KiB; its JSON, or a base64
/// SecretBinary, is a little more).
const MAX_BODY: usize = 1024 * 1024;
/// Largest error body read to extract the error type and message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest AWS error message quoted in an error.
const MAX_ERROR_TEXT: usize = 300;
/// The SigV4 service name, and the `X-Amz-Target` prefix.
const SERVICE: &str = "secretsmanager";
/// The JSON 1.1 protocol's content type.
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// Default IMDS endpoint.
const IMDS_DEFAULT: &str = "http://169.254.169.254";
/// Timeout of each IMDS request (the SDKs use 1 s: off EC2 nothing answers).
const IMDS_TIMEOUT: Duration = Duration::from_secs(1);
/// Instance-role credentials are renewed this long before their `Expiration`.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Instance-role credentials without a readable `Expiration` are renewed after this long.
const NO_EXPIRY_REFRESH: Duration = Duration::from_secs(5 * 60);

#[cfg(test)]
mod tests;
