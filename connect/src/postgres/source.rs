//! PostgresSource: rows of PostgreSQL tables (or of one query) become
//! records, by incremental queries with Confluent's JDBC source keys
//! (`table.whitelist` or `query`, `mode` = `incrementing`, `timestamp` or
//! `timestamp+incrementing`, `incrementing.column.name`,
//! `timestamp.column.name`, `topic.prefix`, `poll.interval.ms`,
//! `batch.max.rows`).
//!
//! Each table is a source partition `{"table": NAME}` (a query:
//! `{"query": QUERY}`) whose offset is the last row's
//! `{"incrementing": ID}` and/or `{"timestamp": TEXT}` (the timestamp as
//! PostgreSQL writes a timestamptz in UTC, exact to the microsecond). A
//! query asks for the rows after the offset, in the columns' order, at most
//! `batch.max.rows`; the worker stores a row's offset once the cluster has
//! acknowledged it, so a restarted task asks again from the last stored
//! row: no row is lost, and those after it may come twice.
//!
//! As Confluent's: the timestamp modes read rows whose timestamp is before
//! the server's `now()`; a row committed later with an earlier timestamp
//! (or id, in `incrementing` mode) than one already read is missed, and
//! updates are seen only in the timestamp modes.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, Statement};

use super::sql::{TableName, quote_ident};
use super::{KeyError, connection_config, describe, is_transient};
use crate::connector::{
    ConfigKey, ConfigReport, ConfigType, Connector, Importance, OffsetStorageReader, SourceConnector, SourceTask,
    validate_parsed,
};
use crate::data::{Field, Schema, SchemaAndValue, SchemaType, Value};
use crate::error::{ConnectError, Result};
use crate::limits::{POSTGRES_SOURCE_BATCH_ROWS_MAX, POSTGRES_SOURCE_WAIT_STEP_MS};
use crate::props::Props;
use crate::record::{ConnectRecord, SourceOffset, SourcePartition, SourceRecord};

const TABLES_CONFIG: &str = "table.whitelist";
const QUERY_CONFIG: &str = "query";
const MODE_CONFIG: &str = "mode";
const INCREMENTING_COLUMN_CONFIG: &str = "incrementing.column.name";
const TIMESTAMP_COLUMN_CONFIG: &str = "timestamp.column.name";
const TOPIC_PREFIX_CONFIG: &str = "topic.prefix";
const POLL_INTERVAL_MS_CONFIG: &str = "poll.interval.ms";
const BATCH_MAX_ROWS_CONFIG: &str = "batch.max.rows";
/// The tables one task reads (set by the connector in each task's config).
const TASK_TABLES_CONFIG: &str = "tables";
const GROUP: &str = "PostgresSource";

const INCREMENTING_FIELD: &str = "incrementing";
const TIMESTAMP_FIELD: &str = "timestamp";
/// Where an incrementing offset starts (Confluent's): ids from 0 up.
const INCREMENTING_INITIAL: i64 = -1;
/// Where a timestamp offset starts: before every timestamp.
const TIMESTAMP_INITIAL: &str = "-infinity";
/// The offset columns the query adds after the row's own.
const OFFSET_INCREMENTING_COLUMN: &str = "__spate_incrementing";
const OFFSET_TIMESTAMP_COLUMN: &str = "__spate_timestamp";

