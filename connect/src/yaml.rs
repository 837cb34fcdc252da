//! Pipeline files in YAML: a connector (or worker) config written as a
//! YAML document that maps onto Kafka Connect's flat keys, so everything
//! after loading (validation, converters, transforms, `errors.*`) is the
//! same as for a `.properties` file.
//!
//! The mapping:
//! - a nested mapping flattens to dotted keys (`errors: {tolerance: all}`
//!   is `errors.tolerance=all`);
//! - `transforms` and `predicates` may be a list of mappings, each with a
//!   `name`, in order (or a mapping of name to its keys), which becomes
//!   `transforms=a,b` and `transforms.a.type=...`;
//! - `connector` is another spelling of `connector.class`;
//! - `topics` may be a list of topic names;
//! - every scalar becomes its text as written (`1.0` stays `1.0`, `false`
//!   stays `false`); a null (`~`, `null`, nothing) is the empty string, as
//!   `key=` in a properties file.
//!
//! Anything else that cannot map is a `YamlError` naming the key and its
//! line: a list or mapping where one value belongs, a key set twice (also
//! when once nested and once dotted), aliases, a second document.

use std::collections::BTreeMap;
use std::path::Path;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::error::{ConnectError, Result};
use crate::limits::PIPELINE_YAML_DEPTH_MAX;
use crate::props::{self, Props};

/// What is wrong with a YAML pipeline file. Lines are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    /// The text is not YAML.
    #[error("line {line}, column {column}: YAML syntax error: {message}")]
    Syntax { line: usize, column: usize, message: String },
    /// The document is not a mapping of keys to values.
    #[error("line {line}: a pipeline file is a mapping of keys to values, not a {found}")]
    NotAMapping { line: usize, found: &'static str },
    /// A value of the wrong shape: a list or mapping where one value
    /// belongs, or a transform that is not a mapping.
    #[error("line {line}: {key}: a {found} where {expected} is expected")]
    Shape { key: String, line: usize, expected: &'static str, found: &'static str },
    /// A key (after flattening) or a transform name given twice.
    #[error("line {line}: {key} is given twice (first on line {first_line})")]
    Duplicate { key: String, line: usize, first_line: usize },
    /// A key that is not a plain value, or is empty.
    #[error("line {line}: {key}: keys must be non-empty single values")]
    BadKey { key: String, line: usize },
    /// A transform or predicate without a usable name.
    #[error("line {line}: {key}: {why}")]
    BadName { key: String, line: usize, why: String },
    /// `*alias` references: they can expand without bound and have no
    /// counterpart in a properties file.
    #[error("line {line}: {key}: aliases (*name) are not supported; write the value out")]
    Alias { key: String, line: usize },
    /// More than one document (`---`) in the file.
    #[error("line {line}: a pipeline file holds one YAML document; a second starts here")]
    SecondDocument { line: usize },
    /// Nesting deeper than any config needs.
    #[error("line {line}: nested deeper than {PIPELINE_YAML_DEPTH_MAX} levels")]
    TooDeep { line: usize },
}

/// Whether `path` names a YAML file (`.yaml` or `.yml`).
pub fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Reads a worker or connector config: a `.yaml`/`.yml` file as a YAML
/// pipeline, any other as a Java properties file.
pub fn load_config_file(path: &Path) -> Result<Props> {
    if !is_yaml(path) {
        return props::load_file(path);
    }
    let text = props::read_config_text(path)?;
    parse(&text).map_err(|error| ConnectError::PipelineFile { path: path.display().to_string(), error })
}

/// Parses a YAML pipeline document into Kafka's keys.
pub fn parse(text: &str) -> Result<Props, YamlError> {
    let Some(root) = read_document(text)? else { return Ok(Props::new()) };
    let Node::Map { entries, .. } = root else {
        return Err(YamlError::NotAMapping { line: root.line(), found: root.kind() });
    };
    let mut flat = Flat::default();
    for (key, key_line, value) in entries {
        top_level_entry(&mut flat, key, key_line, value)?;
    }
    Ok(flat.keys.into_iter().map(|(key, (value, _))| (key, value)).collect())
}

