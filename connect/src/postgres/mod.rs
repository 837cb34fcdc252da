//! The PostgreSQL connectors, with Confluent's JDBC connectors' keys:
//! [`sink::PostgresSinkConnector`] (insert or upsert, table
//! auto-creation, batches in one transaction each, retries on transient
//! errors) and [`source::PostgresSourceConnector`] (incremental queries by
//! an incrementing and/or timestamp column, resumed from stored offsets).
//!
//! What both share lives here: the connection keys, what counts as a
//! transient error, and values as bound parameters.

pub mod sink;
pub mod source;
pub mod sql;

use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::data::Value;
use crate::limits::POSTGRES_CONNECT_TIMEOUT_MS;
use crate::props::Props;

pub(crate) const URL_CONFIG: &str = "connection.url";
pub(crate) const USER_CONFIG: &str = "connection.user";
pub(crate) const PASSWORD_CONFIG: &str = "connection.password";

/// A bad key: its name and what is wrong, for `config/validate`.
pub(crate) type KeyError = (&'static str, String);

/// The connection `connection.url` (`postgresql://user@host:port/db`, or
/// Confluent's `jdbc:postgresql://...`) with `connection.user` and
/// `connection.password` over what the URL says.
pub(crate) fn connection_config(props: &Props) -> Result<tokio_postgres::Config, KeyError> {
    let url = props.get(URL_CONFIG).map(|u| u.trim()).unwrap_or_default();
    let url = url.strip_prefix("jdbc:").unwrap_or(url);
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err((URL_CONFIG, format!("{URL_CONFIG} must be postgresql://user@host:port/database, not {url:?}")));
    }
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e| (URL_CONFIG, format!("{URL_CONFIG} {url:?} is not a PostgreSQL URL: {e}")))?;
    if let Some(user) = props.get(USER_CONFIG).map(|u| u.trim()).filter(|u| !u.is_empty()) {
        config.user(user);
    }
    if let Some(password) = props.get(PASSWORD_CONFIG).filter(|p| !p.is_empty()) {
        config.password(password);
    }
    if config.get_user().is_none() {
        return Err((USER_CONFIG, format!("{URL_CONFIG} names no user: set {USER_CONFIG} or user@ in the URL")));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_millis(POSTGRES_CONNECT_TIMEOUT_MS));
    }
    config.application_name("spate-connect");
    Ok(config)
}

/// Opens a connection; its I/O runs as a task on the caller's runtime
/// (a current-thread one, driven while the caller blocks on a query).
pub(crate) async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Whether trying again may succeed: the connection was lost or never
/// made (no SQLSTATE), the server is starting, stopping or out of
/// resources (classes 08, 53, 57P0x), or the transaction lost a race
/// (serialization failure 40001, deadlock 40P01, lock timeout 55P03).
/// Anything else (a value of the wrong type, a constraint, a missing
/// column or table) fails again the same way: permanent.
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    let Some(state) = error.code() else { return true };
    let code = state.code();
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03")
}

/// One error's text with its SQLSTATE and the server's detail, which
/// tokio-postgres's Display leaves out ("db error").
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            text
        }
        None => error.to_string(),
    }
}

/// How a column's values are sent: in the column's own binary type, or
/// as text the server casts (types the driver has no Rust type for here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Text,
    Json,
    Bytea,
    /// Sent as text, cast on the server to this type (`format_type`).
    Cast(String),
}

impl ColumnKind {
    /// From `pg_type.typname` and `format_type(...)` of a column.
    pub(crate) fn from_catalog(typname: &str, format_type: &str) -> ColumnKind {
        match typname {
            "bool" => ColumnKind::Bool,
            "int2" => ColumnKind::Int2,
            "int4" => ColumnKind::Int4,
            "int8" => ColumnKind::Int8,
            "float4" => ColumnKind::Float4,
            "float8" => ColumnKind::Float8,
            "text" | "varchar" | "bpchar" | "name" => ColumnKind::Text,
            "json" | "jsonb" => ColumnKind::Json,
            "bytea" => ColumnKind::Bytea,
            _ => ColumnKind::Cast(format_type.to_string()),
        }
    }

    pub(crate) fn cast(&self) -> Option<String> {
        match self {
            ColumnKind::Cast(type_sql) => Some(type_sql.clone()),
            _ => None,
        }
    }
}

/// A value ready to bind. The statement's parameter types come from the
/// table's columns, and each value was converted for its column, so
/// `to_sql` only writes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(String),
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Bool(v) => v.to_sql(ty, out),
            Param::I16(v) => v.to_sql(ty, out),
            Param::I32(v) => v.to_sql(ty, out),
            Param::I64(v) => v.to_sql(ty, out),
            Param::F32(v) => v.to_sql(ty, out),
            Param::F64(v) => v.to_sql(ty, out),
            Param::Text(v) => v.to_sql(ty, out),
            Param::Json(v) => v.to_sql(ty, out),
            Param::Bytes(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        // Chosen per column before binding (`param_for`).
        true
    }

    to_sql_checked!();
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int8(v) => Some(i64::from(*v)),
        Value::Int16(v) => Some(i64::from(*v)),
        Value::Int32(v) => Some(i64::from(*v)),
        Value::Int64(v) => Some(*v),
        _ => None,
    }
}

fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Float32(v) => Some(f64::from(*v)),
        Value::Float64(v) => Some(*v),
        // Integers fit a float column as JSON readers expect (1 is 1.0);
        // beyond 2^53 the nearest double, as PostgreSQL's own cast.
        other => integer(other).map(|v| v as f64),
    }
}

