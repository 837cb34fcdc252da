//! Which Kafka APIs Spate serves, at which versions, and ApiVersions.
//!
//! Every version listed here works, old non-flexible ones and flexible
//! ones alike (clients pick the highest both sides know: aiokafka and
//! kafkajs send old versions, the Java client the newest). APIs that come
//! with later issues are not listed until they work.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use super::Ctx;
use crate::wire::Response;

/// (min, max) version served, or None: not served.
pub(crate) fn supported(api: ApiKey) -> Option<(i16, i16)> {
    Some(match api {
        ApiKey::ApiVersions => (0, 4),
        // v12 is transactions v2 (KIP-890 part 2: the leader adds the
        // partition to the transaction); v13 names topics by id: later.
        ApiKey::Produce => (3, 12),
        // v13+ name topics by id (UUIDs mapped from Spate's topic ids).
        ApiKey::Fetch => (4, 16),
        ApiKey::ListOffsets => (1, 8),
        ApiKey::Metadata => (0, 12),
        ApiKey::OffsetForLeaderEpoch => (2, 4),
        ApiKey::DescribeCluster => (0, 1),
        ApiKey::DescribeTopicPartitions => (0, 0),
        ApiKey::FindCoordinator => (0, 6),
        ApiKey::InitProducerId => (0, 5),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::DeleteTopics => (1, 6),
        ApiKey::CreatePartitions => (0, 3),
        ApiKey::DeleteRecords => (0, 2),
        ApiKey::DescribeLogDirs => (1, 4),
        ApiKey::ElectLeaders => (0, 2),
        ApiKey::DescribeProducers => (0, 0),
        ApiKey::OffsetDelete => (0, 0),
        ApiKey::DescribeConfigs => (1, 4),
        ApiKey::AlterConfigs => (0, 2),
        ApiKey::IncrementalAlterConfigs => (0, 1),
        ApiKey::OffsetCommit => (2, 9),
        ApiKey::OffsetFetch => (1, 9),
        // v5 is transactions v2 (KIP-890 part 2: the group's offsets
        // partition is added to the transaction by the coordinator).
        ApiKey::TxnOffsetCommit => (0, 5),
        // v0 is gone from Kafka 4; v1 is the only version its tools send.
        ApiKey::WriteTxnMarkers => (1, 1),
        ApiKey::ListGroups => (0, 5),
        ApiKey::DescribeGroups => (0, 5),
        ApiKey::DeleteGroups => (0, 2),
        ApiKey::JoinGroup => (0, 9),
        ApiKey::SyncGroup => (0, 5),
        ApiKey::Heartbeat => (0, 4),
        ApiKey::LeaveGroup => (0, 5),
        ApiKey::ConsumerGroupHeartbeat => (0, 1),
        ApiKey::ConsumerGroupDescribe => (0, 1),
        ApiKey::DescribeClientQuotas => (0, 1),
        ApiKey::AlterClientQuotas => (0, 1),
        // v0 is listed although its exchange (bare tokens after it) is not
        // served: librdkafka (kcat, confluent-kafka) tests for the range
        // 0..=0 to know the broker has handshakes at all, and without it
        // falls back to that very v0 exchange. It then sends v1 and
        // SaslAuthenticate, as Java's client and kafka-python do.
        ApiKey::SaslHandshake => (0, 1),
        // v1 adds session_lifetime_ms (0: no re-authentication, KIP-368),
        // v2 is flexible.
        ApiKey::SaslAuthenticate => (0, 2),
        ApiKey::AlterUserScramCredentials => (0, 0),
        ApiKey::DescribeUserScramCredentials => (0, 0),
        ApiKey::CreateAcls => (1, 3),
        ApiKey::DescribeAcls => (1, 3),
        ApiKey::DeleteAcls => (1, 3),
        // v4-v5 are brokers' batched verification: Spate's brokers ask
        // each other over the native port (`txn/verify.rs`).
        ApiKey::AddPartitionsToTxn => (0, 3),
        // v4 adds only the TRANSACTION_ABORTABLE code (never sent).
        ApiKey::AddOffsetsToTxn => (0, 4),
        // v5 is transactions v2: the transaction ends under the next
        // epoch, which the answer carries (KIP-890 part 2).
        ApiKey::EndTxn => (0, 5),
        ApiKey::DescribeTransactions => (0, 0),
        // v2 adds a transactional id pattern: later.
        ApiKey::ListTransactions => (0, 1),
        _ => return None,
    })
}