/// A YAML node with the line it starts on.
#[derive(Debug)]
enum Node {
    /// A scalar's text; None for a plain null (`~`, `null`, nothing).
    Scalar {
        text: Option<String>,
        line: usize,
    },
    Seq {
        items: Vec<Node>,
        line: usize,
    },
    Map {
        entries: Vec<(String, usize, Node)>,
        line: usize,
    },
}

impl Node {
    fn line(&self) -> usize {
        match self {
            Node::Scalar { line, .. } | Node::Seq { line, .. } | Node::Map { line, .. } => *line,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Node::Scalar { .. } => "single value",
            Node::Seq { .. } => "list",
            Node::Map { .. } => "mapping",
        }
    }
}

/// Flattened keys with the line each was set on, to name both lines of a
/// duplicate.
#[derive(Default)]
struct Flat {
    keys: BTreeMap<String, (String, usize)>,
}

impl Flat {
    fn set(&mut self, key: String, value: String, line: usize) -> Result<(), YamlError> {
        if let Some((_, first_line)) = self.keys.get(&key) {
            return Err(YamlError::Duplicate { key, line, first_line: *first_line });
        }
        self.keys.insert(key, (value, line));
        Ok(())
    }
}

fn top_level_entry(flat: &mut Flat, key: String, key_line: usize, value: Node) -> Result<(), YamlError> {
    match (key.as_str(), value) {
        ("transforms" | "predicates", Node::Seq { items, line }) => named_list(flat, &key, line, items),
        ("transforms" | "predicates", Node::Map { entries, line }) => named_map(flat, &key, line, entries),
        ("topics", Node::Seq { items, line }) => {
            let names = items
                .into_iter()
                .enumerate()
                .map(|(index, item)| list_element(&format!("topics[{index}]"), item))
                .collect::<Result<Vec<_>, _>>()?;
            flat.set(key, names.join(","), line)
        }
        ("connector", value) => flatten(flat, "connector.class".into(), key_line, value),
        (_, value) => flatten(flat, key, key_line, value),
    }
}

/// One name of a list joined with commas: a single value without a comma.
fn list_element(key: &str, item: Node) -> Result<String, YamlError> {
    let line = item.line();
    let text = scalar(key, item, "a single value")?;
    if text.contains(',') || text.trim().is_empty() {
        return Err(YamlError::BadName {
            key: key.to_string(),
            line,
            why: format!("{text:?} is empty or holds a comma, which Kafka's lists split on"),
        });
    }
    Ok(text)
}

/// `transforms: [{name: a, type: T, ...}, ...]`.
fn named_list(flat: &mut Flat, list_key: &str, line: usize, items: Vec<Node>) -> Result<(), YamlError> {
    let mut names: Vec<(String, usize)> = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let element_key = format!("{list_key}[{index}]");
        let Node::Map { mut entries, line: item_line } = item else {
            return Err(YamlError::Shape {
                key: element_key,
                line: item.line(),
                expected: "a mapping (name, type, ...)",
                found: item.kind(),
            });
        };
        let Some(position) = entries.iter().position(|(key, _, _)| key == "name") else {
            return Err(YamlError::BadName { key: element_key, line: item_line, why: "has no name".into() });
        };
        let (_, _, name) = entries.remove(position);
        let name = list_element(&format!("{element_key}.name"), name)?;
        add_named(flat, list_key, &mut names, name, item_line, entries)?;
    }
    let joined = names.into_iter().map(|(name, _)| name).collect::<Vec<_>>().join(",");
    flat.set(list_key.to_string(), joined, line)
}