fn keys() -> Vec<ConfigKey> {
    let key = |name, config_type, default, importance, documentation| ConfigKey {
        name,
        config_type,
        default,
        importance,
        documentation,
        group: GROUP,
    };
    vec![
        key(
            super::URL_CONFIG,
            ConfigType::String,
            None,
            Importance::High,
            "postgresql://user@host:port/database (jdbc:postgresql://... is accepted)",
        ),
        key(super::USER_CONFIG, ConfigType::String, Some(""), Importance::High, "The user, over the URL's"),
        key(super::PASSWORD_CONFIG, ConfigType::String, Some(""), Importance::High, "The user's password"),
        key(TABLES_CONFIG, ConfigType::List, Some(""), Importance::High, "The tables to read (or set query)"),
        key(QUERY_CONFIG, ConfigType::String, Some(""), Importance::Medium, "One query to read instead of tables"),
        key(
            MODE_CONFIG,
            ConfigType::String,
            None,
            Importance::High,
            "incrementing, timestamp or timestamp+incrementing",
        ),
        key(
            INCREMENTING_COLUMN_CONFIG,
            ConfigType::String,
            Some(""),
            Importance::Medium,
            "A strictly increasing integer column",
        ),
        key(TIMESTAMP_COLUMN_CONFIG, ConfigType::String, Some(""), Importance::Medium, "A timestamp column"),
        key(
            TOPIC_PREFIX_CONFIG,
            ConfigType::String,
            None,
            Importance::High,
            "Prefix of each table's topic (a query's topic is the prefix)",
        ),
        key(POLL_INTERVAL_MS_CONFIG, ConfigType::Int, Some("5000"), Importance::High, "How often each table is read"),
        key(BATCH_MAX_ROWS_CONFIG, ConfigType::Int, Some("100"), Importance::Low, "Rows per query"),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Incrementing,
    Timestamp,
    TimestampIncrementing,
}

impl Mode {
    fn incrementing(self) -> bool {
        matches!(self, Mode::Incrementing | Mode::TimestampIncrementing)
    }

    fn timestamp(self) -> bool {
        matches!(self, Mode::Timestamp | Mode::TimestampIncrementing)
    }
}

/// What a task reads: tables, or one query.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    Tables(Vec<String>),
    Query(String),
}

/// A validated PostgresSource configuration.
#[derive(Debug, Clone)]
pub struct PostgresSourceConfig {
    connection: tokio_postgres::Config,
    input: Input,
    mode: Mode,
    incrementing_column: String,
    timestamp_column: String,
    topic_prefix: String,
    poll_interval_ms: u64,
    batch_rows_max: usize,
}

fn int_in(props: &Props, key: &'static str, default: u64, min: u64, max: u64) -> Result<u64, KeyError> {
    let Some(text) = props.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err((key, format!("{key} must be an integer from {min} to {max}, not {text:?}"))),
    }
}

