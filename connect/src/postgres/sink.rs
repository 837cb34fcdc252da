//! PostgresSink: records of topics become rows of PostgreSQL tables, with
//! Confluent's JDBC sink keys (`connection.url`, `table.name.format`,
//! `insert.mode`, `pk.mode`, `pk.fields`, `auto.create`,
//! `delete.enabled`, `batch.size`, `max.retries`, `retry.backoff.ms`).
//!
//! `put` collects records and writes them `batch.size` at a time; `flush`
//! writes the rest. Each batch is one transaction whose statements are
//! pipelined on the connection, committed before `flush` returns, and the
//! worker commits the consumer offsets only after `flush`: at-least-once,
//! and with `insert.mode=upsert` a replay writes the same rows again
//! (idempotent). A transient error (the connection lost, a serialization
//! failure, a deadlock) rolls the batch back and tries it again after
//! `retry.backoff.ms`, at most `max.retries` times, then fails the task. A
//! record that does not fit its table (a value of the wrong type, a
//! constraint) is permanent: it fails the task, or under
//! `errors.tolerance=all` is handed to the worker for the dead-letter
//! topic while the batch's other rows are written.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use spate_client::TopicPartition;
use tokio_postgres::{Client, Statement};

use super::sql::{self, ColumnType, NewColumn, TableName, Target};
use super::{ColumnKind, KeyError, Param, connection_config, describe, is_transient, param_for};
use crate::connector::{
    ConfigKey, ConfigReport, ConfigType, Connector, ErrantRecord, Importance, SinkConnector, SinkTask, validate_parsed,
};
use crate::data::{Schema, SchemaAndValue, Value};
use crate::error::{ConnectError, Result};
use crate::limits::{
    POSTGRES_RETRY_BACKOFF_MS_MAX, POSTGRES_SINK_BATCH_ROWS_MAX, POSTGRES_STATEMENT_PARAMS_MAX,
    POSTGRES_STATEMENT_ROWS_MAX,
};
use crate::props::Props;
use crate::record::SinkRecord;