/// `transforms: {a: {type: T, ...}, ...}`: names in the order written.
fn named_map(
    flat: &mut Flat,
    list_key: &str,
    line: usize,
    entries: Vec<(String, usize, Node)>,
) -> Result<(), YamlError> {
    let mut names: Vec<(String, usize)> = Vec::with_capacity(entries.len());
    for (name, name_line, value) in entries {
        let element_key = format!("{list_key}.{name}");
        let Node::Map { entries: config, .. } = value else {
            return Err(YamlError::Shape {
                key: element_key,
                line: value.line(),
                expected: "a mapping (type, ...)",
                found: value.kind(),
            });
        };
        let name = list_element(&element_key, Node::Scalar { text: Some(name), line: name_line })?;
        add_named(flat, list_key, &mut names, name, name_line, config)?;
    }
    let joined = names.into_iter().map(|(name, _)| name).collect::<Vec<_>>().join(",");
    flat.set(list_key.to_string(), joined, line)
}

fn add_named(
    flat: &mut Flat,
    list_key: &str,
    names: &mut Vec<(String, usize)>,
    name: String,
    line: usize,
    config: Vec<(String, usize, Node)>,
) -> Result<(), YamlError> {
    if let Some((_, first_line)) = names.iter().find(|(seen, _)| *seen == name) {
        return Err(YamlError::Duplicate { key: format!("{list_key} name {name}"), line, first_line: *first_line });
    }
    for (key, key_line, value) in config {
        flatten(flat, format!("{list_key}.{name}.{key}"), key_line, value)?;
    }
    names.push((name, line));
    Ok(())
}

/// A scalar as its key's value; a mapping flattens under the key.
fn flatten(flat: &mut Flat, key: String, key_line: usize, value: Node) -> Result<(), YamlError> {
    match value {
        Node::Map { entries, .. } => {
            for (child, child_line, child_value) in entries {
                flatten(flat, format!("{key}.{child}"), child_line, child_value)?;
            }
            Ok(())
        }
        value => {
            let text = scalar(&key, value, "a single value")?;
            flat.set(key, text, key_line)
        }
    }
}

fn scalar(key: &str, node: Node, expected: &'static str) -> Result<String, YamlError> {
    match node {
        Node::Scalar { text, .. } => Ok(text.unwrap_or_default()),
        other => Err(YamlError::Shape { key: key.to_string(), line: other.line(), expected, found: other.kind() }),
    }
}

/// The document's root, or None for an empty file.
fn read_document(text: &str) -> Result<Option<Node>, YamlError> {
    let mut reader = Reader { parser: Parser::new_from_str(text) };
    let mut root = None;
    loop {
        let (event, span) = reader.next()?;
        match event {
            Event::StreamEnd => return Ok(root),
            Event::DocumentStart(_) if root.is_some() => return Err(YamlError::SecondDocument { line: line_of(span) }),
            Event::StreamStart | Event::DocumentStart(_) | Event::DocumentEnd | Event::Nothing => {}
            event => root = Some(reader.node(event, span, "the document", 0)?),
        }
    }
}

fn line_of(span: Span) -> usize {
    span.start.line()
}

struct Reader<'input> {
    parser: Parser<'input, saphyr_parser::StrInput<'input>>,
}

impl<'input> Reader<'input> {
    fn next(&mut self) -> Result<(Event<'input>, Span), YamlError> {
        match self.parser.next() {
            Some(Ok(next)) => Ok(next),
            Some(Err(error)) => Err(YamlError::Syntax {
                line: error.marker().line(),
                column: error.marker().col() + 1,
                message: error.info().to_string(),
            }),
            // The parser ends every stream with StreamEnd; running out
            // before it is the same as reaching it.
            None => Ok((Event::StreamEnd, Span::default())),
        }
    }

