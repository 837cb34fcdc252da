//! Kafka's ACLs (issue 16) through the Kafka port of an in-process broker:
//! CreateAcls, DescribeAcls and DeleteAcls as kafka-acls sends them, and
//! what a denied client is told by Produce, Fetch, Metadata, JoinGroup,
//! InitProducerId and the admin APIs. Every client here is
//! `User:ANONYMOUS` (a plaintext listener without SASL), which ACLs can
//! name.

mod common;

use common::kafka::{KafkaConn, name};
use common::*;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{
    CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest, DescribeAclsResponse, GroupId, MetadataRequest,
};
use kafka_protocol::protocol::StrBytes;
use spate_net::{BrokerConfig, BrokerHandle};

/// Kafka's codes (org.apache.kafka.common.acl / .resource).
const TOPIC: i8 = 2;
const GROUP: i8 = 3;
const CLUSTER: i8 = 4;
const TRANSACTIONAL_ID: i8 = 5;
const ANY: i8 = 1;
const MATCH: i8 = 2;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
const READ: i8 = 3;
const WRITE: i8 = 4;
const DESCRIBE: i8 = 8;
const DENY: i8 = 2;
const ALLOW: i8 = 3;

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn start_with(dir: &std::path::Path, tune: impl FnOnce(BrokerConfig) -> BrokerConfig) -> BrokerHandle {
    spate_net::start(tune(config(dir, 2))).expect("broker starts")
}

fn creation(resource: (i8, &str, i8), principal: &str, operation: i8, permission: i8) -> AclCreation {
    AclCreation::default()
        .with_resource_type(resource.0)
        .with_resource_name(text(resource.1))
        .with_resource_pattern_type(resource.2)
        .with_principal(text(principal))
        .with_host(text("*"))
        .with_operation(operation)
        .with_permission_type(permission)
}

/// Creates ACLs (CreateAcls v3, as Kafka 4's kafka-acls); per creation
/// its error code.
fn create_acls(conn: &mut KafkaConn, creations: Vec<AclCreation>) -> Vec<i16> {
    let response = conn.call(3, &CreateAclsRequest::default().with_creations(creations));
    response.results.iter().map(|r| r.error_code).collect()
}

/// An ACL as (resource type, name, pattern, principal, operation,
/// permission).
type Acl = (i8, String, i8, String, i8, i8);

/// Every ACL (DescribeAcls at `version`) and the answer's error.
fn describe_all(conn: &mut KafkaConn, version: i16) -> (i16, Vec<Acl>) {
    let request = DescribeAclsRequest::default()
        .with_resource_type_filter(ANY)
        .with_resource_name_filter(None)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_pattern_type_filter(ANY)
        .with_operation(ANY)
        .with_permission_type(ANY);
    let response: DescribeAclsResponse = conn.call(version, &request);
    let mut acls = Vec::new();
    for resource in &response.resources {
        for acl in &resource.acls {
            acls.push((
                resource.resource_type,
                resource.resource_name.to_string(),
                resource.pattern_type,
                acl.principal.to_string(),
                acl.operation,
                acl.permission_type,
            ));
        }
    }
    (response.error_code, acls)
}

fn any_filter() -> DeleteAclsFilter {
    // The crate's defaults are empty strings; clients send null for any.
    DeleteAclsFilter::default()
        .with_resource_type_filter(ANY)
        .with_resource_name_filter(None)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_pattern_type_filter(ANY)
        .with_operation(ANY)
        .with_permission_type(ANY)
}

/// Topic names a full Metadata request lists.
fn listed_topics(conn: &mut KafkaConn) -> Vec<String> {
    let response = conn.call(12, &MetadataRequest::default().with_topics(None));
    let mut names: Vec<String> =
        response.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect();
    names.sort();
    names
}

/// The error of a Fetch v12 of partition 0 from offset 0.
fn fetch_error(conn: &mut KafkaConn, topic: &str) -> i16 {
    use kafka_protocol::messages::FetchRequest;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let request =
        FetchRequest::default().with_replica_id((-1).into()).with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(
            vec![FetchTopic::default().with_topic(name(topic)).with_partitions(vec![
                FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1 << 20),
            ])],
        );
    let response = conn.call(12, &request);
    response.responses[0].partitions[0].error_code
}