const TABLE_NAME_FORMAT_CONFIG: &str = "table.name.format";
const INSERT_MODE_CONFIG: &str = "insert.mode";
const PK_MODE_CONFIG: &str = "pk.mode";
const PK_FIELDS_CONFIG: &str = "pk.fields";
const AUTO_CREATE_CONFIG: &str = "auto.create";
const DELETE_ENABLED_CONFIG: &str = "delete.enabled";
const BATCH_SIZE_CONFIG: &str = "batch.size";
const MAX_RETRIES_CONFIG: &str = "max.retries";
const RETRY_BACKOFF_MS_CONFIG: &str = "retry.backoff.ms";
const GROUP: &str = "PostgresSink";

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
        key(
            TABLE_NAME_FORMAT_CONFIG,
            ConfigType::String,
            Some("${topic}"),
            Importance::Medium,
            "The table of a topic's records; ${topic} is the topic, a dot separates schema and table",
        ),
        key(INSERT_MODE_CONFIG, ConfigType::String, Some("insert"), Importance::High, "insert or upsert"),
        key(PK_MODE_CONFIG, ConfigType::String, Some("none"), Importance::High, "none, record_key or record_value"),
        key(
            PK_FIELDS_CONFIG,
            ConfigType::List,
            Some(""),
            Importance::Medium,
            "The primary key's fields (record_key: of the key, all when empty; record_value: of the value)",
        ),
        key(AUTO_CREATE_CONFIG, ConfigType::Boolean, Some("false"), Importance::Medium, "Create missing tables"),
        key(
            DELETE_ENABLED_CONFIG,
            ConfigType::Boolean,
            Some("false"),
            Importance::Medium,
            "A null value deletes the key's row (pk.mode=record_key)",
        ),
        key(BATCH_SIZE_CONFIG, ConfigType::Int, Some("3000"), Importance::Medium, "Rows per transaction"),
        key(MAX_RETRIES_CONFIG, ConfigType::Int, Some("10"), Importance::Medium, "Retries of a batch"),
        key(
            RETRY_BACKOFF_MS_CONFIG,
            ConfigType::Int,
            Some("3000"),
            Importance::Medium,
            "The wait before each retry of a batch",
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PkMode {
    None,
    RecordKey,
    RecordValue,
}

/// A validated PostgresSink configuration.
#[derive(Debug, Clone)]
pub struct PostgresSinkConfig {
    connection: tokio_postgres::Config,
    table_format: String,
    upsert: bool,
    pk_mode: PkMode,
    pk_fields: Vec<String>,
    auto_create: bool,
    delete_enabled: bool,
    batch_rows_max: usize,
    retries_max: u32,
    retry_backoff_ms: u64,
    tolerate_errors: bool,
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

fn boolean(props: &Props, key: &'static str) -> Result<bool, KeyError> {
    match props.get(key).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err((key, format!("{key} must be true or false, not {other:?}"))),
    }
}

fn choice<T: Copy>(props: &Props, key: &'static str, choices: &[(&str, T)]) -> Result<T, KeyError> {
    let text = props.get(key).map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
    let text = text.as_deref().unwrap_or(choices[0].0);
    choices.iter().find(|(name, _)| *name == text).map(|(_, value)| *value).ok_or_else(|| {
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        (key, format!("{key} must be one of {}, not {text:?}", names.join(", ")))
    })
}

impl PostgresSinkConfig {
    pub fn parse(props: &Props) -> Result<PostgresSinkConfig, KeyError> {
        let connection = connection_config(props)?;
        let table_format = props
            .get(TABLE_NAME_FORMAT_CONFIG)
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "${topic}".to_string());
        // A topic name is never empty: a sample one checks the format.
        TableName::from_format(&table_format, "topic").map_err(|e| (TABLE_NAME_FORMAT_CONFIG, e))?;
        let upsert = choice(props, INSERT_MODE_CONFIG, &[("insert", false), ("upsert", true)])?;
        let pk_mode = choice(
            props,
            PK_MODE_CONFIG,
            &[("none", PkMode::None), ("record_key", PkMode::RecordKey), ("record_value", PkMode::RecordValue)],
        )?;
        let pk_fields: Vec<String> = props
            .get(PK_FIELDS_CONFIG)
            .map(|v| v.split(',').map(str::trim).filter(|f| !f.is_empty()).map(String::from).collect())
            .unwrap_or_default();
        for field in &pk_fields {
            sql::quote_ident(field).map_err(|e| (PK_FIELDS_CONFIG, format!("{PK_FIELDS_CONFIG}: {e}")))?;
        }
        if upsert && pk_mode == PkMode::None {
            return Err((INSERT_MODE_CONFIG, format!("{INSERT_MODE_CONFIG}=upsert needs a key: set {PK_MODE_CONFIG}")));
        }
        if pk_mode == PkMode::RecordValue && pk_fields.is_empty() {
            return Err((PK_FIELDS_CONFIG, format!("{PK_MODE_CONFIG}=record_value needs {PK_FIELDS_CONFIG}")));
        }
        let delete_enabled = boolean(props, DELETE_ENABLED_CONFIG)?;
        if delete_enabled && pk_mode != PkMode::RecordKey {
            return Err((
                DELETE_ENABLED_CONFIG,
                format!("{DELETE_ENABLED_CONFIG}=true needs {PK_MODE_CONFIG}=record_key"),
            ));
        }
        Ok(PostgresSinkConfig {
            connection,
            table_format,
            upsert,
            pk_mode,
            pk_fields,
            auto_create: boolean(props, AUTO_CREATE_CONFIG)?,
            delete_enabled,
            batch_rows_max: int_in(props, BATCH_SIZE_CONFIG, 3000, 1, POSTGRES_SINK_BATCH_ROWS_MAX as u64)? as usize,
            retries_max: int_in(props, MAX_RETRIES_CONFIG, 10, 0, 1000)? as u32,
            retry_backoff_ms: int_in(props, RETRY_BACKOFF_MS_CONFIG, 3000, 0, POSTGRES_RETRY_BACKOFF_MS_MAX)?,
            tolerate_errors: props.get("errors.tolerance").is_some_and(|v| v.trim().eq_ignore_ascii_case("all")),
        })
    }
}

/// A column of a row: its name, its schema when the record had one (for
/// `auto.create`), its value.
#[derive(Debug, Clone, PartialEq)]
struct Column {
    name: String,
    schema: Option<Schema>,
    value: Value,
}

/// What one record does to its table.
#[derive(Debug)]
struct Row {
    record: SinkRecord,
    table: TableName,
    delete: bool,
    /// Key columns first (those named in `key`), then the value's.
    columns: Vec<Column>,
    key: Vec<String>,
}

/// A struct's or JSON object's fields as columns.
fn fields_of(data: &SchemaAndValue, what: &str) -> std::result::Result<Vec<Column>, String> {
    match &data.value {
        Value::Struct(fields) => Ok(fields
            .iter()
            .map(|(name, value)| Column {
                name: name.clone(),
                schema: data
                    .schema
                    .as_ref()
                    .and_then(|s| s.fields.iter().find(|f| &f.name == name))
                    .map(|f| f.schema.clone()),
                value: value.clone(),
            })
            .collect()),
        Value::Map(entries) => entries
            .iter()
            .map(|(name, value)| match name {
                Value::String(name) => Ok(Column { name: name.clone(), schema: None, value: value.clone() }),
                other => Err(format!("the {what} is a map with a key {other} that is not a string")),
            })
            .collect(),
        other => Err(format!("the {what} must be a struct or a JSON object to be a row, not {other}")),
    }
}

fn pick(columns: &[Column], names: &[String], what: &str) -> std::result::Result<Vec<Column>, String> {
    names
        .iter()
        .map(|name| {
            columns
                .iter()
                .find(|c| &c.name == name)
                .cloned()
                .ok_or_else(|| format!("the {what} has no field {name:?} named in {PK_FIELDS_CONFIG}"))
        })
        .collect()
}

