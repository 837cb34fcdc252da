//! Parsers for command-line values and input lines, kept apart so that
//! each rule has a test.

use spate_client::{Acks, SeekTo};

/// `--config key=value`: the key before the first `=`, the rest the value.
pub(crate) fn config_entry(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{text:?} has no key before '='"));
    }
    if key.contains(char::is_whitespace) {
        return Err(format!("config key {key:?} contains whitespace"));
    }
    if value.is_empty() {
        return Err(format!("config {key} has no value after '='"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// `--acks`: -1 or all, 0, 1.
pub(crate) fn acks(text: &str) -> Result<Acks, String> {
    match text {
        "-1" | "all" => Ok(Acks::All),
        "1" => Ok(Acks::Leader),
        "0" => Ok(Acks::None),
        _ => Err(format!("acks must be -1 (or all), 0 or 1, not {text:?}")),
    }
}

/// `--compression`: Kafka's codec names.
pub(crate) fn compression(text: &str) -> Result<spate_client::Compression, String> {
    spate_client::Compression::from_name(text)
        .ok_or_else(|| format!("compression must be none, gzip, snappy, lz4 or zstd, not {text:?}"))
}

/// `--offset`: earliest, latest, an offset, or @ms for the first record at
/// or after a time.
pub(crate) fn start_offset(text: &str) -> Result<SeekTo, String> {
    match text {
        "earliest" | "beginning" | "start" => return Ok(SeekTo::Earliest),
        "latest" | "end" => return Ok(SeekTo::Latest),
        _ => {}
    }
    let bad = || format!("offset must be earliest, latest, a non-negative offset or @timestamp_ms, not {text:?}");
    if let Some(timestamp) = text.strip_prefix('@') {
        let timestamp_ms: i64 = timestamp.parse().map_err(|_| bad())?;
        return Ok(SeekTo::Timestamp(timestamp_ms));
    }
    match text.parse::<i64>() {
        Ok(offset) if offset >= 0 => Ok(SeekTo::Offset(offset)),
        _ => Err(bad()),
    }
}

/// A key separator must separate something.
pub(crate) fn separator(text: &str) -> Result<String, String> {
    if text.is_empty() { Err("the key separator is empty".to_string()) } else { Ok(text.to_string()) }
}

/// Splits an input line into key and value at the first `separator`. A
/// line without the separator is all value and has no key (as in kcat -K).
pub(crate) fn split_key<'a>(line: &'a [u8], separator: Option<&[u8]>) -> (Option<&'a [u8]>, &'a [u8]) {
    let Some(separator) = separator.filter(|separator| !separator.is_empty()) else { return (None, line) };
    match line.windows(separator.len()).position(|window| window == separator) {
        Some(at) => (Some(&line[..at]), &line[at + separator.len()..]),
        None => (None, line),
    }
}

/// A line without its terminator: "\n", or "\r\n".
pub(crate) fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_entries_split_at_the_first_equals_sign() {
        assert_eq!(config_entry("retention.ms=1000"), Ok(("retention.ms".into(), "1000".into())));
        assert_eq!(config_entry("cleanup=a=b"), Ok(("cleanup".into(), "a=b".into())));
        for bad in ["retention.ms", "=1000", "retention.ms=", "  =x", "a b=1"] {
            let error = config_entry(bad).expect_err(bad);
            assert!(!error.is_empty());
        }
        assert!(config_entry("retention.ms").is_err_and(|error| error.contains("key=value")));
    }

    #[test]
    fn acks_take_kafkas_spellings() {
        assert_eq!(acks("all"), Ok(Acks::All));
        assert_eq!(acks("-1"), Ok(Acks::All));
        assert_eq!(acks("1"), Ok(Acks::Leader));
        assert_eq!(acks("0"), Ok(Acks::None));
        assert!(acks("2").is_err());
        assert!(acks("leader").is_err());
    }

    #[test]
    fn start_offsets_are_names_numbers_or_times() {
        assert_eq!(start_offset("earliest"), Ok(SeekTo::Earliest));
        assert_eq!(start_offset("latest"), Ok(SeekTo::Latest));
        assert_eq!(start_offset("42"), Ok(SeekTo::Offset(42)));
        assert_eq!(start_offset("@1700000000000"), Ok(SeekTo::Timestamp(1_700_000_000_000)));
        for bad in ["-3", "x", "@", "@soon", ""] {
            assert!(start_offset(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_key_ends_at_the_first_separator() {
        assert_eq!(split_key(b"user-1:hello", Some(b":")), (Some(&b"user-1"[..]), &b"hello"[..]));
        assert_eq!(split_key(b"a:b:c", Some(b":")), (Some(&b"a"[..]), &b"b:c"[..]));
        assert_eq!(split_key(b"k::v", Some(b"::")), (Some(&b"k"[..]), &b"v"[..]));
        assert_eq!(split_key(b":v", Some(b":")), (Some(&b""[..]), &b"v"[..]));
        assert_eq!(split_key(b"k:", Some(b":")), (Some(&b"k"[..]), &b""[..]));
        assert_eq!(split_key(b"no separator", Some(b":")), (None, &b"no separator"[..]));
        assert_eq!(split_key(b"a:b", None), (None, &b"a:b"[..]));
        assert!(separator("").is_err());
    }

    #[test]
    fn line_ends_are_trimmed_once() {
        assert_eq!(trim_line_end(b"abc\n"), b"abc");
        assert_eq!(trim_line_end(b"abc\r\n"), b"abc");
        assert_eq!(trim_line_end(b"abc"), b"abc");
        assert_eq!(trim_line_end(b"abc\n\n"), b"abc\n");
        assert_eq!(trim_line_end(b"\n"), b"");
    }
}
