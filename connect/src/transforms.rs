//! Single message transforms under Kafka's class names, and predicates
//! that choose which records a transform applies to:
//!
//! - `org.apache.kafka.connect.transforms.InsertField$Key` / `$Value`
//! - `org.apache.kafka.connect.transforms.ReplaceField$Key` / `$Value`
//! - `org.apache.kafka.connect.transforms.Filter`
//! - `org.apache.kafka.connect.transforms.RegexRouter`
//! - `org.apache.kafka.connect.transforms.ValueToKey`
//! - `org.apache.kafka.connect.transforms.TimestampConverter$Key` / `$Value`
//!   (`timestamp.rs`)
//! - predicates `TopicNameMatches`, `HasHeaderKey`, `RecordIsTombstone`
//!
//! Configured as Kafka's: `transforms=a,b`, `transforms.a.type=CLASS`,
//! `transforms.a.KEY=...`, `transforms.a.predicate=p`,
//! `transforms.a.negate=true`, `predicates=p`, `predicates.p.type=CLASS`.
//! The package prefix may be left out (`InsertField$Value`).

use regex::Regex;

use crate::converter::with_prefix;
use crate::data::{Field, Schema, SchemaAndValue, SchemaType, Value};
use crate::error::{ConnectError, Result};
use crate::props::Props;
use crate::record::ConnectRecord;

const TRANSFORMS_PACKAGE: &str = "org.apache.kafka.connect.transforms.";
const PREDICATES_PACKAGE: &str = "org.apache.kafka.connect.transforms.predicates.";
use crate::timestamp::TIMESTAMP_SCHEMA_NAME;

/// Changes a record, or drops it (None).
pub trait Transformation: Send + Sync + std::fmt::Debug {
    /// `kafka_offset` is the record's offset on the sink side (None for
    /// sources).
    fn apply(&self, record: ConnectRecord, kafka_offset: Option<i64>) -> Result<Option<ConnectRecord>>;
}

/// Says whether a transform applies to a record.
pub trait Predicate: Send + Sync + std::fmt::Debug {
    fn test(&self, record: &ConnectRecord) -> bool;
}

#[derive(Debug)]
struct Step {
    alias: String,
    transform: Box<dyn Transformation>,
    predicate: Option<(std::sync::Arc<dyn Predicate>, bool)>,
}

/// A connector's transforms, in order.
#[derive(Debug, Default)]
pub struct TransformChain {
    steps: Vec<Step>,
}

fn list(value: Option<&String>) -> Vec<String> {
    value.map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default()
}

fn class_name<'a>(class: &'a str, package: &str) -> &'a str {
    class.trim().strip_prefix(package).unwrap_or(class.trim())
}

fn required_key<'a>(props: &'a Props, key: &str, what: &str) -> Result<&'a str> {
    props
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ConnectError::Config(format!("{what}: missing required configuration \"{key}\"")))
}

/// A Java regular expression's full match, in Rust's dialect (the common
/// subset is the same).
fn full_match_regex(pattern: &str, what: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| ConnectError::Config(format!("{what}: invalid regular expression {pattern:?}: {e}")))
}

impl TransformChain {
    /// Builds the chain a connector config describes; a clear `Config`
    /// error for an unknown class or a missing key.
    pub fn from_config(config: &Props) -> Result<TransformChain> {
        let predicates = build_predicates(config)?;
        let mut steps = Vec::new();
        for alias in list(config.get("transforms")) {
            let props = with_prefix(config, &format!("transforms.{alias}"));
            let what = format!("transform {alias}");
            let class = required_key(&props, "type", &what)?;
            let transform = build_transform(class, &props, &what)?;
            let predicate = match props.get("predicate").map(|p| p.trim()).filter(|p| !p.is_empty()) {
                None => None,
                Some(name) => {
                    let found =
                        predicates.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone()).ok_or_else(|| {
                            ConnectError::Config(format!("{what}: predicate {name} is not listed in predicates"))
                        })?;
                    let negate = match props.get("negate").map(|n| n.trim().to_ascii_lowercase()) {
                        None => false,
                        Some(n) if n == "true" => true,
                        Some(n) if n == "false" => false,
                        Some(n) => {
                            return Err(ConnectError::Config(format!("{what}: negate must be true or false, not {n}")));
                        }
                    };
                    Some((found, negate))
                }
            };
            steps.push(Step { alias, transform, predicate });
        }
        Ok(TransformChain { steps })
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs every transform in order; None once one drops the record.
    pub fn apply(&self, mut record: ConnectRecord, kafka_offset: Option<i64>) -> Result<Option<ConnectRecord>> {
        for step in &self.steps {
            if let Some((predicate, negate)) = &step.predicate
                && predicate.test(&record) == *negate
            {
                continue;
            }
            match step.transform.apply(record, kafka_offset) {
                Ok(Some(next)) => record = next,
                Ok(None) => return Ok(None),
                Err(ConnectError::Data(why)) => {
                    return Err(ConnectError::Data(format!("transform {}: {why}", step.alias)));
                }
                Err(other) => return Err(other),
            }
        }
        Ok(Some(record))
    }
}

