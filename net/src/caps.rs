//! Caps checked on every request before its handler copies or answers
//! anything: names, entries per request, repeated entries. A request that
//! breaks one is refused whole with one short `ErrorResponse`, so that a
//! hostile request cannot make the broker copy its bytes into every entry
//! of a large answer (issue 14: a 100 KB topic name with 100 partition
//! entries used to come back as a 10 MB answer). Everything here reads the
//! verified envelope in place and allocates at most a set of (name,
//! partition) pairs, after the counts are known to be within their caps.

use std::collections::HashSet;

use spate_flatbuf::flatbuffers::{ForwardsUOffset, Vector};
use spate_flatbuf::proto::*;

use crate::limits::{
    ERROR_MESSAGE_BYTES_MAX, GROUPS_PER_REQUEST_MAX, NAME_BYTES_MAX, PARTITIONS_PER_REQUEST_MAX, TOPICS_PER_REQUEST_MAX,
};

/// Why a request is refused whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub error: ErrorCode,
    /// Never holds bytes of the request (lengths and counts only).
    pub message: String,
}

fn refuse(error: ErrorCode, message: String) -> Refusal {
    debug_assert!(message.len() <= ERROR_MESSAGE_BYTES_MAX);
    Refusal { error, message }
}

/// A name (topic, group id, member id, client id) longer than Kafka's 249
/// bytes. The message names the field and the length, never the bytes.
fn name(field: &str, value: Option<&str>, error: ErrorCode) -> Result<(), Refusal> {
    let len = value.map_or(0, str::len);
    if len > NAME_BYTES_MAX {
        return Err(refuse(error, format!("{field} is {len} bytes, over the {NAME_BYTES_MAX}-byte limit")));
    }
    Ok(())
}

fn topic_name(value: Option<&str>) -> Result<(), Refusal> {
    name("a topic name", value, ErrorCode::InvalidTopic)
}

fn count(what: &str, len: usize, max: usize) -> Result<(), Refusal> {
    if len > max {
        return Err(refuse(ErrorCode::InvalidRequest, format!("{len} {what} in one request, over the limit of {max}")));
    }
    Ok(())
}

/// Topic and partition entries of one request: counts within their caps,
/// names within 249 bytes, and no (topic, partition) named twice.
struct Entries<'a> {
    partitions: usize,
    seen: HashSet<(&'a str, i32)>,
}

impl<'a> Entries<'a> {
    fn new(topics: usize) -> Result<Self, Refusal> {
        count("topic entries", topics, TOPICS_PER_REQUEST_MAX)?;
        Ok(Entries { partitions: 0, seen: HashSet::new() })
    }

    /// One topic entry and its partition indexes; `partitions` is the
    /// entry's count, checked before `indexes` is walked.
    fn topic(
        &mut self,
        name: Option<&'a str>,
        partitions: usize,
        indexes: impl Iterator<Item = i32>,
    ) -> Result<(), Refusal> {
        topic_name(name)?;
        self.partitions = self.partitions.saturating_add(partitions);
        count("partition entries", self.partitions, PARTITIONS_PER_REQUEST_MAX)?;
        let name = name.unwrap_or_default();
        for partition in indexes {
            if !self.seen.insert((name, partition)) {
                return Err(refuse(
                    ErrorCode::InvalidRequest,
                    format!("partition {partition} of a topic is named twice"),
                ));
            }
        }
        Ok(())
    }
}

/// Whether a list may name one thing twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeats {
    /// Each name is answered or worked on: a repeat would be work twice.
    Refused,
    /// The list is a set (a subscription a user typed): repeats cost
    /// nothing and are not worth failing a client over.
    Allowed,
}

/// A list of names (topics or groups): each within 249 bytes, at most
/// `max` of them.
fn names(
    field: &str,
    list: Option<Vector<'_, ForwardsUOffset<&str>>>,
    max: usize,
    error: ErrorCode,
    repeats: Repeats,
) -> Result<(), Refusal> {
    let Some(list) = list else { return Ok(()) };
    count(field, list.len(), max)?;
    let mut seen = HashSet::with_capacity(if repeats == Repeats::Refused { list.len() } else { 0 });
    for value in list.iter() {
        name(field, Some(value), error)?;
        if repeats == Repeats::Refused && !seen.insert(value) {
            return Err(refuse(ErrorCode::InvalidRequest, format!("one of the {field} is named twice")));
        }
    }
    Ok(())
}

fn topic_partitions<'a>(list: Option<Vector<'a, ForwardsUOffset<TopicPartitions<'a>>>>) -> Result<(), Refusal> {
    let Some(list) = list else { return Ok(()) };
    let mut entries = Entries::new(list.len())?;
    for entry in list.iter() {
        let partitions = entry.partitions();
        entries.topic(entry.topic(), partitions.map_or(0, |p| p.len()), partitions.iter().flatten())?;
    }
    Ok(())
}

/// Walks topic entries of the usual shape (a name and a vector of
/// partition tables with a `partition()` field).
macro_rules! topic_entries {
    ($topics:expr) => {{
        match $topics {
            None => Ok(()),
            Some(topics) => (|| {
                let mut entries = Entries::new(topics.len())?;
                for topic in topics.iter() {
                    let partitions = topic.partitions();
                    entries.topic(
                        topic.name(),
                        partitions.map_or(0, |p| p.len()),
                        partitions.iter().flatten().map(|p| p.partition()),
                    )?;
                }
                Ok(())
            })(),
        }
    }};
}