impl PostgresSinkConfig {
    fn key_columns(&self, key: &SchemaAndValue) -> std::result::Result<Vec<Column>, String> {
        match &key.value {
            Value::Null => Err(format!("{PK_MODE_CONFIG}=record_key needs a record key; this record has none")),
            Value::Struct(_) | Value::Map(_) => {
                let fields = fields_of(key, "key")?;
                if self.pk_fields.is_empty() { Ok(fields) } else { pick(&fields, &self.pk_fields, "key") }
            }
            primitive => match self.pk_fields.as_slice() {
                [name] => Ok(vec![Column { name: name.clone(), schema: key.schema.clone(), value: primitive.clone() }]),
                _ => Err(format!("a key that is not a struct needs exactly one column name in {PK_FIELDS_CONFIG}")),
            },
        }
    }

    /// The row a record writes or deletes; None for a tombstone that
    /// deletes nothing (`delete.enabled=false`); Err for a record that
    /// cannot be a row (a permanent error of that record).
    fn row_of(&self, record: SinkRecord) -> std::result::Result<Option<Row>, Box<(SinkRecord, String)>> {
        match self.columns_of(&record) {
            Ok(None) => Ok(None),
            Ok(Some((table, delete, columns, key))) => {
                if columns.is_empty() {
                    return Err(Box::new((record, "the record has no fields to write".into())));
                }
                Ok(Some(Row { record, table, delete, columns, key }))
            }
            Err(why) => Err(Box::new((record, why))),
        }
    }

    #[allow(clippy::type_complexity)] // one row's parts, assembled by row_of
    fn columns_of(
        &self,
        record: &SinkRecord,
    ) -> std::result::Result<Option<(TableName, bool, Vec<Column>, Vec<String>)>, String> {
        let table = TableName::from_format(&self.table_format, &record.record.topic)?;
        let value = &record.record.value;
        if value.value.is_null() {
            if !self.delete_enabled {
                return Ok(None);
            }
            let key = self.key_columns(&record.record.key)?;
            let names = key.iter().map(|c| c.name.clone()).collect();
            return Ok(Some((table, true, key, names)));
        }
        let fields = fields_of(value, "value")?;
        let (columns, key) = match self.pk_mode {
            PkMode::None => (fields, Vec::new()),
            PkMode::RecordKey => {
                let mut columns = self.key_columns(&record.record.key)?;
                let key: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
                // The key's columns win over value fields of the same name.
                columns.extend(fields.into_iter().filter(|f| !key.contains(&f.name)));
                (columns, key)
            }
            PkMode::RecordValue => {
                pick(&fields, &self.pk_fields, "value")?;
                (fields, self.pk_fields.clone())
            }
        };
        Ok(Some((table, false, columns, key)))
    }
}

#[derive(Debug, Default)]
pub struct PostgresSinkConnector {
    props: Props,
}

impl Connector for PostgresSinkConnector {
    fn config_def(&self) -> Vec<ConfigKey> {
        keys()
    }

    fn validate(&self, props: &Props) -> Vec<ConfigReport> {
        validate_parsed(&keys(), props, PostgresSinkConfig::parse)
    }

    fn start(&mut self, props: &Props) -> Result<()> {
        PostgresSinkConfig::parse(props).map_err(|(_, message)| ConnectError::Config(message))?;
        self.props = props.clone();
        Ok(())
    }

    fn task_configs(&self, tasks_max: usize) -> Vec<Props> {
        // Each task is a consumer in the connector's group with a
        // connection of its own.
        vec![self.props.clone(); tasks_max.max(1)]
    }
}

impl SinkConnector for PostgresSinkConnector {
    fn create_task(&self) -> Box<dyn SinkTask> {
        Box::new(PostgresSinkTask::default())
    }
}

#[derive(Default)]
pub struct PostgresSinkTask {
    started: Option<Started>,
}

impl std::fmt::Debug for PostgresSinkTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = self.started.as_ref().map(|s| &s.config);
        f.debug_struct("PostgresSinkTask").field("config", &config).finish()
    }
}

struct Started {
    config: PostgresSinkConfig,
    db: Db,
    /// Records put and not yet written (fewer than `batch.size`).
    buffer: Vec<SinkRecord>,
    errant: Vec<ErrantRecord>,
    /// The task thread drives its connection on a runtime of its own:
    /// sink tasks are plain threads, with one transaction at a time.
    runtime: tokio::runtime::Runtime,
}

/// A statement is prepared once per connection for each table, kind
/// (delete or not), column list and number of rows.
type StatementKey = (TableName, bool, Vec<String>, usize);