/// The error of a JoinGroup v5 of a new member.
fn join_error(conn: &mut KafkaConn, group: &str) -> i16 {
    use kafka_protocol::messages::JoinGroupRequest;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    let request = JoinGroupRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(text("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default().with_name(text("range"))]);
    conn.call(5, &request).error_code
}

/// The error of a KIP-848 ConsumerGroupHeartbeat v0 of a new member
/// subscribing to `topic`.
fn consumer_heartbeat_error(conn: &mut KafkaConn, group: &str, topic: &str) -> i16 {
    use kafka_protocol::messages::ConsumerGroupHeartbeatRequest;
    let request = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_member_id(text("m-1"))
        .with_member_epoch(0)
        .with_instance_id(None)
        .with_rack_id(None)
        .with_rebalance_timeout_ms(10_000)
        .with_server_assignor(None)
        .with_subscribed_topic_names(Some(vec![name(topic)]))
        .with_topic_partitions(Some(Vec::new()));
    conn.call(0, &request).error_code
}

fn init_producer_id_error(conn: &mut KafkaConn) -> i16 {
    use kafka_protocol::messages::InitProducerIdRequest;
    let request = InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000);
    conn.call(4, &request).error_code
}

/// kafka-acls --add / --list / --remove, and a restart between: the ACLs
/// are in the metadata log (and its snapshots), not in memory.
#[test]
fn acls_are_created_listed_deleted_and_survive_a_restart() {
    let dir = data_dir("kafka_acls_lifecycle");
    let broker = start_with(&dir, |c| c);
    let mut conn = KafkaConn::to(&broker);
    let codes = create_acls(
        &mut conn,
        vec![
            creation((TOPIC, "orders", LITERAL), "User:alice", READ, ALLOW),
            creation((TOPIC, "pay.", PREFIXED), "User:bob", WRITE, DENY),
            creation((GROUP, "*", LITERAL), "User:alice", READ, ALLOW),
            // Refused one by one, as Kafka does: the cluster has one name,
            // a principal is Type:name, MATCH is a filter only.
            creation((CLUSTER, "other", LITERAL), "User:alice", DESCRIBE, ALLOW),
            creation((TOPIC, "t", LITERAL), "alice", READ, ALLOW),
            creation((TOPIC, "t", MATCH), "User:alice", READ, ALLOW),
        ],
    );
    assert_eq!(codes[..3], [0, 0, 0]);
    assert!(codes[3..].iter().all(|&code| code == K::InvalidRequest.code()), "{codes:?}");
    let (error, acls) = describe_all(&mut conn, 1);
    assert_eq!(error, 0);
    assert_eq!(acls.len(), 3, "{acls:?}");
    assert!(acls.contains(&(TOPIC, "pay.".into(), PREFIXED, "User:bob".into(), WRITE, DENY)));

    // kafka-acls --list --topic pay.eu (a MATCH filter) finds the prefixed
    // ACL that applies to it.
    let request = DescribeAclsRequest::default()
        .with_resource_type_filter(TOPIC)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_resource_name_filter(Some(text("pay.eu")))
        .with_pattern_type_filter(MATCH)
        .with_operation(ANY)
        .with_permission_type(ANY);
    let response = conn.call(3, &request);
    assert_eq!(response.resources.len(), 1);
    assert_eq!(response.resources[0].resource_name.as_str(), "pay.");

    // --remove --topic orders: the filter answers with what it removed.
    let filter = any_filter().with_resource_type_filter(TOPIC).with_resource_name_filter(Some(text("orders")));
    let response = conn.call(3, &DeleteAclsRequest::default().with_filters(vec![filter]));
    assert_eq!(response.filter_results[0].error_code, 0);
    let removed = &response.filter_results[0].matching_acls;
    assert_eq!(removed.len(), 1);
    assert_eq!((removed[0].principal.as_str(), removed[0].operation), ("User:alice", READ));
    assert_eq!(describe_all(&mut conn, 2).1.len(), 2);

    drop(conn);
    stop(broker);
    let broker = start_with(&dir, |c| c);
    let mut conn = KafkaConn::to(&broker);
    let (_, acls) = describe_all(&mut conn, 3);
    assert_eq!(acls.len(), 2, "the ACLs survive a restart: {acls:?}");
    assert!(!acls.iter().any(|acl| acl.1 == "orders"), "and so does the deletion");
    let response = conn.call(1, &DeleteAclsRequest::default().with_filters(vec![any_filter()]));
    assert_eq!(response.filter_results[0].matching_acls.len(), 2);
    assert!(describe_all(&mut conn, 1).1.is_empty());
    stop(broker);
}

/// A deny rule for User:ANONYMOUS stops what it names and nothing else,
/// on a connection that was allowed a moment before (its cached decisions
/// go when the ACLs change), and deleting the rule lets it through again.
#[test]
fn a_deny_for_anonymous_stops_produce_fetch_join_and_hides_the_topic() {
    let dir = data_dir("kafka_acls_deny");
    let broker = start_with(&dir, |c| c);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("secret", 1, 1), 0);
    assert_eq!(conn.create_topic("open", 1, 1), 0);
    assert_eq!(conn.produce("secret", 0, batch(1)).0, 0, "allowed while no ACL names it");
    assert_eq!(join_error(&mut conn, "g"), K::MemberIdRequired.code(), "a new member may join");

    let codes = create_acls(
        &mut conn,
        vec![
            creation((TOPIC, "secret", LITERAL), "User:ANONYMOUS", 2 /* ALL */, DENY),
            creation((GROUP, "g", LITERAL), "User:*", READ, DENY),
            creation((TRANSACTIONAL_ID, "tx-secret", LITERAL), "User:ANONYMOUS", WRITE, DENY),
        ],
    );
    assert_eq!(codes, [0, 0, 0]);
    assert_eq!(conn.produce("secret", 0, batch(1)).0, K::TopicAuthorizationFailed.code());
    assert_eq!(fetch_error(&mut conn, "secret"), K::TopicAuthorizationFailed.code());
    assert_eq!(conn.list_offset("secret", 0, -1).0, K::TopicAuthorizationFailed.code());
    assert_eq!(join_error(&mut conn, "g"), K::GroupAuthorizationFailed.code());
    assert_eq!(consumer_heartbeat_error(&mut conn, "g", "open"), K::GroupAuthorizationFailed.code());
    assert_eq!(consumer_heartbeat_error(&mut conn, "g2", "secret"), K::TopicAuthorizationFailed.code());
    assert_eq!(consumer_heartbeat_error(&mut conn, "g2", "open"), 0, "a KIP-848 member of another group joins");
    assert_eq!(conn.metadata("secret").error_code, K::TopicAuthorizationFailed.code());
    assert_eq!(
        listed_topics(&mut conn),
        ["__consumer_offsets", "__transaction_state", "open"],
        "the topic is not listed"
    );
    // Denied before existence is looked at: a client learns nothing of a
    // topic it may not write.
    assert_eq!(conn.produce("open", 0, batch(1)).0, 0, "other topics are not affected");
    // An idempotent producer (the Java client's default) still gets its
    // id once the cluster has an ACL too (so IdempotentWrite on it is no
    // longer open): Write on some topic is asked as Kafka asks it. Before
    // Kafka's probe name, any topic ACL closed it to every principal
    // without an Allow of its own.
    // (Alter on the cluster keeps this client able to change ACLs.)
    let codes = create_acls(
        &mut conn,
        vec![
            creation((CLUSTER, "kafka-cluster", LITERAL), "User:admin", 2, ALLOW),
            creation((CLUSTER, "kafka-cluster", LITERAL), "User:ANONYMOUS", 7 /* ALTER */, ALLOW),
        ],
    );
    assert_eq!(codes, [0, 0]);
    assert_eq!(init_producer_id_error(&mut conn), 0);
    let filter = any_filter().with_resource_type_filter(CLUSTER);
    assert_eq!(conn.call(3, &DeleteAclsRequest::default().with_filters(vec![filter])).filter_results[0].error_code, 0);
    assert_eq!(fetch_error(&mut conn, "open"), 0);
    assert_eq!(join_error(&mut conn, "other-group"), K::MemberIdRequired.code());

    let filter = any_filter().with_resource_type_filter(TOPIC).with_resource_name_filter(Some(text("secret")));
    let response = conn.call(3, &DeleteAclsRequest::default().with_filters(vec![filter]));
    assert_eq!(response.filter_results[0].matching_acls.len(), 1);
    assert_eq!(conn.produce("secret", 0, batch(1)), (0, 1), "allowed again");
    assert_eq!(listed_topics(&mut conn), ["__consumer_offsets", "__transaction_state", "open", "secret"]);
    stop(broker);
}

