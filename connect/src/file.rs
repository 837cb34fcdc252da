//! FileStreamSource and FileStreamSink, as Kafka's: lines of a file (or
//! stdin) become records of one topic; records become lines of a file (or
//! stdout). The source stores its byte position in the file as its offset
//! (`{"filename": ...}` -> `{"position": ...}`), so it resumes there after
//! a restart.
//!
//! Beyond Kafka's, the sink can rotate its file (`file.rotate.bytes`,
//! `file.rotate.interval.ms`): the full file is fsynced, renamed to
//! `<file>.<n>` (n counting up from 000001) and a new one opened, so files
//! can be picked up whole by other tools. A flush fsyncs the current file,
//! and the worker commits offsets only after a flush: a record whose
//! offset is committed is on disk, in the current file or a rotated one.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
const ROTATE_BYTES_CONFIG: &str = "file.rotate.bytes";
const ROTATE_INTERVAL_MS_CONFIG: &str = "file.rotate.interval.ms";
/// Digits of a rotated file's number: `ls` lists them in writing order up
/// to 999999 files (more still work, with longer numbers).
const ROTATED_INDEX_DIGITS: usize = 6;
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
    vec![
        ConfigKey {
            name: FILE_CONFIG,
            config_type: ConfigType::String,
            default: Some(""),
            importance: Importance::High,
            documentation: "Destination filename. If not specified, the standard output will be used",
            group: "FileStreamSink",
        },
        ConfigKey {
            name: ROTATE_BYTES_CONFIG,
            config_type: ConfigType::Long,
            default: Some("0"),
            importance: Importance::Medium,
            documentation: "Rotate the file before a line would take it past this many bytes (0: never)",
            group: "FileStreamSink",
        },
        ConfigKey {
            name: ROTATE_INTERVAL_MS_CONFIG,
            config_type: ConfigType::Long,
            default: Some("0"),
            importance: Importance::Medium,
            documentation: "Rotate the file at the first put or flush this long after its first line (0: never)",
            group: "FileStreamSink",
        },
    ]
}

/// When the sink starts a new file; None: never for that reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Rotation {
    bytes_max: Option<u64>,
    interval: Option<Duration>,
}

/// A rotation key's value: None when absent or 0 (never).
fn rotation_key(props: &Props, key: &str) -> Result<Option<u64>> {
    let Some(value) = props.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) else { return Ok(None) };
    match value.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(number) => Ok(Some(number)),
        Err(_) => {
            Err(ConnectError::Config(format!("{key} must be a whole number (0 or absent: never), not {value:?}")))
        }
    }
}

fn rotation_needs_file(key: &str) -> ConnectError {
    ConnectError::Config(format!("{key} needs {FILE_CONFIG}: standard output cannot be rotated"))
}

impl Rotation {
    fn from_props(props: &Props) -> Result<Rotation> {
        let rotation = Rotation {
            bytes_max: rotation_key(props, ROTATE_BYTES_CONFIG)?,
            interval: rotation_key(props, ROTATE_INTERVAL_MS_CONFIG)?.map(Duration::from_millis),
        };
        if file_of(props).is_none() {
            if rotation.bytes_max.is_some() {
                return Err(rotation_needs_file(ROTATE_BYTES_CONFIG));
            }
            if rotation.interval.is_some() {
                return Err(rotation_needs_file(ROTATE_INTERVAL_MS_CONFIG));
            }
        }
        Ok(rotation)
    }

    fn enabled(&self) -> bool {
        self.bytes_max.is_some() || self.interval.is_some()
    }
}

/// Kafka's FileStreamSinkConnector: `tasks.max` tasks, each appending to
/// the same file; one task when the file rotates (two tasks would rename
/// the file under each other).
#[derive(Debug, Default)]
pub struct FileStreamSinkConnector {
    props: Props,
    rotation: Rotation,
}

impl Connector for FileStreamSinkConnector {
    fn config_def(&self) -> Vec<ConfigKey> {
        sink_keys()
    }

    fn validate(&self, props: &Props) -> Vec<ConfigReport> {
        let mut reports = validate_against(&self.config_def(), props);
        for report in &mut reports {
            let key = report.key.name;
            if !report.errors.is_empty() || ![ROTATE_BYTES_CONFIG, ROTATE_INTERVAL_MS_CONFIG].contains(&key) {
                continue;
            }
            match rotation_key(props, key) {
                Err(error) => report.errors.push(error.to_string()),
                Ok(Some(_)) if file_of(props).is_none() => report.errors.push(rotation_needs_file(key).to_string()),
                Ok(_) => {}
            }
        }
        reports
    }

    fn start(&mut self, props: &Props) -> Result<()> {
        self.rotation = Rotation::from_props(props)?;
        self.props = props.clone();
        Ok(())
    }

