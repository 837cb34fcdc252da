//! The connectors a worker knows, by Kafka's class names and aliases (the
//! simple class name, and that name without `Connector`).

use crate::connector::{SinkConnector, SourceConnector};
use crate::file::{FileStreamSinkConnector, FileStreamSourceConnector};
use crate::http_sink::HttpSinkConnector;
use crate::http_source::HttpSourceConnector;
use crate::postgres::sink::PostgresSinkConnector;
use crate::postgres::source::PostgresSourceConnector;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorType {
    Source,
    Sink,
}

impl ConnectorType {
    pub fn name(self) -> &'static str {
        match self {
            ConnectorType::Source => "source",
            ConnectorType::Sink => "sink",
        }
    }
}

/// A connector class.
#[derive(Debug, Clone, Copy)]
pub struct Plugin {
    pub class: &'static str,
    pub aliases: &'static [&'static str],
    pub connector_type: ConnectorType,
    make: fn() -> AnyConnector,
}

/// A connector instance of either kind.
pub enum AnyConnector {
    Source(Box<dyn SourceConnector>),
    Sink(Box<dyn SinkConnector>),
}

impl std::fmt::Debug for AnyConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnyConnector::Source(_) => f.write_str("AnyConnector::Source"),
            AnyConnector::Sink(_) => f.write_str("AnyConnector::Sink"),
        }
    }
}

impl AnyConnector {
    pub fn as_connector(&self) -> &dyn crate::connector::Connector {
        match self {
            AnyConnector::Source(c) => c.as_ref(),
            AnyConnector::Sink(c) => c.as_ref(),
        }
    }

    pub fn as_connector_mut(&mut self) -> &mut dyn crate::connector::Connector {
        match self {
            AnyConnector::Source(c) => c.as_mut(),
            AnyConnector::Sink(c) => c.as_mut(),
        }
    }
}

const PLUGINS: &[Plugin] = &[
    Plugin {
        class: "org.apache.kafka.connect.file.FileStreamSinkConnector",
        aliases: &["FileStreamSinkConnector", "FileStreamSink"],
        connector_type: ConnectorType::Sink,
        make: || AnyConnector::Sink(Box::new(FileStreamSinkConnector::default())),
    },
    Plugin {
        class: "org.apache.kafka.connect.file.FileStreamSourceConnector",
        aliases: &["FileStreamSourceConnector", "FileStreamSource"],
        connector_type: ConnectorType::Source,
        make: || AnyConnector::Source(Box::new(FileStreamSourceConnector::default())),
    },
    // Spate's own connectors: full names under io.spate.connect.
    Plugin {
        class: "io.spate.connect.http.HttpSinkConnector",
        aliases: &["HttpSinkConnector", "HttpSink"],
        connector_type: ConnectorType::Sink,
        make: || AnyConnector::Sink(Box::new(HttpSinkConnector::default())),
    },
    Plugin {
        class: "io.spate.connect.http.HttpSourceConnector",
        aliases: &["HttpSourceConnector", "HttpSource"],
        connector_type: ConnectorType::Source,
        make: || AnyConnector::Source(Box::new(HttpSourceConnector::default())),
    },
    Plugin {
        class: "io.spate.connect.postgres.PostgresSinkConnector",
        aliases: &["PostgresSinkConnector", "PostgresSink"],
        connector_type: ConnectorType::Sink,
        make: || AnyConnector::Sink(Box::new(PostgresSinkConnector::default())),
    },
    Plugin {
        class: "io.spate.connect.postgres.PostgresSourceConnector",
        aliases: &["PostgresSourceConnector", "PostgresSource"],
        connector_type: ConnectorType::Source,
        make: || AnyConnector::Source(Box::new(PostgresSourceConnector::default())),
    },
];

pub fn plugins() -> &'static [Plugin] {
    PLUGINS
}

/// The plugin a `connector.class` names (full name or alias).
pub fn find(class: &str) -> Option<&'static Plugin> {
    let class = class.trim();
    PLUGINS.iter().find(|p| p.class == class || p.aliases.contains(&class))
}

impl Plugin {
    pub fn instantiate(&self) -> AnyConnector {
        (self.make)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_connectors_are_found_by_full_and_short_names() {
        for (class, kind) in [
            ("FileStreamSource", ConnectorType::Source),
            ("FileStreamSourceConnector", ConnectorType::Source),
            ("org.apache.kafka.connect.file.FileStreamSourceConnector", ConnectorType::Source),
            ("FileStreamSink", ConnectorType::Sink),
            ("org.apache.kafka.connect.file.FileStreamSinkConnector", ConnectorType::Sink),
            ("HttpSink", ConnectorType::Sink),
            ("io.spate.connect.http.HttpSinkConnector", ConnectorType::Sink),
            ("HttpSource", ConnectorType::Source),
            ("io.spate.connect.http.HttpSourceConnector", ConnectorType::Source),
            ("PostgresSink", ConnectorType::Sink),
            ("io.spate.connect.postgres.PostgresSinkConnector", ConnectorType::Sink),
            ("PostgresSource", ConnectorType::Source),
            ("io.spate.connect.postgres.PostgresSourceConnector", ConnectorType::Source),
        ] {
            let plugin = find(class).expect(class);
            assert_eq!(plugin.connector_type, kind);
            assert_eq!(matches!(plugin.instantiate(), AnyConnector::Source(_)), kind == ConnectorType::Source);
        }
        assert!(find("io.confluent.connect.jdbc.JdbcSinkConnector").is_none());
    }
}
