//! Java `.properties` files, read as `java.util.Properties.load` reads
//! them, so Kafka's own sample configs work unchanged: `#` and `!`
//! comments, `key=value`, `key:value` or `key value`, backslash line
//! continuations and escapes (`\t`, `\n`, `\uXXXX`, ...).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::error::{ConnectError, Result};
use crate::limits::PROPERTIES_FILE_BYTES_MAX;

/// A configuration: keys to values, as Kafka's `Map<String, String>`.
pub type Props = BTreeMap<String, String>;

/// Reads a properties file (at most `PROPERTIES_FILE_BYTES_MAX`).
pub fn load_file(path: &Path) -> Result<Props> {
    let text = read_config_text(path)?;
    parse(&text).map_err(|e| match e {
        ConnectError::Config(why) => ConnectError::Config(format!("{}: {why}", path.display())),
        other => other,
    })
}

/// A config file's text (properties or YAML): at most
/// `PROPERTIES_FILE_BYTES_MAX` bytes of UTF-8.
pub(crate) fn read_config_text(path: &Path) -> Result<String> {
    let context = || format!("reading {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| ConnectError::io(context(), e))?;
    let mut bytes = Vec::new();
    file.take(PROPERTIES_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(|e| ConnectError::io(context(), e))?;
    if bytes.len() as u64 > PROPERTIES_FILE_BYTES_MAX {
        return Err(ConnectError::Config(format!(
            "{} is larger than {PROPERTIES_FILE_BYTES_MAX} bytes: not a config file",
            path.display()
        )));
    }
    // Java reads properties as ISO-8859-1 bytes; UTF-8 is what people write
    // today, and every ASCII file reads the same either way.
    String::from_utf8(bytes).map_err(|_| ConnectError::Config(format!("{} is not UTF-8 text", path.display())))
}

/// Parses properties text.
pub fn parse(text: &str) -> Result<Props> {
    let mut props = Props::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, first)) = lines.next() {
        let line_number = index + 1;
        let first = first.trim_start_matches([' ', '\t', '\x0c']);
        if first.is_empty() || first.starts_with('#') || first.starts_with('!') {
            continue;
        }
        // Join continuation lines: an odd number of trailing backslashes
        // continues the line, and the next one's leading blanks go.
        let mut logical = String::new();
        let mut part = first;
        loop {
            let trailing = part.chars().rev().take_while(|c| *c == '\\').count();
            if trailing % 2 == 1 {
                logical.push_str(&part[..part.len() - 1]);
                match lines.next() {
                    Some((_, next)) => part = next.trim_start_matches([' ', '\t', '\x0c']),
                    None => break,
                }
            } else {
                logical.push_str(part);
                break;
            }
        }
        let (key, value) = split_key_value(&logical);
        let key = unescape(key).map_err(|why| ConnectError::Config(format!("line {line_number}: {why}")))?;
        let value = unescape(value).map_err(|why| ConnectError::Config(format!("line {line_number}: {why}")))?;
        props.insert(key, value);
    }
    Ok(props)
}

/// The key ends at the first unescaped `=`, `:` or blank; then blanks, at
/// most one `=` or `:`, and blanks again separate it from the value.
fn split_key_value(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let mut index = 0;
    let mut escaped = false;
    while index < bytes.len() {
        let byte = bytes[index];
        if escaped {
            escaped = false;
        } else if byte == b'\\' {
            escaped = true;
        } else if matches!(byte, b'=' | b':' | b' ' | b'\t' | b'\x0c') {
            break;
        }
        index += 1;
    }
    let key = &line[..index];
    let mut rest = line[index..].trim_start_matches([' ', '\t', '\x0c']);
    if let Some(stripped) = rest.strip_prefix(['=', ':']) {
        rest = stripped.trim_start_matches([' ', '\t', '\x0c']);
    }
    (key, rest)
}

fn unescape(text: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = (hex.len() == 4).then(|| u32::from_str_radix(&hex, 16).ok()).flatten();
                match code.and_then(char::from_u32) {
                    Some(decoded) => out.push(decoded),
                    None => return Err(format!("malformed \\uxxxx encoding: \\u{hex}")),
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_sample_syntax_reads_as_java_reads_it() {
        let text = "# comment\n! also a comment\n\nname=local-file-source\nconnector.class : FileStreamSource\n\
                    tasks.max 1\nfile=/tmp/a\\\n    b.txt\nkey\\=with\\:seps=v\\u0041\\t\nempty=\n  spaced =  value  \n";
        let props = parse(text).expect("valid");
        assert_eq!(props["name"], "local-file-source");
        assert_eq!(props["connector.class"], "FileStreamSource");
        assert_eq!(props["tasks.max"], "1");
        assert_eq!(props["file"], "/tmp/ab.txt");
        assert_eq!(props["key=with:seps"], "vA\t");
        assert_eq!(props["empty"], "");
        // Java keeps trailing blanks of a value.
        assert_eq!(props["spaced"], "value  ");
        assert_eq!(props.len(), 7);
    }

    #[test]
    fn a_malformed_unicode_escape_is_an_error_naming_its_line() {
        let error = parse("a=1\nb=\\u12g4\n").expect_err("malformed");
        assert!(matches!(&error, ConnectError::Config(why) if why.contains("line 2")), "{error}");
    }

    #[test]
    fn a_missing_or_binary_file_is_a_typed_error() {
        let missing = load_file(Path::new("/nonexistent/worker.properties")).expect_err("missing");
        assert!(matches!(missing, ConnectError::Io { .. }));
        let dir = crate::test_dir("props");
        let binary = dir.join("binary.properties");
        std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x41]).expect("write");
        assert!(matches!(load_file(&binary), Err(ConnectError::Config(_))));
    }
}
