//! The on-disk format: header (KDF, cipher), the encrypted JSON document and its (de)serialization without unwiped copies.

use super::*;

/// The vault header (line 2 of the file).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Header {
    pub(super) kdf: String,
    pub(super) m_kib: u32,
    pub(super) t: u32,
    pub(super) p: u32,
    pub(super) salt: String,
    pub(super) cipher: String,
    pub(super) nonce: String,
}

/// A parsed (still encrypted) vault file.
pub(super) struct Parsed<'a> {
    pub(super) aad: &'a [u8],
    pub(super) kdf: KdfInfo,
    pub(super) nonce: [u8; NONCE_LEN],
    pub(super) ciphertext: Vec<u8>,
}

pub(super) fn parse_file<'a>(file: &Path, bytes: &'a [u8]) -> Result<Parsed<'a>, FileVaultError> {
    let corrupt = |reason: &str| FileVaultError::Corrupt {
        file: file.to_path_buf(),
        reason: reason.to_string(),
    };
    let nl1 = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("missing the `dso-vault 1` first line"))?;
    let magic_line = std::str::from_utf8(&bytes[..nl1])
        .map_err(|_| corrupt("missing the `dso-vault 1` first line"))?;
    let version = magic_line
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| corrupt("missing the `dso-vault 1` first line"))?;
    if version != FORMAT_VERSION {
        return Err(FileVaultError::UnsupportedVersion {
            file: file.to_path_buf(),
            version: version.chars().take(32).collect(),
        });
    }
    let rest = &bytes[nl1 + 1..];
    let nl2 = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("truncated after the header"))?;
    let header: Header =
        serde_json::from_slice(&rest[..nl2]).map_err(|e| corrupt(&format!("bad header: {e}")))?;
    let aad = &bytes[..nl1 + 1 + nl2 + 1];
    if header.kdf != KDF_NAME {
        return Err(corrupt(&format!("unknown kdf `{}`", header.kdf)));
    }
    if header.cipher != CIPHER_NAME {
        return Err(corrupt(&format!("unknown cipher `{}`", header.cipher)));
    }
    let params = KdfParams {
        m_kib: header.m_kib,
        t: header.t,
        p: header.p,
    };
    if params.m_kib > MAX_M_KIB || params.t > MAX_T || params.p > MAX_P || params.t == 0 {
        return Err(corrupt("Argon2 parameters out of range"));
    }
    let salt = B64
        .decode(&header.salt)
        .map_err(|_| corrupt("salt is not base64"))?;
    if !(8..=64).contains(&salt.len()) {
        return Err(corrupt("salt length out of range"));
    }
    let nonce: [u8; NONCE_LEN] = B64
        .decode(&header.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| corrupt("nonce is not 12 base64 bytes"))?;
    let mut body = &rest[nl2 + 1..];
    body = body.strip_suffix(b"\n").unwrap_or(body);
    if body.contains(&b'\n') {
        return Err(corrupt("unexpected data after the ciphertext line"));
    }
    let ciphertext = B64
        .decode(body)
        .map_err(|_| corrupt("ciphertext is not base64"))?;
    if ciphertext.len() < TAG_LEN {
        return Err(corrupt("ciphertext is truncated"));
    }
    Ok(Parsed {
        aad,
        kdf: KdfInfo { salt, params },
        nonce,
        ciphertext,
    })
}

// ---- plaintext (de)serialization; values never pass through an unzeroized String ----

pub(super) struct PlainOut<'a>(pub(super) &'a BTreeMap<String, SecretData>);
pub(super) struct SecretsOut<'a>(pub(super) &'a BTreeMap<String, SecretData>);
pub(super) struct EntryOut<'a>(pub(super) &'a SecretData);
pub(super) struct KeysOut<'a>(pub(super) &'a BTreeMap<String, SecretValue>);
pub(super) struct B64Out<'a>(pub(super) &'a SecretValue);

impl Serialize for PlainOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("secrets", &SecretsOut(self.0))?;
        m.end()
    }
}

impl Serialize for SecretsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (path, data) in self.0 {
            m.serialize_entry(path, &EntryOut(data))?;
        }
        m.end()
    }
}

impl Serialize for EntryOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self.0 {
            SecretData::Value(v) => m.serialize_entry("value", &B64Out(v))?,
            SecretData::Map(keys) => m.serialize_entry("map", &KeysOut(keys))?,
        }
        m.end()
    }
}

impl Serialize for KeysOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, &B64Out(v))?;
        }
        m.end()
    }
}

impl Serialize for B64Out<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = base64::encoded_len(self.0.len(), true).unwrap_or(0);
        let mut enc = Zeroizing::new(String::with_capacity(len));
        B64.encode_string(self.0.expose(), &mut enc);
        s.serialize_str(&enc)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlainIn {
    pub(super) secrets: BTreeMap<String, EntryIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub(super) enum EntryIn {
    Value(B64In),
    Map(BTreeMap<String, B64In>),
}

/// A base64 value decoded straight from the (zeroized) plaintext buffer.
pub(super) struct B64In(pub(super) SecretValue);

impl<'de> Deserialize<'de> for B64In {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = B64In;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<B64In, E> {
                B64.decode(s)
                    .map(|b| B64In(SecretValue::new(b)))
                    .map_err(|_| E::custom("invalid base64 value"))
            }
        }
        d.deserialize_str(V)
    }
}

/// An `io::Write` sink whose every buffer (including ones outgrown) is wiped.
pub(super) struct ZeroizingWriter(pub(super) Zeroizing<Vec<u8>>);

impl Write for ZeroizingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let need = self.0.len() + buf.len();
        if need > self.0.capacity() {
            let cap = need.max(self.0.capacity() * 2).max(1024);
            let mut bigger = Zeroizing::new(Vec::with_capacity(cap));
            bigger.extend_from_slice(&self.0);
            self.0 = bigger; // the old buffer is zeroized on drop
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