fn list(props: &Props, key: &str) -> Vec<String> {
    props
        .get(key)
        .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

fn text(props: &Props, key: &str) -> String {
    props.get(key).map(|v| v.trim().to_string()).unwrap_or_default()
}

impl PostgresSourceConfig {
    pub fn parse(props: &Props) -> Result<PostgresSourceConfig, KeyError> {
        let connection = connection_config(props)?;
        // A task's own tables (set by the connector) before the whole list.
        let tables = if props.contains_key(TASK_TABLES_CONFIG) {
            list(props, TASK_TABLES_CONFIG)
        } else {
            list(props, TABLES_CONFIG)
        };
        let query = text(props, QUERY_CONFIG);
        let input = match (tables.is_empty(), query.is_empty()) {
            (false, true) => {
                for table in &tables {
                    TableName::from_format(table, "").map_err(|e| (TABLES_CONFIG, format!("{TABLES_CONFIG}: {e}")))?;
                }
                Input::Tables(tables)
            }
            (true, false) => Input::Query(query),
            _ => return Err((TABLES_CONFIG, format!("set one of {TABLES_CONFIG} and {QUERY_CONFIG}"))),
        };
        let mode = match text(props, MODE_CONFIG).to_ascii_lowercase().as_str() {
            "incrementing" => Mode::Incrementing,
            "timestamp" => Mode::Timestamp,
            "timestamp+incrementing" => Mode::TimestampIncrementing,
            other => {
                return Err((
                    MODE_CONFIG,
                    format!("{MODE_CONFIG} must be incrementing, timestamp or timestamp+incrementing, not {other:?}"),
                ));
            }
        };
        let incrementing_column = text(props, INCREMENTING_COLUMN_CONFIG);
        let timestamp_column = text(props, TIMESTAMP_COLUMN_CONFIG);
        for (needed, column, key) in [
            (mode.incrementing(), &incrementing_column, INCREMENTING_COLUMN_CONFIG),
            (mode.timestamp(), &timestamp_column, TIMESTAMP_COLUMN_CONFIG),
        ] {
            if needed {
                quote_ident(column).map_err(|e| (key, format!("{key} is needed in this mode: {e}")))?;
            }
        }
        Ok(PostgresSourceConfig {
            connection,
            input,
            mode,
            incrementing_column,
            timestamp_column,
            topic_prefix: props.get(TOPIC_PREFIX_CONFIG).map(|p| p.trim().to_string()).unwrap_or_default(),
            poll_interval_ms: int_in(props, POLL_INTERVAL_MS_CONFIG, 5000, 1, 24 * 3600 * 1000)?,
            batch_rows_max: int_in(props, BATCH_MAX_ROWS_CONFIG, 100, 1, POSTGRES_SOURCE_BATCH_ROWS_MAX as u64)?
                as usize,
        })
    }
}

#[derive(Debug, Default)]
pub struct PostgresSourceConnector {
    props: Props,
    config: Option<PostgresSourceConfig>,
}

impl Connector for PostgresSourceConnector {
    fn config_def(&self) -> Vec<ConfigKey> {
        keys()
    }

    fn validate(&self, props: &Props) -> Vec<ConfigReport> {
        validate_parsed(&keys(), props, PostgresSourceConfig::parse)
    }

    fn start(&mut self, props: &Props) -> Result<()> {
        let config = PostgresSourceConfig::parse(props).map_err(|(_, message)| ConnectError::Config(message))?;
        self.props = props.clone();
        self.config = Some(config);
        Ok(())
    }

    /// Tables dealt round to at most `tasks_max` tasks; a query is one
    /// task.
    fn task_configs(&self, tasks_max: usize) -> Vec<Props> {
        let Some(Input::Tables(tables)) = self.config.as_ref().map(|c| &c.input) else {
            return vec![self.props.clone()];
        };
        let tasks = tasks_max.clamp(1, tables.len().max(1));
        (0..tasks)
            .map(|task| {
                let mine: Vec<&str> = tables.iter().skip(task).step_by(tasks).map(String::as_str).collect();
                let mut props = self.props.clone();
                props.insert(TASK_TABLES_CONFIG.to_string(), mine.join(","));
                props
            })
            .collect()
    }
}

impl SourceConnector for PostgresSourceConnector {
    fn create_task(&self) -> Box<dyn SourceTask> {
        Box::new(PostgresSourceTask::default())
    }
}

/// Where a table's reading stands.
#[derive(Debug, Clone, PartialEq)]
struct Position {
    incrementing: i64,
    timestamp: String,
}

impl Position {
    fn from_offset(offset: Option<&SourceOffset>) -> Position {
        let incrementing = offset.and_then(|o| o.get(INCREMENTING_FIELD)).and_then(serde_json::Value::as_i64);
        let timestamp = offset.and_then(|o| o.get(TIMESTAMP_FIELD)).and_then(serde_json::Value::as_str);
        Position {
            incrementing: incrementing.unwrap_or(INCREMENTING_INITIAL),
            timestamp: timestamp.unwrap_or(TIMESTAMP_INITIAL).to_string(),
        }
    }

    fn offset(&self, mode: Mode) -> SourceOffset {
        let mut offset = SourceOffset::new();
        if mode.incrementing() {
            offset.insert(INCREMENTING_FIELD.into(), self.incrementing.into());
        }
        if mode.timestamp() {
            offset.insert(TIMESTAMP_FIELD.into(), self.timestamp.clone().into());
        }
        offset
    }
}

/// One table (or the query) a task reads.
#[derive(Debug)]
struct Reader {
    /// The name in its topic and its schema (the query: none).
    name: Option<String>,
    /// `"table"` or `(query)`, what the query reads from.
    from: String,
    partition: SourcePartition,
    topic: String,
    position: Position,
    next_poll: Instant,
    /// Prepared on the current connection, with the row's own columns.
    prepared: Option<(Statement, Vec<(String, Type)>)>,
}

#[derive(Default)]
pub struct PostgresSourceTask {
    started: Option<StartedSource>,
}

impl std::fmt::Debug for PostgresSourceTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = self.started.as_ref().map(|s| &s.config);
        f.debug_struct("PostgresSourceTask").field("config", &config).finish()
    }
}

