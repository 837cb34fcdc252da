//! What Connect reads from outside (properties files, record bytes, REST
//! JSON turned into configs) never panics it, and what JsonConverter
//! writes it reads back unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use spate_connect::converter::{Converter, JsonConverter, converter_for};
use spate_connect::data::{Field, Schema, SchemaAndValue, SchemaType, Value};
use spate_connect::props::{Props, parse};
use spate_connect::transforms::TransformChain;

/// A schema and a value that fits it, a few levels deep.
fn schema_and_value() -> impl Strategy<Value = SchemaAndValue> {
    let leaf = prop_oneof![
        any::<i8>().prop_map(|v| (Schema::new(SchemaType::Int8), Value::Int8(v))),
        any::<i32>().prop_map(|v| (Schema::new(SchemaType::Int32), Value::Int32(v))),
        any::<i64>().prop_map(|v| (Schema::new(SchemaType::Int64), Value::Int64(v))),
        any::<bool>().prop_map(|v| (Schema::new(SchemaType::Boolean), Value::Boolean(v))),
        (-1e12f64..1e12).prop_map(|v| (Schema::new(SchemaType::Float64), Value::Float64(v))),
        ".{0,12}".prop_map(|v| (Schema::string(), Value::String(v))),
        proptest::collection::vec(any::<u8>(), 0..12)
            .prop_map(|v| (Schema::new(SchemaType::Bytes), Value::Bytes(v.into()))),
        Just((Schema::string().optional(), Value::Null)),
    ];
    let tree = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            // An array of one schema: repeat one element's schema.
            (inner.clone(), 0..4usize)
                .prop_map(|((schema, value), count)| { (Schema::array(schema), Value::Array(vec![value; count])) }),
            proptest::collection::vec(inner, 1..4).prop_map(|fields| {
                let schema = Schema::structure(
                    fields
                        .iter()
                        .enumerate()
                        .map(|(i, (s, _))| Field { name: format!("f{i}"), schema: s.clone() })
                        .collect(),
                );
                let value =
                    Value::Struct(fields.into_iter().enumerate().map(|(i, (_, v))| (format!("f{i}"), v)).collect());
                (schema, value)
            }),
        ]
    });
    tree.prop_map(|(schema, value)| SchemaAndValue::new(Some(schema), value))
}

proptest! {
    #[test]
    fn json_with_schemas_reads_back_what_it_writes(data in schema_and_value()) {
        let converter = JsonConverter { schemas_enable: true };
        let bytes = converter.from_connect_data("t", &data).expect("a value that fits its schema converts");
        let back = converter.to_connect_data("t", bytes.as_deref()).expect("reads back");
        prop_assert_eq!(back, data);
    }

    #[test]
    fn converters_never_panic_on_arbitrary_record_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for schemas in ["true", "false"] {
            let props = Props::from([("schemas.enable".to_string(), schemas.to_string())]);
            for class in ["JsonConverter", "StringConverter", "ByteArrayConverter"] {
                let converter = converter_for(class, &props).expect("known");
                let _ = converter.to_connect_data("t", Some(&bytes));
            }
        }
    }

    #[test]
    fn json_envelopes_with_arbitrary_schemas_never_panic(text in r#"\{"schema":\{("type":"(int8|int64|string|struct|array|map|bytes|float)",?|"optional":(true|false),?|"fields":\[\{"type":"string","field":"a"\}\],?|"items":\{"type":"int8"\},?|"keys":\{"type":"string"\},?|"values":\{"type":"int8"\},?){0,4}\},"payload":(null|1|"x"|\[1\]|\{"a":"b"\}|-9999999999999999999|1.5)\}"#) {
        let converter = JsonConverter { schemas_enable: true };
        let _ = converter.to_connect_data("t", Some(text.as_bytes()));
    }

    #[test]
    fn properties_and_transform_configs_never_panic(text in "[a-z.=:\\\\ \\n#!$u0-9A-Z'(]{0,200}") {
        if let Ok(props) = parse(&text) {
            let _ = TransformChain::from_config(&props);
            let _ = spate_connect::worker::validate(&props);
        }
    }
}
