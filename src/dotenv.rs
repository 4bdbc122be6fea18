//! `.env` files (`dso secret import`): `KEY=VALUE` lines, parsed without ever echoing a value.

use zeroize::Zeroizing;

/// Parses a `.env` file: `KEY=VALUE` lines, optional `export `, `#` comments, single or double
/// quotes (double quotes understand `\n`, `\"`, `\\`). Errors name the line, never the value.
pub fn parse(text: &str) -> Result<Vec<(String, Zeroizing<String>)>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", n + 1));
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            return Err(format!(
                "line {}: `{key}` is not a valid variable name",
                n + 1
            ));
        }
        let value = value.trim();
        let parsed = if let Some(inner) = value.strip_prefix('"') {
            let Some(inner) = inner.strip_suffix('"') else {
                return Err(format!("line {}: unterminated double quote", n + 1));
            };
            let mut s = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('n') => s.push('\n'),
                        Some(other) => s.push(other),
                        None => s.push('\\'),
                    }
                } else {
                    s.push(c);
                }
            }
            s
        } else if let Some(inner) = value.strip_prefix('\'') {
            let Some(inner) = inner.strip_suffix('\'') else {
                return Err(format!("line {}: unterminated single quote", n + 1));
            };
            inner.to_string()
        } else {
            // Unquoted: an inline comment starts at " #".
            value
                .split(" #")
                .next()
                .unwrap_or("")
                .trim_end()
                .to_string()
        };
        out.push((key.to_string(), Zeroizing::new(parsed)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn dotenv_lines_quotes_comments_and_errors() {
        let text = "# comment\nexport DB_PASSWORD=\"p@ss \\\"word\\\"\\n2\"\nAPI_KEY='a b#c'\nPLAIN=value # trailing\nEMPTY=\n\n";
        let got: Vec<(String, String)> = parse(text)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("DB_PASSWORD".into(), "p@ss \"word\"\n2".into()),
                ("API_KEY".into(), "a b#c".into()),
                ("PLAIN".into(), "value".into()),
                ("EMPTY".into(), String::new()),
            ]
        );
        let e = parse("OK=1\nnot a line\n").unwrap_err();
        assert_eq!(e, "line 2: expected KEY=VALUE");
        let e = parse("X=\"secretvalue\n").unwrap_err();
        assert!(e.contains("line 1") && !e.contains("secretvalue"), "{e}");
    }
}