/// The connection and what is known through it.
#[derive(Default)]
struct Db {
    client: Option<Client>,
    /// Each table's columns as the catalog gives them, loaded once.
    tables: HashMap<TableName, Vec<(String, ColumnKind)>>,
    /// Prepared on `client`; emptied when it is replaced.
    statements: HashMap<StatementKey, Statement>,
}

/// Why a batch could not be written.
enum WriteError {
    /// Worth trying the whole batch again on a new connection.
    Transient(String),
    /// The task cannot go on (a missing table without `auto.create`).
    Fatal(ConnectError),
}

fn classify(context: &str, error: &tokio_postgres::Error) -> WriteError {
    let text = format!("{context}: {}", describe(error));
    if is_transient(error) { WriteError::Transient(text) } else { WriteError::Fatal(ConnectError::Task(text)) }
}

/// A row ready to execute: its single-row statement and parameters, and
/// what lets it share a multi-row INSERT with its neighbours.
struct Planned {
    index: usize,
    statement: Statement,
    params: Vec<Param>,
    /// None for a delete (one row per statement).
    shared: Option<Shared>,
}

/// Rows of equal `key` may be written by one INSERT of many rows.
struct Shared {
    key: StatementKey,
    targets: Vec<Target>,
    upsert_key: Option<Vec<String>>,
    /// The row's key values (under upsert): two rows with the same key
    /// never share a statement.
    key_values: Option<String>,
}

/// Consecutive planned rows (indexes into the plan) written by one
/// statement.
struct Chunk {
    rows: std::ops::Range<usize>,
    statement: Option<Statement>,
}

/// A run of rows cut into statements of a few sizes only: whole runs of
/// the most rows a statement takes, else powers of two (a partial batch
/// of 300 rows is 256 + 32 + 8 + 4), so a connection prepares at most a
/// dozen INSERTs per table and column list, whatever sizes flushes cut.
fn statement_sizes(rows: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
    if rows.len() == POSTGRES_STATEMENT_ROWS_MAX || rows.len().is_power_of_two() {
        return vec![rows];
    }
    let mut pieces = Vec::new();
    let mut start = rows.start;
    while start < rows.end {
        let left = rows.end - start;
        let size = 1 << left.ilog2();
        pieces.push(start..start + size);
        start += size;
    }
    pieces
}

/// Cuts `planned` into runs of rows that one INSERT can write: the same
/// table and columns, at most `rows_max` rows and the protocol's parameter
/// count, and under upsert no key twice (PostgreSQL refuses to update a
/// row twice in one command).
fn chunks_of(planned: &[Option<&Shared>], rows_max: usize) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut keys_seen = std::collections::HashSet::new();
    for (at, p) in planned.iter().enumerate() {
        let fits = at > start
            && match (planned[start], p) {
                (Some(a), Some(b)) => {
                    let params_max = POSTGRES_STATEMENT_PARAMS_MAX / a.targets.len().max(1);
                    a.key == b.key
                        && at - start < rows_max.min(params_max)
                        && b.key_values.as_ref().is_none_or(|k| !keys_seen.contains(k))
                }
                _ => false,
            };
        if at > start && !fits {
            chunks.push(start..at);
            start = at;
            keys_seen.clear();
        }
        if let Some(key) = p.and_then(|s| s.key_values.clone()) {
            keys_seen.insert(key);
        }
    }
    if start < planned.len() {
        chunks.push(start..planned.len());
    }
    chunks
}

