//! The JSON-RPC wire: request lines, bounded line reading, answers, error codes and `resolve` results.

use super::*;

/// `{"jsonrpc":"2.0","id":ID,"method":M[,"params":P]}\n`.
pub(super) fn request_line(id: u64, method: &str, params: &Value) -> Vec<u8> {
    let req = if params.is_null() {
        json!({ "jsonrpc": "2.0", "id": id, "method": method })
    } else {
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
    };
    let mut line = req.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// One line from a [`LineReader`].
#[derive(Debug)]
pub(super) enum Line {
    /// A complete line, without its `\n`.
    Full(Zeroizing<Vec<u8>>),
    /// The first `cap` bytes of a line longer than the cap (the rest is skipped).
    TooLong(Zeroizing<Vec<u8>>),
    /// End of the stream (a final unterminated line is dropped).
    Eof,
}

/// Reads `\n`-terminated lines of at most `cap` bytes. Every buffer that held bytes is zeroed
/// (no `BufReader`, whose buffer would not be).
pub(super) struct LineReader<R> {
    pub(super) inner: R,
    pub(super) cap: usize,
    pub(super) buf: Zeroizing<Vec<u8>>,
    /// Skipping the rest of a too-long line.
    pub(super) skipping: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(super) fn new(inner: R, cap: usize) -> Self {
        Self {
            inner,
            cap,
            buf: Zeroizing::new(Vec::new()),
            skipping: false,
        }
    }

    pub(super) async fn next_line(&mut self) -> std::io::Result<Line> {
        const CHUNK: usize = 16 * 1024;
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let pos = scanned + pos;
                if self.skipping {
                    self.buf.drain(..=pos);
                    self.skipping = false;
                    scanned = 0;
                    continue;
                }
                if pos > self.cap {
                    let head = Zeroizing::new(self.buf[..self.cap].to_vec());
                    self.buf.drain(..=pos);
                    return Ok(Line::TooLong(head));
                }
                let line = Zeroizing::new(self.buf[..pos].to_vec());
                self.buf.drain(..=pos);
                return Ok(Line::Full(line));
            }
            scanned = self.buf.len();
            if self.skipping {
                self.buf.zeroize();
                scanned = 0;
            } else if self.buf.len() > self.cap {
                let head = Zeroizing::new(self.buf[..self.cap].to_vec());
                self.buf.zeroize();
                self.skipping = true;
                return Ok(Line::TooLong(head));
            }
            let len = self.buf.len();
            if self.buf.capacity() - len < CHUNK {
                // Grow by hand so the old buffer is zeroed rather than freed with data in it.
                let mut bigger = Zeroizing::new(Vec::with_capacity(
                    (len + CHUNK).max(self.buf.capacity() * 2),
                ));
                bigger.extend_from_slice(&self.buf);
                self.buf = bigger;
            }
            self.buf.resize(len + CHUNK, 0);
            let n = match self.inner.read(&mut self.buf[len..]).await {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            };
            self.buf.truncate(len + n);
            if n == 0 {
                self.buf.zeroize();
                return Ok(Line::Eof);
            }
        }
    }
}

/// What one stdout line meant.
#[derive(Debug)]
pub(super) enum Parsed {
    /// The answer (result or mapped error) to request `id`.
    Answer(u64, Answer),
    /// A blank line: ignored.
    Skip,
    /// An error object with a null id (e.g. the program could not parse a request).
    ErrorWithoutId(String),
}

/// Parses one answer line. `Err` is a protocol violation (the connection is then broken); its
/// text quotes at most [`GARBAGE_QUOTE`] escaped bytes, and none of a line that looks like JSON
/// (it may hold a value).
pub(super) fn parse_answer(line: &[u8]) -> Result<Parsed, String> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Ok(Parsed::Skip);
    }
    let mut v: Value = match serde_json::from_slice(trimmed) {
        Ok(v) => v,
        Err(e) if trimmed.starts_with(b"{") => {
            return Err(format!(
                "provider process wrote a line that is not valid JSON ({e}); every stdout \
                 line must be one JSON-RPC answer"
            ))
        }
        Err(_) => {
            let head = &trimmed[..trimmed.len().min(GARBAGE_QUOTE)];
            let more = if trimmed.len() > GARBAGE_QUOTE {
                "…"
            } else {
                ""
            };
            return Err(format!(
                "provider process wrote a line that is not JSON-RPC: \"{}{more}\"; it must write \
                 only JSON-RPC answers to stdout (logs go to stderr)",
                head.escape_ascii()
            ));
        }
    };
    let parsed = classify(&mut v);
    zeroize_json(&mut v);
    parsed
}