/// Checks the caps of one verified envelope's request.
pub(crate) fn check(envelope: &Envelope<'_>) -> Result<(), Refusal> {
    if let Some(r) = envelope.body_as_produce_request() {
        name("the transactional id", r.transactional_id(), ErrorCode::InvalidRequest)?;
        return topic_entries!(r.topics());
    }
    if let Some(r) = envelope.body_as_fetch_request() {
        return topic_entries!(r.topics());
    }
    if let Some(r) = envelope.body_as_list_offsets_request() {
        return topic_entries!(r.topics());
    }
    if let Some(r) = envelope.body_as_offset_for_leader_epoch_request() {
        return topic_entries!(r.topics());
    }
    if let Some(r) = envelope.body_as_metadata_request() {
        return names("topic names", r.topics(), TOPICS_PER_REQUEST_MAX, ErrorCode::InvalidTopic, Repeats::Refused);
    }
    if let Some(r) = envelope.body_as_describe_topics_request() {
        return names("topic names", r.names(), TOPICS_PER_REQUEST_MAX, ErrorCode::InvalidTopic, Repeats::Refused);
    }
    // The admin APIs answer each topic entry once with its name and check
    // names themselves (InvalidTopic per topic, the length in the message):
    // an answer no larger than the request. Only their counts are capped.
    if let Some(r) = envelope.body_as_delete_topics_request() {
        return count("topic entries", r.names().map_or(0, |t| t.len()), TOPICS_PER_REQUEST_MAX);
    }
    if let Some(r) = envelope.body_as_create_topics_request() {
        return count("topic entries", r.topics().map_or(0, |t| t.len()), TOPICS_PER_REQUEST_MAX);
    }
    if let Some(r) = envelope.body_as_alter_configs_request() {
        return count("topic entries", r.topics().map_or(0, |t| t.len()), TOPICS_PER_REQUEST_MAX);
    }
    if let Some(r) = envelope.body_as_handshake_request() {
        return name("the client id", r.client_id(), ErrorCode::InvalidRequest);
    }
    if let Some(r) = envelope.body_as_consumer_group_heartbeat_request() {
        name("the group id", r.group_id(), ErrorCode::InvalidGroupId)?;
        name("the member id", r.member_id(), ErrorCode::InvalidRequest)?;
        name("the client id", r.client_id(), ErrorCode::InvalidRequest)?;
        name("the assignor", r.assignor(), ErrorCode::InvalidGroupId)?;
        names(
            "subscribed topics",
            r.subscribed_topics(),
            TOPICS_PER_REQUEST_MAX,
            ErrorCode::InvalidTopic,
            Repeats::Allowed,
        )?;
        return topic_partitions(r.owned_partitions());
    }
    if let Some(r) = envelope.body_as_offset_commit_request() {
        name("the group id", r.group_id(), ErrorCode::InvalidGroupId)?;
        name("the member id", r.member_id(), ErrorCode::InvalidRequest)?;
        return topic_entries!(r.topics());
    }
    if let Some(r) = envelope.body_as_offset_fetch_request() {
        name("the group id", r.group_id(), ErrorCode::InvalidGroupId)?;
        return topic_partitions(r.topics());
    }
    if let Some(r) = envelope.body_as_describe_groups_request() {
        return names("group ids", r.groups(), GROUPS_PER_REQUEST_MAX, ErrorCode::InvalidGroupId, Repeats::Refused);
    }
    if let Some(r) = envelope.body_as_delete_groups_request() {
        return names("group ids", r.groups(), GROUPS_PER_REQUEST_MAX, ErrorCode::InvalidGroupId, Repeats::Refused);
    }
    if let Some(r) = envelope.body_as_init_producer_id_request() {
        return name("the transactional id", r.transactional_id(), ErrorCode::InvalidRequest);
    }
    if let Some(r) = envelope.body_as_add_partitions_to_txn_request() {
        name("the transactional id", r.transactional_id(), ErrorCode::InvalidRequest)?;
        return topic_partitions(r.topics());
    }
    if let Some(r) = envelope.body_as_add_offsets_to_txn_request() {
        name("the transactional id", r.transactional_id(), ErrorCode::InvalidRequest)?;
        return name("the group id", r.group_id(), ErrorCode::InvalidGroupId);
    }
    if let Some(r) = envelope.body_as_txn_offset_commit_request() {
        name("the transactional id", r.transactional_id(), ErrorCode::InvalidRequest)?;
        name("the group id", r.group_id(), ErrorCode::InvalidGroupId)?;
        name("the member id", r.member_id(), ErrorCode::InvalidRequest)?;
        return topic_entries!(r.topics());
    }
    if let Some(r) = envelope.body_as_end_txn_request() {
        return name("the transactional id", r.transactional_id(), ErrorCode::InvalidRequest);
    }
    Ok(())
}

/// `message` cut to at most `ERROR_MESSAGE_BYTES_MAX` bytes (on a char
/// boundary), so that no error message carries unbounded bytes from a
/// request, whichever path built it.
pub(crate) fn bounded_message(mut message: String) -> String {
    if message.len() > ERROR_MESSAGE_BYTES_MAX {
        let marker = "...";
        let mut end = ERROR_MESSAGE_BYTES_MAX - marker.len();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(marker);
    }
    debug_assert!(message.len() <= ERROR_MESSAGE_BYTES_MAX);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(ERROR_MESSAGE_BYTES_MAX);
        let cut = bounded_message(long);
        assert!(cut.len() <= ERROR_MESSAGE_BYTES_MAX);
        assert!(cut.ends_with("..."));
        assert_eq!(bounded_message("short".into()), "short");
    }
}
