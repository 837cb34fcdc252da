//! SQL text for the PostgreSQL connectors, built from identifiers only:
//! every value travels as a bound parameter (`$n`), never inside the text.
//! Identifiers are always double-quoted (Confluent's
//! `quote.sql.identifiers=always`), so a name keeps its case and may hold
//! any character but NUL.

use std::fmt::Write as _;

use crate::data::{Schema, SchemaType, Value};
use crate::limits::{POSTGRES_IDENTIFIER_BYTES_MAX, POSTGRES_STATEMENT_PARAMS_MAX};

/// `name` as a quoted identifier: `"` doubled inside, the whole in `"`.
/// Refused: an empty name, a NUL (PostgreSQL cannot store it), and a name
/// longer than PostgreSQL keeps (it would silently cut it, and two long
/// names could become one).
pub fn quote_ident(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("an empty identifier".into());
    }
    if name.contains('\0') {
        return Err(format!("identifier {name:?} holds a NUL character"));
    }
    if name.len() > POSTGRES_IDENTIFIER_BYTES_MAX {
        return Err(format!("identifier {name:?} is longer than PostgreSQL's {POSTGRES_IDENTIFIER_BYTES_MAX} bytes"));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// A table, optionally in a schema, quoted once when made.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// `"schema"."table"` or `"table"`.
    quoted: String,
}

impl TableName {
    /// `table.name.format` for `topic`: the format's dots separate schema
    /// and table (Confluent's reading), and `${topic}` is put in each part
    /// afterwards, so a topic named `a.b` is one table `"a.b"`.
    pub fn from_format(format: &str, topic: &str) -> Result<TableName, String> {
        let parts: Vec<&str> = format.split('.').collect();
        if parts.len() > 2 {
            return Err(format!("table.name.format {format:?} has more than schema.table"));
        }
        let quoted: Vec<String> =
            parts.iter().map(|part| quote_ident(&part.replace("${topic}", topic))).collect::<Result<_, _>>()?;
        Ok(TableName { quoted: quoted.join(".") })
    }

    pub fn quoted(&self) -> &str {
        &self.quoted
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.quoted)
    }
}

/// The column types `auto.create` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    SmallInt,
    Integer,
    BigInt,
    Real,
    DoublePrecision,
    Boolean,
    Text,
    Bytea,
    Jsonb,
}

impl ColumnType {
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::SmallInt => "SMALLINT",
            ColumnType::Integer => "INTEGER",
            ColumnType::BigInt => "BIGINT",
            ColumnType::Real => "REAL",
            ColumnType::DoublePrecision => "DOUBLE PRECISION",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Text => "TEXT",
            ColumnType::Bytea => "BYTEA",
            ColumnType::Jsonb => "JSONB",
        }
    }

    /// The column for a field with a Connect schema (JsonConverter's
    /// envelope), as Confluent's PostgreSQL dialect maps them; int8 has no
    /// one-byte PostgreSQL type and takes SMALLINT.
    pub fn from_schema(schema: &Schema) -> ColumnType {
        match schema.schema_type {
            SchemaType::Int8 | SchemaType::Int16 => ColumnType::SmallInt,
            SchemaType::Int32 => ColumnType::Integer,
            SchemaType::Int64 => ColumnType::BigInt,
            SchemaType::Float32 => ColumnType::Real,
            SchemaType::Float64 => ColumnType::DoublePrecision,
            SchemaType::Boolean => ColumnType::Boolean,
            SchemaType::String => ColumnType::Text,
            SchemaType::Bytes => ColumnType::Bytea,
            SchemaType::Array | SchemaType::Map | SchemaType::Struct => ColumnType::Jsonb,
        }
    }

    /// The column for a schemaless field, from its first value: JSON
    /// integers are BIGINT, other numbers DOUBLE PRECISION, objects and
    /// arrays JSONB; a null says nothing, and TEXT takes anything written
    /// as a string later.
    pub fn infer(value: &Value) -> ColumnType {
        match value {
            Value::Int8(_) | Value::Int16(_) | Value::Int32(_) | Value::Int64(_) => ColumnType::BigInt,
            Value::Float32(_) | Value::Float64(_) => ColumnType::DoublePrecision,
            Value::Boolean(_) => ColumnType::Boolean,
            Value::Null | Value::String(_) => ColumnType::Text,
            Value::Bytes(_) => ColumnType::Bytea,
            Value::Array(_) | Value::Map(_) | Value::Struct(_) => ColumnType::Jsonb,
        }
    }
}

/// A column of a table to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewColumn {
    pub name: String,
    pub column_type: ColumnType,
    pub nullable: bool,
}