/// A name for metrics and logs.
pub(crate) fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::ApiVersions => "kafka.api_versions",
        ApiKey::Produce => "kafka.produce",
        ApiKey::Fetch => "kafka.fetch",
        ApiKey::ListOffsets => "kafka.list_offsets",
        ApiKey::Metadata => "kafka.metadata",
        ApiKey::OffsetForLeaderEpoch => "kafka.offset_for_leader_epoch",
        ApiKey::DescribeCluster => "kafka.describe_cluster",
        ApiKey::DescribeTopicPartitions => "kafka.describe_topic_partitions",
        ApiKey::FindCoordinator => "kafka.find_coordinator",
        ApiKey::InitProducerId => "kafka.init_producer_id",
        ApiKey::CreateTopics => "kafka.create_topics",
        ApiKey::DeleteTopics => "kafka.delete_topics",
        ApiKey::CreatePartitions => "kafka.create_partitions",
        ApiKey::DeleteRecords => "kafka.delete_records",
        ApiKey::DescribeLogDirs => "kafka.describe_log_dirs",
        ApiKey::ElectLeaders => "kafka.elect_leaders",
        ApiKey::DescribeProducers => "kafka.describe_producers",
        ApiKey::OffsetDelete => "kafka.offset_delete",
        ApiKey::DescribeConfigs => "kafka.describe_configs",
        ApiKey::AlterConfigs => "kafka.alter_configs",
        ApiKey::IncrementalAlterConfigs => "kafka.incremental_alter_configs",
        ApiKey::OffsetCommit => "kafka.offset_commit",
        ApiKey::OffsetFetch => "kafka.offset_fetch",
        ApiKey::TxnOffsetCommit => "kafka.txn_offset_commit",
        ApiKey::WriteTxnMarkers => "kafka.write_txn_markers",
        ApiKey::ListGroups => "kafka.list_groups",
        ApiKey::DescribeGroups => "kafka.describe_groups",
        ApiKey::DeleteGroups => "kafka.delete_groups",
        ApiKey::JoinGroup => "kafka.join_group",
        ApiKey::SyncGroup => "kafka.sync_group",
        ApiKey::Heartbeat => "kafka.heartbeat",
        ApiKey::LeaveGroup => "kafka.leave_group",
        ApiKey::ConsumerGroupHeartbeat => "kafka.consumer_group_heartbeat",
        ApiKey::ConsumerGroupDescribe => "kafka.consumer_group_describe",
        ApiKey::DescribeClientQuotas => "kafka.describe_client_quotas",
        ApiKey::AlterClientQuotas => "kafka.alter_client_quotas",
        ApiKey::SaslHandshake => "kafka.sasl_handshake",
        ApiKey::SaslAuthenticate => "kafka.sasl_authenticate",
        ApiKey::AlterUserScramCredentials => "kafka.alter_user_scram_credentials",
        ApiKey::DescribeUserScramCredentials => "kafka.describe_user_scram_credentials",
        ApiKey::CreateAcls => "kafka.create_acls",
        ApiKey::DescribeAcls => "kafka.describe_acls",
        ApiKey::DeleteAcls => "kafka.delete_acls",
        ApiKey::AddPartitionsToTxn => "kafka.add_partitions_to_txn",
        ApiKey::AddOffsetsToTxn => "kafka.add_offsets_to_txn",
        ApiKey::EndTxn => "kafka.end_txn",
        ApiKey::DescribeTransactions => "kafka.describe_transactions",
        ApiKey::ListTransactions => "kafka.list_transactions",
        _ => "kafka.other",
    }
}

fn listing() -> Vec<ApiVersion> {
    ApiKey::iter()
        .filter_map(|api| {
            let (min, max) = supported(api)?;
            Some(ApiVersion::default().with_api_key(api as i16).with_min_version(min).with_max_version(max))
        })
        .collect()
}

/// Kafka's feature flags Spate has, each finalized at its highest level
/// (Spate has no UpdateFeatures: a broker serves what it is built with).
/// `transaction.version` 2 is transactions v2 (KIP-890 part 2): the Java
/// client (4.0+) turns it on from this finalized level alone.
const FEATURES: &[(&str, i16)] = &[("transaction.version", 2)];

/// Kafka's finalized-features epoch: clients keep the highest they saw and
/// re-read the features when it grows. Spate's never change while a
/// broker runs.
const FINALIZED_FEATURES_EPOCH: i64 = 1;

pub(crate) fn api_versions(ctx: &Ctx) -> Response {
    use kafka_protocol::messages::api_versions_response::{FinalizedFeatureKey, SupportedFeatureKey};
    use kafka_protocol::protocol::StrBytes;
    let supported = FEATURES
        .iter()
        .map(|&(name, level)| {
            SupportedFeatureKey::default()
                .with_name(StrBytes::from_static_str(name))
                .with_min_version(0)
                .with_max_version(level)
        })
        .collect();
    let finalized = FEATURES
        .iter()
        .map(|&(name, level)| {
            FinalizedFeatureKey::default()
                .with_name(StrBytes::from_static_str(name))
                .with_min_version_level(level)
                .with_max_version_level(level)
        })
        .collect();
    let response = ApiVersionsResponse::default()
        .with_api_keys(listing())
        .with_supported_features(supported)
        .with_finalized_features_epoch(FINALIZED_FEATURES_EPOCH)
        .with_finalized_features(finalized);
    super::respond(ctx, &response)
}

/// KIP-511: an ApiVersions request at a version newer than ours is
/// answered at v0 (header v0 always, as every ApiVersions response), with
/// UNSUPPORTED_VERSION and our versions; the client retries at one of them.
pub(crate) fn unsupported_api_versions(correlation_id: i32) -> Response {
    let ctx_version = 0;
    let body = ApiVersionsResponse::default()
        .with_error_code(kafka_protocol::ResponseError::UnsupportedVersion.code())
        .with_api_keys(listing());
    let mut out = bytes::BytesMut::new();
    let encoded = (|| -> anyhow::Result<()> {
        use bytes::BufMut;
        use kafka_protocol::protocol::Encodable;
        let header = kafka_protocol::messages::ResponseHeader::default().with_correlation_id(correlation_id);
        let size = header.compute_size(0)? + body.compute_size(ctx_version)?;
        out.put_i32(size as i32);
        header.encode(&mut out, 0)?;
        body.encode(&mut out, ctx_version)?;
        Ok(())
    })();
    match encoded {
        Ok(()) => Response::Frame(out.freeze()),
        Err(_) => Response::Close(None),
    }
}

/// A request at a version Spate does not serve (a client that skipped
/// ApiVersions, or a broken one). Its schema at that version is not one
/// Spate can write, so, as Kafka does, the connection closes; the log says
/// why.
pub(crate) fn unsupported(api: ApiKey, version: i16, correlation_id: i32) -> Response {
    tracing::warn!(
        ?api,
        version,
        correlation_id,
        "closing a Kafka connection: a request at a version Spate does not serve"
    );
    Response::Close(None)
}
