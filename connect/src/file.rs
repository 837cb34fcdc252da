//! FileStreamSource and FileStreamSink, as Kafka's: lines of a file (or
//! stdin) become records of one topic; records become lines of a file (or
//! stdout). The source stores its byte position in the file as its offset
//! (`{"filename": ...}` -> `{"position": ...}`), so it resumes there after
//! a restart.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use spate_client::TopicPartition;

use crate::connector::{
    ConfigKey, ConfigReport, ConfigType, Connector, Importance, OffsetStorageReader, SinkConnector, SinkTask,
    SourceConnector, SourceTask, validate_against,
};
use crate::data::SchemaAndValue;
use crate::error::{ConnectError, Result};
use crate::limits::{FILE_SOURCE_EOF_WAIT_MS, FILE_SOURCE_LINE_BYTES_MAX, FILE_SOURCE_READ_BYTES};
use crate::props::Props;
use crate::record::{ConnectRecord, SinkRecord, SourceOffset, SourcePartition, SourceRecord};

const FILE_CONFIG: &str = "file";
const TOPIC_CONFIG: &str = "topic";
const BATCH_SIZE_CONFIG: &str = "batch.size";
const BATCH_SIZE_DEFAULT: usize = 2000;
const FILENAME_FIELD: &str = "filename";
const POSITION_FIELD: &str = "position";

fn source_keys() -> Vec<ConfigKey> {
    vec![
        ConfigKey {
            name: FILE_CONFIG,
            config_type: ConfigType::String,
            default: Some(""),
            importance: Importance::High,
            documentation: "Source filename. If not specified, the standard input will be used",
            group: "FileStreamSource",
        },
        ConfigKey {
            name: TOPIC_CONFIG,
            config_type: ConfigType::List,
            default: None,
            importance: Importance::High,
            documentation: "The topic to publish data to",
            group: "FileStreamSource",
        },
        ConfigKey {
            name: BATCH_SIZE_CONFIG,
            config_type: ConfigType::Int,
            default: Some("2000"),
            importance: Importance::Low,
            documentation: "The maximum number of records the source task can read from the file each time it is polled",
            group: "FileStreamSource",
        },
    ]
}

fn file_of(props: &Props) -> Option<PathBuf> {
    props.get(FILE_CONFIG).map(|f| f.trim()).filter(|f| !f.is_empty()).map(PathBuf::from)
}

fn batch_size(props: &Props) -> Result<usize> {
    match props.get(BATCH_SIZE_CONFIG) {
        None => Ok(BATCH_SIZE_DEFAULT),
        Some(value) => match value.trim().parse::<usize>() {
            Ok(size) if size > 0 => Ok(size),
            _ => Err(ConnectError::Config(format!("{BATCH_SIZE_CONFIG} must be a positive integer, not {value:?}"))),
        },
    }
}

fn single_topic(props: &Props) -> Result<String> {
    let topics: Vec<&str> = props
        .get(TOPIC_CONFIG)
        .map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()).collect())
        .unwrap_or_default();
    match topics.as_slice() {
        [topic] => Ok((*topic).to_string()),
        _ => Err(ConnectError::Config(
            "'topic' in FileStreamSourceConnector configuration requires definition of a single topic".into(),
        )),
    }
}

/// Kafka's FileStreamSourceConnector: one task, whatever `tasks.max` says
/// (a file has one reader).
#[derive(Debug, Default)]
pub struct FileStreamSourceConnector {
    props: Props,
}

impl Connector for FileStreamSourceConnector {
    fn config_def(&self) -> Vec<ConfigKey> {
        source_keys()
    }

    fn validate(&self, props: &Props) -> Vec<ConfigReport> {
        let mut reports = validate_against(&self.config_def(), props);
        for report in &mut reports {
            if report.key.name == TOPIC_CONFIG
                && report.errors.is_empty()
                && let Err(error) = single_topic(props)
            {
                report.errors.push(error.to_string());
            }
            if report.key.name == BATCH_SIZE_CONFIG
                && report.errors.is_empty()
                && let Err(error) = batch_size(props)
            {
                report.errors.push(error.to_string());
            }
        }
        reports
    }

    fn start(&mut self, props: &Props) -> Result<()> {
        single_topic(props)?;
        batch_size(props)?;
        self.props = props.clone();
        Ok(())
    }

    fn task_configs(&self, _tasks_max: usize) -> Vec<Props> {
        vec![self.props.clone()]
    }
}