struct StartedSource {
    config: PostgresSourceConfig,
    state: SourceState,
    runtime: tokio::runtime::Runtime,
}

/// The readers and their connection.
struct SourceState {
    readers: Vec<Reader>,
    client: Option<Client>,
}

/// The query after a position: the row's columns (types the driver
/// reads as they are, others as text), then the offset columns, in the
/// offset's order, at most `limit` rows. Only identifiers and the
/// configured query are in the text; positions are parameters.
fn incremental_query(config: &PostgresSourceConfig, from: &str, columns: &[(String, Type)]) -> Result<String, String> {
    let mut select = Vec::with_capacity(columns.len() + 2);
    for (name, column_type) in columns {
        let quoted = quote_ident(name)?;
        select.push(if read_natively(column_type) { quoted } else { format!("{quoted}::text AS {quoted}") });
    }
    let inc = quote_ident(&config.incrementing_column);
    let ts = quote_ident(&config.timestamp_column);
    // Under the session's TimeZone=UTC, set at connect: exact and stable.
    let ts_param = "CAST($1::text AS timestamptz)";
    let (condition, order) = match config.mode {
        Mode::Incrementing => {
            let inc = inc?;
            select.push(format!("{inc}::int8 AS {OFFSET_INCREMENTING_COLUMN}"));
            (format!("{inc} > $1::int8"), inc)
        }
        Mode::Timestamp => {
            let ts = ts?;
            select.push(format!("{ts}::timestamptz::text AS {OFFSET_TIMESTAMP_COLUMN}"));
            (format!("{ts} > {ts_param} AND {ts} < now()"), ts)
        }
        Mode::TimestampIncrementing => {
            let (inc, ts) = (inc?, ts?);
            select.push(format!("{inc}::int8 AS {OFFSET_INCREMENTING_COLUMN}"));
            select.push(format!("{ts}::timestamptz::text AS {OFFSET_TIMESTAMP_COLUMN}"));
            (
                format!("{ts} < now() AND (({ts} = {ts_param} AND {inc} > $2::int8) OR {ts} > {ts_param})"),
                format!("{ts}, {inc}"),
            )
        }
    };
    Ok(format!(
        "SELECT {} FROM {from} AS spate_source WHERE {condition} ORDER BY {order} LIMIT {}",
        select.join(", "),
        config.batch_rows_max
    ))
}

/// Column types read in their own binary form; the rest come as text.
fn read_natively(column_type: &Type) -> bool {
    [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::BYTEA,
    ]
    .contains(column_type)
}

fn schema_for(column_type: &Type) -> Schema {
    let schema_type = match *column_type {
        Type::BOOL => SchemaType::Boolean,
        Type::INT2 => SchemaType::Int16,
        Type::INT4 => SchemaType::Int32,
        Type::INT8 => SchemaType::Int64,
        Type::FLOAT4 => SchemaType::Float32,
        Type::FLOAT8 => SchemaType::Float64,
        Type::BYTEA => SchemaType::Bytes,
        // Text, and every type read as text (numeric, timestamps, json).
        _ => SchemaType::String,
    };
    // Any column may be NULL as far as a query's result says.
    Schema::new(schema_type).optional()
}