impl Db {
    async fn client(&mut self, config: &PostgresSinkConfig) -> std::result::Result<&Client, WriteError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            self.statements.clear();
            let client = super::connect(&config.connection).await.map_err(|e| classify("connecting", &e))?;
            self.client = Some(client);
        }
        self.client.as_ref().ok_or_else(|| WriteError::Transient("no connection".into()))
    }

    /// The table's columns, creating it from `row` if it is missing and
    /// `auto.create` is set; None if it is missing and `row` deletes.
    async fn table(
        &mut self,
        config: &PostgresSinkConfig,
        row: &Row,
    ) -> std::result::Result<Option<Vec<(String, ColumnKind)>>, WriteError> {
        if let Some(columns) = self.tables.get(&row.table) {
            return Ok(Some(columns.clone()));
        }
        let mut columns = self.load_columns(config, &row.table).await?;
        if columns.is_empty() {
            if row.delete {
                return Ok(None);
            }
            if !config.auto_create {
                return Err(WriteError::Fatal(ConnectError::Task(format!(
                    "table {} does not exist and {AUTO_CREATE_CONFIG} is false",
                    row.table
                ))));
            }
            let new_columns: Vec<NewColumn> = row
                .columns
                .iter()
                .map(|c| NewColumn {
                    name: c.name.clone(),
                    column_type: c.schema.as_ref().map_or_else(|| ColumnType::infer(&c.value), ColumnType::from_schema),
                    nullable: !row.key.contains(&c.name) && c.schema.as_ref().is_none_or(|s| s.optional),
                })
                .collect();
            let create = sql::create_table(&row.table, &new_columns, &row.key)
                .map_err(|e| WriteError::Fatal(ConnectError::Task(e)))?;
            tracing::info!(table = %row.table, sql = %create, "creating table");
            let client = self.client(config).await?;
            client.batch_execute(&create).await.map_err(|e| classify("creating the table", &e))?;
            columns = self.load_columns(config, &row.table).await?;
        }
        self.tables.insert(row.table.clone(), columns.clone());
        Ok(Some(columns))
    }

    async fn load_columns(
        &mut self,
        config: &PostgresSinkConfig,
        table: &TableName,
    ) -> std::result::Result<Vec<(String, ColumnKind)>, WriteError> {
        let client = self.client(config).await?;
        let rows = client
            .query(
                "SELECT a.attname::text, t.typname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&table.quoted()],
            )
            .await
            .map_err(|e| classify("reading the table's columns", &e))?;
        let mut columns = Vec::with_capacity(rows.len());
        for row in rows {
            let read = |i| row.try_get::<_, String>(i).map_err(|e| classify("reading the table's columns", &e));
            let (name, typname, format_type) = (read(0)?, read(1)?, read(2)?);
            columns.push((name, ColumnKind::from_catalog(&typname, &format_type)));
        }
        Ok(columns)
    }

    /// The statement and parameters of `row`, or why the row does not fit
    /// its table (permanent, this row only). None: nothing to do.
    async fn plan(
        &mut self,
        config: &PostgresSinkConfig,
        row: &Row,
    ) -> std::result::Result<std::result::Result<Option<(Statement, Vec<Param>, Option<Shared>)>, String>, WriteError>
    {
        let Some(table_columns) = self.table(config, row).await? else { return Ok(Ok(None)) };
        let mut targets = Vec::with_capacity(row.columns.len());
        let mut params = Vec::with_capacity(row.columns.len());
        for column in &row.columns {
            let Some((_, kind)) = table_columns.iter().find(|(name, _)| name == &column.name) else {
                return Ok(Err(format!("table {} has no column {:?}", row.table, column.name)));
            };
            match param_for(kind, &column.value) {
                Ok(param) => params.push(param),
                Err(why) => return Ok(Err(format!("column {:?}: {why}", column.name))),
            }
            targets.push(Target { name: column.name.clone(), cast: kind.cast() });
        }
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        let statement_key = (row.table.clone(), row.delete, names, 1);
        let upsert_key = config.upsert.then(|| row.key.clone());
        let shared = (!row.delete).then(|| Shared {
            key: statement_key.clone(),
            targets: targets.clone(),
            key_values: upsert_key.as_ref().map(|key| {
                let values: Vec<String> = row
                    .columns
                    .iter()
                    .zip(&params)
                    .filter(|(column, _)| key.contains(&column.name))
                    .map(|(_, param)| format!("{param:?}"))
                    .collect();
                values.join("\u{0}")
            }),
            upsert_key,
        });
        if let Some(statement) = self.statements.get(&statement_key) {
            return Ok(Ok(Some((statement.clone(), params, shared))));
        }
        let text = if row.delete {
            sql::delete(&row.table, &targets)
        } else {
            sql::insert(&row.table, &targets, config.upsert.then_some(row.key.as_slice()))
        };
        let text = match text {
            Ok(text) => text,
            Err(why) => return Ok(Err(why)),
        };
        let client = self.client(config).await?;
        let statement = match client.prepare(&text).await {
            Ok(statement) => statement,
            Err(error) if is_transient(&error) => return Err(classify("preparing", &error)),
            // A statement the server refuses for this row's columns (an
            // upsert whose key has no unique index): this row's error.
            Err(error) => return Ok(Err(describe(&error))),
        };
        self.statements.insert(statement_key, statement.clone());
        Ok(Ok(Some((statement, params, shared))))
    }

    /// The INSERT of `rows` rows like `shared`'s, prepared once.
    async fn statement_for_rows(
        &mut self,
        config: &PostgresSinkConfig,
        shared: &Shared,
        rows: usize,
    ) -> std::result::Result<Statement, WriteError> {
        let mut key = shared.key.clone();
        key.3 = rows;
        if let Some(statement) = self.statements.get(&key) {
            return Ok(statement.clone());
        }
        let text = sql::insert_rows(&key.0, &shared.targets, shared.upsert_key.as_deref(), rows)
            .map_err(|e| WriteError::Fatal(ConnectError::Task(e)))?;
        let client = self.client(config).await?;
        // The single-row form of the same statement was prepared: this
        // one fails only as that one would.
        let statement = client.prepare(&text).await.map_err(|e| classify("preparing", &e))?;
        self.statements.insert(key, statement.clone());
        Ok(statement)
    }

    /// Writes `rows` in one transaction, pipelined. Returns the rows that
    /// failed permanently (index, why); under `errors.tolerance=none` the
    /// first such failure writes nothing (the task fails on it), under
    /// `all` the others are written without them.
    async fn write(
        &mut self,
        config: &PostgresSinkConfig,
        rows: &[Row],
    ) -> std::result::Result<Vec<(usize, String)>, WriteError> {
        let mut failed = Vec::new();
        let mut planned = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            match self.plan(config, row).await? {
                Ok(Some((statement, params, shared))) => planned.push(Planned { index, statement, params, shared }),
                Ok(None) => {}
                Err(why) if config.tolerate_errors => failed.push((index, why)),
                Err(why) => return Ok(vec![(index, why)]),
            }
        }
        if planned.is_empty() {
            return Ok(failed);
        }
        let mut chunks = Vec::new();
        let shared: Vec<Option<&Shared>> = planned.iter().map(|p| p.shared.as_ref()).collect();
        for rows in chunks_of(&shared, POSTGRES_STATEMENT_ROWS_MAX).into_iter().flat_map(statement_sizes) {
            let statement = match (&planned[rows.start].shared, rows.len()) {
                (Some(shared), n) if n > 1 => Some(self.statement_for_rows(config, shared, n).await?),
                _ => None,
            };
            chunks.push(Chunk { rows, statement });
        }
        let client = self.client(config).await?;
        client.batch_execute("BEGIN").await.map_err(|e| classify("BEGIN", &e))?;
        let results = futures::future::join_all(chunks.iter().map(|chunk| match &chunk.statement {
            Some(statement) => {
                let params: Vec<&Param> = planned[chunk.rows.clone()].iter().flat_map(|p| p.params.iter()).collect();
                client.execute_raw(statement, params)
            }
            None => {
                let p = &planned[chunk.rows.start];
                client.execute_raw(&p.statement, p.params.iter().collect::<Vec<_>>())
            }
        }))
        .await;
        let first_error =
            results.into_iter().zip(&chunks).find_map(|(result, c)| result.err().map(|e| (c.rows.start, e)));
        match first_error {
            None => {}
            Some((_, error)) if is_transient(&error) => {
                return Err(classify("writing the batch", &error));
            }
            Some((at, error)) => {
                // Nothing of this transaction stands; a rollback that
                // fails only means the connection is gone.
                let _ = client.batch_execute("ROLLBACK").await;
                // Row by row, to name the rows the server refuses (a
                // statement of many rows does not say which).
                let found = self.write_row_by_row(config, &planned, config.tolerate_errors).await?;
                if !config.tolerate_errors {
                    let first = found.into_iter().next();
                    return Ok(vec![first.unwrap_or_else(|| (planned[at].index, describe(&error)))]);
                }
                failed.extend(found);
                failed.sort_by_key(|(index, _)| *index);
                return Ok(failed);
            }
        }
        client.batch_execute("COMMIT").await.map_err(|e| classify("COMMIT", &e))?;
        Ok(failed)
    }

    /// The slow path once a batch held a row the server refused: one
    /// transaction, each row behind a savepoint, the refused ones rolled
    /// back alone. Without `commit` it stops at the first refused row and
    /// rolls everything back (it only names the row).
    async fn write_row_by_row(
        &mut self,
        config: &PostgresSinkConfig,
        planned: &[Planned],
        commit: bool,
    ) -> std::result::Result<Vec<(usize, String)>, WriteError> {
        let client = self.client(config).await?;
        let mut failed = Vec::new();
        client.batch_execute("BEGIN").await.map_err(|e| classify("BEGIN", &e))?;
        for p in planned {
            client.batch_execute("SAVEPOINT spate_row").await.map_err(|e| classify("SAVEPOINT", &e))?;
            match client.execute_raw(&p.statement, p.params.iter()).await {
                Ok(_) => {}
                Err(error) if is_transient(&error) => return Err(classify("writing a row", &error)),
                Err(error) => {
                    failed.push((p.index, describe(&error)));
                    if !commit {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Ok(failed);
                    }
                    client
                        .batch_execute("ROLLBACK TO SAVEPOINT spate_row")
                        .await
                        .map_err(|e| classify("ROLLBACK TO SAVEPOINT", &e))?;
                }
            }
            client.batch_execute("RELEASE SAVEPOINT spate_row").await.map_err(|e| classify("RELEASE", &e))?;
        }
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        client.batch_execute(end).await.map_err(|e| classify(end, &e))?;
        Ok(failed)
    }
}