/// A value as a JSON document (JsonConverter's schemaless writing).
pub(crate) fn json_of(value: &Value) -> Result<serde_json::Value, String> {
    let text = crate::converter::schemaless_json(value).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// What a text-cast column receives: strings as they are, numbers and
/// booleans as written, anything else as JSON.
fn text_of(value: &Value) -> Result<String, String> {
    Ok(match value {
        Value::String(v) => v.clone(),
        Value::Boolean(_) | Value::Int8(_) | Value::Int16(_) | Value::Int32(_) | Value::Int64(_) => value.to_string(),
        Value::Float32(v) => v.to_string(),
        Value::Float64(v) => v.to_string(),
        other => json_of(other)?.to_string(),
    })
}

/// `value` for a column of `kind`, or why it does not fit: a record that
/// does not fit its table is a permanent error of that record alone.
pub(crate) fn param_for(kind: &ColumnKind, value: &Value) -> Result<Param, String> {
    if value.is_null() {
        return Ok(Param::Null);
    }
    let mismatch = || format!("{} does not fit a column of type {}", describe_value(value), kind_name(kind));
    let ranged = |v: i64| -> Result<Param, String> {
        match kind {
            ColumnKind::Int2 => i16::try_from(v).map(Param::I16).map_err(|_| mismatch()),
            ColumnKind::Int4 => i32::try_from(v).map(Param::I32).map_err(|_| mismatch()),
            _ => Ok(Param::I64(v)),
        }
    };
    match kind {
        ColumnKind::Bool => match value {
            Value::Boolean(v) => Ok(Param::Bool(*v)),
            _ => Err(mismatch()),
        },
        ColumnKind::Int2 | ColumnKind::Int4 | ColumnKind::Int8 => {
            integer(value).map_or_else(|| Err(mismatch()), ranged)
        }
        ColumnKind::Float4 => float(value).map(|v| Param::F32(v as f32)).ok_or_else(mismatch),
        ColumnKind::Float8 => float(value).map(Param::F64).ok_or_else(mismatch),
        ColumnKind::Text => match value {
            Value::String(v) => Ok(Param::Text(v.clone())),
            _ => Err(mismatch()),
        },
        ColumnKind::Json => json_of(value).map(Param::Json),
        ColumnKind::Bytea => match value {
            Value::Bytes(v) => Ok(Param::Bytes(v.to_vec())),
            _ => Err(mismatch()),
        },
        ColumnKind::Cast(_) => text_of(value).map(Param::Text),
    }
}

fn kind_name(kind: &ColumnKind) -> &str {
    match kind {
        ColumnKind::Bool => "boolean",
        ColumnKind::Int2 => "smallint",
        ColumnKind::Int4 => "integer",
        ColumnKind::Int8 => "bigint",
        ColumnKind::Float4 => "real",
        ColumnKind::Float8 => "double precision",
        ColumnKind::Text => "text",
        ColumnKind::Json => "json",
        ColumnKind::Bytea => "bytea",
        ColumnKind::Cast(type_sql) => type_sql,
    }
}

/// A value in an error message, cut short: a record's content may be
/// large, and the message goes into logs and dead-letter headers.
fn describe_value(value: &Value) -> String {
    let mut text = match value {
        Value::String(v) => format!("the string {v:?}"),
        other => format!("the value {other}"),
    };
    if text.len() > 80 {
        let mut cut = 80;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::parse;

    #[test]
    fn connection_url_takes_postgresql_and_jdbc_forms_and_the_user_keys_win() {
        let props = parse("connection.url=postgresql://alice@127.0.0.1:5433/shop\n").expect("props");
        let config = connection_config(&props).expect("ok");
        assert_eq!(config.get_user(), Some("alice"));
        assert_eq!(config.get_dbname(), Some("shop"));
        assert_eq!(config.get_ports(), &[5433]);
        let props =
            parse("connection.url=jdbc:postgresql://localhost/shop\nconnection.user=bob\nconnection.password=pw\n")
                .expect("props");
        let config = connection_config(&props).expect("ok");
        assert_eq!(config.get_user(), Some("bob"));
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
        for bad in ["connection.url=mysql://x/y", "connection.url=postgresql://host/db", "connection.url="] {
            assert!(connection_config(&parse(bad).expect("props")).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_convert_only_to_columns_they_fit() {
        assert_eq!(param_for(&ColumnKind::Int8, &Value::Int32(7)), Ok(Param::I64(7)));
        assert_eq!(param_for(&ColumnKind::Int4, &Value::Int64(7)), Ok(Param::I32(7)));
        assert!(param_for(&ColumnKind::Int2, &Value::Int64(70_000)).is_err(), "out of range");
        assert!(param_for(&ColumnKind::Int8, &Value::String("12".into())).is_err(), "a string is no number");
        assert!(param_for(&ColumnKind::Text, &Value::Int64(1)).is_err());
        assert_eq!(param_for(&ColumnKind::Float8, &Value::Int64(2)), Ok(Param::F64(2.0)));
        assert_eq!(param_for(&ColumnKind::Bool, &Value::Null), Ok(Param::Null), "NOT NULL is the server's check");
        assert_eq!(
            param_for(&ColumnKind::Json, &Value::Map(vec![(Value::String("a".into()), Value::Int64(1))])),
            Ok(Param::Json(serde_json::json!({"a": 1})))
        );
        let numeric = ColumnKind::from_catalog("numeric", "numeric(10,2)");
        assert_eq!(numeric.cast().as_deref(), Some("numeric(10,2)"));
        assert_eq!(param_for(&numeric, &Value::Float64(1.5)), Ok(Param::Text("1.5".into())));
        let long = Value::String("x".repeat(500));
        let error = param_for(&ColumnKind::Int8, &long).expect_err("mismatch");
        assert!(error.len() < 200, "{error}");
    }
}