fn column_value(row: &Row, index: usize, column_type: &Type) -> std::result::Result<Value, tokio_postgres::Error> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a Row,
        index: usize,
        wrap: impl Fn(T) -> Value,
    ) -> std::result::Result<Value, tokio_postgres::Error> {
        Ok(row.try_get::<_, Option<T>>(index)?.map_or(Value::Null, wrap))
    }
    match *column_type {
        Type::BOOL => get(row, index, Value::Boolean),
        Type::INT2 => get(row, index, Value::Int16),
        Type::INT4 => get(row, index, Value::Int32),
        Type::INT8 => get(row, index, Value::Int64),
        Type::FLOAT4 => get(row, index, Value::Float32),
        Type::FLOAT8 => get(row, index, Value::Float64),
        Type::BYTEA => get(row, index, |v: Vec<u8>| Value::Bytes(v.into())),
        _ => get(row, index, Value::String),
    }
}

/// Why a poll could not read.
enum ReadError {
    /// The connection or a race: read again at the next interval.
    Transient(String),
    Permanent(ConnectError),
}

fn classify(context: &str, error: &tokio_postgres::Error) -> ReadError {
    let text = format!("{context}: {}", describe(error));
    if is_transient(error) { ReadError::Transient(text) } else { ReadError::Permanent(ConnectError::Task(text)) }
}

/// A value the driver could not decode: reading the row again would fail
/// again, so the task fails (not a connection's hiccup, though it has no
/// SQLSTATE).
fn undecodable(error: tokio_postgres::Error) -> ReadError {
    ReadError::Permanent(ConnectError::Task(format!("reading a row: {}", describe(&error))))
}

impl SourceState {
    async fn connect(&mut self, config: &PostgresSourceConfig) -> std::result::Result<(), ReadError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            for reader in &mut self.readers {
                reader.prepared = None;
            }
            let client = super::connect(&config.connection).await.map_err(|e| classify("connecting", &e))?;
            client.batch_execute("SET TimeZone = 'UTC'").await.map_err(|e| classify("setting TimeZone", &e))?;
            self.client = Some(client);
        }
        Ok(())
    }

    /// The next rows of reader `index` after its position, as records.
    async fn read(
        &mut self,
        config: &PostgresSourceConfig,
        index: usize,
    ) -> std::result::Result<Vec<SourceRecord>, ReadError> {
        self.connect(config).await?;
        let client = self.client.as_ref().ok_or_else(|| ReadError::Transient("no connection".into()))?;
        if self.readers[index].prepared.is_none() {
            let from = self.readers[index].from.clone();
            // The row's columns, from the server's description of a query
            // that reads none.
            let described = client
                .prepare(&format!("SELECT * FROM {from} AS spate_source LIMIT 0"))
                .await
                .map_err(|e| classify("describing the table", &e))?;
            let columns: Vec<(String, Type)> =
                described.columns().iter().map(|c| (c.name().to_string(), c.type_().clone())).collect();
            let text = incremental_query(config, &from, &columns)
                .map_err(|e| ReadError::Permanent(ConnectError::Config(e)))?;
            let statement = client.prepare(&text).await.map_err(|e| classify("preparing the query", &e))?;
            self.readers[index].prepared = Some((statement, columns));
        }
        let reader = &self.readers[index];
        let Some((statement, columns)) = &reader.prepared else { return Ok(Vec::new()) };
        let position = &reader.position;
        let rows = match config.mode {
            Mode::Incrementing => client.query(statement, &[&position.incrementing]).await,
            Mode::Timestamp => client.query(statement, &[&position.timestamp]).await,
            Mode::TimestampIncrementing => {
                client.query(statement, &[&position.timestamp, &position.incrementing]).await
            }
        }
        .map_err(|e| classify("reading rows", &e))?;
        let schema = Schema {
            name: reader.name.clone(),
            ..Schema::structure(
                columns.iter().map(|(name, t)| Field { name: name.clone(), schema: schema_for(t) }).collect(),
            )
        };
        let mut records = Vec::with_capacity(rows.len());
        let mut position = reader.position.clone();
        for row in &rows {
            let mut fields = Vec::with_capacity(columns.len());
            for (column, (name, column_type)) in columns.iter().enumerate() {
                let value = column_value(row, column, column_type).map_err(undecodable)?;
                fields.push((name.clone(), value));
            }
            if config.mode.incrementing() {
                position.incrementing = row.try_get(OFFSET_INCREMENTING_COLUMN).map_err(undecodable)?;
            }
            if config.mode.timestamp() {
                position.timestamp = row.try_get(OFFSET_TIMESTAMP_COLUMN).map_err(undecodable)?;
            }
            let value = SchemaAndValue::new(Some(schema.clone()), Value::Struct(fields));
            records.push(SourceRecord {
                source_partition: Some(reader.partition.clone()),
                source_offset: Some(position.offset(config.mode)),
                record: ConnectRecord::new(reader.topic.clone(), SchemaAndValue::NULL, value),
            });
        }
        let full = rows.len() >= config.batch_rows_max;
        let reader = &mut self.readers[index];
        reader.position = position;
        // A full batch means more is waiting: read again at once.
        reader.next_poll =
            if full { Instant::now() } else { Instant::now() + Duration::from_millis(config.poll_interval_ms) };
        Ok(records)
    }
}