/// With allow.everyone.if.no.acl.found=false (the default once a listener
/// authenticates) a resource no ACL opens is closed, ACL changes included;
/// super users pass everything.
#[test]
fn with_allow_everyone_off_only_acls_and_super_users_open_resources() {
    let dir = data_dir("kafka_acls_closed");
    // Set up while open: topics, and an Allow of Write on "t".
    let broker = start_with(&dir, |c| c);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("t", 1, 1), 0);
    assert_eq!(conn.create_topic("u", 1, 1), 0);
    let codes = create_acls(&mut conn, vec![creation((TOPIC, "t", LITERAL), "User:ANONYMOUS", WRITE, ALLOW)]);
    assert_eq!(codes, [0]);
    drop(conn);
    stop(broker);

    let closed = |c: BrokerConfig| BrokerConfig { allow_everyone_if_no_acl_found: Some(false), ..c };
    let broker = start_with(&dir, closed);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.produce("t", 0, batch(1)).0, 0, "Write on t is allowed");
    assert_eq!(conn.produce("u", 0, batch(1)).0, K::TopicAuthorizationFailed.code(), "no ACL opens u");
    assert_eq!(conn.metadata("t").error_code, 0, "Write implies Describe");
    assert_eq!(listed_topics(&mut conn), ["t"]);
    assert_eq!(init_producer_id_error(&mut conn), 0, "an idempotent producer may write some topic");
    assert_eq!(conn.create_topic("v", 1, 1), K::TopicAuthorizationFailed.code(), "no Create");
    let codes = create_acls(&mut conn, vec![creation((TOPIC, "u", LITERAL), "User:ANONYMOUS", WRITE, ALLOW)]);
    assert_eq!(codes, [K::ClusterAuthorizationFailed.code()], "changing ACLs needs Alter on the cluster");
    assert_eq!(describe_all(&mut conn, 3).0, K::ClusterAuthorizationFailed.code());
    drop(conn);
    stop(broker);

    let broker = start_with(&dir, |c| BrokerConfig { super_users: "User:ANONYMOUS".into(), ..closed(c) });
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.produce("u", 0, batch(1)).0, 0, "a super user passes");
    assert_eq!(
        describe_all(&mut conn, 3),
        (0, vec![(TOPIC, "t".into(), LITERAL, "User:ANONYMOUS".into(), WRITE, ALLOW)])
    );
    stop(broker);
}