fn record_name(record: &SinkRecord) -> String {
    format!("{}-{}@{}", record.record.topic, record.record.kafka_partition.unwrap_or(0), record.kafka_offset)
}

impl Started {
    /// Writes what is buffered as one batch, retrying transient errors.
    fn write_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(self.buffer.len());
        let mut refused: Vec<(SinkRecord, String)> = Vec::new();
        for record in std::mem::take(&mut self.buffer) {
            match self.config.row_of(record) {
                Ok(Some(row)) => rows.push(row),
                Ok(None) => {}
                Err(refusal) => refused.push(*refusal),
            }
        }
        if let Some((record, why)) = refused.first()
            && !self.config.tolerate_errors
        {
            return Err(ConnectError::Data(format!("record {}: {why}", record_name(record))));
        }
        let failed = self.write_with_retries(&rows)?;
        let mut rows: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
        for (index, why) in failed {
            let Some(row) = rows.get_mut(index).and_then(Option::take) else { continue };
            refused.push((row.record, format!("table {}: {why}", row.table)));
        }
        if let Some((record, why)) = refused.first()
            && !self.config.tolerate_errors
        {
            return Err(ConnectError::Data(format!("record {}: {why}", record_name(record))));
        }
        self.errant.extend(refused.into_iter().map(|(record, why)| {
            let error = ConnectError::Data(format!("PostgresSink: record {}: {why}", record_name(&record)));
            ErrantRecord { record, error }
        }));
        Ok(())
    }

    fn write_with_retries(&mut self, rows: &[Row]) -> Result<Vec<(usize, String)>> {
        let mut retry = 0;
        loop {
            match self.runtime.block_on(self.db.write(&self.config, rows)) {
                Ok(failed) => return Ok(failed),
                Err(WriteError::Fatal(error)) => return Err(error),
                Err(WriteError::Transient(why)) if retry < self.config.retries_max => {
                    retry += 1;
                    tracing::warn!(error = %why, retry, "PostgreSQL batch failed; trying again");
                    // A new connection for the next try: the old one may
                    // be dead or mid-transaction.
                    self.db.client = None;
                    std::thread::sleep(Duration::from_millis(self.config.retry_backoff_ms));
                }
                Err(WriteError::Transient(why)) => {
                    self.db.client = None;
                    return Err(ConnectError::Task(format!(
                        "PostgreSQL did not take a batch of {} rows after {} retries; last: {why}",
                        rows.len(),
                        self.config.retries_max
                    )));
                }
            }
        }
    }
}

