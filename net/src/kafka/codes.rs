//! Spate's error codes in Kafka's numbers. The native protocol has codes
//! of its own (flatbuf/schema/spate.fbs); a Kafka client gets the Kafka
//! error that makes it do what the native client does (retry, refresh
//! metadata, rejoin, give up).

use kafka_protocol::ResponseError as K;
use spate_flatbuf::proto::ErrorCode;
use spate_replication::ControllerError;

/// For partition-level answers (produce, fetch, list offsets, topics).
pub(crate) fn kafka_code(error: ErrorCode) -> i16 {
    let kafka = match error {
        ErrorCode::None => return 0,
        ErrorCode::Unknown => K::UnknownServerError,
        ErrorCode::CorruptMessage => K::CorruptMessage,
        ErrorCode::UnknownTopicOrPartition => K::UnknownTopicOrPartition,
        ErrorCode::InvalidTopic => K::InvalidTopicException,
        ErrorCode::TopicAlreadyExists => K::TopicAlreadyExists,
        ErrorCode::InvalidPartitions => K::InvalidPartitions,
        ErrorCode::InvalidReplicationFactor => K::InvalidReplicationFactor,
        ErrorCode::InvalidConfig => K::InvalidConfig,
        ErrorCode::OffsetOutOfRange => K::OffsetOutOfRange,
        ErrorCode::MessageTooLarge => K::MessageTooLarge,
        ErrorCode::InvalidRequest => K::InvalidRequest,
        ErrorCode::UnsupportedVersion => K::UnsupportedVersion,
        // Both retriable in Kafka clients; a full disk queue is a timeout
        // to a Kafka producer (it retries the batch).
        ErrorCode::RequestTimedOut | ErrorCode::Throttled => K::RequestTimedOut,
        // The client refreshes metadata and retries elsewhere.
        ErrorCode::NotLeaderOrFollower | ErrorCode::BrokerShuttingDown => K::NotLeaderOrFollower,
        ErrorCode::StorageError => K::KafkaStorageError,
        ErrorCode::InvalidRequiredAcks => K::InvalidRequiredAcks,
        // A partition still opening here: retriable, like Kafka's answer for
        // a replica not ready yet.
        ErrorCode::NotReady | ErrorCode::LeaderNotAvailable => K::LeaderNotAvailable,
        ErrorCode::UnknownMemberId => K::UnknownMemberId,
        ErrorCode::FencedMemberEpoch => K::FencedMemberEpoch,
        ErrorCode::NonEmptyGroup => K::NonEmptyGroup,
        ErrorCode::GroupIdNotFound => K::GroupIdNotFound,
        ErrorCode::InvalidGroupId => K::InvalidGroupId,
        // Kafka refuses client writes to its internal topics the same way.
        ErrorCode::InternalTopic => K::InvalidTopicException,
        ErrorCode::OutOfOrderSequence => K::OutOfOrderSequenceNumber,
        ErrorCode::InvalidProducerEpoch => K::InvalidProducerEpoch,
        ErrorCode::InvalidTxnState => K::InvalidTxnState,
        ErrorCode::InvalidProducerIdMapping => K::InvalidProducerIdMapping,
        ErrorCode::ProducerIdsUnavailable => K::CoordinatorNotAvailable,
        ErrorCode::NotEnoughReplicas => K::NotEnoughReplicas,
        ErrorCode::NotEnoughReplicasAfterAppend => K::NotEnoughReplicasAfterAppend,
        ErrorCode::FencedLeaderEpoch => K::FencedLeaderEpoch,
        ErrorCode::UnknownLeaderEpoch => K::UnknownLeaderEpoch,
        ErrorCode::NotController => K::NotController,
        ErrorCode::ClusterAuthorizationFailed => K::ClusterAuthorizationFailed,
        _ => K::UnknownServerError,
    };
    kafka.code()
}

/// For group coordinator answers: the coordinator's own table
/// (`group::classic::kafka_code`, which its commit answers use too), so a
/// client gets one code for one outcome on every group API (a coordinator
/// that is loading, moved or stopping is told in the coordinator's words,
/// and the client looks it up again instead of failing); outcomes that
/// table does not name map as partition answers do.
pub(crate) fn group_code(error: ErrorCode) -> i16 {
    match crate::group::classic::kafka_code(error) {
        code if code == K::UnknownServerError.code() && error != ErrorCode::Unknown => kafka_code(error),
        code => code,
    }
}

/// A controller answer to one partition's election, in Kafka's codes.
pub(crate) fn election_code(result: &Result<(), ControllerError>) -> i16 {
    match result {
        Ok(()) => 0,
        Err(ControllerError::ElectionNotNeeded) => K::ElectionNotNeeded.code(),
        Err(ControllerError::PreferredLeaderNotAvailable) => K::PreferredLeaderNotAvailable.code(),
        Err(ControllerError::EligibleLeadersNotAvailable) => K::EligibleLeadersNotAvailable.code(),
        Err(ControllerError::UnknownTopicOrPartition) => K::UnknownTopicOrPartition.code(),
        Err(ControllerError::NotController) => K::NotController.code(),
        Err(ControllerError::Shutdown) => K::NotLeaderOrFollower.code(),
        Err(_) => K::UnknownServerError.code(),
    }
}