    fn task_configs(&self, tasks_max: usize) -> Vec<Props> {
        let tasks = if self.rotation.enabled() { 1 } else { tasks_max.max(1) };
        vec![self.props.clone(); tasks]
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
    out: Option<SinkOutput>,
}

impl std::fmt::Debug for FileStreamSinkTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = match &self.out {
            Some(SinkOutput::File(file)) => Some(&file.path),
            _ => None,
        };
        f.debug_struct("FileStreamSinkTask").field("file", &file).finish()
    }
}

enum SinkOutput {
    Stdout(std::io::Stdout),
    File(SinkFile),
}

/// The sink's current file, and when to rotate it.
struct SinkFile {
    path: PathBuf,
    file: std::fs::File,
    /// The current file's size: what was in it at open plus what we wrote.
    bytes: u64,
    /// When the current file got its first line (at open, for a file that
    /// had lines already); None while it is empty.
    first_line_at: Option<Instant>,
    rotation: Rotation,
    /// The number the next rotated file gets (`<file>.<n>`).
    next_index: u64,
}

impl SinkFile {
    fn open(path: &Path, rotation: Rotation) -> Result<SinkFile> {
        let file = open_append(path)?;
        let bytes =
            file.metadata().map_err(|e| ConnectError::io(format!("reading the size of {}", path.display()), e))?.len();
        let next_index = if rotation.enabled() { last_rotated_index(path)? + 1 } else { 1 };
        Ok(SinkFile {
            path: path.to_path_buf(),
            file,
            bytes,
            first_line_at: (bytes > 0).then(Instant::now),
            rotation,
            next_index,
        })
    }

    fn io_error(&self, action: &str, error: std::io::Error) -> ConnectError {
        ConnectError::io(format!("{action} {}", self.path.display()), error)
    }

    /// Appends `lines` (each ending in a newline), rotating before a line
    /// that is due in a new file. Each file gets its lines in one write: a
    /// worker killed mid-put leaves whole lines.
    fn write_lines(&mut self, lines: &[String]) -> Result<()> {
        let mut chunk = String::new();
        for line in lines {
            if self.rotation_due(chunk.len() as u64, line.len() as u64) {
                self.append(&chunk)?;
                chunk.clear();
                self.rotate()?;
            }
            chunk.push_str(line);
        }
        self.append(&chunk)
    }

    /// Whether a line of `line_bytes`, after `pending_bytes` not yet
    /// written, belongs in a new file. An empty file is never rotated, so
    /// a line longer than `file.rotate.bytes` gets a file of its own.
    fn rotation_due(&self, pending_bytes: u64, line_bytes: u64) -> bool {
        let size_bytes = self.bytes + pending_bytes;
        if size_bytes == 0 {
            return false;
        }
        let too_big = self.rotation.bytes_max.is_some_and(|max| size_bytes + line_bytes > max);
        too_big || self.too_old()
    }

    /// Whether the current file's first line is `file.rotate.interval.ms`
    /// old (lines still pending for an empty file are new: not old).
    fn too_old(&self) -> bool {
        match (self.rotation.interval, self.first_line_at) {
            (Some(interval), Some(first_line_at)) => first_line_at.elapsed() >= interval,
            _ => false,
        }
    }

    fn append(&mut self, chunk: &str) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.file.write_all(chunk.as_bytes()).map_err(|e| self.io_error("writing", e))?;
        self.bytes += chunk.len() as u64;
        self.first_line_at.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Makes the current file durable, gives it the next free
    /// `<file>.<n>` and opens a new, empty file. The fsync comes first, so
    /// a rotated file is complete under its final name; a crash between
    /// the steps leaves every line in one of the two names.
    fn rotate(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| self.io_error("syncing", e))?;
        let mut target = rotated_path(&self.path, self.next_index);
        // Never overwrite: a file of that number made by someone else is
        // left alone and the next number taken.
        while std::fs::symlink_metadata(&target).is_ok() {
            self.next_index += 1;
            target = rotated_path(&self.path, self.next_index);
        }
        std::fs::rename(&self.path, &target)
            .map_err(|e| ConnectError::io(format!("rotating {} to {}", self.path.display(), target.display()), e))?;
        self.next_index += 1;
        self.file = open_append(&self.path)?;
        self.bytes = 0;
        self.first_line_at = None;
        // The rename and the new file's entry, durable together.
        let dir = parent_dir(&self.path);
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ConnectError::io(format!("syncing the directory {} after a rotation", dir.display()), e))?;
        tracing::info!(file = %self.path.display(), rotated = %target.display(), "file sink rotated its file");
        Ok(())
    }

    /// Everything written so far, on disk; a file past its age is rotated
    /// (which syncs it) rather than only synced.
    fn flush(&mut self) -> Result<()> {
        if self.bytes > 0 && self.too_old() {
            return self.rotate();
        }
        self.file.sync_data().map_err(|e| self.io_error("syncing", e))
    }
}

