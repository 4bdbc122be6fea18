//! AWS Signature Version 4 request signing, and the timestamps it uses.

use super::*;

/// Who signs, and for which time, region and service.
pub(super) struct SigningScope<'a> {
    pub(super) access_key_id: &'a str,
    pub(super) secret_access_key: &'a str,
    /// `YYYYMMDD'T'HHMMSS'Z'`.
    pub(super) amz_date: &'a str,
    pub(super) region: &'a str,
    pub(super) service: &'a str,
}

/// `Authorization` header value for a request (AWS Signature Version 4).
///
/// `headers` are (lowercase name, value), all of them signed; `canonical_uri` is already
/// encoded as SigV4 wants it; `payload` is the body.
pub(super) fn sigv4_authorization(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    headers: &[(String, String)],
    payload: &[u8],
    scope: &SigningScope<'_>,
) -> String {
    let mut sorted: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    sorted.sort();
    let canonical_headers: String = sorted.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = sorted
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        hex::encode(Sha256::digest(payload))
    );
    let date = scope.amz_date.get(..8).unwrap_or(scope.amz_date);
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{credential_scope}\n{}",
        scope.amz_date,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = Zeroizing::new(format!("AWS4{}", scope.secret_access_key).into_bytes());
    for part in [date, scope.region, scope.service, "aws4_request"] {
        // A new `Zeroizing` each round, so every intermediate key is wiped when replaced.
        key = Zeroizing::new(hmac_sha256(&key, part.as_bytes()));
    }
    let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, \
         SignedHeaders={signed_headers}, Signature={signature}",
        scope.access_key_id
    )
}

pub(super) fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// SigV4 URI encoding: everything but `A-Za-z0-9-_.~` as `%XX` (uppercase).
pub(super) fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical URI of an endpoint's path (non-S3 services encode each segment twice; the URL
/// parser did it once).
pub(super) fn canonical_uri(url: &Url) -> String {
    let path = url.path();
    if path.is_empty() || path == "/" {
        return "/".to_string();
    }
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// `YYYYMMDD'T'HHMMSS'Z'` for a time (UTC).
pub(super) fn amz_date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t.max(UNIX_EPOCH))
        .to_string()
        .replace(['-', ':'], "")
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (the IMDS `Expiration`), to the second.
pub(super) fn parse_utc(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let s = match s.strip_suffix("+00:00") {
        Some(head) => format!("{head}Z"),
        None => s.to_string(),
    };
    let t = humantime::parse_rfc3339(&s).ok()?;
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}