    /// The node that `event` starts; `key` names it in errors.
    fn node(&mut self, event: Event<'input>, span: Span, key: &str, depth: usize) -> Result<Node, YamlError> {
        let line = line_of(span);
        if depth > PIPELINE_YAML_DEPTH_MAX {
            return Err(YamlError::TooDeep { line });
        }
        match event {
            Event::Scalar(text, style, _, _) => {
                let null = style == ScalarStyle::Plain && matches!(text.as_ref(), "~" | "null" | "Null" | "NULL" | "");
                Ok(Node::Scalar { text: (!null).then(|| text.into_owned()), line })
            }
            Event::Alias(_) => Err(YamlError::Alias { key: key.to_string(), line }),
            Event::SequenceStart(..) => {
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        return Ok(Node::Seq { items, line });
                    }
                    let item_key = format!("{key}[{}]", items.len());
                    items.push(self.node(event, span, &item_key, depth + 1)?);
                }
            }
            Event::MappingStart(..) => self.mapping(key, line, depth),
            other => {
                Err(YamlError::Syntax { line, column: span.start.col() + 1, message: format!("unexpected {other:?}") })
            }
        }
    }

    fn mapping(&mut self, key: &str, line: usize, depth: usize) -> Result<Node, YamlError> {
        let mut entries: Vec<(String, usize, Node)> = Vec::new();
        loop {
            let (event, span) = self.next()?;
            let key_line = line_of(span);
            let child = match event {
                Event::MappingEnd => return Ok(Node::Map { entries, line }),
                Event::Scalar(text, ..) if !text.trim().is_empty() => text.into_owned(),
                Event::Alias(_) => return Err(YamlError::Alias { key: key.to_string(), line: key_line }),
                _ => return Err(YamlError::BadKey { key: key.to_string(), line: key_line }),
            };
            if let Some((_, first_line, _)) = entries.iter().find(|(seen, _, _)| *seen == child) {
                let key = if depth == 0 { child } else { format!("{key}.{child}") };
                return Err(YamlError::Duplicate { key, line: key_line, first_line: *first_line });
            }
            let child_key = if depth == 0 { child.clone() } else { format!("{key}.{child}") };
            let (event, span) = self.next()?;
            let value = self.node(event, span, &child_key, depth + 1)?;
            entries.push((child, key_line, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Props {
        parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_readme_pipeline_maps_onto_kafkas_keys() {
        let props = parsed(
            "name: orders-to-file\nconnector.class: FileStreamSink\ntasks.max: 1\ntopics: orders\n\
             file: /tmp/orders.txt\nvalue.converter: org.apache.kafka.connect.json.JsonConverter\n\
             value.converter.schemas.enable: false\ntransforms:\n  - name: addSource\n    type: InsertField$Value\n\
             \x20   static.field: source\n    static.value: spate\n  - name: route\n    type: RegexRouter\n\
             \x20   regex: (.*)\n    replacement: $1-copy\nerrors:\n  tolerance: all\n  deadletterqueue.topic.name: orders-dlq\n\
             \x20 deadletterqueue:\n    context.headers.enable: true\n",
        );
        let expected = Props::from(
            [
                ("name", "orders-to-file"),
                ("connector.class", "FileStreamSink"),
                ("tasks.max", "1"),
                ("topics", "orders"),
                ("file", "/tmp/orders.txt"),
                ("value.converter", "org.apache.kafka.connect.json.JsonConverter"),
                ("value.converter.schemas.enable", "false"),
                ("transforms", "addSource,route"),
                ("transforms.addSource.type", "InsertField$Value"),
                ("transforms.addSource.static.field", "source"),
                ("transforms.addSource.static.value", "spate"),
                ("transforms.route.type", "RegexRouter"),
                ("transforms.route.regex", "(.*)"),
                ("transforms.route.replacement", "$1-copy"),
                ("errors.tolerance", "all"),
                ("errors.deadletterqueue.topic.name", "orders-dlq"),
                ("errors.deadletterqueue.context.headers.enable", "true"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        assert_eq!(props, expected);
    }

    #[test]
    fn the_readme_example_is_a_valid_sink_config() {
        let readme = include_str!("../README.md");
        let start = readme.find("```yaml\n").expect("a yaml block in the README") + "```yaml\n".len();
        let block = &readme[start..start + readme[start..].find("```").expect("its end")];
        let props = parsed(block);
        assert_eq!(props["transforms"], "addSource,dropTombstones");
        assert_eq!(props["predicates"], "isTombstone");
        assert_eq!(props["transforms.dropTombstones.predicate"], "isTombstone");
        assert_eq!(props["errors.deadletterqueue.context.headers.enable"], "true");
        let infos = crate::worker::validate(&props);
        let errors: Vec<_> = infos.configs.iter().filter(|c| !c.value.errors.is_empty()).collect();
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn scalars_keep_their_text_and_null_is_empty() {
        let props = parsed(
            "connector: FileStreamSource\nbatch.size: 0010\nratio: 1.50\nquoted: 'null'\nempty:\ntilde: ~\n\
             flag: yes\nmulti: |\n  a\n  b\ntopics: [a, b]\n",
        );
        assert_eq!(props["connector.class"], "FileStreamSource", "connector is connector.class");
        assert_eq!(props["batch.size"], "0010");
        assert_eq!(props["ratio"], "1.50");
        assert_eq!(props["quoted"], "null", "a quoted null is the text null");
        assert_eq!(props["empty"], "");
        assert_eq!(props["tilde"], "");
        assert_eq!(props["flag"], "yes");
        assert_eq!(props["multi"], "a\nb\n");
        assert_eq!(props["topics"], "a,b");
    }

    #[test]
    fn transforms_and_predicates_may_be_mappings_of_name_to_config() {
        let props = parsed(
            "transforms:\n  drop:\n    type: Filter\n    predicate: isTomb\n  keep:\n    type: ReplaceField$Value\n\
             predicates:\n  isTomb:\n    type: RecordIsTombstone\n",
        );
        assert_eq!(props["transforms"], "drop,keep", "names in the order written");
        assert_eq!(props["transforms.drop.type"], "Filter");
        assert_eq!(props["transforms.drop.predicate"], "isTomb");
        assert_eq!(props["predicates"], "isTomb");
        assert_eq!(props["predicates.isTomb.type"], "RecordIsTombstone");
        // Kafka's own flat spelling passes through unchanged.
        let flat = parsed("transforms: a\ntransforms.a.type: Filter\n");
        assert_eq!(flat["transforms"], "a");
        assert_eq!(flat["transforms.a.type"], "Filter");
        assert_eq!(parsed("transforms: []\n")["transforms"], "", "no transforms");
    }

    #[test]
    fn a_worker_file_flattens_the_same_way() {
        let props = parsed(
            "bootstrap.servers: localhost:9400\nkey.converter: StringConverter\nvalue.converter: JsonConverter\n\
             offset:\n  storage.file.filename: /var/lib/connect.offsets\n  flush.interval.ms: 10000\n",
        );
        assert_eq!(props["bootstrap.servers"], "localhost:9400");
        assert_eq!(props["offset.storage.file.filename"], "/var/lib/connect.offsets");
        assert_eq!(props["offset.flush.interval.ms"], "10000");
        assert_eq!(parsed(""), Props::new(), "an empty file is an empty config");
        assert_eq!(parsed("# only a comment\n"), Props::new());
    }

    #[test]
    fn shapes_that_cannot_map_are_errors_naming_the_key_and_line() {
        let cases: &[(&str, YamlError)] = &[
            (
                "name: a\nfile: [x, y]\n",
                YamlError::Shape { key: "file".into(), line: 2, expected: "a single value", found: "list" },
            ),
            (
                "errors:\n  tolerance:\n    - all\n",
                YamlError::Shape { key: "errors.tolerance".into(), line: 3, expected: "a single value", found: "list" },
            ),
            (
                "transforms:\n  - Filter\n",
                YamlError::Shape {
                    key: "transforms[0]".into(),
                    line: 2,
                    expected: "a mapping (name, type, ...)",
                    found: "single value",
                },
            ),
            (
                "topics: [a, [b]]\n",
                YamlError::Shape { key: "topics[1]".into(), line: 1, expected: "a single value", found: "list" },
            ),
            ("- a\n- b\n", YamlError::NotAMapping { line: 1, found: "list" }),
            ("just text\n", YamlError::NotAMapping { line: 1, found: "single value" }),
            ("name: a\nname: b\n", YamlError::Duplicate { key: "name".into(), line: 2, first_line: 1 }),
            (
                "errors.tolerance: none\nerrors:\n  tolerance: all\n",
                YamlError::Duplicate { key: "errors.tolerance".into(), line: 3, first_line: 1 },
            ),
            (
                "connector.class: A\nconnector: B\n",
                YamlError::Duplicate { key: "connector.class".into(), line: 2, first_line: 1 },
            ),
            (
                "transforms:\n  - name: a\n    type: Filter\n  - name: a\n    type: Filter\n",
                YamlError::Duplicate { key: "transforms name a".into(), line: 4, first_line: 2 },
            ),
            (
                "transforms:\n  - type: Filter\n",
                YamlError::BadName { key: "transforms[0]".into(), line: 2, why: "has no name".into() },
            ),
            ("a: &x 1\nb: *x\n", YamlError::Alias { key: "b".into(), line: 2 }),
            ("a: 1\n---\nb: 2\n", YamlError::SecondDocument { line: 2 }),
            ("? [a]\n: 1\n", YamlError::BadKey { key: "the document".into(), line: 1 }),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).as_ref(), Err(expected), "{text}");
        }
        let bad_name = parse("transforms:\n  - name: a,b\n    type: Filter\n").expect_err("comma");
        assert!(matches!(bad_name, YamlError::BadName { ref key, line: 2, .. } if key == "transforms[0].name"));
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let error = parse("name: a\nfile: \"unclosed\ntopics: b\n").expect_err("syntax");
        assert!(matches!(error, YamlError::Syntax { line, .. } if line >= 2), "{error}");
        let error = parse("name: a\n  bad indent: b\n").expect_err("syntax");
        assert!(matches!(error, YamlError::Syntax { line: 2, .. }), "{error}");
        assert!(error.to_string().starts_with("line 2, column "), "{error}");
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed_into() {
        let text = format!("a: {}1{}\n", "[".repeat(100), "]".repeat(100));
        let refused = parse(&text);
        assert!(matches!(refused, Err(YamlError::TooDeep { line: 1 })), "{refused:?}");
        // Deeper still, the parser's own limit answers first.
        let text = format!("a: {}1{}\n", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(parse(&text), Err(YamlError::Syntax { line: 1, .. })));
    }

    #[test]
    fn files_are_chosen_by_extension_and_errors_name_the_file() {
        let dir = crate::test_dir("yaml-files");
        let yaml = dir.join("sink.yml");
        std::fs::write(&yaml, "name: s\nconnector: FileStreamSink\ntopics:\n  - a\n").expect("write");
        let props = load_config_file(&yaml).expect("yaml");
        assert_eq!(props["topics"], "a");
        let properties = dir.join("sink.properties");
        std::fs::write(&properties, "name: s\n").expect("write");
        assert_eq!(load_config_file(&properties).expect("properties")["name"], "s");
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "name: a\nname: b\n").expect("write");
        let error = load_config_file(&bad).expect_err("duplicate");
        assert!(matches!(&error, ConnectError::PipelineFile { error: YamlError::Duplicate { .. }, .. }));
        assert!(error.to_string().contains("bad.yaml: line 2: name is given twice"), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_never_panicked_on(text in "[a-z:\\- \\n\\[\\]{},&*'\"|>#!?.~0-9]{0,200}") {
            let _ = parse(&text);
        }
    }
}
