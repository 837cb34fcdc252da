//! Converters between Connect data and record bytes, under Kafka's class
//! names: StringConverter, ByteArrayConverter and JsonConverter (with the
//! `{"schema": ..., "payload": ...}` envelope when `schemas.enable`).

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value as Json;

use crate::data::{Field, Schema, SchemaAndValue, SchemaType, Value};
use crate::error::{ConnectError, Result};
use crate::props::Props;

/// Turns Connect data into bytes for a topic and back.
pub trait Converter: Send + Sync + std::fmt::Debug {
    /// Bytes for the record's key or value; None for a null. (Kafka's
    /// method names, which connector authors know.)
    #[allow(clippy::wrong_self_convention)]
    fn from_connect_data(&self, topic: &str, data: &SchemaAndValue) -> Result<Option<Bytes>>;
    /// The record's key or value as Connect data.
    fn to_connect_data(&self, topic: &str, bytes: Option<&[u8]>) -> Result<SchemaAndValue>;
}

/// The converter a `key.converter` or `value.converter` names, configured
/// with the keys under that prefix (`schemas.enable`).
pub fn converter_for(class: &str, config: &Props) -> Result<Box<dyn Converter>> {
    match class.trim() {
        "org.apache.kafka.connect.storage.StringConverter" | "StringConverter" => Ok(Box::new(StringConverter)),
        "org.apache.kafka.connect.converters.ByteArrayConverter" | "ByteArrayConverter" => {
            Ok(Box::new(ByteArrayConverter))
        }
        "org.apache.kafka.connect.json.JsonConverter" | "JsonConverter" => {
            let schemas_enable = match config.get("schemas.enable").map(|v| v.trim().to_ascii_lowercase()) {
                None => true,
                Some(v) if v == "true" => true,
                Some(v) if v == "false" => false,
                Some(v) => {
                    return Err(ConnectError::Config(format!("schemas.enable must be true or false, not {v:?}")));
                }
            };
            Ok(Box::new(JsonConverter { schemas_enable }))
        }
        other => Err(ConnectError::Config(format!(
            "unknown converter class {other:?}: StringConverter, ByteArrayConverter and JsonConverter \
             (or their org.apache.kafka.connect names) are available"
        ))),
    }
}

/// The keys of `props` under `prefix.`, with the prefix removed.
pub fn with_prefix(props: &Props, prefix: &str) -> Props {
    let dotted = format!("{prefix}.");
    props.iter().filter_map(|(key, value)| key.strip_prefix(&dotted).map(|k| (k.to_string(), value.clone()))).collect()
}

/// Kafka's StringConverter: UTF-8 text both ways.
#[derive(Debug, Clone, Copy)]
pub struct StringConverter;

impl Converter for StringConverter {
    fn from_connect_data(&self, _topic: &str, data: &SchemaAndValue) -> Result<Option<Bytes>> {
        Ok(match &data.value {
            Value::Null => None,
            value => Some(Bytes::from(value.to_string())),
        })
    }

    fn to_connect_data(&self, _topic: &str, bytes: Option<&[u8]>) -> Result<SchemaAndValue> {
        Ok(match bytes {
            None => SchemaAndValue::new(Some(Schema::string().optional()), Value::Null),
            // Java's decoder replaces malformed input; so does this.
            Some(bytes) => SchemaAndValue::new(
                Some(Schema::string().optional()),
                Value::String(String::from_utf8_lossy(bytes).into_owned()),
            ),
        })
    }
}

/// Kafka's ByteArrayConverter: bytes pass through unchanged.
#[derive(Debug, Clone, Copy)]
pub struct ByteArrayConverter;

impl Converter for ByteArrayConverter {
    fn from_connect_data(&self, _topic: &str, data: &SchemaAndValue) -> Result<Option<Bytes>> {
        if let Some(schema) = &data.schema
            && schema.schema_type != SchemaType::Bytes
        {
            return Err(ConnectError::Data(format!(
                "invalid schema type for ByteArrayConverter: {}",
                schema.schema_type.json_name()
            )));
        }
        match &data.value {
            Value::Null => Ok(None),
            Value::Bytes(bytes) => Ok(Some(bytes.clone())),
            other => {
                Err(ConnectError::Data(format!("ByteArrayConverter is not compatible with objects of type {other:?}")))
            }
        }
    }

