//! In-process controller clusters on 127.0.0.1: elections, forwarding,
//! failover, catch-up from disk and peers, broker fencing and return.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use spate_replication::{
    BrokerEndpoints, Controller, ControllerError, ControllerRequest, ControllerResponse, MetadataImage, QuorumConfig,
    read_image,
};

const TICK_MS: u64 = 20;
const SESSION_MS: u64 = 800;
const HEARTBEAT_MS: u64 = 50;
const WAIT: Duration = Duration::from_secs(15);

fn base_dir(test: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spate-replication-cluster").join(test);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn config(node_id: i32, voters: &[(i32, SocketAddr)], dir: &std::path::Path) -> QuorumConfig {
    QuorumConfig {
        node_id,
        voters: voters.to_vec(),
        data_dir: dir.join(format!("node-{node_id}")),
        tick_ms: TICK_MS,
        broker_heartbeat_interval_ms: HEARTBEAT_MS,
        broker_session_timeout_ms: SESSION_MS,
        request_timeout_ms: 10_000,
    }
}

fn endpoints(node_id: i32) -> BrokerEndpoints {
    BrokerEndpoints {
        host: "127.0.0.1".into(),
        port: 9000 + node_id as u16,
        shard_ports: vec![9100 + node_id as u16],
        controller_port: 9200 + node_id as u16,
    }
}