impl SinkTask for PostgresSinkTask {
    fn start(&mut self, props: &Props) -> Result<()> {
        let config = PostgresSinkConfig::parse(props).map_err(|(_, message)| ConnectError::Config(message))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectError::io("starting PostgresSink's runtime", e))?;
        self.started = Some(Started { config, db: Db::default(), buffer: Vec::new(), errant: Vec::new(), runtime });
        Ok(())
    }

    fn put(&mut self, records: Vec<SinkRecord>) -> Result<()> {
        let Some(started) = self.started.as_mut() else {
            return Err(ConnectError::Task("PostgresSinkTask was not started".into()));
        };
        for record in records {
            started.buffer.push(record);
            if started.buffer.len() >= started.config.batch_rows_max {
                started.write_buffer()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, _offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        match self.started.as_mut() {
            Some(started) => started.write_buffer(),
            None => Err(ConnectError::Task("PostgresSinkTask was not started".into())),
        }
    }

    fn take_errant(&mut self) -> Vec<ErrantRecord> {
        self.started.as_mut().map(|s| std::mem::take(&mut s.errant)).unwrap_or_default()
    }

    fn stop(&mut self) {
        // Unwritten records were not committed: the next run reads them.
        self.started = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Field, SchemaType};
    use crate::props::parse;
    use crate::record::ConnectRecord;

    fn config(extra: &str) -> PostgresSinkConfig {
        let props = parse(&format!("connection.url=postgresql://u@127.0.0.1:1/db\n{extra}")).expect("props");
        PostgresSinkConfig::parse(&props).expect("config")
    }

    fn record(key: SchemaAndValue, value: SchemaAndValue) -> SinkRecord {
        SinkRecord { record: ConnectRecord::new("orders", key, value), kafka_offset: 3 }
    }

    fn map(entries: &[(&str, Value)]) -> SchemaAndValue {
        SchemaAndValue::new(
            None,
            Value::Map(entries.iter().map(|(k, v)| (Value::String(k.to_string()), v.clone())).collect()),
        )
    }

    #[test]
    fn bad_combinations_of_keys_are_refused_with_the_key_named() {
        for (extra, key) in [
            ("insert.mode=upsert", INSERT_MODE_CONFIG),
            ("insert.mode=update", INSERT_MODE_CONFIG),
            ("pk.mode=record_value", PK_FIELDS_CONFIG),
            ("pk.mode=kafka", PK_MODE_CONFIG),
            ("delete.enabled=true\npk.mode=record_value\npk.fields=id", DELETE_ENABLED_CONFIG),
            ("batch.size=0", BATCH_SIZE_CONFIG),
            ("table.name.format=a.b.${topic}", TABLE_NAME_FORMAT_CONFIG),
            ("auto.create=yes", AUTO_CREATE_CONFIG),
        ] {
            let props = parse(&format!("connection.url=postgresql://u@h/db\n{extra}")).expect("props");
            let error = PostgresSinkConfig::parse(&props).expect_err(extra);
            assert_eq!(error.0, key, "{extra}: {}", error.1);
        }
    }

    #[test]
    fn a_primitive_key_becomes_the_one_named_key_column_before_the_values_fields() {
        let config = config("insert.mode=upsert\npk.mode=record_key\npk.fields=id\n");
        let row = config
            .row_of(record(
                SchemaAndValue::new(Some(Schema::new(SchemaType::Int64)), Value::Int64(9)),
                map(&[("id", Value::Int64(1)), ("line", Value::String("x".into()))]),
            ))
            .expect("fits")
            .expect("a row");
        let names: Vec<&str> = row.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "line"], "the key's id wins over the value's");
        assert_eq!(row.columns[0].value, Value::Int64(9));
        assert_eq!(row.key, ["id"]);
        assert_eq!(row.table.quoted(), "\"orders\"");
    }

    #[test]
    fn struct_values_keep_their_field_schemas_and_tombstones_delete_only_when_enabled() {
        let schema = Schema::structure(vec![
            Field { name: "id".into(), schema: Schema::new(SchemaType::Int32) },
            Field { name: "name".into(), schema: Schema::string().optional() },
        ]);
        let value = SchemaAndValue::new(
            Some(schema),
            Value::Struct(vec![("id".into(), Value::Int32(1)), ("name".into(), Value::String("a".into()))]),
        );
        let row = config("").row_of(record(SchemaAndValue::NULL, value)).expect("fits").expect("row");
        assert_eq!(row.columns[0].schema.as_ref().map(|s| s.schema_type), Some(SchemaType::Int32));
        assert!(row.columns[1].schema.as_ref().is_some_and(|s| s.optional));

        let key = map(&[("id", Value::Int64(5))]);
        let tombstone = || record(key.clone(), SchemaAndValue::NULL);
        assert!(config("pk.mode=record_key").row_of(tombstone()).expect("ok").is_none(), "ignored");
        let delete = config("pk.mode=record_key\ndelete.enabled=true").row_of(tombstone()).expect("ok").expect("row");
        assert!(delete.delete);
        assert_eq!(delete.key, ["id"]);
    }

    #[test]
    fn rows_share_a_statement_only_with_the_same_columns_no_repeated_key_and_within_the_bound() {
        let table = TableName::from_format("${topic}", "t").expect("ok");
        let shared = |columns: &[&str], key: Option<&str>| Shared {
            key: (table.clone(), false, columns.iter().map(|c| c.to_string()).collect(), 1),
            targets: columns.iter().map(|c| Target { name: c.to_string(), cast: None }).collect(),
            upsert_key: key.map(|_| vec!["id".to_string()]),
            key_values: key.map(String::from),
        };
        let ab = [shared(&["id", "a"], Some("1")), shared(&["id", "a"], Some("2")), shared(&["id", "a"], Some("1"))];
        let other = shared(&["id", "b"], Some("3"));
        let rows = [Some(&ab[0]), Some(&ab[1]), Some(&ab[2]), Some(&other), None, Some(&other)];
        // Key 1 again starts a statement; other columns another; a delete
        // (None) is alone.
        assert_eq!(chunks_of(&rows, 500), [0..2, 2..3, 3..4, 4..5, 5..6]);
        let inserts: Vec<Shared> = (0..5).map(|_| shared(&["x"], None)).collect();
        let rows: Vec<Option<&Shared>> = inserts.iter().map(Some).collect();
        assert_eq!(chunks_of(&rows, 2), [0..2, 2..4, 4..5], "at most rows_max rows");
        assert_eq!(chunks_of(&rows, 500), vec![0..5_usize], "inserts without a key may repeat anything");
        assert!(chunks_of(&[], 500).is_empty());
        assert_eq!(statement_sizes(10..310), [10..266, 266..298, 298..306, 306..310]);
        assert_eq!(statement_sizes(0..POSTGRES_STATEMENT_ROWS_MAX), vec![0..POSTGRES_STATEMENT_ROWS_MAX]);
        assert_eq!(statement_sizes(4..5), vec![4..5_usize]);
    }

    #[test]
    fn records_that_cannot_be_rows_are_refused_not_panicked_on() {
        let config_key = config("pk.mode=record_key");
        for (key, value) in [
            (SchemaAndValue::NULL, map(&[("a", Value::Int64(1))])),
            (SchemaAndValue::string("k"), map(&[("a", Value::Int64(1))])),
            (map(&[("id", Value::Int64(1))]), SchemaAndValue::string("not a row")),
        ] {
            assert!(config_key.row_of(record(key, value)).is_err());
        }
        let by_value = config("pk.mode=record_value\npk.fields=id");
        assert!(by_value.row_of(record(SchemaAndValue::NULL, map(&[("other", Value::Int64(1))]))).is_err());
        let weird = SchemaAndValue::new(None, Value::Map(vec![(Value::Int64(1), Value::Int64(1))]));
        assert!(config("").row_of(record(SchemaAndValue::NULL, weird)).is_err());
        assert!(config("").row_of(record(SchemaAndValue::NULL, map(&[]))).is_err(), "no columns");
    }
}