fn build_predicates(config: &Props) -> Result<Vec<(String, std::sync::Arc<dyn Predicate>)>> {
    let mut predicates: Vec<(String, std::sync::Arc<dyn Predicate>)> = Vec::new();
    for name in list(config.get("predicates")) {
        let props = with_prefix(config, &format!("predicates.{name}"));
        let what = format!("predicate {name}");
        let class = required_key(&props, "type", &what)?;
        let predicate: std::sync::Arc<dyn Predicate> = match class_name(class, PREDICATES_PACKAGE) {
            "TopicNameMatches" => std::sync::Arc::new(TopicNameMatches {
                pattern: full_match_regex(required_key(&props, "pattern", &what)?, &what)?,
            }),
            "HasHeaderKey" => {
                std::sync::Arc::new(HasHeaderKey { name: required_key(&props, "name", &what)?.to_string() })
            }
            "RecordIsTombstone" => std::sync::Arc::new(RecordIsTombstone),
            other => {
                return Err(ConnectError::Config(format!(
                    "{what}: unknown predicate class {other}: TopicNameMatches, HasHeaderKey and RecordIsTombstone are available"
                )));
            }
        };
        predicates.push((name, predicate));
    }
    Ok(predicates)
}

fn build_transform(class: &str, props: &Props, what: &str) -> Result<Box<dyn Transformation>> {
    let name = class_name(class, TRANSFORMS_PACKAGE);
    let (base, target) = match name.split_once('$') {
        Some((base, "Key")) => (base, Some(Target::Key)),
        Some((base, "Value")) => (base, Some(Target::Value)),
        Some(_) => (name, None),
        None => (name, None),
    };
    let needs_target = |target: Option<Target>| {
        target.ok_or_else(|| ConnectError::Config(format!("{what}: {base} needs $Key or $Value ({class})")))
    };
    Ok(match base {
        "InsertField" => Box::new(InsertField::new(needs_target(target)?, props, what)?),
        "ReplaceField" => Box::new(ReplaceField::new(needs_target(target)?, props)),
        "Filter" if target.is_none() => Box::new(Filter),
        "RegexRouter" if target.is_none() => Box::new(RegexRouter::new(props, what)?),
        "ValueToKey" if target.is_none() => Box::new(ValueToKey::new(props, what)?),
        "TimestampConverter" => {
            Box::new(crate::timestamp::TimestampConverter::new(needs_target(target)? == Target::Key, props, what)?)
        }
        _ => {
            return Err(ConnectError::Config(format!(
                "{what}: unknown transform class {class}: InsertField$Key/$Value, ReplaceField$Key/$Value, \
                 TimestampConverter$Key/$Value, Filter, RegexRouter and ValueToKey are available"
            )));
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Key,
    Value,
}

impl Target {
    fn get(self, record: &mut ConnectRecord) -> &mut SchemaAndValue {
        match self {
            Target::Key => &mut record.key,
            Target::Value => &mut record.value,
        }
    }
}

/// Kafka's field-name suffixes: `name!` required, `name?` (or plain)
/// optional.
#[derive(Debug, Clone)]
struct FieldSpec {
    name: String,
    optional: bool,
}

impl FieldSpec {
    fn parse(props: &Props, key: &str) -> Option<FieldSpec> {
        let raw = props.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())?;
        Some(match (raw.strip_suffix('!'), raw.strip_suffix('?')) {
            (Some(name), _) => FieldSpec { name: name.to_string(), optional: false },
            (_, Some(name)) => FieldSpec { name: name.to_string(), optional: true },
            _ => FieldSpec { name: raw.to_string(), optional: true },
        })
    }

    fn schema(&self, schema_type: SchemaType, name: Option<&str>) -> Schema {
        let mut schema = Schema::new(schema_type);
        schema.optional = self.optional;
        if let Some(name) = name {
            schema.name = Some(name.to_string());
            schema.version = Some(1);
        }
        schema
    }
}

/// Kafka's InsertField: adds the record's topic, partition, offset,
/// timestamp and/or a static value as fields of a struct (or entries of a
/// schemaless map). A tombstone passes through.
#[derive(Debug)]
struct InsertField {
    target: Target,
    topic: Option<FieldSpec>,
    partition: Option<FieldSpec>,
    offset: Option<FieldSpec>,
    timestamp: Option<FieldSpec>,
    static_field: Option<(FieldSpec, String)>,
}

impl InsertField {
    fn new(target: Target, props: &Props, what: &str) -> Result<InsertField> {
        let static_field = FieldSpec::parse(props, "static.field")
            .map(|f| (f, props.get("static.value").cloned().unwrap_or_default()));
        let insert = InsertField {
            target,
            topic: FieldSpec::parse(props, "topic.field"),
            partition: FieldSpec::parse(props, "partition.field"),
            offset: FieldSpec::parse(props, "offset.field"),
            timestamp: FieldSpec::parse(props, "timestamp.field"),
            static_field,
        };
        if insert.topic.is_none()
            && insert.partition.is_none()
            && insert.offset.is_none()
            && insert.timestamp.is_none()
            && insert.static_field.is_none()
        {
            return Err(ConnectError::Config(format!("{what}: InsertField names no field to insert")));
        }
        Ok(insert)
    }

    /// The fields to add: spec, schema and value.
    fn additions(&self, record: &ConnectRecord, kafka_offset: Option<i64>) -> Vec<(FieldSpec, Schema, Value)> {
        let mut out = Vec::new();
        let or_null = |value: Option<Value>| value.unwrap_or(Value::Null);
        if let Some(spec) = &self.topic {
            out.push((spec.clone(), spec.schema(SchemaType::String, None), Value::String(record.topic.clone())));
        }
        if let Some(spec) = &self.partition {
            out.push((
                spec.clone(),
                spec.schema(SchemaType::Int32, None),
                or_null(record.kafka_partition.map(Value::Int32)),
            ));
        }
        if let Some(spec) = &self.offset {
            out.push((spec.clone(), spec.schema(SchemaType::Int64, None), or_null(kafka_offset.map(Value::Int64))));
        }
        if let Some(spec) = &self.timestamp {
            let schema = spec.schema(SchemaType::Int64, Some(TIMESTAMP_SCHEMA_NAME));
            out.push((spec.clone(), schema, or_null(record.timestamp_ms.map(Value::Int64))));
        }
        if let Some((spec, value)) = &self.static_field {
            out.push((spec.clone(), spec.schema(SchemaType::String, None), Value::String(value.clone())));
        }
        out
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int8(_) | Value::Int16(_) | Value::Int32(_) | Value::Int64(_) => "integer",
        Value::Float32(_) | Value::Float64(_) => "number",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Struct(_) => "struct",
    }
}

impl Transformation for InsertField {
    fn apply(&self, mut record: ConnectRecord, kafka_offset: Option<i64>) -> Result<Option<ConnectRecord>> {
        let additions = self.additions(&record, kafka_offset);
        let target = self.target.get(&mut record);
        if target.value.is_null() {
            return Ok(Some(record));
        }
        match (&mut target.schema, &mut target.value) {
            (None, Value::Map(entries)) => {
                for (spec, _, value) in additions {
                    entries.push((Value::String(spec.name), value));
                }
            }
            (Some(schema), Value::Struct(fields)) if schema.schema_type == SchemaType::Struct => {
                for (spec, field_schema, value) in additions {
                    if !spec.optional && value.is_null() {
                        return Err(ConnectError::Data(format!("required field {} has no value", spec.name)));
                    }
                    schema.fields.push(Field { name: spec.name.clone(), schema: field_schema });
                    fields.push((spec.name, value));
                }
            }
            (None, other) => {
                return Err(ConnectError::Data(format!(
                    "only Map objects supported in absence of schema for [field insertion], found: {}",
                    type_name(other)
                )));
            }
            (Some(_), other) => {
                return Err(ConnectError::Data(format!(
                    "only Struct objects supported for [field insertion], found: {}",
                    type_name(other)
                )));
            }
        }
        Ok(Some(record))
    }
}

/// Kafka's ReplaceField: keeps (`include`), drops (`exclude`) and renames
/// (`renames=old:new,...`) fields of a struct or a schemaless map.
#[derive(Debug)]
struct ReplaceField {
    target: Target,
    include: Vec<String>,
    exclude: Vec<String>,
    renames: Vec<(String, String)>,
}

impl ReplaceField {
    fn new(target: Target, props: &Props) -> ReplaceField {
        // Kafka's older names, whitelist and blacklist, still read.
        let include = list(props.get("include").or(props.get("whitelist")));
        let exclude = list(props.get("exclude").or(props.get("blacklist")));
        let renames = list(props.get("renames"))
            .iter()
            .filter_map(|pair| pair.split_once(':').map(|(from, to)| (from.trim().to_string(), to.trim().to_string())))
            .collect();
        ReplaceField { target, include, exclude, renames }
    }

    fn keeps(&self, name: &str) -> bool {
        !self.exclude.iter().any(|e| e == name) && (self.include.is_empty() || self.include.iter().any(|i| i == name))
    }

    fn renamed(&self, name: &str) -> String {
        self.renames.iter().find(|(from, _)| from == name).map_or_else(|| name.to_string(), |(_, to)| to.clone())
    }
}

impl Transformation for ReplaceField {
    fn apply(&self, mut record: ConnectRecord, _kafka_offset: Option<i64>) -> Result<Option<ConnectRecord>> {
        let target = self.target.get(&mut record);
        if target.value.is_null() {
            return Ok(Some(record));
        }
        match (&mut target.schema, &mut target.value) {
            (None, Value::Map(entries)) => {
                let kept = std::mem::take(entries).into_iter().filter_map(|(key, value)| match key {
                    Value::String(name) if !self.keeps(&name) => None,
                    Value::String(name) => Some((Value::String(self.renamed(&name)), value)),
                    other => Some((other, value)),
                });
                *entries = kept.collect();
            }
            (Some(schema), Value::Struct(fields)) if schema.schema_type == SchemaType::Struct => {
                schema.fields = std::mem::take(&mut schema.fields)
                    .into_iter()
                    .filter(|f| self.keeps(&f.name))
                    .map(|f| Field { name: self.renamed(&f.name), schema: f.schema })
                    .collect();
                *fields = std::mem::take(fields)
                    .into_iter()
                    .filter(|(name, _)| self.keeps(name))
                    .map(|(name, value)| (self.renamed(&name), value))
                    .collect();
            }
            (_, other) => {
                return Err(ConnectError::Data(format!(
                    "only Struct or schemaless Map objects supported for [field replacement], found: {}",
                    type_name(other)
                )));
            }
        }
        Ok(Some(record))
    }
}

/// Kafka's Filter: drops every record it is applied to (with a predicate,
/// the ones that match).
#[derive(Debug)]
struct Filter;

impl Transformation for Filter {
    fn apply(&self, _record: ConnectRecord, _kafka_offset: Option<i64>) -> Result<Option<ConnectRecord>> {
        Ok(None)
    }
}

/// Kafka's ValueToKey: the key becomes the value's `fields`, a struct
/// (with its schema) of a struct value, a map of a schemaless one (a field
/// the map lacks is null there, as Kafka's). Any other value, a tombstone
/// too, is refused as Kafka refuses it.
#[derive(Debug)]
struct ValueToKey {
    fields: Vec<String>,
}

impl ValueToKey {
    fn new(props: &Props, what: &str) -> Result<ValueToKey> {
        let fields = list(Some(&required_key(props, "fields", what)?.to_string()));
        Ok(ValueToKey { fields })
    }
}

impl Transformation for ValueToKey {
    fn apply(&self, mut record: ConnectRecord, _kafka_offset: Option<i64>) -> Result<Option<ConnectRecord>> {
        record.key = match (&record.value.schema, &record.value.value) {
            (None, Value::Map(entries)) => {
                let value_of = |name: &str| {
                    entries.iter().find(|(k, _)| matches!(k, Value::String(k) if k == name)).map(|(_, v)| v.clone())
                };
                let key = self
                    .fields
                    .iter()
                    .map(|f| (Value::String(f.clone()), value_of(f).unwrap_or(Value::Null)))
                    .collect();
                SchemaAndValue::new(None, Value::Map(key))
            }
            (Some(schema), Value::Struct(values)) if schema.schema_type == SchemaType::Struct => {
                let mut fields = Vec::with_capacity(self.fields.len());
                let mut key = Vec::with_capacity(self.fields.len());
                for name in &self.fields {
                    let field = schema.fields.iter().find(|f| &f.name == name);
                    let Some(field) = field else {
                        return Err(ConnectError::Data(format!("ValueToKey: the value has no field {name}")));
                    };
                    fields.push(field.clone());
                    let value = values.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
                    key.push((name.clone(), value.unwrap_or(Value::Null)));
                }
                SchemaAndValue::new(Some(Schema::structure(fields)), Value::Struct(key))
            }
            (_, other) => {
                return Err(ConnectError::Data(format!(
                    "ValueToKey needs a struct or a map value, not {}",
                    type_name(other)
                )));
            }
        };
        Ok(Some(record))
    }
}

/// Kafka's RegexRouter: a topic that matches `regex` whole becomes
/// `replacement`, with `$1`... naming its groups.
#[derive(Debug)]
struct RegexRouter {
    regex: Regex,
    replacement: String,
}

impl RegexRouter {
    fn new(props: &Props, what: &str) -> Result<RegexRouter> {
        let regex = full_match_regex(required_key(props, "regex", what)?, what)?;
        let replacement =
            java_replacement(props.get("replacement").ok_or_else(|| {
                ConnectError::Config(format!("{what}: missing required configuration \"replacement\""))
            })?);
        Ok(RegexRouter { regex, replacement })
    }
}

/// Java's `$1abc` is group 1 then `abc`; Rust reads `$1abc` as a group
/// named `1abc`, so groups are braced. `\$` is a literal dollar in both.
fn java_replacement(java: &str) -> String {
    let mut out = String::new();
    let mut chars = java.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(other) => out.push(other),
                None => {}
            },
            '$' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    out.push_str("$$");
                } else {
                    out.push_str(&format!("${{{digits}}}"));
                }
            }
            other => out.push(other),
        }
    }
    out
}