fn open_append(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
        ConnectError::io(format!("couldn't find or create file '{}' for FileStreamSinkTask", path.display()), e)
    })
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// `<file>.<n>`, n zero-padded to `ROTATED_INDEX_DIGITS`.
fn rotated_path(path: &Path, index: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index:0ROTATED_INDEX_DIGITS$}"));
    PathBuf::from(name)
}

/// The highest n of the `<file>.<n>` files beside `path` (0: none), so a
/// restarted sink numbers on after them.
fn last_rotated_index(path: &Path) -> Result<u64> {
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else { return Ok(0) };
    let dir = parent_dir(path);
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConnectError::io(format!("listing {} for rotated files", dir.display()), e))?;
    let mut last = 0;
    for entry in entries {
        let entry = entry.map_err(|e| ConnectError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let index = name
            .to_str()
            .and_then(|n| n.strip_prefix(base))
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok());
        last = last.max(index.unwrap_or(0));
    }
    Ok(last)
}

impl SinkTask for FileStreamSinkTask {
    fn start(&mut self, props: &Props) -> Result<()> {
        let rotation = Rotation::from_props(props)?;
        self.out = Some(match file_of(props) {
            Some(path) => SinkOutput::File(SinkFile::open(&path, rotation)?),
            None => SinkOutput::Stdout(std::io::stdout()),
        });
        Ok(())
    }

    fn put(&mut self, records: Vec<SinkRecord>) -> Result<()> {
        let lines: Vec<String> = records.iter().map(|record| format!("{}\n", record.record.value.value)).collect();
        match self.out.as_mut() {
            None => Err(ConnectError::Task("FileStreamSinkTask was not started".into())),
            Some(SinkOutput::File(file)) => file.write_lines(&lines),
            Some(SinkOutput::Stdout(stdout)) => {
                // One write per batch, whole lines (see write_lines).
                let text: String = lines.concat();
                let mut out = stdout.lock();
                let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
                written.map_err(|e| ConnectError::io("writing stdout", e))
            }
        }
    }

    fn flush(&mut self, _offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        match self.out.as_mut() {
            None => Ok(()),
            Some(SinkOutput::File(file)) => file.flush(),
            Some(SinkOutput::Stdout(stdout)) => stdout.flush().map_err(|e| ConnectError::io("writing stdout", e)),
        }
    }