    fn to_connect_data(&self, _topic: &str, bytes: Option<&[u8]>) -> Result<SchemaAndValue> {
        let schema = Some(Schema::new(SchemaType::Bytes).optional());
        Ok(match bytes {
            None => SchemaAndValue::new(schema, Value::Null),
            Some(bytes) => SchemaAndValue::new(schema, Value::Bytes(Bytes::copy_from_slice(bytes))),
        })
    }
}

/// Kafka's JsonConverter.
#[derive(Debug, Clone, Copy)]
pub struct JsonConverter {
    pub schemas_enable: bool,
}

impl Converter for JsonConverter {
    fn from_connect_data(&self, _topic: &str, data: &SchemaAndValue) -> Result<Option<Bytes>> {
        // As Kafka's: no schema and no value is a null record, not `null`.
        if data.schema.is_none() && data.value.is_null() {
            return Ok(None);
        }
        let mut out = String::new();
        if self.schemas_enable {
            out.push_str("{\"schema\":");
            match &data.schema {
                Some(schema) => write_schema(&mut out, schema),
                None => out.push_str("null"),
            }
            out.push_str(",\"payload\":");
            write_value(&mut out, data.schema.as_ref(), &data.value)?;
            out.push('}');
        } else {
            write_value(&mut out, data.schema.as_ref(), &data.value)?;
        }
        Ok(Some(Bytes::from(out)))
    }

    fn to_connect_data(&self, _topic: &str, bytes: Option<&[u8]>) -> Result<SchemaAndValue> {
        let Some(bytes) = bytes else { return Ok(SchemaAndValue::NULL) };
        let json: Json = serde_json::from_slice(bytes).map_err(|e| {
            ConnectError::Data(format!(
                "converting byte[] to Kafka Connect data failed due to serialization error: {e}"
            ))
        })?;
        if !self.schemas_enable {
            return Ok(SchemaAndValue::new(None, schemaless_value(&json)));
        }
        let envelope = match &json {
            Json::Object(fields)
                if fields.len() == 2 && fields.contains_key("schema") && fields.contains_key("payload") =>
            {
                fields
            }
            _ => {
                return Err(ConnectError::Data(
                    "JsonConverter with schemas.enable requires \"schema\" and \"payload\" fields and may not \
                     contain additional fields. If you are trying to deserialize plain JSON data, set \
                     schemas.enable=false in your converter configuration."
                        .into(),
                ));
            }
        };
        let schema = match &envelope["schema"] {
            Json::Null => None,
            schema => Some(parse_schema(schema)?),
        };
        let value = match &schema {
            Some(schema) => value_with_schema(schema, &envelope["payload"])?,
            None => schemaless_value(&envelope["payload"]),
        };
        Ok(SchemaAndValue::new(schema, value))
    }
}

fn write_json_string(out: &mut String, text: &str) {
    // serde_json escapes exactly as JSON requires; a &str cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into()));
}

/// A schema as Kafka's `asJsonSchema` writes it: type, then the type's
/// parts, then optional, name, version, doc and parameters, in that order.
fn write_schema(out: &mut String, schema: &Schema) {
    out.push_str("{\"type\":");
    write_json_string(out, schema.schema_type.json_name());
    match schema.schema_type {
        SchemaType::Struct => {
            out.push_str(",\"fields\":[");
            for (index, field) in schema.fields.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                // A field's schema with its name added last.
                let mut field_json = String::new();
                write_schema(&mut field_json, &field.schema);
                field_json.pop();
                out.push_str(&field_json);
                out.push_str(",\"field\":");
                write_json_string(out, &field.name);
                out.push('}');
            }
            out.push(']');
        }
        SchemaType::Array => {
            out.push_str(",\"items\":");
            write_optional_schema(out, schema.value_schema.as_deref());
        }
        SchemaType::Map => {
            out.push_str(",\"keys\":");
            write_optional_schema(out, schema.key_schema.as_deref());
            out.push_str(",\"values\":");
            write_optional_schema(out, schema.value_schema.as_deref());
        }
        _ => {}
    }
    let _ = write!(out, ",\"optional\":{}", schema.optional);
    if let Some(name) = &schema.name {
        out.push_str(",\"name\":");
        write_json_string(out, name);
    }
    if let Some(version) = schema.version {
        let _ = write!(out, ",\"version\":{version}");
    }
    if let Some(doc) = &schema.doc {
        out.push_str(",\"doc\":");
        write_json_string(out, doc);
    }
    if !schema.parameters.is_empty() {
        out.push_str(",\"parameters\":{");
        for (index, (key, value)) in schema.parameters.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            write_json_string(out, key);
            out.push(':');
            write_json_string(out, value);
        }
        out.push('}');
    }
    out.push('}');
}

