//! Kafka's TimestampConverter transform (`TimestampConverter$Key` /
//! `$Value`): converts a timestamp, the whole key or value or one `field`
//! of it, between a string in a `format` (Java SimpleDateFormat letters
//! y, M, d, H, m, s, S and quoted literals, in UTC as Kafka's), a unix
//! number (`unix.precision`: seconds, milliseconds (default),
//! microseconds, nanoseconds) and Kafka's logical types Timestamp
//! (int64 ms), Date (int32 days) and Time (int32 ms of the day).

use crate::data::{Schema, SchemaAndValue, SchemaType, Value};
use crate::error::{ConnectError, Result};
use crate::props::Props;
use crate::record::ConnectRecord;

pub(crate) const TIMESTAMP_SCHEMA_NAME: &str = "org.apache.kafka.connect.data.Timestamp";
const DATE_SCHEMA_NAME: &str = "org.apache.kafka.connect.data.Date";
const TIME_SCHEMA_NAME: &str = "org.apache.kafka.connect.data.Time";
const MS_PER_DAY: i64 = 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Unix,
    Date,
    Time,
    Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// A pattern letter and how many times it was repeated.
    Field(char, usize),
}

/// A SimpleDateFormat pattern, in the letters supported here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Format(Vec<Token>);

impl Format {
    fn parse(pattern: &str) -> Result<Format> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                let mut literal = String::new();
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            literal.push('\'');
                        }
                        Some('\'') => break,
                        Some(other) => literal.push(other),
                        None => return Err(ConnectError::Config(format!("format {pattern:?}: unterminated quote"))),
                    }
                }
                // '' alone is a quote character.
                tokens.push(Token::Literal(if literal.is_empty() { "'".into() } else { literal }));
            } else if c.is_ascii_alphabetic() {
                if !matches!(c, 'y' | 'M' | 'd' | 'H' | 'm' | 's' | 'S') {
                    return Err(ConnectError::Config(format!(
                        "format {pattern:?}: pattern letter {c} is not supported (y, M, d, H, m, s, S are)"
                    )));
                }
                let mut count = 1;
                while chars.peek() == Some(&c) {
                    chars.next();
                    count += 1;
                }
                tokens.push(Token::Field(c, count));
            } else {
                tokens.push(Token::Literal(c.to_string()));
            }
        }
        Ok(Format(tokens))
    }

    fn format(&self, epoch_ms: i64) -> String {
        let days = epoch_ms.div_euclid(MS_PER_DAY);
        let ms_of_day = epoch_ms.rem_euclid(MS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let mut out = String::new();
        for token in &self.0 {
            match token {
                Token::Literal(text) => out.push_str(text),
                Token::Field(letter, width) => {
                    let value = match letter {
                        'y' if *width == 2 => year.rem_euclid(100),
                        'y' => year,
                        'M' => i64::from(month),
                        'd' => i64::from(day),
                        'H' => ms_of_day / 3_600_000,
                        'm' => ms_of_day / 60_000 % 60,
                        's' => ms_of_day / 1000 % 60,
                        _ => ms_of_day % 1000,
                    };
                    out.push_str(&format!("{value:0width$}", width = *width));
                }
            }
        }
        out
    }

    fn parse_ms(&self, text: &str) -> Result<i64> {
        let bad = || ConnectError::Data(format!("could not parse timestamp {text:?} with the configured format"));
        let (mut year, mut month, mut day, mut ms_of_day) = (1970_i64, 1_i64, 1_i64, 0_i64);
        let mut rest = text;
        for (index, token) in self.0.iter().enumerate() {
            match token {
                Token::Literal(literal) => rest = rest.strip_prefix(literal.as_str()).ok_or_else(bad)?,
                Token::Field(letter, width) => {
                    // A field followed by another field takes exactly its
                    // width; otherwise as many digits as there are.
                    let next_is_field = matches!(self.0.get(index + 1), Some(Token::Field(..)));
                    let available = rest.chars().take_while(char::is_ascii_digit).count();
                    let take = if next_is_field { *width } else { available };
                    if take == 0 || take > available {
                        return Err(bad());
                    }
                    let value: i64 = rest[..take].parse().map_err(|_| bad())?;
                    rest = &rest[take..];
                    match letter {
                        'y' if *width == 2 => year = 2000 + value,
                        'y' => year = value,
                        'M' => month = value,
                        'd' => day = value,
                        'H' => ms_of_day += value * 3_600_000,
                        'm' => ms_of_day += value * 60_000,
                        's' => ms_of_day += value * 1000,
                        _ => ms_of_day += value,
                    }
                }
            }
        }
        if !rest.is_empty() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return Err(bad());
        }
        let (month, day) = (u32::try_from(month).map_err(|_| bad())?, u32::try_from(day).map_err(|_| bad())?);
        Ok(days_from_civil(year, month, day) * MS_PER_DAY + ms_of_day)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are small by construction (1..=12, 1..=31).
    (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
}

/// The transform.
#[derive(Debug)]
pub(crate) struct TimestampConverter {
    key: bool,
    field: Option<String>,
    target: Kind,
    format: Option<Format>,
    /// Milliseconds per unix unit as a ratio: (multiply, divide).
    unix_scale: (i64, i64),
}

impl TimestampConverter {
    pub(crate) fn new(key: bool, props: &Props, what: &str) -> Result<TimestampConverter> {
        let target = match props.get("target.type").map(|t| t.trim()) {
            Some("string") => Kind::String,
            Some("unix") => Kind::Unix,
            Some("Date") => Kind::Date,
            Some("Time") => Kind::Time,
            Some("Timestamp") => Kind::Timestamp,
            other => {
                return Err(ConnectError::Config(format!(
                    "{what}: target.type must be string, unix, Date, Time or Timestamp, not {other:?}"
                )));
            }
        };
        let format = props.get("format").map(|f| f.trim()).filter(|f| !f.is_empty()).map(Format::parse).transpose()?;
        if target == Kind::String && format.is_none() {
            return Err(ConnectError::Config(format!("{what}: TimestampConverter requires format for string output")));
        }
        let unix_scale = match props.get("unix.precision").map_or("milliseconds", |p| p.trim()) {
            "seconds" => (1000, 1),
            "milliseconds" => (1, 1),
            "microseconds" => (1, 1000),
            "nanoseconds" => (1, 1_000_000),
            other => return Err(ConnectError::Config(format!("{what}: unknown unix.precision {other}"))),
        };
        let field = props.get("field").map(|f| f.trim().to_string()).filter(|f| !f.is_empty());
        Ok(TimestampConverter { key, field, target, format, unix_scale })
    }

    fn input_kind(schema: Option<&Schema>, value: &Value) -> Result<Kind> {
        if let Some(schema) = schema {
            return match (schema.name.as_deref(), schema.schema_type) {
                (Some(TIMESTAMP_SCHEMA_NAME), _) => Ok(Kind::Timestamp),
                (Some(DATE_SCHEMA_NAME), _) => Ok(Kind::Date),
                (Some(TIME_SCHEMA_NAME), _) => Ok(Kind::Time),
                (_, SchemaType::String) => Ok(Kind::String),
                (_, SchemaType::Int64) => Ok(Kind::Unix),
                (_, other) => Err(ConnectError::Data(format!("schema type {} is not a timestamp", other.json_name()))),
            };
        }
        match value {
            Value::String(_) => Ok(Kind::String),
            Value::Int64(_) | Value::Int32(_) => Ok(Kind::Unix),
            other => Err(ConnectError::Data(format!("a schemaless {other:?} is not a timestamp"))),
        }
    }

    fn epoch_ms_of(&self, kind: Kind, value: &Value) -> Result<i64> {
        let integer = match value {
            Value::Int64(v) => Some(*v),
            Value::Int32(v) => Some(i64::from(*v)),
            _ => None,
        };
        let not = |what: &str| ConnectError::Data(format!("expected {what}, found {value:?}"));
        match kind {
            Kind::String => {
                let Value::String(text) = value else { return Err(not("a string")) };
                let format = self.format.as_ref().ok_or_else(|| {
                    ConnectError::Data("TimestampConverter requires format to read a string timestamp".into())
                })?;
                format.parse_ms(text)
            }
            Kind::Unix => {
                let v = integer.ok_or_else(|| not("a unix timestamp"))?;
                Ok(v.saturating_mul(self.unix_scale.0) / self.unix_scale.1)
            }
            Kind::Date => Ok(integer.ok_or_else(|| not("a date"))?.saturating_mul(MS_PER_DAY)),
            Kind::Time | Kind::Timestamp => integer.ok_or_else(|| not("a timestamp")),
        }
    }

    fn target_value(&self, epoch_ms: i64, optional: bool) -> Result<SchemaAndValue> {
        let logical = |schema_type, name: &str| {
            let mut schema = Schema::new(schema_type);
            schema.name = Some(name.to_string());
            schema.version = Some(1);
            schema.optional = optional;
            schema
        };
        let small =
            |v: i64| i32::try_from(v).map_err(|_| ConnectError::Data(format!("{v} does not fit the target type")));
        Ok(match self.target {
            Kind::String => {
                let text = self.format.as_ref().map(|f| f.format(epoch_ms)).unwrap_or_default();
                let mut schema = Schema::string();
                schema.optional = optional;
                SchemaAndValue::new(Some(schema), Value::String(text))
            }
            Kind::Unix => {
                let mut schema = Schema::new(SchemaType::Int64);
                schema.optional = optional;
                let value = epoch_ms.saturating_mul(self.unix_scale.1) / self.unix_scale.0;
                SchemaAndValue::new(Some(schema), Value::Int64(value))
            }
            Kind::Timestamp => {
                SchemaAndValue::new(Some(logical(SchemaType::Int64, TIMESTAMP_SCHEMA_NAME)), Value::Int64(epoch_ms))
            }
            Kind::Date => SchemaAndValue::new(
                Some(logical(SchemaType::Int32, DATE_SCHEMA_NAME)),
                Value::Int32(small(epoch_ms.div_euclid(MS_PER_DAY))?),
            ),
            Kind::Time => SchemaAndValue::new(
                Some(logical(SchemaType::Int32, TIME_SCHEMA_NAME)),
                Value::Int32(small(epoch_ms.rem_euclid(MS_PER_DAY))?),
            ),
        })
    }

    fn convert(&self, schema: Option<&Schema>, value: &Value) -> Result<SchemaAndValue> {
        let kind = Self::input_kind(schema, value)?;
        let epoch_ms = self.epoch_ms_of(kind, value)?;
        self.target_value(epoch_ms, schema.is_none_or(|s| s.optional))
    }
}

impl crate::transforms::Transformation for TimestampConverter {
    fn apply(&self, mut record: ConnectRecord, _kafka_offset: Option<i64>) -> Result<Option<ConnectRecord>> {
        let schemaless =
            |record: &ConnectRecord| if self.key { record.key.schema.is_none() } else { record.value.schema.is_none() };
        let was_schemaless = schemaless(&record);
        let target = if self.key { &mut record.key } else { &mut record.value };
        if target.value.is_null() {
            return Ok(Some(record));
        }
        match &self.field {
            None => {
                let converted = self.convert(target.schema.as_ref(), &target.value)?;
                *target = if was_schemaless { SchemaAndValue::new(None, converted.value) } else { converted };
            }
            Some(field) => match (&mut target.schema, &mut target.value) {
                (None, Value::Map(entries)) => {
                    if let Some((_, value)) =
                        entries.iter_mut().find(|(k, _)| matches!(k, Value::String(s) if s == field))
                        && !value.is_null()
                    {
                        *value = self.convert(None, value)?.value;
                    }
                }
                (Some(schema), Value::Struct(fields)) => {
                    let field_schema = schema.fields.iter_mut().find(|f| &f.name == field);
                    let field_value = fields.iter_mut().find(|(name, _)| name == field);
                    if let (Some(field_schema), Some((_, value))) = (field_schema, field_value) {
                        if value.is_null() {
                            let converted = self.target_value(0, true)?;
                            field_schema.schema = converted.schema.unwrap_or_else(Schema::string);
                        } else {
                            let converted = self.convert(Some(&field_schema.schema), value)?;
                            *value = converted.value;
                            field_schema.schema = converted.schema.unwrap_or_else(Schema::string);
                        }
                    }
                }
                (_, other) => {
                    return Err(ConnectError::Data(format!(
                        "TimestampConverter with field {field} needs a struct or a map, found {other:?}"
                    )));
                }
            },
        }
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::Transformation;

    fn converter(text: &str) -> TimestampConverter {
        TimestampConverter::new(false, &crate::props::parse(text).expect("props"), "t").expect("valid")
    }

    #[test]
    fn civil_dates_round_trip_around_the_epoch_and_leap_days() {
        for (days, date) in [(0, (1970, 1, 1)), (-1, (1969, 12, 31)), (19_782, (2024, 2, 29)), (11_016, (2000, 2, 29))]
        {
            assert_eq!(civil_from_days(days), date);
            assert_eq!(days_from_civil(date.0, date.1, date.2), days);
        }
    }

    #[test]
    fn strings_in_a_format_become_unix_timestamps_and_back() {
        let to_unix = converter("target.type=unix\nformat=yyyy-MM-dd'T'HH:mm:ss.SSS'Z'\n");
        let record = ConnectRecord::new("t", SchemaAndValue::NULL, SchemaAndValue::string("2024-02-29T13:45:07.123Z"));
        let out = to_unix.apply(record, None).expect("converts").expect("kept");
        assert_eq!(out.value.value, Value::Int64(1_709_214_307_123));
        let to_string = converter("target.type=string\nformat=yyyyMMdd HH:mm\nunix.precision=seconds\n");
        let record =
            ConnectRecord::new("t", SchemaAndValue::NULL, SchemaAndValue::new(None, Value::Int64(1_709_214_307)));
        let out = to_string.apply(record, None).expect("converts").expect("kept");
        assert_eq!(out.value.value, Value::String("20240229 13:45".into()));
        assert_eq!(out.value.schema, None, "schemaless stays schemaless");
        let bad = ConnectRecord::new("t", SchemaAndValue::NULL, SchemaAndValue::string("yesterday"));
        assert!(matches!(to_unix.apply(bad, None), Err(ConnectError::Data(_))));
    }

    #[test]
    fn a_struct_field_becomes_kafkas_timestamp_type() {
        let to_timestamp = converter("target.type=Timestamp\nfield=at\n");
        let schema =
            Schema::structure(vec![crate::data::Field { name: "at".into(), schema: Schema::new(SchemaType::Int64) }]);
        let value = Value::Struct(vec![("at".into(), Value::Int64(86_400_000))]);
        let record = ConnectRecord::new("t", SchemaAndValue::NULL, SchemaAndValue::new(Some(schema), value));
        let out = to_timestamp.apply(record, None).expect("converts").expect("kept");
        assert_eq!(out.value.schema.expect("schema").fields[0].schema.name.as_deref(), Some(TIMESTAMP_SCHEMA_NAME));
        let to_date = converter("target.type=Date\n");
        let record =
            ConnectRecord::new("t", SchemaAndValue::NULL, SchemaAndValue::new(None, Value::Int64(3 * MS_PER_DAY + 5)));
        assert_eq!(to_date.apply(record, None).expect("ok").expect("kept").value.value, Value::Int32(3));
    }

    #[test]
    fn bad_settings_are_config_errors() {
        for text in [
            "target.type=week\n",
            "target.type=string\n",
            "target.type=unix\nformat=yyyy-ww\n",
            "target.type=unix\nunix.precision=hours\n",
        ] {
            let result = TimestampConverter::new(false, &crate::props::parse(text).expect("props"), "t");
            assert!(matches!(result, Err(ConnectError::Config(_))), "{text}");
        }
    }
}