impl SourceTask for PostgresSourceTask {
    fn start(&mut self, props: &Props, offsets: &dyn OffsetStorageReader) -> Result<()> {
        let config = PostgresSourceConfig::parse(props).map_err(|(_, message)| ConnectError::Config(message))?;
        let inputs: Vec<(Option<String>, String, &str, String)> = match &config.input {
            Input::Tables(tables) => tables
                .iter()
                .map(|table| {
                    let from = TableName::from_format(table, "").map_err(ConnectError::Config)?;
                    Ok((
                        Some(table.clone()),
                        from.quoted().to_string(),
                        "table",
                        format!("{}{table}", config.topic_prefix),
                    ))
                })
                .collect::<Result<_>>()?,
            Input::Query(query) => vec![(None, format!("({query})"), "query", config.topic_prefix.clone())],
        };
        let mut readers = Vec::with_capacity(inputs.len());
        for (name, from, partition_field, topic) in inputs {
            if topic.is_empty() {
                return Err(ConnectError::Config(format!("{QUERY_CONFIG} needs {TOPIC_PREFIX_CONFIG}, its topic")));
            }
            let mut partition = SourcePartition::new();
            let partition_value = match (&name, &config.input) {
                (Some(table), _) => table.clone(),
                (None, Input::Query(query)) => query.clone(),
                (None, Input::Tables(_)) => String::new(),
            };
            partition.insert(partition_field.to_string(), partition_value.into());
            let position = Position::from_offset(offsets.offset(&partition).as_ref());
            tracing::info!(?partition, ?position, "PostgresSource resumes");
            readers.push(Reader { name, from, partition, topic, position, next_poll: Instant::now(), prepared: None });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectError::io("starting PostgresSource's runtime", e))?;
        self.started = Some(StartedSource { config, state: SourceState { readers, client: None }, runtime });
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        let Some(started) = self.started.as_mut() else {
            return Err(ConnectError::Task("PostgresSourceTask was not started".into()));
        };
        let now = Instant::now();
        let due =
            started.state.readers.iter().enumerate().min_by_key(|(_, r)| r.next_poll).map(|(i, r)| (i, r.next_poll));
        let Some((index, next_poll)) = due else { return Ok(Vec::new()) };
        if next_poll > now {
            // Short sleeps, so that pause and stop are seen.
            std::thread::sleep((next_poll - now).min(Duration::from_millis(POSTGRES_SOURCE_WAIT_STEP_MS)));
            return Ok(Vec::new());
        }
        let interval = Duration::from_millis(started.config.poll_interval_ms);
        match started.runtime.block_on(started.state.read(&started.config, index)) {
            Ok(records) => Ok(records),
            Err(ReadError::Transient(why)) => {
                tracing::warn!(error = %why, "PostgresSource could not read; trying again next interval");
                started.state.client = None;
                started.state.readers[index].next_poll = Instant::now() + interval;
                Ok(Vec::new())
            }
            Err(ReadError::Permanent(error)) => Err(error),
        }
    }

