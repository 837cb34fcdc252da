//! What the CLI prints: aligned tables for people, and records as text or
//! one JSON object per line for programs.
//!
//! JSON records are `{"topic", "partition", "offset", "timestamp", "key",
//! "value", "headers"}`. Keys, values and header values are strings when
//! they are valid UTF-8; otherwise they are standard base64 (with padding)
//! and a sibling field `key_encoding` / `value_encoding` says `"base64"`.
//! A null key or value is `null`. `headers` is a list of `{"key",
//! "value"}` objects in record order (keys may repeat).

use std::io::Write;

use base64::Engine;
use serde::Serialize;
use spate_client::ConsumerRecord;

/// Whether an error is stdout going away (`spate consume | head`), which
/// ends the command quietly rather than as a failure.
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes `text` to stdout at once.
pub(crate) fn print(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// A table in rpk's style: upper-case headers, columns two spaces apart.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&str]) -> Self {
        Table { rows: vec![headers.iter().map(|header| header.to_string()).collect()] }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows.iter().filter_map(|row| row.get(column)).map(|cell| cell.chars().count()).max().unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                line.push_str(cell);
                let padding = widths[column].saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', padding));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A list of node ids as rpk prints them: `[1 2 3]`.
pub(crate) fn ids(ids: &[i32]) -> String {
    let inner: Vec<String> = ids.iter().map(i32::to_string).collect();
    format!("[{}]", inner.join(" "))
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_encoding: Option<&'static str>,
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_encoding: Option<&'static str>,
    headers: Vec<JsonHeader>,
}

#[derive(Serialize)]
struct JsonHeader {
    key: String,
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_encoding: Option<&'static str>,
}

/// Bytes as a JSON string: as is when UTF-8, else base64 and its marker.
fn encode(bytes: Option<&[u8]>) -> (Option<String>, Option<&'static str>) {
    match bytes {
        None => (None, None),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (Some(base64::engine::general_purpose::STANDARD.encode(bytes)), Some("base64")),
        },
    }
}

/// One record as one line of JSON (no newline).
pub(crate) fn json_line(record: &ConsumerRecord) -> Result<String, serde_json::Error> {
    let (key, key_encoding) = encode(record.key.as_deref());
    let (value, value_encoding) = encode(record.value.as_deref());
    let headers = record
        .headers
        .iter()
        .map(|(key, value)| {
            let (value, value_encoding) = encode(value.as_deref());
            JsonHeader { key: key.clone(), value, value_encoding }
        })
        .collect();
    serde_json::to_string(&JsonRecord {
        topic: &record.topic,
        partition: record.partition,
        offset: record.offset,
        timestamp: record.timestamp_ms,
        key,
        key_encoding,
        value,
        value_encoding,
        headers,
    })
}

/// One record as text: the value, or `key<separator>value`; raw bytes,
/// with a newline after.
pub(crate) fn text_line(out: &mut Vec<u8>, record: &ConsumerRecord, key_separator: Option<&str>) {
    if let Some(separator) = key_separator {
        out.extend_from_slice(record.key.as_deref().unwrap_or_default());
        out.extend_from_slice(separator.as_bytes());
    }
    out.extend_from_slice(record.value.as_deref().unwrap_or_default());
    out.push(b'\n');
}

/// Deletes each name in turn, printing a NAME / STATUS table; any failure
/// ends the command with an error after the table (the topic and group
/// delete verbs).
pub(crate) async fn delete_each<E: std::fmt::Display>(
    header: &str,
    names: &[String],
    failure: impl Fn(usize) -> String,
    delete: impl AsyncFn(&str) -> Result<(), E>,
) -> anyhow::Result<()> {
    let mut table = Table::new(&[header, "STATUS"]);
    let mut failed = 0;
    for name in names {
        let status = match delete(name).await {
            Ok(()) => "OK".to_string(),
            Err(error) => {
                failed += 1;
                error.to_string()
            }
        };
        table.row(vec![name.clone(), status]);
    }
    print(&table.render())?;
    if failed > 0 {
        anyhow::bail!(failure(failed));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(key: Option<&[u8]>, value: Option<&[u8]>) -> ConsumerRecord {
        ConsumerRecord {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: 1_700_000_000_000,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: vec![("trace".into(), Some(Bytes::from_static(b"\xff\x00"))), ("flag".into(), None)],
        }
    }

    #[test]
    fn json_escapes_everything_onto_one_line_and_round_trips() {
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} unicode é ☃";
        let line = json_line(&record(Some(b"k"), Some(tricky.as_bytes()))).expect("serializable");
        assert!(!line.contains('\n'), "one record, one line: {line}");
        assert!(line.contains(r#"\"quote"#) || line.contains(r#"quote \""#));
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(parsed["value"], tricky);
        assert_eq!(parsed["key"], "k");
        assert_eq!(parsed["topic"], "orders");
        assert_eq!(parsed["partition"], 2);
        assert_eq!(parsed["offset"], 41);
        assert_eq!(parsed["timestamp"], 1_700_000_000_000_i64);
        assert!(parsed.get("value_encoding").is_none());
    }

    #[test]
    fn bytes_that_are_not_utf8_become_base64_with_a_marker() {
        let line = json_line(&record(Some(b"\xc3\x28"), None)).expect("serializable");
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(parsed["key"], "wyg=");
        assert_eq!(parsed["key_encoding"], "base64");
        assert!(parsed["value"].is_null());
        assert_eq!(parsed["headers"][0]["key"], "trace");
        assert_eq!(parsed["headers"][0]["value"], "/wA=");
        assert_eq!(parsed["headers"][0]["value_encoding"], "base64");
        assert!(parsed["headers"][1]["value"].is_null());
    }

    #[test]
    fn text_prints_the_value_or_key_and_value() {
        let mut out = Vec::new();
        text_line(&mut out, &record(Some(b"user-1"), Some(b"hello")), None);
        text_line(&mut out, &record(Some(b"user-1"), Some(b"hello")), Some("\t"));
        text_line(&mut out, &record(None, None), Some(":"));
        assert_eq!(out, b"hello\nuser-1\thello\n:\n");
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["NAME", "PARTITIONS"]);
        table.row(vec!["orders".into(), "3".into()]);
        table.row(vec!["a".into(), "12".into()]);
        assert_eq!(table.render(), "NAME    PARTITIONS\norders  3\na       12\n");
        assert_eq!(ids(&[1, 2]), "[1 2]");
    }

    #[test]
    fn broken_pipes_are_recognised_through_context() {
        let error = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&error));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