fn write_optional_schema(out: &mut String, schema: Option<&Schema>) {
    match schema {
        Some(schema) => write_schema(out, schema),
        None => out.push_str("null"),
    }
}

fn write_float(out: &mut String, value: f64) -> Result<()> {
    match serde_json::Number::from_f64(value) {
        Some(number) => {
            out.push_str(&number.to_string());
            Ok(())
        }
        None => Err(ConnectError::Data(format!("{value} cannot be written as JSON"))),
    }
}

/// A value as JSON text without a schema, as JsonConverter with
/// `schemas.enable=false` writes it (the PostgreSQL sink's JSONB columns).
pub(crate) fn schemaless_json(value: &Value) -> Result<String> {
    let mut out = String::new();
    write_value(&mut out, None, value)?;
    Ok(out)
}

/// A value as JSON, checked against its schema when there is one.
fn write_value(out: &mut String, schema: Option<&Schema>, value: &Value) -> Result<()> {
    if let Some(schema) = schema {
        check_type(schema, value)?;
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Boolean(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Int8(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Int16(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Int32(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Int64(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Float32(v) => write_float(out, f64::from(*v))?,
        Value::Float64(v) => write_float(out, *v)?,
        Value::String(v) => write_json_string(out, v),
        Value::Bytes(v) => write_json_string(out, &base64::engine::general_purpose::STANDARD.encode(v)),
        Value::Array(items) => {
            let item_schema = schema.and_then(|s| s.value_schema.as_deref());
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, item_schema, item)?;
            }
            out.push(']');
        }
        Value::Map(entries) => write_map(out, schema, entries)?,
        Value::Struct(fields) => {
            out.push('{');
            for (index, (name, field_value)) in fields.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                let field_schema = schema.and_then(|s| s.fields.iter().find(|f| &f.name == name)).map(|f| &f.schema);
                if schema.is_some() && field_schema.is_none() {
                    return Err(ConnectError::Data(format!("{name} is not a valid field name")));
                }
                write_json_string(out, name);
                out.push(':');
                write_value(out, field_schema, field_value)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// A map with string keys is a JSON object; any other, as Kafka writes
/// it, an array of `[key, value]` pairs.
fn write_map(out: &mut String, schema: Option<&Schema>, entries: &[(Value, Value)]) -> Result<()> {
    let key_schema = schema.and_then(|s| s.key_schema.as_deref());
    let value_schema = schema.and_then(|s| s.value_schema.as_deref());
    let object_keys = match key_schema {
        Some(key_schema) => key_schema.schema_type == SchemaType::String,
        None => entries.iter().all(|(key, _)| matches!(key, Value::String(_))),
    };
    out.push(if object_keys { '{' } else { '[' });
    for (index, (key, value)) in entries.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        if object_keys {
            match key {
                Value::String(key) => write_json_string(out, key),
                other => return Err(ConnectError::Data(format!("map key {other:?} is not a string"))),
            }
            out.push(':');
            write_value(out, value_schema, value)?;
        } else {
            out.push('[');
            write_value(out, key_schema, key)?;
            out.push(',');
            write_value(out, value_schema, value)?;
            out.push(']');
        }
    }
    out.push(if object_keys { '}' } else { ']' });
    Ok(())
}

fn check_type(schema: &Schema, value: &Value) -> Result<()> {
    let fits = match (schema.schema_type, value) {
        (_, Value::Null) => {
            if schema.optional {
                true
            } else {
                return Err(ConnectError::Data(format!(
                    "conversion error: null value for a required {} field with no default",
                    schema.schema_type.json_name()
                )));
            }
        }
        (SchemaType::Int8, Value::Int8(_))
        | (SchemaType::Int16, Value::Int16(_))
        | (SchemaType::Int32, Value::Int32(_))
        | (SchemaType::Int64, Value::Int64(_))
        | (SchemaType::Float32, Value::Float32(_))
        | (SchemaType::Float64, Value::Float64(_))
        | (SchemaType::Boolean, Value::Boolean(_))
        | (SchemaType::String, Value::String(_))
        | (SchemaType::Bytes, Value::Bytes(_))
        | (SchemaType::Array, Value::Array(_))
        | (SchemaType::Map, Value::Map(_))
        | (SchemaType::Struct, Value::Struct(_)) => true,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(ConnectError::Data(format!(
            "value {value:?} does not match schema type {}",
            schema.schema_type.json_name()
        )))
    }
}

/// Kafka's `asConnectSchema`.
fn parse_schema(json: &Json) -> Result<Schema> {
    let object = json.as_object().ok_or_else(|| ConnectError::Data("a schema must be a JSON object".into()))?;
    let type_name = object
        .get("type")
        .and_then(Json::as_str)
        .ok_or_else(|| ConnectError::Data("schema must contain 'type' field".into()))?;
    let schema_type = SchemaType::from_json_name(type_name)
        .ok_or_else(|| ConnectError::Data(format!("unknown schema type: {type_name}")))?;
    let mut schema = Schema::new(schema_type);
    match schema_type {
        SchemaType::Struct => {
            let fields = object
                .get("fields")
                .and_then(Json::as_array)
                .ok_or_else(|| ConnectError::Data("struct schema's \"fields\" argument is not an array".into()))?;
            for field in fields {
                let name = field
                    .get("field")
                    .and_then(Json::as_str)
                    .ok_or_else(|| ConnectError::Data("struct schema's field name not specified properly".into()))?;
                schema.fields.push(Field { name: name.to_string(), schema: parse_schema(field)? });
            }
        }
        SchemaType::Array => {
            let items = object
                .get("items")
                .ok_or_else(|| ConnectError::Data("array schema did not specify the items type".into()))?;
            schema.value_schema = Some(Box::new(parse_schema(items)?));
        }
        SchemaType::Map => {
            let keys = object
                .get("keys")
                .ok_or_else(|| ConnectError::Data("map schema did not specify the key type".into()))?;
            let values = object
                .get("values")
                .ok_or_else(|| ConnectError::Data("map schema did not specify the value type".into()))?;
            schema.key_schema = Some(Box::new(parse_schema(keys)?));
            schema.value_schema = Some(Box::new(parse_schema(values)?));
        }
        _ => {}
    }
    schema.optional = object.get("optional").and_then(Json::as_bool).unwrap_or(false);
    schema.name = object.get("name").and_then(Json::as_str).map(str::to_string);
    schema.version = object.get("version").and_then(Json::as_i64).and_then(|v| i32::try_from(v).ok());
    schema.doc = object.get("doc").and_then(Json::as_str).map(str::to_string);
    if let Some(Json::Object(parameters)) = object.get("parameters") {
        for (key, value) in parameters {
            let value = value.as_str().ok_or_else(|| ConnectError::Data("schema parameters must be strings".into()))?;
            schema.parameters.insert(key.clone(), value.to_string());
        }
    }
    Ok(schema)
}

fn integer<T: TryFrom<i64>>(schema: &Schema, json: &Json) -> Result<T> {
    json.as_i64()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| ConnectError::Data(format!("invalid JSON for {} type: {json}", schema.schema_type.json_name())))
}

/// Kafka's `convertToConnect` with a schema.
fn value_with_schema(schema: &Schema, json: &Json) -> Result<Value> {
    if json.is_null() {
        return if schema.optional {
            Ok(Value::Null)
        } else {
            Err(ConnectError::Data(format!("invalid null value for required {} field", schema.schema_type.json_name())))
        };
    }
    let mismatch = || ConnectError::Data(format!("invalid JSON for {} type: {json}", schema.schema_type.json_name()));
    Ok(match schema.schema_type {
        SchemaType::Int8 => Value::Int8(integer(schema, json)?),
        SchemaType::Int16 => Value::Int16(integer(schema, json)?),
        SchemaType::Int32 => Value::Int32(integer(schema, json)?),
        SchemaType::Int64 => Value::Int64(integer(schema, json)?),
        #[allow(clippy::cast_possible_truncation)] // float is 32 bits by definition
        SchemaType::Float32 => Value::Float32(json.as_f64().ok_or_else(mismatch)? as f32),
        SchemaType::Float64 => Value::Float64(json.as_f64().ok_or_else(mismatch)?),
        SchemaType::Boolean => Value::Boolean(json.as_bool().ok_or_else(mismatch)?),
        SchemaType::String => Value::String(json.as_str().ok_or_else(mismatch)?.to_string()),
        SchemaType::Bytes => {
            let text = json.as_str().ok_or_else(mismatch)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| ConnectError::Data(format!("invalid base64 for bytes type: {e}")))?;
            Value::Bytes(Bytes::from(bytes))
        }
        SchemaType::Array => {
            let items_schema = schema.value_schema.as_deref().ok_or_else(mismatch)?;
            let items = json.as_array().ok_or_else(mismatch)?;
            Value::Array(items.iter().map(|item| value_with_schema(items_schema, item)).collect::<Result<_>>()?)
        }
        SchemaType::Map => {
            let (Some(key_schema), Some(value_schema)) = (schema.key_schema.as_deref(), schema.value_schema.as_deref())
            else {
                return Err(mismatch());
            };
            match json {
                Json::Object(entries) if key_schema.schema_type == SchemaType::String => Value::Map(
                    entries
                        .iter()
                        .map(|(k, v)| Ok((Value::String(k.clone()), value_with_schema(value_schema, v)?)))
                        .collect::<Result<_>>()?,
                ),
                Json::Array(pairs) => Value::Map(
                    pairs
                        .iter()
                        .map(|pair| match pair.as_array().map(Vec::as_slice) {
                            Some([k, v]) => {
                                Ok((value_with_schema(key_schema, k)?, value_with_schema(value_schema, v)?))
                            }
                            _ => Err(ConnectError::Data("a map entry must be a [key, value] array".into())),
                        })
                        .collect::<Result<_>>()?,
                ),
                _ => return Err(mismatch()),
            }
        }
        SchemaType::Struct => {
            let object = json.as_object().ok_or_else(mismatch)?;
            Value::Struct(
                schema
                    .fields
                    .iter()
                    .map(|field| {
                        let value = object.get(&field.name).unwrap_or(&Json::Null);
                        Ok((field.name.clone(), value_with_schema(&field.schema, value)?))
                    })
                    .collect::<Result<_>>()?,
            )
        }
    })
}

/// Kafka's schemaless `convertToConnect`: integers are int64, other
/// numbers double, objects maps with string keys.
fn schemaless_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(v) => Value::Boolean(*v),
        Json::Number(n) => match n.as_i64() {
            Some(v) => Value::Int64(v),
            None => Value::Float64(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(v) => Value::String(v.clone()),
        Json::Array(items) => Value::Array(items.iter().map(schemaless_value).collect()),
        Json::Object(entries) => {
            Value::Map(entries.iter().map(|(k, v)| (Value::String(k.clone()), schemaless_value(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(schemas_enable: bool) -> JsonConverter {
        JsonConverter { schemas_enable }
    }

    fn text(bytes: Option<Bytes>) -> String {
        String::from_utf8(bytes.expect("not null").to_vec()).expect("utf-8")
    }

    #[test]
    fn json_with_schemas_writes_kafkas_envelope_for_a_file_source_line() {
        let line = SchemaAndValue::string("hello \"world\"");
        let bytes = json(true).from_connect_data("t", &line).expect("converts");
        assert_eq!(text(bytes.clone()), r#"{"schema":{"type":"string","optional":false},"payload":"hello \"world\""}"#);
        let back = json(true).to_connect_data("t", bytes.as_deref()).expect("reads back");
        assert_eq!(back, line);
        // A null key with no schema is a null record, not the text null.
        assert_eq!(json(true).from_connect_data("t", &SchemaAndValue::NULL).expect("null"), None);
    }

    #[test]
    fn json_struct_schema_has_kafkas_field_order_and_round_trips() {
        let schema = Schema::structure(vec![
            Field { name: "id".into(), schema: Schema::new(SchemaType::Int32) },
            Field { name: "tags".into(), schema: Schema::array(Schema::string()).optional() },
            Field { name: "raw".into(), schema: Schema::new(SchemaType::Bytes).optional() },
        ]);
        let value = Value::Struct(vec![
            ("id".into(), Value::Int32(7)),
            ("tags".into(), Value::Array(vec![Value::String("a".into())])),
            ("raw".into(), Value::Bytes(Bytes::from_static(b"\x00\x01"))),
        ]);
        let data = SchemaAndValue::new(Some(schema), value);
        let bytes = json(true).from_connect_data("t", &data).expect("converts");
        assert_eq!(
            text(bytes.clone()),
            concat!(
                r#"{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"},"#,
                r#"{"type":"array","items":{"type":"string","optional":false},"optional":true,"field":"tags"},"#,
                r#"{"type":"bytes","optional":true,"field":"raw"}],"optional":false},"#,
                r#""payload":{"id":7,"tags":["a"],"raw":"AAE="}}"#
            )
        );
        assert_eq!(json(true).to_connect_data("t", bytes.as_deref()).expect("reads back"), data);
    }

    #[test]
    fn json_without_schemas_reads_and_writes_plain_json() {
        let read = json(false).to_connect_data("t", Some(br#"{"a":1,"b":[true,2.5,"x"]}"#)).expect("plain json");
        assert_eq!(read.schema, None);
        assert_eq!(
            read.value,
            Value::Map(vec![
                (Value::String("a".into()), Value::Int64(1)),
                (
                    Value::String("b".into()),
                    Value::Array(vec![Value::Boolean(true), Value::Float64(2.5), Value::String("x".into())])
                ),
            ])
        );
        assert_eq!(text(json(false).from_connect_data("t", &read).expect("writes")), r#"{"a":1,"b":[true,2.5,"x"]}"#);
        assert_eq!(text(json(false).from_connect_data("t", &SchemaAndValue::string("x")).expect("s")), r#""x""#);
    }

    #[test]
    fn records_a_converter_cannot_read_are_data_errors() {
        // Plain JSON under schemas.enable=true: Kafka's message, telling the fix.
        let error = json(true).to_connect_data("t", Some(br#"{"a":1}"#)).expect_err("no envelope");
        assert!(matches!(&error, ConnectError::Data(why) if why.contains("schemas.enable=false")), "{error}");
        assert!(matches!(json(false).to_connect_data("t", Some(b"{not json")), Err(ConnectError::Data(_))));
        let wrong = br#"{"schema":{"type":"int8","optional":false},"payload":300}"#;
        assert!(matches!(json(true).to_connect_data("t", Some(wrong)), Err(ConnectError::Data(_))));
        let no_type = br#"{"schema":{"optional":false},"payload":1}"#;
        assert!(matches!(json(true).to_connect_data("t", Some(no_type)), Err(ConnectError::Data(_))));
        let required_null = br#"{"schema":{"type":"string","optional":false},"payload":null}"#;
        assert!(matches!(json(true).to_connect_data("t", Some(required_null)), Err(ConnectError::Data(_))));
        let mismatched = SchemaAndValue::new(Some(Schema::string()), Value::Int32(1));
        assert!(matches!(json(true).from_connect_data("t", &mismatched), Err(ConnectError::Data(_))));
        let not_bytes = SchemaAndValue::string("x");
        assert!(matches!(ByteArrayConverter.from_connect_data("t", &not_bytes), Err(ConnectError::Data(_))));
    }

    #[test]
    fn string_and_byte_array_converters_pass_text_and_bytes_through() {
        let read = StringConverter.to_connect_data("t", Some("héllo".as_bytes())).expect("text");
        assert_eq!(read.value, Value::String("héllo".into()));
        assert_eq!(StringConverter.from_connect_data("t", &read).expect("back").as_deref(), Some("héllo".as_bytes()));
        assert_eq!(StringConverter.from_connect_data("t", &SchemaAndValue::NULL).expect("null"), None);
        let raw = ByteArrayConverter.to_connect_data("t", Some(&[0xff, 0x00])).expect("bytes");
        assert_eq!(ByteArrayConverter.from_connect_data("t", &raw).expect("back").as_deref(), Some(&[0xff, 0x00][..]));
    }

    #[test]
    fn converters_are_found_by_kafkas_class_names_and_short_names() {
        let props = Props::from([("schemas.enable".to_string(), "false".to_string())]);
        for class in [
            "org.apache.kafka.connect.storage.StringConverter",
            "StringConverter",
            "org.apache.kafka.connect.converters.ByteArrayConverter",
            "ByteArrayConverter",
            "org.apache.kafka.connect.json.JsonConverter",
            "JsonConverter",
        ] {
            converter_for(class, &props).expect(class);
        }
        let plain = converter_for("JsonConverter", &props).expect("json");
        assert_eq!(
            plain.from_connect_data("t", &SchemaAndValue::string("a")).expect("a").as_deref(),
            Some(&b"\"a\""[..])
        );
        assert!(matches!(
            converter_for("io.confluent.connect.avro.AvroConverter", &props),
            Err(ConnectError::Config(_))
        ));
        let bad = Props::from([("schemas.enable".to_string(), "yes".to_string())]);
        assert!(matches!(converter_for("JsonConverter", &bad), Err(ConnectError::Config(_))));
    }
}