/// `CREATE TABLE IF NOT EXISTS` (two tasks may race to create it).
pub fn create_table(table: &TableName, columns: &[NewColumn], primary_key: &[String]) -> Result<String, String> {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {table} (");
    for (index, column) in columns.iter().enumerate() {
        if index > 0 {
            sql.push_str(", ");
        }
        let null = if column.nullable { "" } else { " NOT NULL" };
        let _ = write!(sql, "{} {}{null}", quote_ident(&column.name)?, column.column_type.sql());
    }
    if !primary_key.is_empty() {
        sql.push_str(", PRIMARY KEY (");
        sql.push_str(&quoted_list(primary_key)?);
        sql.push(')');
    }
    sql.push(')');
    Ok(sql)
}

/// A column a statement writes: its name, and the type to cast a text
/// parameter to when the driver cannot send the column's own type (a
/// NUMERIC, a TIMESTAMPTZ, a UUID: the server parses the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub cast: Option<String>,
}

fn placeholder(target: &Target, number: usize) -> String {
    match &target.cast {
        None => format!("${number}"),
        Some(type_sql) => format!("CAST(${number}::text AS {type_sql})"),
    }
}

fn quoted_list(names: &[String]) -> Result<String, String> {
    Ok(names.iter().map(|n| quote_ident(n)).collect::<Result<Vec<_>, _>>()?.join(", "))
}

/// `INSERT INTO t (a, b) VALUES ($1, $2)`; with `upsert_key` (never
/// empty then) `... ON CONFLICT (key) DO UPDATE SET` every other column
/// to the new row's (`DO NOTHING` when every column is in the key).
pub fn insert(table: &TableName, columns: &[Target], upsert_key: Option<&[String]>) -> Result<String, String> {
    insert_rows(table, columns, upsert_key, 1)
}

/// As `insert`, for `rows` rows in one statement: `VALUES ($1, $2), ($3,
/// $4)`, the parameters row after row. One statement for many rows saves
/// the server a statement's start and end per row. Under upsert no two
/// rows of one statement may share a key (PostgreSQL refuses to update a
/// row twice in one command): the caller cuts them apart.
pub fn insert_rows(
    table: &TableName,
    columns: &[Target],
    upsert_key: Option<&[String]>,
    rows: usize,
) -> Result<String, String> {
    assert!(!columns.is_empty(), "a row writes at least one column");
    assert!(rows >= 1, "a statement writes at least one row");
    assert!(rows * columns.len() <= POSTGRES_STATEMENT_PARAMS_MAX, "too many parameters for one statement");
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    let tuples: Vec<String> = (0..rows)
        .map(|row| {
            let first = row * columns.len();
            let values: Vec<String> = columns.iter().enumerate().map(|(i, c)| placeholder(c, first + i + 1)).collect();
            format!("({})", values.join(", "))
        })
        .collect();
    let mut sql = format!("INSERT INTO {table} ({}) VALUES {}", quoted_list(&names)?, tuples.join(", "));
    if let Some(key) = upsert_key {
        assert!(!key.is_empty(), "an upsert needs a key");
        let _ = write!(sql, " ON CONFLICT ({}) DO ", quoted_list(key)?);
        let updates: Vec<String> = names
            .iter()
            .filter(|name| !key.contains(name))
            .map(|name| quote_ident(name).map(|q| format!("{q} = EXCLUDED.{q}")))
            .collect::<Result<_, _>>()?;
        if updates.is_empty() {
            sql.push_str("NOTHING");
        } else {
            sql.push_str("UPDATE SET ");
            sql.push_str(&updates.join(", "));
        }
    }
    Ok(sql)
}

