//! What the backends share on the wire: response bodies read into bounded buffers that are
//! zeroed when dropped (`vault`, `aws`), best-effort wiping of received chunks and OS strings,
//! error texts that never quote a body, and one way to make backend text safe to show
//! ([`safe_text`]: one line, escaped, secrets redacted, bounded; `vault`, `aws`, `process`).

use dso_actors::backend::BackendError;
use zeroize::{Zeroize, Zeroizing};

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Longer than the limit (declared or received); nothing is kept.
    TooBig,
    /// The transfer failed.
    Transport(reqwest::Error),
}

/// Reads at most `limit` bytes of `resp`'s body into a buffer that is zeroed when dropped. The
/// buffer grows by hand so that no reallocation frees a copy of the data unwiped.
pub(crate) async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    let declared = resp.content_length().unwrap_or(0);
    if declared > limit as u64 {
        return Err(BodyError::TooBig);
    }
    // `declared <= limit`, so this conversion cannot truncate.
    let mut buf = Zeroizing::new(Vec::with_capacity(declared as usize));
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if buf.len() + chunk.len() > limit {
            wipe_bytes(chunk);
            return Err(BodyError::TooBig);
        }
        if buf.capacity() - buf.len() < chunk.len() {
            let cap = (buf.len() + chunk.len())
                .max(buf.capacity().saturating_mul(2))
                .min(limit);
            let mut bigger = Zeroizing::new(Vec::with_capacity(cap));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk);
        wipe_bytes(chunk);
    }
    Ok(buf)
}

/// [`read_bounded`] with its errors as [`BackendError`]s: a body over `limit` is `Unavailable`,
/// naming `server` (e.g. "Vault at https://…"); a failed transfer goes through `transport`.
pub(crate) async fn read_body(
    resp: reqwest::Response,
    limit: usize,
    server: &str,
    transport: impl FnOnce(&reqwest::Error) -> BackendError,
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    read_bounded(resp, limit).await.map_err(|e| match e {
        BodyError::TooBig => BackendError::Unavailable(format!(
            "{server} sent a response larger than {}; refusing it",
            size_text(limit)
        )),
        BodyError::Transport(e) => transport(&e),
    })
}

/// A size as `"16 MiB"` (whole mebibytes) or `"64 KiB"`.
fn size_text(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// Wipes a received chunk when this is its only owner (hyper may share the allocation).
pub(crate) fn wipe_bytes(chunk: bytes::Bytes) {
    if let Ok(mut m) = chunk.try_into_mut() {
        m[..].zeroize();
    }
}

/// Wipes an OS string (an environment value that held a credential).
pub(crate) fn wipe_os(raw: std::ffi::OsString) {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        raw.into_vec().zeroize();
    }
    #[cfg(not(unix))]
    drop(raw);
}

/// An error and its sources, `": "`-joined, without repeats.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// What kind of JSON error this is, without serde's text (which can quote the secret input).
pub(crate) fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "unexpected JSON structure",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

/// Text a backend sent (an error message, a line its program printed), made safe to show: one
/// line (control characters, line breaks and terminal escapes included, are escaped), every non-empty entry of `secrets` replaced by `[redacted]`, and at most `max`
/// characters, `…` marking a cut.
pub(crate) fn safe_text(text: &str, secrets: &[&str], max: usize) -> String {
    let mut text = text.to_string();
    for secret in secrets {
        if !secret.is_empty() && text.contains(secret) {
            text = text.replace(secret, "[redacted]");
        }
    }
    dso_actors::text::one_line(&text, max)
}

#[cfg(test)]
mod tests {
    use super::safe_text;

    #[test]
    fn safe_text_is_one_short_line_without_secrets_or_escapes() {
        assert_eq!(
            safe_text("denied for s3cr3t\nsee\x1b[31m docs", &["s3cr3t", ""], 100),
            "denied for [redacted]\\nsee\\u{1b}[31m docs"
        );
        assert_eq!(safe_text("héllo wörld", &[], 5), "héllo…");
        assert_eq!(safe_text("short", &[], 5), "short");
    }
}