impl Transformation for RegexRouter {
    fn apply(&self, mut record: ConnectRecord, _kafka_offset: Option<i64>) -> Result<Option<ConnectRecord>> {
        if self.regex.is_match(&record.topic) {
            record.topic = self.regex.replace(&record.topic, self.replacement.as_str()).into_owned();
        }
        Ok(Some(record))
    }
}

#[derive(Debug)]
struct TopicNameMatches {
    pattern: Regex,
}

impl Predicate for TopicNameMatches {
    fn test(&self, record: &ConnectRecord) -> bool {
        self.pattern.is_match(&record.topic)
    }
}

#[derive(Debug)]
struct HasHeaderKey {
    name: String,
}

impl Predicate for HasHeaderKey {
    fn test(&self, record: &ConnectRecord) -> bool {
        record.headers.iter().any(|h| h.key == self.name)
    }
}

#[derive(Debug)]
struct RecordIsTombstone;

impl Predicate for RecordIsTombstone {
    fn test(&self, record: &ConnectRecord) -> bool {
        record.value.value.is_null()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::parse;

    fn chain(text: &str) -> TransformChain {
        TransformChain::from_config(&parse(text).expect("props")).expect("valid chain")
    }

    fn record(topic: &str, value: SchemaAndValue) -> ConnectRecord {
        let mut record = ConnectRecord::new(topic, SchemaAndValue::NULL, value);
        record.kafka_partition = Some(2);
        record.timestamp_ms = Some(1_700_000_000_000);
        record
    }

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(entries.iter().map(|(k, v)| (Value::String((*k).to_string()), v.clone())).collect())
    }