fn start(node_id: i32, voters: &[(i32, SocketAddr)], dir: &std::path::Path) -> Controller {
    Controller::start(config(node_id, voters, dir), endpoints(node_id)).unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn create(c: &Controller, name: &str, partitions: u32, rf: u16) -> Result<ControllerResponse, ControllerError> {
    block_on(c.request(ControllerRequest::CreateTopic {
        name: name.into(),
        partitions,
        replication_factor: rf,
        configs: BTreeMap::new(),
    }))
}

/// Every node knows the same leader and sees every broker registered, live.
fn wait_for_cluster(nodes: &[&Controller], brokers: usize) -> i32 {
    let mut leader = -1;
    wait_until("a leader and every broker registered", || {
        let first = nodes[0].status().leader_id;
        leader = first;
        first > 0
            && nodes.iter().all(|n| {
                let img = n.image();
                n.status().leader_id == first && img.brokers.len() == brokers && img.brokers.values().all(|b| !b.fenced)
            })
    });
    leader
}

/// The replicated part of an image (controller_id is local).
fn replicated(img: &MetadataImage) -> MetadataImage {
    MetadataImage { controller_id: -1, ..img.clone() }
}

#[test]
fn single_node_needs_no_peers_and_survives_restart() {
    let dir = base_dir("single");
    let c = start(1, &[], &dir);
    // The request waits for the node's own registration: no setup needed.
    assert_eq!(create(&c, "t", 3, 1), Ok(ControllerResponse::Done));
    let img = c.image();
    let t = &img.topics["t"];
    assert_eq!(t.partitions.len(), 3);
    assert!(t.partitions.iter().all(|p| p.leader == 1 && p.isr == vec![1]));
    assert_eq!(img.controller_id, 1);
    assert_eq!(create(&c, "t", 1, 1), Err(ControllerError::TopicAlreadyExists));
    assert!(matches!(create(&c, "u", 1, 2), Err(ControllerError::InvalidReplicationFactor(_))));
    let ids = block_on(c.request(ControllerRequest::AllocateProducerIds { count: 100 })).unwrap();
    assert_eq!(ids, ControllerResponse::ProducerIds { start: 0, len: 100 });
    let before = replicated(&c.image());
    assert_eq!(c.status().voters, vec![1]);
    c.shutdown();
    c.shutdown(); // idempotent
    assert_eq!(
        block_on(c.request(ControllerRequest::DeleteTopic { name: "t".into() })),
        Err(ControllerError::Shutdown)
    );
    drop(c);

    // The log alone rebuilds the same image.
    let dir1 = dir.join("node-1");
    assert_eq!(replicated(&read_image(&dir1).unwrap()), before);

    // A restart replays it, and the node keeps working.
    let c = start(1, &[], &dir);
    assert!(c.image().applied_index >= before.applied_index);
    assert!(c.image().topics.contains_key("t"));
    let ids = block_on(c.request(ControllerRequest::AllocateProducerIds { count: 10 })).unwrap();
    assert_eq!(ids, ControllerResponse::ProducerIds { start: 100, len: 10 });
    assert_eq!(block_on(c.request(ControllerRequest::DeleteTopic { name: "t".into() })), Ok(ControllerResponse::Done));
    assert!(c.image().topics.is_empty());
    // The restart was seen as a new incarnation, and the broker is live.
    let b = &c.image().brokers[&1];
    assert!(!b.fenced);
}

#[test]
fn three_nodes_forward_fail_over_and_catch_up() {
    let dir = base_dir("three");
    let voters: Vec<(i32, SocketAddr)> = (1..=3).map(|i| (i, free_addr())).collect();
    let mut nodes: Vec<Option<Controller>> = (1..=3).map(|i| Some(start(i, &voters, &dir))).collect();
    let all: Vec<&Controller> = nodes.iter().flatten().collect();
    let leader = wait_for_cluster(&all, 3);
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let f = nodes[follower as usize - 1].as_ref().unwrap();

    // A request sent to a follower is forwarded, committed, and applied on
    // the follower before it resolves.
    assert_eq!(create(f, "a", 6, 3), Ok(ControllerResponse::Done));
    let t = f.image().topics["a"].clone();
    let mut leads = BTreeMap::new();
    for p in &t.partitions {
        *leads.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(leads.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    for n in nodes.iter().flatten() {
        wait_until("topic a everywhere", || n.image().topics.get("a") == Some(&t));
    }
    // Refusals come back through the forwarding path.
    assert_eq!(create(f, "a", 1, 1), Err(ControllerError::TopicAlreadyExists));

    // AlterPartition from the partition's leader, sent via any node.
    let p0 = t.partitions[0].clone();
    let shrink = ControllerRequest::AlterPartition {
        topic: "a".into(),
        partition: 0,
        from_node: p0.leader,
        leader_epoch: 0,
        partition_epoch: 0,
        new_isr: vec![p0.leader],
    };
    let r = block_on(f.request(shrink.clone())).unwrap();
    let ControllerResponse::Partition(after) = r else { panic!("{r:?}") };
    assert_eq!((after.isr.clone(), after.partition_epoch), (vec![p0.leader], 1));
    assert_eq!(f.image().partition("a", 0), Some(&after));
    assert_eq!(block_on(f.request(shrink)), Err(ControllerError::InvalidUpdateVersion));

    // Shut the leader down: another takes over and requests still commit.
    nodes[leader as usize - 1].take().unwrap().shutdown();
    let rest: Vec<&Controller> = nodes.iter().flatten().collect();
    wait_until("a new leader", || {
        let l = rest[0].status().leader_id;
        l > 0 && l != leader && rest.iter().all(|n| n.status().leader_id == l)
    });
    assert_eq!(create(rest[0], "b", 2, 2), Ok(ControllerResponse::Done));
    assert_eq!(create(rest[1], "c", 1, 1), Ok(ControllerResponse::Done));
    let expected = rest[1].image();
    assert!(expected.topics.contains_key("b") && expected.topics.contains_key("c"));

    // The old leader restarts on its directory and catches up.
    let back = start(leader, &voters, &dir);
    assert!(back.image().topics.contains_key("a"), "replayed from its own disk");
    wait_until("restarted node catches up", || {
        let img = back.image();
        img.topics.contains_key("b") && img.topics.contains_key("c")
    });
    nodes[leader as usize - 1] = Some(back);
    let all: Vec<&Controller> = nodes.iter().flatten().collect();
    wait_for_cluster(&all, 3);
    assert_eq!(create(all[0], "d", 3, 3), Ok(ControllerResponse::Done));
    for n in &all {
        wait_until("topic d everywhere", || n.image().topics.contains_key("d"));
    }
    let imgs: Vec<_> = all.iter().map(|n| n.image()).collect();
    wait_until("identical images", || {
        let imgs: Vec<_> = all.iter().map(|n| replicated(&n.image())).collect();
        imgs.windows(2).all(|w| w[0] == w[1])
    });
    drop(imgs);
}

#[test]
fn silent_broker_is_fenced_and_returns() {
    let dir = base_dir("fence");
    let voters: Vec<(i32, SocketAddr)> = (1..=3).map(|i| (i, free_addr())).collect();
    let mut nodes: Vec<Option<Controller>> = (1..=3).map(|i| Some(start(i, &voters, &dir))).collect();
    let all: Vec<&Controller> = nodes.iter().flatten().collect();
    let leader = wait_for_cluster(&all, 3);
    let victim = (1..=3).find(|i| *i != leader).unwrap();
    let observer = nodes[leader as usize - 1].clone().unwrap();
    assert_eq!(create(&observer, "r3", 3, 3), Ok(ControllerResponse::Done));
    assert_eq!(create(&observer, "r1", 3, 1), Ok(ControllerResponse::Done));
    let before = observer.image();
    let old_incarnation = before.brokers[&victim].incarnation;
    let led: Vec<usize> = (0..3).filter(|p| before.topics["r3"].partitions[*p].leader == victim).collect();
    assert_eq!(led.len(), 1, "rf 3 over 3 brokers: one each");
    let alone: Vec<usize> = (0..3).filter(|p| before.topics["r1"].partitions[*p].leader == victim).collect();
    assert_eq!(alone.len(), 1);

    // It stops heartbeating.
    let stopped_at = Instant::now();
    nodes[victim as usize - 1].take().unwrap().shutdown();
    wait_until("victim fenced", || observer.image().brokers[&victim].fenced);
    // The session runs from its last heartbeat, up to one interval before
    // the stop.
    let fenced_after = stopped_at.elapsed();
    assert!(
        fenced_after >= Duration::from_millis(SESSION_MS - HEARTBEAT_MS),
        "fenced after {fenced_after:?}, before the session timeout"
    );
    let img = observer.image();
    for (i, p) in img.topics["r3"].partitions.iter().enumerate() {
        let was = &before.topics["r3"].partitions[i];
        assert!(!p.isr.contains(&victim), "partition {i}: {p:?}");
        if led.contains(&i) {
            assert_ne!(p.leader, victim);
            assert!(was.isr.contains(&p.leader), "new leader from the ISR");
            assert_eq!(p.leader_epoch, was.leader_epoch + 1);
        } else {
            assert_eq!(p.leader, was.leader);
            assert_eq!(p.leader_epoch, was.leader_epoch);
        }
        assert!(p.partition_epoch > was.partition_epoch);
    }
    // Its rf-1 partition has no one else: no leader, and it keeps its claim.
    let lone = &img.topics["r1"].partitions[alone[0]];
    assert_eq!((lone.leader, lone.isr.clone(), lone.leader_epoch), (-1, vec![victim], 1));
    // Topics can still be created over the two live brokers only.
    assert!(matches!(create(&observer, "x", 1, 3), Err(ControllerError::InvalidReplicationFactor(_))));

    // It comes back: a new incarnation, unfenced, and it leads its
    // leader-less partition again.
    let back = start(victim, &voters, &dir);
    wait_until("victim back", || {
        let b = &observer.image().brokers[&victim];
        !b.fenced && b.incarnation != old_incarnation
    });
    wait_until("victim leads its lone partition", || {
        observer.image().topics["r1"].partitions[alone[0]].leader == victim
    });
    let img = observer.image();
    let lone = &img.topics["r1"].partitions[alone[0]];
    assert_eq!(lone.isr, vec![victim]);
    assert!(lone.leader_epoch >= 2);
    // It rejoins r3's ISRs only through AlterPartition from their leaders.
    assert!(img.topics["r3"].partitions.iter().all(|p| !p.isr.contains(&victim)));
    let p = img.topics["r3"].partitions[led[0]].clone();
    let mut isr = p.isr.clone();
    isr.push(victim);
    let r = block_on(back.request(ControllerRequest::AlterPartition {
        topic: "r3".into(),
        partition: led[0] as u32,
        from_node: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        new_isr: isr.clone(),
    }))
    .unwrap();
    assert!(matches!(r, ControllerResponse::Partition(ref q) if q.isr == isr));
    assert_eq!(back.image().topics["r3"].partitions[led[0]].isr, isr);
}
