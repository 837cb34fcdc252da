//! `Admin`: create, delete, list and describe topics, and change their
//! configs.

use std::time::{Duration, Instant};

use spate_flatbuf::proto::ErrorCode;

use crate::client::Client;
use crate::error::ClientError;
use crate::metadata::{ClusterMetadata, TopicDescription, TopicInfo};
use crate::protocol::{self, NewTopic, Stamp, TopicResult};

/// Topic administration over a `Client`'s connections.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    pub fn new(client: Client) -> Self {
        Admin { client }
    }

    /// How long the broker may take to carry out a create or delete.
    fn broker_timeout_ms(&self) -> i32 {
        i32::try_from(self.client.config().request_timeout_ms).unwrap_or(i32::MAX)
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(String, String)],
    ) -> Result<(), ClientError> {
        let topic = NewTopic { name, partitions, replication_factor, configs };
        let timeout_ms = self.broker_timeout_ms();
        let build = |stamp| protocol::create_topics(stamp, &topic, timeout_ms);
        let result = self.controller_call(name, build, protocol::decode_create_topics).await;
        self.client.invalidate_metadata();
        result
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let names = [name.to_string()];
        let timeout_ms = self.broker_timeout_ms();
        let build = |stamp| protocol::delete_topics(stamp, &names, timeout_ms);
        let result = self.controller_call(name, build, protocol::decode_delete_topics).await;
        self.client.invalidate_metadata();
        result
    }

    /// Changes a topic's configs while it runs (Kafka's
    /// IncrementalAlterConfigs): `set` keys take the given values, `delete`
    /// keys return to their defaults, others keep theirs. The broker checks
    /// the result whole and refuses it with `InvalidConfig` (nothing
    /// changed) if any key or value is bad; otherwise it stores it and
    /// applies it to every open partition before answering.
    pub async fn alter_configs(
        &self,
        name: &str,
        set: &[(String, String)],
        delete: &[String],
    ) -> Result<(), ClientError> {
        let timeout_ms = self.broker_timeout_ms();
        let build = |stamp| protocol::alter_configs(stamp, name, set, delete, timeout_ms);
        self.controller_call(name, build, protocol::decode_alter_configs).await
    }

    /// Sends a topic change to the controller and reads the topic's
    /// outcome. `NotController` (the quorum has no leader, or it moved) is
    /// retried with fresh metadata until the request timeout. As in Kafka,
    /// a change the quorum committed after answering `NotController` makes
    /// the retry fail (`TopicAlreadyExists`, say).
    async fn controller_call(
        &self,
        name: &str,
        build: impl Fn(Stamp) -> protocol::OutFrame,
        decode: impl Fn(&spate_flatbuf::Frame) -> Result<Vec<TopicResult>, ClientError>,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.client.request_timeout();
        loop {
            let frame = self.client.request_controller(&build).await?;
            match result_for(name, decode(&frame)?) {
                Err(error) if error.code() == Some(ErrorCode::NotController) && Instant::now() < deadline => {
                    tracing::debug!(topic = name, %error, "not the controller; retrying");
                    self.client.invalidate_metadata();
                    tokio::time::sleep(Duration::from_millis(crate::limits::METADATA_REFRESH_BACKOFF_MS)).await;
                }
                other => return other,
            }
        }
    }

    /// Every topic, from a Metadata request for all of them.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        Ok(self.client.metadata(None).await?.topics)
    }

    /// Topics with their partitions' offsets and sizes and their configs
    /// (every topic when `names` is `None`). A topic the broker reports an
    /// error for fails the whole call with that error.
    pub async fn describe_topics(&self, names: Option<&[String]>) -> Result<Vec<TopicDescription>, ClientError> {
        let frame = self.client.request_any(|stamp| protocol::describe_topics(stamp, names)).await?;
        let topics = protocol::decode_describe_topics(&frame)?;
        for topic in &topics {
            if let Some(code) = topic.error {
                return Err(topic_error(&topic.name, code, None));
            }
        }
        if let Some(names) = names
            && let Some(missing) = names.iter().find(|name| !topics.iter().any(|topic| &topic.name == *name))
        {
            return Err(ClientError::UnknownTopic(missing.clone()));
        }
        Ok(topics)
    }

    pub async fn cluster_info(&self) -> Result<ClusterMetadata, ClientError> {
        self.client.metadata(None).await
    }
}

fn topic_error(name: &str, code: ErrorCode, message: Option<String>) -> ClientError {
    if code == ErrorCode::UnknownTopicOrPartition {
        return ClientError::UnknownTopic(name.to_string());
    }
    ClientError::Server { code, message: message.or_else(|| Some(format!("topic {name:?}"))) }
}

/// The outcome for `name` among a create or delete response's results.
fn result_for(name: &str, results: Vec<TopicResult>) -> Result<(), ClientError> {
    let result = results
        .into_iter()
        .find(|result| result.name == name)
        .ok_or_else(|| ClientError::Protocol(format!("the broker's answer does not mention topic {name:?}")))?;
    match result.error {
        None => Ok(()),
        Some(code) => Err(topic_error(name, code, result.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_topic_error_codes_become_typed_errors() {
        let result = |error, message: Option<&str>| {
            vec![TopicResult { name: "orders".into(), error, message: message.map(str::to_string) }]
        };
        assert!(result_for("orders", result(None, None)).is_ok());
        assert!(matches!(
            result_for("orders", result(Some(ErrorCode::TopicAlreadyExists), Some("exists"))),
            Err(ClientError::Server { code: ErrorCode::TopicAlreadyExists, message: Some(m) }) if m == "exists"
        ));
        assert!(matches!(
            result_for("orders", result(Some(ErrorCode::UnknownTopicOrPartition), None)),
            Err(ClientError::UnknownTopic(name)) if name == "orders"
        ));
        assert!(matches!(result_for("other", result(None, None)), Err(ClientError::Protocol(_))));
    }
}
