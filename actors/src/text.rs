//! Untrusted text made fit for one log line: what a container, an image, a label or a backend
//! wrote is never logged verbatim.

/// `text` as one line: control characters (line breaks, terminal escapes) escaped, at most
/// `max` characters, `…` marking a cut.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 4));
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::one_line;

    #[test]
    fn one_short_line() {
        assert_eq!(one_line("a\nb\x1b[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(one_line("héllo wörld", 5), "héllo…");
        assert_eq!(one_line("short", 5), "short");
    }
}
