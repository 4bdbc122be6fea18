//! What the HTTP backends (`vault`, `aws`) share: response bodies read into bounded buffers that
//! are zeroed when dropped, best-effort wiping of received chunks and OS strings, and error texts
//! that never quote a body.

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