    fn stop(&mut self) {
        // The worker flushed (and synced) before a clean stop; after a
        // failure nothing since the last commit is vouched for anyway.
        if let Some(SinkOutput::Stdout(mut stdout)) = self.out.take()
            && let Err(error) = stdout.flush()
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

    fn sink_record(value: &str, offset: i64) -> SinkRecord {
        SinkRecord {
            record: ConnectRecord::new("t", SchemaAndValue::NULL, SchemaAndValue::string(value)),
            kafka_offset: offset,
        }
    }

    fn rotating_sink(path: &std::path::Path, keys: &[(&str, &str)]) -> FileStreamSinkTask {
        let mut props = Props::from([("file".to_string(), path.display().to_string())]);
        props.extend(keys.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut task = FileStreamSinkTask::default();
        task.start(&props).expect("start");
        task
    }

    fn put_lines(task: &mut FileStreamSinkTask, lines: &[&str]) {
        task.put(lines.iter().enumerate().map(|(i, l)| sink_record(l, i as i64)).collect()).expect("put");
    }

    /// The directory's files by name, with their text.
    fn files_in(dir: &std::path::Path) -> BTreeMap<String, String> {
        std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .map(|p| {
                (
                    p.file_name().expect("name").to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).expect("read"),
                )
            })
            .collect()
    }

    #[test]
    fn file_sink_rotates_before_a_line_would_take_the_file_past_its_size() {
        let dir = crate::test_dir("file-sink-rotate-bytes");
        let path = dir.join("out.txt");
        let mut task = rotating_sink(&path, &[("file.rotate.bytes", "20")]);
        // Five bytes a line: four fit in 20.
        put_lines(&mut task, &["a001", "a002", "a003"]);
        put_lines(&mut task, &["a004", "a005", "a006", "a007", "a008", "a009", "a010"]);
        // A line longer than the limit gets a file of its own.
        put_lines(&mut task, &["a-line-longer-than-twenty", "a011"]);
        task.flush(&BTreeMap::new()).expect("flush");
        task.stop();
        let files = files_in(&dir);
        let expected = BTreeMap::from(
            [
                ("out.txt.000001", "a001\na002\na003\na004\n"),
                ("out.txt.000002", "a005\na006\na007\na008\n"),
                ("out.txt.000003", "a009\na010\n"),
                ("out.txt.000004", "a-line-longer-than-twenty\n"),
                ("out.txt", "a011\n"),
            ]
            .map(|(name, text)| (name.to_string(), text.to_string())),
        );
        assert_eq!(files, expected, "every line once, in order, no file past 20 bytes but the long line's");
    }

    #[test]
    fn a_restarted_sink_appends_to_its_file_and_numbers_after_the_last_rotated_one() {
        let dir = crate::test_dir("file-sink-rotate-restart");
        let path = dir.join("out.txt");
        std::fs::write(dir.join("out.txt.000001"), "old1\n").expect("write");
        std::fs::write(dir.join("out.txt.000007"), "old7\n").expect("write");
        std::fs::write(dir.join("out.txt.bak"), "not ours\n").expect("write");
        std::fs::write(&path, "kept\n").expect("write");
        let mut task = rotating_sink(&path, &[("file.rotate.bytes", "10")]);
        put_lines(&mut task, &["new1", "new2"]);
        task.flush(&BTreeMap::new()).expect("flush");
        // Drop without stop, as a killed worker's task: the flushed lines stay.
        drop(task);
        let files = files_in(&dir);
        assert_eq!(files["out.txt.000008"], "kept\nnew1\n", "the file it found is continued, then rotated");
        assert_eq!(files["out.txt"], "new2\n");
        assert_eq!(files["out.txt.000001"], "old1\n");
        assert_eq!(files["out.txt.000007"], "old7\n");
        assert_eq!(files["out.txt.bak"], "not ours\n");
        assert_eq!(files.len(), 5);
    }

    #[test]
    fn file_sink_rotates_a_file_by_age_at_the_next_put_or_flush() {
        let dir = crate::test_dir("file-sink-rotate-age");
        let path = dir.join("out.txt");
        let mut task = rotating_sink(&path, &[("file.rotate.interval.ms", "500")]);
        put_lines(&mut task, &["first"]);
        task.flush(&BTreeMap::new()).expect("a young file is only synced");
        assert!(!dir.join("out.txt.000001").exists());
        std::thread::sleep(Duration::from_millis(550));
        task.flush(&BTreeMap::new()).expect("flush");
        assert_eq!(std::fs::read_to_string(dir.join("out.txt.000001")).expect("rotated at flush"), "first\n");
        assert_eq!(std::fs::read_to_string(&path).expect("new file"), "");
        put_lines(&mut task, &["second"]);
        std::thread::sleep(Duration::from_millis(550));
        put_lines(&mut task, &["third", "fourth"]);
        task.flush(&BTreeMap::new()).expect("flush");
        assert_eq!(std::fs::read_to_string(dir.join("out.txt.000002")).expect("rotated at put"), "second\n");
        assert_eq!(std::fs::read_to_string(&path).expect("current"), "third\nfourth\n");
    }

    #[test]
    fn rotation_keys_are_checked_need_a_file_and_run_one_task() {
        let mut connector = FileStreamSinkConnector::default();
        let props =
            |keys: &[(&str, &str)]| -> Props { keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        let errors = |props: &Props, key: &str| -> Vec<String> {
            connector_errors(&FileStreamSinkConnector::default(), props, key)
        };
        let bad = props(&[("file", "out.txt"), ("file.rotate.bytes", "-1"), ("file.rotate.interval.ms", "soon")]);
        assert_eq!(errors(&bad, "file.rotate.bytes").len(), 1);
        assert_eq!(errors(&bad, "file.rotate.interval.ms").len(), 1);
        assert!(matches!(connector.start(&bad), Err(ConnectError::Config(_))));
        let stdout = props(&[("file.rotate.bytes", "1000")]);
        assert!(errors(&stdout, "file.rotate.bytes")[0].contains("standard output cannot be rotated"));
        assert!(matches!(FileStreamSinkTask::default().start(&stdout), Err(ConnectError::Config(_))));

        let rotating = props(&[("file", "out.txt"), ("file.rotate.bytes", "1000"), ("file.rotate.interval.ms", "0")]);
        assert!(errors(&rotating, "file.rotate.bytes").is_empty());
        connector.start(&rotating).expect("valid");
        assert_eq!(connector.task_configs(4).len(), 1, "one writer renames the file");
        connector.start(&props(&[("file", "out.txt"), ("file.rotate.bytes", "0")])).expect("0 is never");
        assert_eq!(connector.task_configs(4).len(), 4);
    }

    fn connector_errors(connector: &FileStreamSinkConnector, props: &Props, key: &str) -> Vec<String> {
        connector.validate(props).into_iter().filter(|r| r.key.name == key).flat_map(|r| r.errors).collect()
    }
}