/// `DELETE FROM t WHERE a = $1 AND b = $2`.
pub fn delete(table: &TableName, key: &[Target]) -> Result<String, String> {
    assert!(!key.is_empty(), "a delete needs a key");
    let conditions: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, c)| quote_ident(&c.name).map(|q| format!("{q} = {}", placeholder(c, i + 1))))
        .collect::<Result<_, _>>()?;
    Ok(format!("DELETE FROM {table} WHERE {}", conditions.join(" AND ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(names: &[&str]) -> Vec<Target> {
        names.iter().map(|n| Target { name: n.to_string(), cast: None }).collect()
    }

    #[test]
    fn identifiers_are_double_quoted_with_quotes_doubled_and_bad_names_refused() {
        assert_eq!(quote_ident("orders").expect("ok"), "\"orders\"");
        assert_eq!(quote_ident("Mixed Case").expect("ok"), "\"Mixed Case\"");
        assert_eq!(quote_ident("a\"; DROP TABLE x; --").expect("ok"), "\"a\"\"; DROP TABLE x; --\"");
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0b").is_err());
        assert!(quote_ident(&"x".repeat(64)).is_err(), "PostgreSQL would cut it to 63 bytes");
        assert!(quote_ident(&"x".repeat(63)).is_ok());
    }

    #[test]
    fn table_name_format_puts_the_topic_in_each_part_after_splitting_schema_and_table() {
        assert_eq!(TableName::from_format("${topic}", "orders").expect("ok").quoted(), "\"orders\"");
        assert_eq!(TableName::from_format("${topic}", "a.b").expect("ok").quoted(), "\"a.b\"", "one table");
        assert_eq!(
            TableName::from_format("sales.kafka_${topic}", "Orders").expect("ok").quoted(),
            "\"sales\".\"kafka_Orders\""
        );
        assert!(TableName::from_format("a.b.c", "t").is_err());
        assert!(TableName::from_format("${topic}", "").is_err());
    }

    #[test]
    fn upsert_updates_every_column_outside_the_key_from_excluded() {
        let table = TableName::from_format("${topic}", "users").expect("ok");
        let sql = insert(&table, &plain(&["id", "name", "Age"]), Some(&["id".to_string()])).expect("ok");
        assert_eq!(
            sql,
            "INSERT INTO \"users\" (\"id\", \"name\", \"Age\") VALUES ($1, $2, $3) \
             ON CONFLICT (\"id\") DO UPDATE SET \"name\" = EXCLUDED.\"name\", \"Age\" = EXCLUDED.\"Age\""
        );
        let key_only = insert(&table, &plain(&["a", "b"]), Some(&["a".to_string(), "b".to_string()])).expect("ok");
        assert_eq!(
            key_only,
            "INSERT INTO \"users\" (\"a\", \"b\") VALUES ($1, $2) ON CONFLICT (\"a\", \"b\") DO NOTHING"
        );
        assert_eq!(insert(&table, &plain(&["x"]), None).expect("ok"), "INSERT INTO \"users\" (\"x\") VALUES ($1)");
    }

    #[test]
    fn many_rows_in_one_statement_number_their_parameters_row_after_row() {
        let table = TableName::from_format("${topic}", "t").expect("ok");
        let columns =
            vec![Target { name: "id".into(), cast: None }, Target { name: "n".into(), cast: Some("numeric".into()) }];
        assert_eq!(
            insert_rows(&table, &columns, Some(&["id".to_string()]), 3).expect("ok"),
            "INSERT INTO \"t\" (\"id\", \"n\") VALUES ($1, CAST($2::text AS numeric)), ($3, CAST($4::text AS numeric)), \
             ($5, CAST($6::text AS numeric)) ON CONFLICT (\"id\") DO UPDATE SET \"n\" = EXCLUDED.\"n\""
        );
    }

    #[test]
    fn columns_the_driver_cannot_bind_take_text_cast_on_the_server_and_deletes_match_the_key() {
        let table = TableName::from_format("${topic}", "t").expect("ok");
        let columns = vec![
            Target { name: "id".into(), cast: None },
            Target { name: "at".into(), cast: Some("timestamp with time zone".into()) },
        ];
        assert_eq!(
            insert(&table, &columns, None).expect("ok"),
            "INSERT INTO \"t\" (\"id\", \"at\") VALUES ($1, CAST($2::text AS timestamp with time zone))"
        );
        assert_eq!(
            delete(&table, &plain(&["k1", "k2"])).expect("ok"),
            "DELETE FROM \"t\" WHERE \"k1\" = $1 AND \"k2\" = $2"
        );
    }

    #[test]
    fn create_table_maps_schemas_and_inferred_json_types_and_names_the_key() {
        let table = TableName::from_format("${topic}", "t").expect("ok");
        let columns = vec![
            NewColumn {
                name: "id".into(),
                column_type: ColumnType::from_schema(&Schema::new(SchemaType::Int64)),
                nullable: false,
            },
            NewColumn {
                name: "n".into(),
                column_type: ColumnType::from_schema(&Schema::new(SchemaType::Int32)),
                nullable: true,
            },
            NewColumn { name: "doc".into(), column_type: ColumnType::infer(&Value::Map(vec![])), nullable: true },
        ];
        assert_eq!(
            create_table(&table, &columns, &["id".to_string()]).expect("ok"),
            "CREATE TABLE IF NOT EXISTS \"t\" (\"id\" BIGINT NOT NULL, \"n\" INTEGER, \"doc\" JSONB, PRIMARY KEY (\"id\"))"
        );
        for (value, expected) in [
            (Value::Int64(1), ColumnType::BigInt),
            (Value::Float64(1.5), ColumnType::DoublePrecision),
            (Value::Boolean(true), ColumnType::Boolean),
            (Value::String("x".into()), ColumnType::Text),
            (Value::Array(vec![]), ColumnType::Jsonb),
            (Value::Null, ColumnType::Text),
        ] {
            assert_eq!(ColumnType::infer(&value), expected, "{value:?}");
        }
        for (schema_type, expected) in [
            (SchemaType::Int8, "SMALLINT"),
            (SchemaType::Int16, "SMALLINT"),
            (SchemaType::Float32, "REAL"),
            (SchemaType::Float64, "DOUBLE PRECISION"),
            (SchemaType::Boolean, "BOOLEAN"),
            (SchemaType::String, "TEXT"),
            (SchemaType::Bytes, "BYTEA"),
            (SchemaType::Struct, "JSONB"),
        ] {
            assert_eq!(ColumnType::from_schema(&Schema::new(schema_type)).sql(), expected);
        }
    }
}
