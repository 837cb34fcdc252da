//! Producer ids (issue 14): a client cannot predict another producer's id
//! from its own, so it cannot send batches under it.

mod common;

use common::*;
use spate_flatbuf::proto::*;
use spate_format::batch::BatchBuilder;

fn init_producer_id(conn: &mut Conn) -> i64 {
    let frame = conn.call(Body::InitProducerIdRequest, |b| {
        InitProducerIdRequest::create(b, &InitProducerIdRequestArgs::default()).as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_init_producer_id_response().expect("init producer id response");
    assert_eq!(response.error(), ErrorCode::None);
    assert_eq!(response.producer_epoch(), 0);
    response.producer_id()
}

/// One record `value` from producer `id` (epoch 0) at `sequence`.
fn idempotent_batch(id: i64, sequence: i32, value: &str) -> Vec<u8> {
    let mut builder = BatchBuilder::new(1_700_000_000_000).producer(id, 0, sequence);
    builder.push(1_700_000_000_000, None, Some(value.as_bytes()), &[]);
    builder.build().to_vec()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

/// How far from its own id the attacker below looks for its neighbours'.
const GUESS_SPAN: i64 = 20;

/// Ids handed out one after another are not neighbours, and a client that
/// tries the ids around its own (where sequential ids put the producers
/// that started just before and after it) hits no other producer: the
/// victim's next batch is stored, not answered as a duplicate of the
/// attacker's. With sequential ids (the code before) the victim's id was
/// the attacker's minus one: the attacker's batch took the victim's
/// sequence 1, the victim's own batch 1 was acknowledged as a duplicate and
/// never stored, and this test failed.
#[test]
fn producer_ids_are_unguessable_and_a_guessed_neighbour_hijacks_no_producer() {
    let dir = data_dir("producer_ids_unguessable");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("t", 1, &[]), ErrorCode::None);

    let ids: Vec<i64> = (0..GUESS_SPAN).map(|_| init_producer_id(&mut conn)).collect();
    for (i, a) in ids.iter().enumerate() {
        assert!(*a >= 0, "a producer id is non-negative: {a}");
        for b in &ids[i + 1..] {
            assert!((a - b).abs() > GUESS_SPAN, "ids {a} and {b} are neighbours: {ids:?}");
        }
    }

    let victim = init_producer_id(&mut conn);
    assert_eq!(conn.produce("t", 0, &idempotent_batch(victim, 0, "victim-0"), -1).0, ErrorCode::None);
    let attacker = init_producer_id(&mut conn);
    for guess in (attacker - GUESS_SPAN..=attacker + GUESS_SPAN).filter(|guess| *guess != attacker && *guess >= 0) {
        // Whatever the broker answers (a stranger's sequence 1 may be
        // refused), nothing of it may land on the victim.
        conn.produce("t", 0, &idempotent_batch(guess, 1, "attacker"), -1);
    }
    let (error, victim_offset) = conn.produce("t", 0, &idempotent_batch(victim, 1, "victim-1"), -1);
    assert_eq!(error, ErrorCode::None);

    let (error, _, records) = conn.fetch("t", 0, victim_offset, 0);
    assert_eq!(error, ErrorCode::None);
    assert!(contains(&records, "victim-1"), "the victim's batch is stored at offset {victim_offset}");
    assert!(!contains(&records[..records.len().min(200)], "attacker"), "and the attacker's is not taken for it");
    stop(broker);
    std::fs::remove_dir_all(&dir).ok();
}