/// On a closed broker (allow.everyone.if.no.acl.found=false, no ACL),
/// every served API answers with Kafka's authorization code for the
/// resource it needs, and does nothing: the topic keeps its record and
/// configs, the group its commit.
#[test]
fn every_api_refuses_a_principal_no_acl_allows_with_kafkas_codes() {
    use kafka_protocol::messages::*;
    let dir = data_dir("kafka_acls_every_api");
    let broker = start_with(&dir, |c| c);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("t", 1, 1), 0);
    assert_eq!(conn.produce("t", 0, batch(1)).0, 0);
    drop(conn);
    stop(broker);

    let broker = start_with(&dir, |c| BrokerConfig { allow_everyone_if_no_acl_found: Some(false), ..c });
    let mut conn = KafkaConn::to(&broker);
    let topic_denied = K::TopicAuthorizationFailed.code();
    let group_denied = K::GroupAuthorizationFailed.code();
    let cluster_denied = K::ClusterAuthorizationFailed.code();
    let group = || GroupId(text("g"));

    let request = DeleteTopicsRequest::default().with_topic_names(vec![name("t")]).with_timeout_ms(10_000);
    assert_eq!(conn.call(4, &request).responses[0].error_code, topic_denied, "DeleteTopics");
    let request = CreatePartitionsRequest::default().with_timeout_ms(10_000).with_topics(vec![
        create_partitions_request::CreatePartitionsTopic::default()
            .with_name(name("t"))
            .with_count(3)
            .with_assignments(None),
    ]);
    assert_eq!(conn.call(3, &request).results[0].error_code, topic_denied, "CreatePartitions");
    let request = DeleteRecordsRequest::default().with_timeout_ms(10_000).with_topics(vec![
        delete_records_request::DeleteRecordsTopic::default().with_name(name("t")).with_partitions(vec![
            delete_records_request::DeleteRecordsPartition::default().with_partition_index(0).with_offset(-1),
        ]),
    ]);
    assert_eq!(conn.call(2, &request).topics[0].partitions[0].error_code, topic_denied, "DeleteRecords");
    let resource = |kind: i8, name: &str| {
        describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(kind)
            .with_resource_name(text(name))
            .with_configuration_keys(None)
    };
    let request = DescribeConfigsRequest::default().with_resources(vec![resource(2, "t"), resource(4, "1")]);
    let codes: Vec<i16> = conn.call(4, &request).results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, [topic_denied, cluster_denied], "DescribeConfigs");
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        incremental_alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(text("t"))
            .with_configs(vec![
                incremental_alter_configs_request::AlterableConfig::default()
                    .with_name(text("retention.ms"))
                    .with_config_operation(0)
                    .with_value(Some(text("1000"))),
            ]),
    ]);
    assert_eq!(conn.call(1, &request).responses[0].error_code, topic_denied, "IncrementalAlterConfigs");
    let request = AlterConfigsRequest::default().with_resources(vec![
        alter_configs_request::AlterConfigsResource::default().with_resource_type(4).with_resource_name(text("1")),
    ]);
    assert_eq!(conn.call(2, &request).responses[0].error_code, cluster_denied, "AlterConfigs (broker)");

    let request = FindCoordinatorRequest::default().with_key_type(0).with_coordinator_keys(vec![text("g")]);
    assert_eq!(conn.call(4, &request).coordinators[0].error_code, group_denied, "FindCoordinator");
    let txn_denied = K::TransactionalIdAuthorizationFailed.code();
    let txn = || TransactionalId(text("tx"));
    let request = FindCoordinatorRequest::default().with_key_type(1).with_coordinator_keys(vec![text("tx")]);
    assert_eq!(conn.call(4, &request).coordinators[0].error_code, txn_denied, "FindCoordinator (transaction)");
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(txn()))
        .with_transaction_timeout_ms(1000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    assert_eq!(conn.call(4, &request).error_code, txn_denied, "InitProducerId (transactional)");
    let request =
        AddPartitionsToTxnRequest::default().with_v3_and_below_transactional_id(txn()).with_v3_and_below_topics(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(name("t"))
                .with_partitions(vec![0]),
        ]);
    let response = conn.call(3, &request);
    assert_eq!(response.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code, txn_denied);
    let request = AddOffsetsToTxnRequest::default().with_transactional_id(txn()).with_group_id(group());
    assert_eq!(conn.call(3, &request).error_code, txn_denied, "AddOffsetsToTxn");
    let request = EndTxnRequest::default().with_transactional_id(txn());
    assert_eq!(conn.call(3, &request).error_code, txn_denied, "EndTxn");
    let request = TxnOffsetCommitRequest::default()
        .with_transactional_id(txn())
        .with_group_id(group())
        .with_producer_id(ProducerId(1))
        .with_producer_epoch(0)
        .with_generation_id(-1)
        .with_member_id(text(""))
        .with_topics(vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default().with_name(name("t")).with_partitions(
                vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1),
                ],
            ),
        ]);
    let response = conn.call(3, &request);
    assert_eq!(response.topics[0].partitions[0].error_code, txn_denied, "TxnOffsetCommit");
    let request = WriteTxnMarkersRequest::default().with_markers(vec![
        write_txn_markers_request::WritableTxnMarker::default()
            .with_producer_id(ProducerId(1))
            .with_producer_epoch(0)
            .with_transaction_result(false)
            .with_topics(vec![
                write_txn_markers_request::WritableTxnMarkerTopic::default()
                    .with_name(name("t"))
                    .with_partition_indexes(vec![0]),
            ]),
    ]);
    let response = conn.call(1, &request);
    assert_eq!(response.markers[0].topics[0].partitions[0].error_code, cluster_denied, "WriteTxnMarkers");
    let request = DescribeTransactionsRequest::default().with_transactional_ids(vec![txn()]);
    assert_eq!(conn.call(0, &request).transaction_states[0].error_code, txn_denied, "DescribeTransactions");
    assert!(conn.call(1, &ListTransactionsRequest::default()).transaction_states.is_empty(), "ListTransactions");
    let request = OffsetCommitRequest::default()
        .with_group_id(group())
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(text(""))
        .with_group_instance_id(None)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default().with_name(name("t")).with_partitions(vec![
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(1),
            ]),
        ]);
    assert_eq!(conn.call(8, &request).topics[0].partitions[0].error_code, group_denied, "OffsetCommit");
    let request = OffsetFetchRequest::default().with_groups(vec![
        offset_fetch_request::OffsetFetchRequestGroup::default()
            .with_group_id(group())
            .with_member_id(None)
            .with_topics(None),
    ]);
    assert_eq!(conn.call(8, &request).groups[0].error_code, group_denied, "OffsetFetch");
    let request = DescribeGroupsRequest::default().with_groups(vec![group()]);
    assert_eq!(conn.call(5, &request).groups[0].error_code, group_denied, "DescribeGroups");
    let request = DeleteGroupsRequest::default().with_groups_names(vec![group()]);
    assert_eq!(conn.call(2, &request).results[0].error_code, group_denied, "DeleteGroups");
    let request = OffsetDeleteRequest::default().with_group_id(group());
    assert_eq!(conn.call(0, &request).error_code, group_denied, "OffsetDelete");
    let request =
        HeartbeatRequest::default().with_group_id(group()).with_member_id(text("m")).with_group_instance_id(None);
    assert_eq!(conn.call(4, &request).error_code, group_denied, "Heartbeat");
    let request = SyncGroupRequest::default()
        .with_group_id(group())
        .with_member_id(text("m"))
        .with_group_instance_id(None)
        .with_protocol_type(None)
        .with_protocol_name(None);
    assert_eq!(conn.call(5, &request).error_code, group_denied, "SyncGroup");
    let request = LeaveGroupRequest::default().with_group_id(group()).with_members(vec![
        leave_group_request::MemberIdentity::default().with_member_id(text("m")).with_group_instance_id(None),
    ]);
    assert_eq!(conn.call(5, &request).error_code, group_denied, "LeaveGroup");
    assert!(conn.call(5, &ListGroupsRequest::default()).groups.is_empty(), "ListGroups shows no group");

    let request = DescribeLogDirsRequest::default().with_topics(None);
    assert_eq!(conn.call(4, &request).error_code, cluster_denied, "DescribeLogDirs");
    let request =
        ElectLeadersRequest::default().with_election_type(0).with_topic_partitions(None).with_timeout_ms(10_000);
    assert_eq!(conn.call(2, &request).error_code, cluster_denied, "ElectLeaders");
    let request = DescribeProducersRequest::default().with_topics(vec![
        describe_producers_request::TopicRequest::default().with_name(name("t")).with_partition_indexes(vec![0]),
    ]);
    assert_eq!(conn.call(0, &request).topics[0].partitions[0].error_code, topic_denied, "DescribeProducers");
    let request = OffsetForLeaderEpochRequest::default().with_replica_id((-1).into()).with_topics(vec![
        offset_for_leader_epoch_request::OffsetForLeaderTopic::default().with_topic(name("t")).with_partitions(vec![
            offset_for_leader_epoch_request::OffsetForLeaderPartition::default().with_partition(0).with_leader_epoch(0),
        ]),
    ]);
    assert_eq!(conn.call(4, &request).topics[0].partitions[0].error_code, topic_denied, "OffsetForLeaderEpoch");
    assert_eq!(conn.list_offset("t", 0, -1).0, topic_denied, "ListOffsets");
    assert_eq!(fetch_error(&mut conn, "t"), topic_denied, "Fetch");
    assert_eq!(init_producer_id_error(&mut conn), cluster_denied, "InitProducerId");
    let request = DescribeTopicPartitionsRequest::default()
        .with_topics(vec![describe_topic_partitions_request::TopicRequest::default().with_name(name("t"))]);
    assert_eq!(conn.call(0, &request).topics[0].error_code, topic_denied, "DescribeTopicPartitions");
    // Credentials and quotas are the cluster's (Alter/Describe,
    // AlterConfigs/DescribeConfigs on it).
    let request = AlterUserScramCredentialsRequest::default().with_deletions(vec![
        alter_user_scram_credentials_request::ScramCredentialDeletion::default()
            .with_name(text("alice"))
            .with_mechanism(1),
    ]);
    assert_eq!(conn.call(0, &request).results[0].error_code, cluster_denied, "AlterUserScramCredentials");
    let request = DescribeUserScramCredentialsRequest::default().with_users(None);
    assert_eq!(conn.call(0, &request).error_code, cluster_denied, "DescribeUserScramCredentials");
    let request = DescribeClientQuotasRequest::default();
    assert_eq!(conn.call(1, &request).error_code, cluster_denied, "DescribeClientQuotas");
    let request = AlterClientQuotasRequest::default().with_entries(vec![
        alter_client_quotas_request::EntryData::default()
            .with_entity(vec![
                alter_client_quotas_request::EntityData::default()
                    .with_entity_type(text("client-id"))
                    .with_entity_name(Some(text("x"))),
            ])
            .with_ops(vec![
                alter_client_quotas_request::OpData::default().with_key(text("producer_byte_rate")).with_value(1.0),
            ]),
    ]);
    assert_eq!(conn.call(1, &request).entries[0].error_code, cluster_denied, "AlterClientQuotas");
    drop(conn);
    stop(broker);

    // Nothing was done: open again, the topic has its record and configs.
    let broker = start_with(&dir, |c| c);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.list_offset("t", 0, -2), (0, 0), "no records deleted");
    assert_eq!(conn.list_offset("t", 0, -1), (0, 1));
    assert_eq!(conn.metadata("t").partitions.len(), 1, "no partitions added");
    stop(broker);
}

