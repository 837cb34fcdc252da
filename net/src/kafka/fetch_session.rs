//! Fetch sessions (KIP-227): a consumer or follower with many partitions
//! sends only what changed, and gets back only what changed. A session
//! lives on the connection that created it (clients keep one connection
//! per broker; a request naming a session on another connection gets
//! FETCH_SESSION_ID_NOT_FOUND and the client starts a new one).

use std::collections::HashMap;

use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::FetchRequest;

/// A partition of a fetch, as the request or the session names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// The topic's name (Fetch v12 and before) or its id (v13+).
    pub topic: String,
    pub topic_id: uuid::Uuid,
    pub partition: i32,
}

/// What the client asked of one partition, and what it was last told.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    pub key: Key,
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
    pub current_leader_epoch: i32,
    /// Sent in this request (a new or changed partition): always answered.
    pub in_request: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub error: i16,
}

#[derive(Debug)]
pub(crate) struct FetchSession {
    pub id: i32,
    /// The epoch the next request must carry.
    pub next_epoch: i32,
    /// In the order they were added (answers keep it).
    order: Vec<Key>,
    wanted: HashMap<Key, Wanted>,
    sent: HashMap<Key, Sent>,
}

/// How a request relates to sessions.
pub(crate) enum Plan {
    /// No session: every partition of the request, all answered.
    Full { session_id: i32, wanted: Vec<Wanted> },
    /// An incremental fetch: every partition of the session; only the
    /// changed ones answered.
    Incremental { wanted: Vec<Wanted> },
    /// The request cannot be served (its error code).
    Refused(i16),
}

fn requested(request: &FetchRequest, by_id: bool) -> Vec<Wanted> {
    let mut out = Vec::new();
    for topic in &request.topics {
        for part in &topic.partitions {
            out.push(Wanted {
                key: Key {
                    topic: if by_id { topic.topic_id.to_string() } else { topic.topic.0.to_string() },
                    topic_id: topic.topic_id,
                    partition: part.partition,
                },
                fetch_offset: part.fetch_offset,
                partition_max_bytes: part.partition_max_bytes,
                current_leader_epoch: part.current_leader_epoch,
                in_request: true,
            });
        }
    }
    out
}

/// A new session id: random, positive, never 0 (0 is "no session").
fn new_session_id() -> i32 {
    let mut bytes = [0u8; 4];
    // Ids need not be secret, only distinct on one connection (which
    // holds one session): should the OS refuse randomness, id 1 serves.
    let _ = getrandom::fill(&mut bytes);
    (i32::from_be_bytes(bytes) & i32::MAX).max(1)
}

/// A full fetch of the request's partitions, without a session (versions
/// before sessions).
pub(crate) fn full(request: &FetchRequest, by_id: bool) -> Plan {
    Plan::Full { session_id: 0, wanted: requested(request, by_id) }
}

/// Applies a request to the connection's session (`slot`): KIP-227's rules
/// for the session id and epoch. `partitions_max` bounds a session.
pub(crate) fn plan(
    slot: &mut Option<FetchSession>,
    request: &FetchRequest,
    by_id: bool,
    partitions_max: usize,
) -> Plan {
    let (id, epoch) = (request.session_id, request.session_epoch);
    match (id, epoch) {
        // No session, or closing one: a full fetch.
        (_, -1) => {
            if id != 0 {
                *slot = None;
            }
            Plan::Full { session_id: 0, wanted: requested(request, by_id) }
        }
        // A new session: a full fetch whose partitions the session keeps.
        (0, 0) => {
            let wanted = requested(request, by_id);
            let session_id = new_session_id();
            let mut session = FetchSession {
                id: session_id,
                next_epoch: 1,
                order: Vec::with_capacity(wanted.len()),
                wanted: HashMap::with_capacity(wanted.len()),
                sent: HashMap::new(),
            };
            for w in &wanted {
                let kept = Wanted { in_request: false, ..w.clone() };
                if session.wanted.insert(w.key.clone(), kept).is_none() {
                    session.order.push(w.key.clone());
                }
            }
            *slot = Some(session);
            Plan::Full { session_id, wanted }
        }
        (0, _) => Plan::Refused(K::InvalidFetchSessionEpoch.code()),
        (id, epoch) => {
            let Some(session) = slot.as_mut().filter(|s| s.id == id) else {
                return Plan::Refused(K::FetchSessionIdNotFound.code());
            };
            if epoch != session.next_epoch {
                return Plan::Refused(K::InvalidFetchSessionEpoch.code());
            }
            session.next_epoch = session.next_epoch.checked_add(1).unwrap_or(1);
            for forgotten in &request.forgotten_topics_data {
                let topic = if by_id { forgotten.topic_id.to_string() } else { forgotten.topic.0.to_string() };
                for &partition in &forgotten.partitions {
                    let key = Key { topic: topic.clone(), topic_id: forgotten.topic_id, partition };
                    session.wanted.remove(&key);
                    session.sent.remove(&key);
                }
            }
            session.order.retain(|key| session.wanted.contains_key(key));
            for w in requested(request, by_id) {
                if !session.wanted.contains_key(&w.key) {
                    if session.wanted.len() >= partitions_max {
                        return Plan::Refused(K::InvalidRequest.code());
                    }
                    session.order.push(w.key.clone());
                }
                session.wanted.insert(w.key.clone(), w);
            }
            let wanted = session.order.iter().filter_map(|key| session.wanted.get(key).cloned()).collect();
            // In-request marks only this request: the session keeps the
            // partition, not the flag.
            for kept in session.wanted.values_mut() {
                kept.in_request = false;
            }
            Plan::Incremental { wanted }
        }
    }
}