    fn stop(&mut self) {
        self.started = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::parse;

    fn config(extra: &str) -> PostgresSourceConfig {
        let props =
            parse(&format!("connection.url=postgresql://u@127.0.0.1:1/db\ntopic.prefix=pg-\n{extra}")).expect("props");
        PostgresSourceConfig::parse(&props).expect("config")
    }

    #[test]
    fn queries_ask_for_rows_after_the_position_in_offset_order_with_positions_as_parameters() {
        let columns = vec![("id".to_string(), Type::INT8), ("at".to_string(), Type::TIMESTAMPTZ)];
        let inc = config("table.whitelist=t\nmode=incrementing\nincrementing.column.name=id\nbatch.max.rows=50");
        assert_eq!(
            incremental_query(&inc, "\"t\"", &columns).expect("ok"),
            "SELECT \"id\", \"at\"::text AS \"at\", \"id\"::int8 AS __spate_incrementing FROM \"t\" AS spate_source \
             WHERE \"id\" > $1::int8 ORDER BY \"id\" LIMIT 50"
        );
        let both = config(
            "table.whitelist=t\nmode=timestamp+incrementing\nincrementing.column.name=id\ntimestamp.column.name=at",
        );
        let text = incremental_query(&both, "\"t\"", &columns).expect("ok");
        assert!(
            text.ends_with(
                "WHERE \"at\" < now() AND ((\"at\" = CAST($1::text AS timestamptz) AND \"id\" > $2::int8) \
                 OR \"at\" > CAST($1::text AS timestamptz)) ORDER BY \"at\", \"id\" LIMIT 100"
            ),
            "{text}"
        );
    }

    #[test]
    fn keys_are_checked_and_tables_are_dealt_to_tasks() {
        for (bad, key) in [
            ("mode=incrementing\nincrementing.column.name=id", TABLES_CONFIG),
            ("table.whitelist=t\nquery=select 1\nmode=incrementing\nincrementing.column.name=id", TABLES_CONFIG),
            ("table.whitelist=t\nmode=bulk", MODE_CONFIG),
            ("table.whitelist=t\nmode=timestamp", TIMESTAMP_COLUMN_CONFIG),
            (
                "table.whitelist=t\nmode=incrementing\nincrementing.column.name=id\nbatch.max.rows=0",
                BATCH_MAX_ROWS_CONFIG,
            ),
        ] {
            let props = parse(&format!("connection.url=postgresql://u@h/db\n{bad}")).expect("props");
            assert_eq!(PostgresSourceConfig::parse(&props).expect_err(bad).0, key, "{bad}");
        }
        let props = parse(
            "connection.url=postgresql://u@h/db\ntopic.prefix=p-\ntable.whitelist=a,b,c\nmode=incrementing\nincrementing.column.name=id",
        )
        .expect("props");
        let mut connector = PostgresSourceConnector::default();
        connector.start(&props).expect("start");
        let tables: Vec<String> =
            connector.task_configs(2).iter().map(|p| p.get(TASK_TABLES_CONFIG).cloned().unwrap_or_default()).collect();
        assert_eq!(tables, ["a,c", "b"]);
        assert_eq!(connector.task_configs(8).len(), 3, "no task without a table");
    }

    #[test]
    fn a_position_resumes_from_a_stored_offset_and_starts_before_everything_without_one() {
        assert_eq!(Position::from_offset(None), Position { incrementing: -1, timestamp: "-infinity".into() });
        let position = Position { incrementing: 42, timestamp: "2026-12-07 18:00:00.123456+00".into() };
        let stored = position.offset(Mode::TimestampIncrementing);
        assert_eq!(Position::from_offset(Some(&stored)), position);
        assert_eq!(
            serde_json::Value::Object(position.offset(Mode::Incrementing)),
            serde_json::json!({"incrementing": 42})
        );
    }
}