/// What the broker logged in this process (one capture for the process:
/// under nextest each test is a process of its own; under `cargo test`
/// tests share it, so assertions look only at lines naming their own
/// resources).
fn captured_log() -> &'static std::sync::Mutex<Vec<u8>> {
    use std::sync::{Mutex, OnceLock};
    static LOG: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Capture(&'static Mutex<Vec<u8>>);
        impl std::io::Write for Capture {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(log))
            .finish();
        // Another test of this process may have set it first: its capture
        // is this one.
        let _ = tracing::subscriber::set_global_default(subscriber);
        log
    })
}

/// Audit lines (target spate::audit) that name `resource`.
fn audit_lines(resource: &str) -> Vec<String> {
    let log = captured_log().lock().expect("the log");
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| line.contains("spate::audit") && line.contains(&format!("resource=\"{resource}\"")))
        .map(str::to_string)
        .collect()
}

/// Every denied request logs one audit line naming who (principal and
/// host), what (operation, resource) and which API, also when the
/// decision came from the connection's cache; a listing that leaves the
/// resource out logs nothing.
#[test]
fn each_denied_request_logs_one_audit_line() {
    captured_log();
    let dir = data_dir("kafka_acls_audit");
    let broker = start_with(&dir, |c| c);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("audited", 1, 1), 0);
    let codes = create_acls(&mut conn, vec![creation((TOPIC, "audited", LITERAL), "User:ANONYMOUS", 2, DENY)]);
    assert_eq!(codes, [0]);
    assert!(audit_lines("audited").is_empty());

    assert_eq!(conn.produce("audited", 0, batch(1)).0, K::TopicAuthorizationFailed.code());
    let lines = audit_lines("audited");
    assert_eq!(lines.len(), 1, "{lines:?}");
    for field in
        ["principal=User:ANONYMOUS", "host=\"127.0.0.1\"", "operation=Write", "resource_type=Topic", "api=Produce"]
    {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
    assert_eq!(conn.produce("audited", 0, batch(1)).0, K::TopicAuthorizationFailed.code());
    assert_eq!(audit_lines("audited").len(), 2, "a cached denial is logged too");
    assert!(!listed_topics(&mut conn).contains(&"audited".to_string()));
    assert_eq!(audit_lines("audited").len(), 2, "a listing leaves the topic out without a line");
    assert_eq!(conn.metadata("audited").error_code, K::TopicAuthorizationFailed.code());
    let lines = audit_lines("audited");
    assert_eq!(lines.len(), 3);
    assert!(lines[2].contains("operation=Describe") && lines[2].contains("api=Metadata"), "{}", lines[2]);
    stop(broker);
}

