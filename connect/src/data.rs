//! Connect's data model: a value and, when known, its schema, as Kafka
//! Connect's `Schema`, `Struct` and `SchemaAndValue`.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaType {
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Boolean,
    String,
    Bytes,
    Array,
    Map,
    Struct,
}

impl SchemaType {
    /// The name Kafka's JsonConverter writes in `"type"`.
    pub fn json_name(self) -> &'static str {
        match self {
            SchemaType::Int8 => "int8",
            SchemaType::Int16 => "int16",
            SchemaType::Int32 => "int32",
            SchemaType::Int64 => "int64",
            SchemaType::Float32 => "float",
            SchemaType::Float64 => "double",
            SchemaType::Boolean => "boolean",
            SchemaType::String => "string",
            SchemaType::Bytes => "bytes",
            SchemaType::Array => "array",
            SchemaType::Map => "map",
            SchemaType::Struct => "struct",
        }
    }

    pub fn from_json_name(name: &str) -> Option<SchemaType> {
        Some(match name {
            "int8" => SchemaType::Int8,
            "int16" => SchemaType::Int16,
            "int32" => SchemaType::Int32,
            "int64" => SchemaType::Int64,
            "float" => SchemaType::Float32,
            "double" => SchemaType::Float64,
            "boolean" => SchemaType::Boolean,
            "string" => SchemaType::String,
            "bytes" => SchemaType::Bytes,
            "array" => SchemaType::Array,
            "map" => SchemaType::Map,
            "struct" => SchemaType::Struct,
            _ => return None,
        })
    }
}

/// A schema. `value_schema` is an array's items or a map's values;
/// `key_schema` a map's keys; `fields` a struct's.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub schema_type: SchemaType,
    pub optional: bool,
    pub name: Option<String>,
    pub version: Option<i32>,
    pub doc: Option<String>,
    pub parameters: BTreeMap<String, String>,
    pub fields: Vec<Field>,
    pub key_schema: Option<Box<Schema>>,
    pub value_schema: Option<Box<Schema>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub schema: Schema,
}

impl Schema {
    pub fn new(schema_type: SchemaType) -> Schema {
        Schema {
            schema_type,
            optional: false,
            name: None,
            version: None,
            doc: None,
            parameters: BTreeMap::new(),
            fields: Vec::new(),
            key_schema: None,
            value_schema: None,
        }
    }

    #[must_use]
    pub fn optional(mut self) -> Schema {
        self.optional = true;
        self
    }

    /// Kafka's `Schema.STRING_SCHEMA`.
    pub fn string() -> Schema {
        Schema::new(SchemaType::String)
    }

    pub fn array(items: Schema) -> Schema {
        Schema { value_schema: Some(Box::new(items)), ..Schema::new(SchemaType::Array) }
    }

    pub fn map(keys: Schema, values: Schema) -> Schema {
        Schema {
            key_schema: Some(Box::new(keys)),
            value_schema: Some(Box::new(values)),
            ..Schema::new(SchemaType::Map)
        }
    }

    pub fn structure(fields: Vec<Field>) -> Schema {
        Schema { fields, ..Schema::new(SchemaType::Struct) }
    }
}

/// A value; `Map` keeps its entries' order, `Struct` its fields' order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Int8(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    String(String),
    Bytes(Bytes),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Struct(Vec<(String, Value)>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A struct's field by name.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(fields) => fields.iter().find(|(field, _)| field == name).map(|(_, value)| value),
            _ => None,
        }
    }
}

/// Text as Java's `toString` gives it, which is what Kafka's
/// StringConverter and FileStreamSink write: a string as itself, a struct
/// as `Struct{a=1,b=x}`, a map as `{k=v, k2=v2}`, a list as `[a, b]`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Boolean(v) => write!(f, "{v}"),
            Value::Int8(v) => write!(f, "{v}"),
            Value::Int16(v) => write!(f, "{v}"),
            Value::Int32(v) => write!(f, "{v}"),
            Value::Int64(v) => write!(f, "{v}"),
            Value::Float32(v) => write!(f, "{v:?}"),
            Value::Float64(v) => write!(f, "{v:?}"),
            Value::String(v) => f.write_str(v),
            // Not Java's `[B@1a2b3c`, which no one can use: the bytes as
            // text where they are text.
            Value::Bytes(v) => f.write_str(&String::from_utf8_lossy(v)),
            Value::Array(items) => {
                f.write_str("[")?;
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Map(entries) => {
                f.write_str("{")?;
                for (index, (key, value)) in entries.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{key}={value}")?;
                }
                f.write_str("}")
            }
            Value::Struct(fields) => {
                f.write_str("Struct{")?;
                let mut first = true;
                // Java's Struct.toString leaves out null fields.
                for (name, value) in fields.iter().filter(|(_, value)| !value.is_null()) {
                    if !first {
                        f.write_str(",")?;
                    }
                    first = false;
                    write!(f, "{name}={value}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// A value with its schema (None: schemaless).
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaAndValue {
    pub schema: Option<Schema>,
    pub value: Value,
}

impl SchemaAndValue {
    /// Kafka's `SchemaAndValue.NULL`.
    pub const NULL: SchemaAndValue = SchemaAndValue { schema: None, value: Value::Null };

    pub fn new(schema: Option<Schema>, value: Value) -> SchemaAndValue {
        SchemaAndValue { schema, value }
    }

    pub fn string(text: impl Into<String>) -> SchemaAndValue {
        SchemaAndValue { schema: Some(Schema::string()), value: Value::String(text.into()) }
    }
}