/// Whether an incremental answer includes a partition, and remembers what
/// it was told: data, an error, a moved high watermark or log start, or a
/// partition this request sent.
pub(crate) fn include(slot: &mut Option<FetchSession>, wanted: &Wanted, now: Sent, has_records: bool) -> bool {
    let Some(session) = slot.as_mut() else { return true };
    let before = session.sent.insert(wanted.key.clone(), now);
    wanted.in_request || has_records || now.error != 0 || before != Some(now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    fn request(session_id: i32, epoch: i32, parts: &[(&str, i32, i64)], forgotten: &[(&str, i32)]) -> FetchRequest {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for (topic, partition, offset) in parts {
            let p = FetchPartition::default()
                .with_partition(*partition)
                .with_fetch_offset(*offset)
                .with_partition_max_bytes(1 << 20);
            match topics.iter_mut().find(|t| t.topic.0.as_str() == *topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let forgotten = forgotten
            .iter()
            .map(|(topic, partition)| {
                ForgottenTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partitions(vec![*partition])
            })
            .collect();
        FetchRequest::default()
            .with_session_id(session_id)
            .with_session_epoch(epoch)
            .with_topics(topics)
            .with_forgotten_topics_data(forgotten)
    }

    fn offsets(wanted: &[Wanted]) -> Vec<(String, i32, i64, bool)> {
        wanted.iter().map(|w| (w.key.topic.clone(), w.key.partition, w.fetch_offset, w.in_request)).collect()
    }

    /// KIP-227's life of a session: created by epoch 0, then each request
    /// carries the next epoch and only what changed; the session answers
    /// for every partition it holds; forgotten partitions leave it; a
    /// wrong epoch or an unknown id is refused; epoch -1 closes it.
    #[test]
    fn a_session_keeps_its_partitions_and_takes_only_changes() {
        let mut slot = None;
        let Plan::Full { session_id, wanted } =
            plan(&mut slot, &request(0, 0, &[("a", 0, 5), ("a", 1, 7)], &[]), false, 100)
        else {
            panic!("a new session is a full fetch");
        };
        assert_ne!(session_id, 0);
        assert_eq!(wanted.len(), 2);
        // Epoch 1: partition 0 moved on; partition 1 is still at 7.
        let Plan::Incremental { wanted } = plan(&mut slot, &request(session_id, 1, &[("a", 0, 9)], &[]), false, 100)
        else {
            panic!("incremental");
        };
        assert_eq!(offsets(&wanted), vec![("a".into(), 0, 9, true), ("a".into(), 1, 7, false)]);
        // Epoch 2: partition 1 forgotten, b/0 added.
        let Plan::Incremental { wanted } =
            plan(&mut slot, &request(session_id, 2, &[("b", 0, 0)], &[("a", 1)]), false, 100)
        else {
            panic!("incremental");
        };
        assert_eq!(offsets(&wanted), vec![("a".into(), 0, 9, false), ("b".into(), 0, 0, true)]);
        // A repeated epoch, another session's id: refused.
        assert!(matches!(plan(&mut slot, &request(session_id, 2, &[], &[]), false, 100), Plan::Refused(71)));
        assert!(matches!(plan(&mut slot, &request(session_id + 1, 3, &[], &[]), false, 100), Plan::Refused(70)));
        // Past the cap a session takes no more partitions.
        assert!(matches!(
            plan(&mut slot, &request(session_id, 3, &[("c", 0, 0), ("c", 1, 0)], &[]), false, 3),
            Plan::Refused(42)
        ));
        // Closing: a full fetch without a session.
        assert!(matches!(
            plan(&mut slot, &request(session_id, -1, &[("a", 0, 9)], &[]), false, 100),
            Plan::Full { session_id: 0, .. }
        ));
        assert!(slot.is_none());
    }

    /// An incremental answer leaves out a partition with nothing new.
    #[test]
    fn only_changes_are_answered() {
        let mut slot = None;
        let Plan::Full { session_id, wanted } = plan(&mut slot, &request(0, 0, &[("a", 0, 5)], &[]), false, 100) else {
            panic!("full");
        };
        let state = Sent { high_watermark: 5, log_start_offset: 0, error: 0 };
        assert!(include(&mut slot, &wanted[0], state, false), "the first answer has everything");
        let Plan::Incremental { wanted } = plan(&mut slot, &request(session_id, 1, &[], &[]), false, 100) else {
            panic!("incremental");
        };
        assert!(!include(&mut slot, &wanted[0], state, false), "nothing new");
        assert!(include(&mut slot, &wanted[0], Sent { high_watermark: 6, ..state }, false), "the high watermark moved");
        assert!(include(&mut slot, &wanted[0], Sent { high_watermark: 6, ..state }, true), "records");
    }
}