/// The native port is held to the ACLs as a plaintext Kafka listener is:
/// its clients are `User:ANONYMOUS`. Before, a Deny that stopped a Kafka
/// client did not stop the same client on the native port, and a broker
/// closed to unauthenticated clients served them everything there.
#[test]
fn the_native_port_is_held_to_the_acls_as_anonymous() {
    use spate_flatbuf::proto::*;
    let dir = data_dir("kafka_acls_native");
    let broker = start_with(&dir, |c| c);
    let mut native = Conn::connect(broker.addr().port());
    assert_eq!(native.create_topic("secret", 1, &[]), ErrorCode::None, "open while no ACL names it");
    assert_eq!(native.create_topic("open", 1, &[]), ErrorCode::None);
    // Offsets of group "g-all" on both topics, committed while no ACL
    // names them (an administrative commit: no member).
    let committed = native.call(Body::OffsetCommitRequest, |b| {
        let topics: Vec<_> = ["secret", "open"]
            .iter()
            .map(|topic| {
                let name = b.create_string(topic);
                let part = OffsetCommitPartition::create(b, &OffsetCommitPartitionArgs { partition: 0, offset: 0 });
                let parts = b.create_vector(&[part]);
                OffsetCommitTopic::create(b, &OffsetCommitTopicArgs { name: Some(name), partitions: Some(parts) })
            })
            .collect();
        let topics = b.create_vector(&topics);
        let group = b.create_string("g-all");
        let args = OffsetCommitRequestArgs { group_id: Some(group), topics: Some(topics), ..Default::default() };
        OffsetCommitRequest::create(b, &args).as_union_value()
    });
    let envelope = committed.read().expect("verified");
    let response = envelope.body_as_offset_commit_response().expect("offset commit response");
    assert_eq!(response.error(), ErrorCode::None, "{:?}", response.message());
    let mut conn = KafkaConn::to(&broker);
    let codes = create_acls(
        &mut conn,
        vec![
            creation((TOPIC, "secret", LITERAL), "User:ANONYMOUS", 2 /* ALL */, DENY),
            creation((GROUP, "g", LITERAL), "User:*", READ, DENY),
            creation((TRANSACTIONAL_ID, "tx-secret", LITERAL), "User:ANONYMOUS", WRITE, DENY),
        ],
    );
    assert_eq!(codes, [0, 0, 0]);
    let produce = |native: &mut Conn, topic: &str| {
        native.call(Body::ProduceRequest, |b| {
            let name = b.create_string(topic);
            let records = b.create_vector(&batch(1));
            let part = ProducePartition::create(b, &ProducePartitionArgs { partition: 0, records: Some(records) });
            let parts = b.create_vector(&[part]);
            let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
            let topics = b.create_vector(&[topic]);
            ProduceRequest::create(
                b,
                &ProduceRequestArgs { acks: -1, timeout_ms: 10_000, topics: Some(topics), ..Default::default() },
            )
            .as_union_value()
        })
    };
    let denied = error_response(&produce(&mut native, "secret")).expect("an error answer");
    assert_eq!(denied.0, ErrorCode::TopicAuthorizationFailed, "{denied:?}");
    assert!(denied.1.contains("User:ANONYMOUS may not Write"), "{}", denied.1);
    assert!(error_response(&produce(&mut native, "open")).is_none(), "another topic is served");
    let list_offsets = native.call(Body::ListOffsetsRequest, |b| {
        let name = b.create_string("secret");
        let part = ListOffsetsPartition::create(b, &ListOffsetsPartitionArgs { partition: 0, timestamp: -1 });
        let parts = b.create_vector(&[part]);
        let topic = ListOffsetsTopic::create(b, &ListOffsetsTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        ListOffsetsRequest::create(b, &ListOffsetsRequestArgs { topics: Some(topics), ..Default::default() })
            .as_union_value()
    });
    assert_eq!(error_response(&list_offsets).map(|e| e.0), Some(ErrorCode::TopicAuthorizationFailed));
    let delete = native.call(Body::DeleteTopicsRequest, |b| {
        let name = b.create_string("secret");
        let names = b.create_vector(&[name]);
        DeleteTopicsRequest::create(b, &DeleteTopicsRequestArgs { names: Some(names), timeout_ms: 10_000 })
            .as_union_value()
    });
    assert_eq!(error_response(&delete).map(|e| e.0), Some(ErrorCode::TopicAuthorizationFailed));
    let commit = native.call(Body::OffsetCommitRequest, |b| {
        let group = b.create_string("g");
        OffsetCommitRequest::create(b, &OffsetCommitRequestArgs { group_id: Some(group), ..Default::default() })
            .as_union_value()
    });
    assert_eq!(error_response(&commit).map(|e| e.0), Some(ErrorCode::GroupAuthorizationFailed));
    // The offsets of all of a group's topics leave out a topic the
    // principal may not Describe, as Kafka's OffsetFetch does.
    let fetched = native.call(Body::OffsetFetchRequest, |b| {
        let group = b.create_string("g-all");
        OffsetFetchRequest::create(b, &OffsetFetchRequestArgs { group_id: Some(group), topics: None }).as_union_value()
    });
    let envelope = fetched.read().expect("verified");
    let response = envelope.body_as_offset_fetch_response().expect("offset fetch response");
    assert_eq!(response.error(), ErrorCode::None);
    let topics: Vec<&str> = response.topics().expect("topics").iter().filter_map(|t| t.name()).collect();
    assert_eq!(topics, ["open"], "the denied topic's offset is left out");
    // A transactional id needs Write on it, for each transaction API.
    let init = |native: &mut Conn, txn_id: &str| {
        native.call(Body::InitProducerIdRequest, |b| {
            let txn_id = b.create_string(txn_id);
            let args = InitProducerIdRequestArgs { transactional_id: Some(txn_id), transaction_timeout_ms: 60_000 };
            InitProducerIdRequest::create(b, &args).as_union_value()
        })
    };
    let denied = error_response(&init(&mut native, "tx-secret")).expect("an error answer");
    assert_eq!(denied.0, ErrorCode::TransactionalIdAuthorizationFailed, "{denied:?}");
    let end = native.call(Body::EndTxnRequest, |b| {
        let txn_id = b.create_string("tx-secret");
        let args = EndTxnRequestArgs {
            transactional_id: Some(txn_id),
            producer_id: 1,
            producer_epoch: 0,
            commit: true,
            ..Default::default()
        };
        EndTxnRequest::create(b, &args).as_union_value()
    });
    assert_eq!(error_response(&end).map(|e| e.0), Some(ErrorCode::TransactionalIdAuthorizationFailed));
    // Another id is served (its coordinator may still be loading at first).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let allowed = init(&mut native, "tx-open");
        assert!(error_response(&allowed).is_none(), "another transactional id is served");
        let envelope = allowed.read().expect("verified");
        let response = envelope.body_as_init_producer_id_response().expect("init producer id response");
        let retriable = matches!(response.error(), ErrorCode::NotReady | ErrorCode::LeaderNotAvailable);
        if retriable && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        assert_eq!(response.error(), ErrorCode::None, "{:?}", response.message());
        assert!(response.producer_id() >= 0 && response.producer_epoch() >= 0);
        break;
    }
    // Metadata of every topic leaves it out; named, it is refused.
    let metadata = |native: &mut Conn, named: Option<&str>| {
        let frame = native.call(Body::MetadataRequest, |b| {
            let topics = named.map(|name| {
                let name = b.create_string(name);
                b.create_vector(&[name])
            });
            MetadataRequest::create(b, &MetadataRequestArgs { topics }).as_union_value()
        });
        let envelope = frame.read().expect("verified");
        let response = envelope.body_as_metadata_response().expect("metadata response");
        let topics = response.topics().expect("topics");
        topics.iter().map(|t| (t.name().unwrap_or_default().to_string(), t.error())).collect::<Vec<_>>()
    };
    let listed: Vec<String> = metadata(&mut native, None).into_iter().map(|(name, _)| name).collect();
    assert!(listed.contains(&"open".to_string()) && !listed.contains(&"secret".to_string()), "{listed:?}");
    assert_eq!(metadata(&mut native, Some("secret")), [("secret".to_string(), ErrorCode::TopicAuthorizationFailed)]);
    drop((native, conn));
    stop(broker);

    // Closed to everyone no ACL names: a create over the native port is
    // refused, nothing made.
    let closed = |c: BrokerConfig| BrokerConfig { allow_everyone_if_no_acl_found: Some(false), ..c };
    let broker = start_with(&dir, closed);
    let mut native = Conn::connect(broker.addr().port());
    let create = native.call(Body::CreateTopicsRequest, |b| {
        let name = b.create_string("made");
        let topic = CreatableTopic::create(
            b,
            &CreatableTopicArgs { name: Some(name), partitions: 1, replication_factor: 1, configs: None },
        );
        let topics = b.create_vector(&[topic]);
        CreateTopicsRequest::create(b, &CreateTopicsRequestArgs { topics: Some(topics), ..Default::default() })
            .as_union_value()
    });
    assert_eq!(error_response(&create).map(|e| e.0), Some(ErrorCode::TopicAuthorizationFailed));
    assert!(metadata(&mut native, None).is_empty(), "nothing is listed");
    stop(broker);
}