    #[test]
    fn insert_field_adds_topic_partition_offset_timestamp_and_a_static_value() {
        let chain = chain(
            "transforms=add\ntransforms.add.type=org.apache.kafka.connect.transforms.InsertField$Value\n\
             transforms.add.topic.field=t\ntransforms.add.partition.field=p\ntransforms.add.offset.field=o\n\
             transforms.add.timestamp.field=ts\ntransforms.add.static.field=source\ntransforms.add.static.value=file\n",
        );
        let schemaless = record("orders", SchemaAndValue::new(None, map(&[("id", Value::Int64(1))])));
        let out = chain.apply(schemaless, Some(42)).expect("applies").expect("kept");
        assert_eq!(
            out.value.value,
            map(&[
                ("id", Value::Int64(1)),
                ("t", Value::String("orders".into())),
                ("p", Value::Int32(2)),
                ("o", Value::Int64(42)),
                ("ts", Value::Int64(1_700_000_000_000)),
                ("source", Value::String("file".into())),
            ])
        );
        let schema = Schema::structure(vec![Field { name: "id".into(), schema: Schema::new(SchemaType::Int64) }]);
        let with_schema =
            record("orders", SchemaAndValue::new(Some(schema), Value::Struct(vec![("id".into(), Value::Int64(1))])));
        let out = chain.apply(with_schema, Some(42)).expect("applies").expect("kept");
        let out_schema = out.value.schema.expect("schema");
        let names: Vec<&str> = out_schema.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["id", "t", "p", "o", "ts", "source"]);
        assert_eq!(out_schema.fields[4].schema.name.as_deref(), Some(TIMESTAMP_SCHEMA_NAME));
        assert_eq!(out.value.value.field("o"), Some(&Value::Int64(42)));
        // A plain string cannot take fields: a data error naming the transform.
        let error = chain.apply(record("orders", SchemaAndValue::string("x")), None).expect_err("not a struct");
        assert!(matches!(&error, ConnectError::Data(why) if why.contains("transform add")), "{error}");
        // Tombstones pass through.
        let tombstone = record("orders", SchemaAndValue::NULL);
        assert_eq!(chain.apply(tombstone.clone(), None).expect("ok"), Some(tombstone));
    }

    #[test]
    fn replace_field_keeps_drops_and_renames() {
        let chain = chain(
            "transforms=r\ntransforms.r.type=ReplaceField$Value\ntransforms.r.exclude=secret\n\
             transforms.r.renames=id:order_id, name:customer\n",
        );
        let value =
            map(&[("id", Value::Int64(1)), ("secret", Value::String("x".into())), ("name", Value::String("n".into()))]);
        let out = chain.apply(record("t", SchemaAndValue::new(None, value)), None).expect("ok").expect("kept");
        assert_eq!(out.value.value, map(&[("order_id", Value::Int64(1)), ("customer", Value::String("n".into()))]));
        let include = chain_with_include();
        let schema = Schema::structure(vec![
            Field { name: "a".into(), schema: Schema::new(SchemaType::Int32) },
            Field { name: "b".into(), schema: Schema::new(SchemaType::Int32) },
        ]);
        let value = Value::Struct(vec![("a".into(), Value::Int32(1)), ("b".into(), Value::Int32(2))]);
        let out =
            include.apply(record("t", SchemaAndValue::new(Some(schema), value)), None).expect("ok").expect("kept");
        assert_eq!(out.value.value, Value::Struct(vec![("a".into(), Value::Int32(1))]));
        assert_eq!(out.value.schema.expect("schema").fields.len(), 1);
    }

    fn chain_with_include() -> TransformChain {
        chain("transforms=r\ntransforms.r.type=ReplaceField$Value\ntransforms.r.include=a\n")
    }

    #[test]
    fn filter_with_a_predicate_drops_only_matching_records_and_regex_router_renames_topics() {
        let chain = chain(
            "transforms=dropTest,route\n\
             transforms.dropTest.type=org.apache.kafka.connect.transforms.Filter\n\
             transforms.dropTest.predicate=isTest\n\
             transforms.route.type=org.apache.kafka.connect.transforms.RegexRouter\n\
             transforms.route.regex=(.*)-raw\ntransforms.route.replacement=$1-clean\n\
             predicates=isTest\npredicates.isTest.type=org.apache.kafka.connect.transforms.predicates.TopicNameMatches\n\
             predicates.isTest.pattern=test-.*\n",
        );
        assert_eq!(chain.apply(record("test-raw", SchemaAndValue::string("x")), None).expect("ok"), None);
        let routed = chain.apply(record("orders-raw", SchemaAndValue::string("x")), None).expect("ok").expect("kept");
        assert_eq!(routed.topic, "orders-clean");
        // A partial match does not route (Kafka matches the whole topic).
        let kept = chain.apply(record("orders-raw-2", SchemaAndValue::string("x")), None).expect("ok").expect("kept");
        assert_eq!(kept.topic, "orders-raw-2");
        let negated = self::chain(
            "transforms=keepTombstones\ntransforms.keepTombstones.type=Filter\ntransforms.keepTombstones.predicate=tomb\n\
             transforms.keepTombstones.negate=true\npredicates=tomb\npredicates.tomb.type=RecordIsTombstone\n",
        );
        assert!(negated.apply(record("t", SchemaAndValue::string("x")), None).expect("ok").is_none());
        assert!(negated.apply(record("t", SchemaAndValue::NULL), None).expect("ok").is_some());
    }

    #[test]
    fn bad_transform_configs_are_config_errors() {
        for text in [
            "transforms=a\n",
            "transforms=a\ntransforms.a.type=com.example.Mystery\n",
            "transforms=a\ntransforms.a.type=InsertField\ntransforms.a.topic.field=t\n",
            "transforms=a\ntransforms.a.type=InsertField$Value\n",
            "transforms=a\ntransforms.a.type=RegexRouter\ntransforms.a.regex=(\ntransforms.a.replacement=x\n",
            "transforms=a\ntransforms.a.type=Filter\ntransforms.a.predicate=missing\n",
            "transforms=a\ntransforms.a.type=Filter\ntransforms.a.predicate=p\npredicates=p\npredicates.p.type=Nope\n",
        ] {
            let result = TransformChain::from_config(&parse(text).expect("props"));
            assert!(matches!(result, Err(ConnectError::Config(_))), "{text}");
        }
        assert!(TransformChain::from_config(&Props::new()).expect("none").is_empty());
    }

    #[test]
    fn value_to_key_copies_the_named_fields_into_the_key_and_refuses_what_has_none() {
        let chain = TransformChain::from_config(
            &parse("transforms=k\ntransforms.k.type=ValueToKey\ntransforms.k.fields=id\n").expect("props"),
        )
        .expect("chain");
        let map = Value::Map(vec![
            (Value::String("id".into()), Value::Int64(7)),
            (Value::String("x".into()), Value::Int64(1)),
        ]);
        let record = ConnectRecord::new("t", SchemaAndValue::NULL, SchemaAndValue::new(None, map));
        let out = chain.apply(record, None).expect("ok").expect("kept");
        assert_eq!(out.key.value, Value::Map(vec![(Value::String("id".into()), Value::Int64(7))]));
        let schema = Schema::structure(vec![Field { name: "id".into(), schema: Schema::new(SchemaType::Int32) }]);
        let record = ConnectRecord::new(
            "t",
            SchemaAndValue::NULL,
            SchemaAndValue::new(Some(schema.clone()), Value::Struct(vec![("id".into(), Value::Int32(3))])),
        );
        let out = chain.apply(record, None).expect("ok").expect("kept");
        assert_eq!(out.key, SchemaAndValue::new(Some(schema), Value::Struct(vec![("id".into(), Value::Int32(3))])));
        let tombstone = ConnectRecord::new("t", SchemaAndValue::NULL, SchemaAndValue::NULL);
        assert!(matches!(chain.apply(tombstone, None), Err(ConnectError::Data(_))));
    }

    #[test]
    fn java_replacements_become_rust_ones() {
        assert_eq!(java_replacement("$1abc"), "${1}abc");
        assert_eq!(java_replacement("a\\$b$"), "a$$b$$");
    }
}