impl SourceConnector for FileStreamSourceConnector {
    fn create_task(&self) -> Box<dyn SourceTask> {
        Box::new(FileStreamSourceTask::default())
    }
}

/// Reads lines; a line's offset is the byte position just after it.
#[derive(Default)]
pub struct FileStreamSourceTask {
    file: Option<PathBuf>,
    topic: String,
    batch_size: usize,
    reader: Option<Box<dyn Read + Send>>,
    /// Bytes read but not yet emitted (a partial last line, or lines
    /// beyond the batch size).
    buffer: Vec<u8>,
    /// The byte position in the file of `buffer`'s first byte.
    position: u64,
    missing_file_warned: bool,
}

impl std::fmt::Debug for FileStreamSourceTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStreamSourceTask").field("file", &self.file).field("position", &self.position).finish()
    }
}

impl FileStreamSourceTask {
    fn partition(&self) -> Option<SourcePartition> {
        let file = self.file.as_ref()?;
        let mut partition = SourcePartition::new();
        partition.insert(FILENAME_FIELD.into(), serde_json::Value::String(file.display().to_string()));
        Some(partition)
    }

    /// Opens the file at the stored position; None while it does not exist.
    fn open(&mut self) -> Result<Option<Box<dyn Read + Send>>> {
        let Some(path) = &self.file else { return Ok(Some(Box::new(std::io::stdin()))) };
        match std::fs::File::open(path) {
            Ok(mut file) => {
                file.seek(SeekFrom::Start(self.position))
                    .map_err(|e| ConnectError::io(format!("seeking {} to {}", path.display(), self.position), e))?;
                tracing::info!(file = %path.display(), position = self.position, "file source reading");
                Ok(Some(Box::new(file)))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if !self.missing_file_warned {
                    tracing::warn!(file = %path.display(), "couldn't find the file for FileStreamSourceTask; waiting for it to be created");
                    self.missing_file_warned = true;
                }
                Ok(None)
            }
            Err(error) => Err(ConnectError::io(format!("opening {}", path.display()), error)),
        }
    }

    /// Takes up to `batch_size` whole lines from the buffer.
    fn take_lines(&mut self) -> Vec<SourceRecord> {
        let mut records = Vec::new();
        let mut consumed = 0;
        while records.len() < self.batch_size {
            let rest = &self.buffer[consumed..];
            let (line, taken) = match rest.iter().position(|b| *b == b'\n') {
                Some(newline) => (&rest[..newline], newline + 1),
                // A line longer than the cap goes out as it is.
                None if rest.len() >= FILE_SOURCE_LINE_BYTES_MAX => (rest, rest.len()),
                None => break,
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let text = String::from_utf8_lossy(line).into_owned();
            consumed += taken;
            let offset = self.file.as_ref().map(|_| {
                let mut offset = SourceOffset::new();
                offset.insert(POSITION_FIELD.into(), serde_json::Value::from(self.position + consumed as u64));
                offset
            });
            let record = ConnectRecord::new(self.topic.clone(), SchemaAndValue::NULL, SchemaAndValue::string(text));
            records.push(SourceRecord { source_partition: self.partition(), source_offset: offset, record });
        }
        self.buffer.drain(..consumed);
        self.position += consumed as u64;
        records
    }
}

impl SourceTask for FileStreamSourceTask {
    fn start(&mut self, props: &Props, offsets: &dyn OffsetStorageReader) -> Result<()> {
        self.file = file_of(props);
        self.topic = single_topic(props)?;
        self.batch_size = batch_size(props)?;
        if let Some(partition) = self.partition()
            && let Some(offset) = offsets.offset(&partition)
        {
            self.position = match offset.get(POSITION_FIELD).and_then(serde_json::Value::as_u64) {
                Some(position) => position,
                None => {
                    return Err(ConnectError::Task(format!(
                        "offset position is the incorrect type: {:?}",
                        offset.get(POSITION_FIELD)
                    )));
                }
            };
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        let lines = self.take_lines();
        if !lines.is_empty() {
            return Ok(lines);
        }
        if self.reader.is_none() {
            self.reader = self.open()?;
        }
        let Some(reader) = self.reader.as_mut() else {
            std::thread::sleep(Duration::from_millis(FILE_SOURCE_EOF_WAIT_MS));
            return Ok(Vec::new());
        };
        let start = self.buffer.len();
        self.buffer.resize(start + FILE_SOURCE_READ_BYTES, 0);
        let read = reader.read(&mut self.buffer[start..]);
        let read = match read {
            Ok(read) => read,
            Err(error) => {
                self.buffer.truncate(start);
                let what = self.file.as_ref().map_or("stdin".to_string(), |f| f.display().to_string());
                return Err(ConnectError::io(format!("reading {what}"), error));
            }
        };
        self.buffer.truncate(start + read);
        let lines = self.take_lines();
        if lines.is_empty() && read == 0 {
            // At the end of the file: wait for more, as Kafka's does.
            std::thread::sleep(Duration::from_millis(FILE_SOURCE_EOF_WAIT_MS));
        }
        Ok(lines)
    }
}

fn sink_keys() -> Vec<ConfigKey> {
    vec![ConfigKey {
        name: FILE_CONFIG,
        config_type: ConfigType::String,
        default: Some(""),
        importance: Importance::High,
        documentation: "Destination filename. If not specified, the standard output will be used",
        group: "FileStreamSink",
    }]
}

/// Kafka's FileStreamSinkConnector: `tasks.max` tasks, each appending to
/// the same file.
#[derive(Debug, Default)]
pub struct FileStreamSinkConnector {
    props: Props,
}

impl Connector for FileStreamSinkConnector {
    fn config_def(&self) -> Vec<ConfigKey> {
        sink_keys()
    }

