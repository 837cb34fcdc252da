//! Kafka's OffsetDelete on the coordinator: a group's committed offsets of
//! some partitions go (a tombstone each in `__consumer_offsets`), except
//! those of topics a member of the group is subscribed to, whose
//! consumption would then restart from its reset policy under it
//! (Kafka's GROUP_SUBSCRIBED_TO_TOPIC).

use std::rc::Rc;
use std::time::Instant;

use futures::channel::oneshot;
use spate_flatbuf::proto::ErrorCode;

use super::record::GroupRecord;
use super::{Tp, append, written};
use crate::shard::{Outcome, Shard};

/// What became of one partition's committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetDeleted {
    /// Deleted, or there was none.
    Deleted,
    /// Kept: a member of the group is subscribed to its topic (or, the
    /// coordinator having just moved, members may rejoin that are).
    SubscribedToTopic,
}

/// Deletes `partitions`' committed offsets of `group_id` on its
/// coordinator: checked and removed in one synchronous step, answered once
/// the tombstones are written and replicated. A group unknown here is
/// GroupIdNotFound.
pub(crate) fn delete_offsets(
    shard: &Rc<Shard>,
    group_id: String,
    partitions: Vec<Tp>,
    reply: oneshot::Sender<Result<Vec<(Tp, OffsetDeleted)>, Outcome>>,
) {
    let decided = {
        let mut groups = shard.groups.groups.borrow_mut();
        match groups.get_mut(&group_id) {
            None => Err(Outcome::err(ErrorCode::GroupIdNotFound, format!("no group {group_id:?}"))),
            Some(group) => {
                // Members the previous coordinator had may rejoin with any
                // subscription: keep every offset until they have, or their
                // sessions have run out.
                let unknown_members = group.members.is_empty() && group.may_have_members(Instant::now());
                let answers: Vec<(Tp, OffsetDeleted)> = partitions
                    .into_iter()
                    .map(|tp| {
                        let subscribed =
                            unknown_members || group.members.values().any(|m| m.subscribed.contains(&tp.0));
                        if subscribed { (tp, OffsetDeleted::SubscribedToTopic) } else { (tp, OffsetDeleted::Deleted) }
                    })
                    .collect();
                let doomed: Vec<Tp> = answers
                    .iter()
                    .filter(|(tp, answer)| *answer == OffsetDeleted::Deleted && group.offsets.contains_key(tp))
                    .map(|(tp, _)| tp.clone())
                    .collect();
                for tp in &doomed {
                    group.offsets.remove(tp);
                }
                Ok((answers, doomed))
            }
        }
    };
    let write = match &decided {
        Err(outcome) => Err(outcome.clone()),
        Ok((_, doomed)) if doomed.is_empty() => Err(Outcome::ok()),
        Ok((_, doomed)) => {
            let tombstones: Vec<GroupRecord> = doomed
                .iter()
                .map(|(topic, partition)| GroupRecord::Offset {
                    group: group_id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    offset: None,
                })
                .collect();
            append(shard, &group_id, &tombstones)
        }
    };
    glommio::spawn_local(async move {
        let stored = match write {
            Err(outcome) => outcome,
            Ok(write) => written(Ok(write)).await,
        };
        let result = match (decided, stored.error) {
            (Err(outcome), _) => Err(outcome),
            (Ok((answers, _)), ErrorCode::None) => Ok(answers),
            (Ok(_), _) => Err(stored),
        };
        let _ = reply.send(result);
    })
    .detach();
}