pub(super) fn classify(v: &mut Value) -> Result<Parsed, String> {
    let Some(obj) = v.as_object_mut() else {
        return Err("provider process wrote JSON that is not a JSON-RPC answer object".into());
    };
    let id = match obj.get("id") {
        Some(Value::Number(n)) => n.as_u64(),
        None | Some(Value::Null) => None,
        Some(_) => {
            return Err("provider process wrote an answer whose `id` is not a number".into())
        }
    };
    let result = obj.remove("result");
    let error = obj.remove("error");
    match (id, result, error) {
        (Some(id), Some(result), None) => Ok(Parsed::Answer(id, Ok(result))),
        (Some(id), None, Some(error)) => Ok(Parsed::Answer(id, Err(map_error(&error)))),
        (None, None, Some(error)) => Ok(Parsed::ErrorWithoutId(map_error(&error).to_string())),
        (_, mut r, _) => {
            if let Some(r) = r.as_mut() {
                zeroize_json(r);
            }
            Err(
                "provider process wrote an answer without a numeric `id` and exactly one of \
                 `result` / `error`"
                    .into(),
            )
        }
    }
}

/// Maps a JSON-RPC error object to a [`BackendError`] (see the codes in the protocol doc).
pub(super) fn map_error(error: &Value) -> BackendError {
    let code = error.get("code").and_then(Value::as_i64);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map(|m| wire::safe_text(m, &[], MAX_ERROR_TEXT))
        .unwrap_or_default();
    match code {
        // The path is filled in by the caller, which knows it.
        Some(CODE_NOT_FOUND) => BackendError::NotFound {
            path: String::new(),
        },
        Some(CODE_DENIED) => BackendError::Denied(format!("provider process: {message}")),
        Some(c) => {
            BackendError::Unavailable(format!("provider process answered error {c}: {message}"))
        }
        None => BackendError::Unavailable(format!(
            "provider process answered an error without a numeric code: {message}"
        )),
    }
}

/// Turns a `resolve` result into the secret and its version; wipes what is left of it.
pub(super) fn decode_resolve(path: &str, mut result: Value) -> Result<Fetched, BackendError> {
    let out = decode_resolve_inner(path, &mut result);
    zeroize_json(&mut result);
    out
}

pub(super) fn decode_resolve_inner(
    path: &str,
    result: &mut Value,
) -> Result<Fetched, BackendError> {
    let bad = |what: &str| {
        BackendError::Unavailable(format!(
            "provider process answered resolve `{path}` with {what}; see docs/provider-protocol.md"
        ))
    };
    let Some(obj) = result.as_object_mut() else {
        return Err(bad("a result that is not an object"));
    };
    let base64 = match obj.get("encoding") {
        None | Some(Value::Null) => false,
        Some(Value::String(e)) if e == "base64" => true,
        Some(Value::String(e)) if e == "utf-8" || e == "utf8" => false,
        Some(_) => return Err(bad("an unknown `encoding` (only \"base64\" is defined)")),
    };
    let version = match obj.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(bad("a `version` that is not a string")),
    };
    let decode = |s: &mut String, key: Option<&str>| -> Result<SecretValue, BackendError> {
        let raw = std::mem::take(s).into_bytes();
        if !base64 {
            return Ok(SecretValue::new(raw));
        }
        let raw = Zeroizing::new(raw);
        B64.decode(raw.as_slice())
            .map(SecretValue::new)
            .map_err(|_| match key {
                Some(k) => bad(&format!("key `{k}` not valid base64")),
                None => bad("a value that is not valid base64"),
            })
    };
    let both = obj.contains_key("value") && obj.contains_key("values");
    let data = match (obj.get_mut("value"), both) {
        (_, true) => return Err(bad("both `value` and `values`")),
        (Some(Value::String(s)), false) => SecretData::Value(decode(s, None)?),
        (Some(_), false) => return Err(bad("a `value` that is not a string")),
        (None, false) => match obj.get_mut("values") {
            Some(Value::Object(m)) => {
                let mut map = BTreeMap::new();
                for (k, v) in m.iter_mut() {
                    let Value::String(s) = v else {
                        return Err(bad(&format!("key `{k}` whose value is not a string")));
                    };
                    map.insert(k.clone(), decode(s, Some(k))?);
                }
                SecretData::Map(map)
            }
            Some(_) => return Err(bad("`values` that is not an object of strings")),
            None => return Err(bad("neither `value` nor `values`")),
        },
    };
    Ok(Fetched { data, version })
}