    fn start(&mut self, props: &Props) -> Result<()> {
        self.props = props.clone();
        Ok(())
    }

    fn task_configs(&self, tasks_max: usize) -> Vec<Props> {
        vec![self.props.clone(); tasks_max.max(1)]
    }
}

impl SinkConnector for FileStreamSinkConnector {
    fn create_task(&self) -> Box<dyn SinkTask> {
        Box::new(FileStreamSinkTask::default())
    }
}

/// Writes each record's value as a line (Java's `toString` of it).
#[derive(Default)]
pub struct FileStreamSinkTask {
    out: Option<Box<dyn Write + Send>>,
    file: Option<PathBuf>,
}

impl std::fmt::Debug for FileStreamSinkTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStreamSinkTask").field("file", &self.file).finish()
    }
}

impl FileStreamSinkTask {
    fn write_error(&self, error: std::io::Error) -> ConnectError {
        let what = self.file.as_ref().map_or("stdout".to_string(), |f| f.display().to_string());
        ConnectError::io(format!("writing {what}"), error)
    }
}

impl SinkTask for FileStreamSinkTask {
    fn start(&mut self, props: &Props) -> Result<()> {
        self.file = file_of(props);
        self.out = Some(match &self.file {
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                    ConnectError::io(
                        format!("couldn't find or create file '{}' for FileStreamSinkTask", path.display()),
                        e,
                    )
                })?;
                Box::new(file)
            }
            None => Box::new(std::io::stdout()),
        });
        Ok(())
    }

    fn put(&mut self, records: Vec<SinkRecord>) -> Result<()> {
        // One write per batch: a worker killed mid-batch leaves whole lines
        // (the batch is short and a regular file's write is not cut by a
        // signal), never half a line that the next run would glue onto.
        let mut text = String::new();
        for record in &records {
            text.push_str(&record.record.value.value.to_string());
            text.push('\n');
        }
        let Some(out) = self.out.as_mut() else {
            return Err(ConnectError::Task("FileStreamSinkTask was not started".into()));
        };
        let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        written.map_err(|e| self.write_error(e))
    }

    fn flush(&mut self, _offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        let Some(out) = self.out.as_mut() else { return Ok(()) };
        let flushed = out.flush();
        flushed.map_err(|e| self.write_error(e))
    }

    fn stop(&mut self) {
        if let Some(mut out) = self.out.take()
            && let Err(error) = out.flush()
        {
            tracing::warn!(%error, "file sink: flush at stop failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Value;

    struct Stored(Option<SourceOffset>);

    impl OffsetStorageReader for Stored {
        fn offset(&self, _partition: &SourcePartition) -> Option<SourceOffset> {
            self.0.clone()
        }
    }

    fn source_props(file: &std::path::Path, batch: usize) -> Props {
        Props::from([
            ("file".to_string(), file.display().to_string()),
            ("topic".to_string(), "lines".to_string()),
            ("batch.size".to_string(), batch.to_string()),
        ])
    }

    fn values(records: &[SourceRecord]) -> Vec<String> {
        records.iter().map(|r| r.record.value.value.to_string()).collect()
    }

    fn position(record: &SourceRecord) -> u64 {
        record.source_offset.as_ref().and_then(|o| o["position"].as_u64()).expect("position")
    }

    #[test]
    fn file_source_emits_lines_with_byte_positions_and_resumes_from_a_stored_one() {
        let dir = crate::test_dir("file-source");
        let path = dir.join("in.txt");
        std::fs::write(&path, "one\r\ntwo\nthree\npart").expect("write");
        let mut task = FileStreamSourceTask::default();
        task.start(&source_props(&path, 2), &Stored(None)).expect("start");
        let first = task.poll().expect("poll");
        assert_eq!(values(&first), ["one", "two"]);
        assert_eq!(position(&first[0]), 5);
        assert_eq!(position(&first[1]), 9);
        assert_eq!(first[0].source_partition.as_ref().expect("partition")["filename"], path.display().to_string());
        assert_eq!(values(&task.poll().expect("poll")), ["three"]);
        // The partial last line waits for its newline.
        assert!(task.poll().expect("poll at end").is_empty());
        std::fs::OpenOptions::new().append(true).open(&path).expect("open").write_all(b"ial\n").expect("append");
        let last = task.poll().expect("poll");
        assert_eq!(values(&last), ["partial"]);
        assert_eq!(position(&last[0]), 23);

        // A new task given position 9 starts at "three".
        let mut offset = SourceOffset::new();
        offset.insert("position".into(), 9.into());
        let mut resumed = FileStreamSourceTask::default();
        resumed.start(&source_props(&path, 10), &Stored(Some(offset))).expect("start");
        assert_eq!(values(&resumed.poll().expect("poll")), ["three", "partial"]);
    }

    #[test]
    fn file_source_waits_for_a_missing_file_and_refuses_a_bad_offset() {
        let dir = crate::test_dir("file-source-missing");
        let path = dir.join("later.txt");
        let mut task = FileStreamSourceTask::default();
        task.start(&source_props(&path, 10), &Stored(None)).expect("start");
        assert!(task.poll().expect("no file yet is not an error").is_empty());
        std::fs::write(&path, "x\n").expect("create");
        assert_eq!(values(&task.poll().expect("poll")), ["x"]);

        let mut offset = SourceOffset::new();
        offset.insert("position".into(), "nine".into());
        let error = FileStreamSourceTask::default().start(&source_props(&path, 1), &Stored(Some(offset)));
        assert!(matches!(error, Err(ConnectError::Task(_))));
    }

    #[test]
    fn file_source_config_needs_exactly_one_topic_and_a_positive_batch_size() {
        let mut connector = FileStreamSourceConnector::default();
        let mut props = source_props(std::path::Path::new("x"), 5);
        props.insert("topic".into(), "a,b".into());
        assert!(matches!(connector.start(&props), Err(ConnectError::Config(_))));
        let reports = connector.validate(&props);
        assert!(reports.iter().any(|r| r.key.name == "topic" && !r.errors.is_empty()));
        props.insert("topic".into(), "a".into());
        props.insert("batch.size".into(), "0".into());
        assert!(connector.validate(&props).iter().any(|r| r.key.name == "batch.size" && !r.errors.is_empty()));
        props.insert("batch.size".into(), "5".into());
        connector.start(&props).expect("valid");
        assert_eq!(connector.task_configs(4).len(), 1, "one task reads a file");
    }

    #[test]
    fn file_sink_appends_each_value_as_a_line() {
        let dir = crate::test_dir("file-sink");
        let path = dir.join("out.txt");
        std::fs::write(&path, "earlier\n").expect("write");
        let mut task = FileStreamSinkTask::default();
        task.start(&Props::from([("file".to_string(), path.display().to_string())])).expect("start");
        let record = |value: SchemaAndValue, offset| SinkRecord {
            record: ConnectRecord::new("t", SchemaAndValue::NULL, value),
            kafka_offset: offset,
        };
        task.put(vec![
            record(SchemaAndValue::string("a"), 0),
            record(SchemaAndValue::new(None, Value::Int64(2)), 1),
            record(SchemaAndValue::NULL, 2),
        ])
        .expect("put");
        task.flush(&BTreeMap::new()).expect("flush");
        task.stop();
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "earlier\na\n2\nnull\n");
        let mut connector = FileStreamSinkConnector::default();
        connector.start(&Props::new()).expect("start");
        assert_eq!(connector.task_configs(3).len(), 3);
    }
}
