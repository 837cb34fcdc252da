//! Kafka's client quotas: byte rates per user and/or client id
//! (`producer_byte_rate`, `consumer_byte_rate`) and the share of a core's
//! time its requests may take (`request_percentage`, KIP-124: 100 is one
//! core, as Kafka's is one request handler thread), set with AlterClientQuotas
//! (`kafka-configs --entity-type users|clients`) and kept in the metadata
//! log. A client over its rate is throttled as Kafka does since KIP-219:
//! its answer carries `throttle_time_ms` at once, and the broker reads
//! nothing more from that connection for as long (the client's own
//! back-off, in clients that have it, runs alongside, not after).
//!
//! Rates are per broker, as in Kafka: the meters are shared by every
//! shard (a client's connections may land on any), each a ring of
//! one-second samples of atomic counters, so recording is a couple of
//! atomic adds and no lock on the data path. A connection keeps the meter
//! its quota resolved to, until the quotas change.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use spate_replication::QuotaEntityPart;

use crate::limits::{QUOTA_METERS_MAX, QUOTA_SAMPLE_MS, QUOTA_SAMPLES, QUOTA_THROTTLE_MS_MAX};

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum QuotaKind {
    /// `producer_byte_rate`: bytes of produce requests.
    Produce,
    /// `consumer_byte_rate`: bytes of fetch responses.
    Fetch,
    /// `request_percentage`: microseconds the shard spent on the client's
    /// requests, against the percentage of a second the quota gives.
    Request,
}

impl QuotaKind {
    fn key(self) -> &'static str {
        match self {
            QuotaKind::Produce => "producer_byte_rate",
            QuotaKind::Fetch => "consumer_byte_rate",
            QuotaKind::Request => "request_percentage",
        }
    }

    /// The quota's value in the meter's unit per second: bytes, or
    /// microseconds of a core for a percentage of it.
    fn per_second(self, quota: f64) -> f64 {
        match self {
            QuotaKind::Produce | QuotaKind::Fetch => quota,
            QuotaKind::Request => quota * 1_000_000.0 / 100.0,
        }
    }
}

/// One side of a quota entity: not named, the type's default, or a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Part {
    Absent,
    Default,
    Named(String),
}

/// The quotas the metadata holds, by (user, client id) entity.
#[derive(Debug, Default)]
pub(crate) struct ClientQuotas {
    rates: BTreeMap<(Part, Part), BTreeMap<String, f64>>,
    /// `connection_creation_rate` per ip entity (KIP-612): the named
    /// addresses', and the default one's (None) for every other address.
    ip_rates: HashMap<Option<std::net::IpAddr>, f64>,
    /// As the metadata has them, for DescribeClientQuotas.
    pub entities: BTreeMap<Vec<QuotaEntityPart>, BTreeMap<String, String>>,
}

/// The meter a client's usage counts in: Kafka's metric tags, the user
/// and client id the matching quota names (empty where it names neither:
/// a `<default>` user quota meters each user apart, a client-id quota all
/// users of that client id together).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MeterKey {
    kind: QuotaKind,
    user: String,
    client_id: String,
}

impl ClientQuotas {
    pub fn from_image(quotas: &BTreeMap<Vec<QuotaEntityPart>, BTreeMap<String, String>>) -> ClientQuotas {
        let mut rates = BTreeMap::new();
        let mut ip_rates = HashMap::new();
        for (entity, values) in quotas {
            if let [QuotaEntityPart { entity_type, name }] = entity.as_slice()
                && entity_type == "ip"
            {
                // The controller took only IP addresses and this one key.
                let ip = match name {
                    None => None,
                    Some(name) => match name.parse() {
                        Ok(ip) => Some(ip),
                        Err(_) => continue,
                    },
                };
                if let Some(rate) = values.get(spate_replication::IP_QUOTA_KEY).and_then(|v| v.parse::<f64>().ok()) {
                    ip_rates.insert(ip, rate);
                }
                continue;
            }
            let part = |entity_type: &str| match entity.iter().find(|p| p.entity_type == entity_type) {
                None => Part::Absent,
                Some(QuotaEntityPart { name: None, .. }) => Part::Default,
                Some(QuotaEntityPart { name: Some(name), .. }) => Part::Named(name.clone()),
            };
            let parsed = values.iter().filter_map(|(k, v)| Some((k.clone(), v.parse::<f64>().ok()?))).collect();
            rates.insert((part("user"), part("client-id")), parsed);
        }
        ClientQuotas { rates, ip_rates, entities: quotas.clone() }
    }

    /// Whether there is no user or client-id quota (ip quotas are kept
    /// apart: they are checked when a connection is accepted).
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
    }

    /// The `connection_creation_rate` that holds for connections from
    /// `ip`: its own quota, else the default ip entity's.
    pub fn connection_creation_rate(&self, ip: std::net::IpAddr) -> Option<f64> {
        if self.ip_rates.is_empty() {
            return None;
        }
        self.ip_rates.get(&Some(ip)).or_else(|| self.ip_rates.get(&None)).copied()
    }

    /// The quota on `kind` for this user and client id, by Kafka's order of
    /// precedence (most specific first), with the meter it counts in.
    fn resolve(&self, kind: QuotaKind, user: &str, client_id: &str) -> Option<(f64, MeterKey)> {
        let named = |name: &str| Part::Named(name.to_string());
        let order = [
            (named(user), named(client_id)),
            (named(user), Part::Default),
            (named(user), Part::Absent),
            (Part::Default, named(client_id)),
            (Part::Default, Part::Default),
            (Part::Default, Part::Absent),
            (Part::Absent, named(client_id)),
            (Part::Absent, Part::Default),
        ];
        for (user_part, client_part) in order {
            let Some(rate) = self.rates.get(&(user_part.clone(), client_part.clone())).and_then(|r| r.get(kind.key()))
            else {
                continue;
            };
            let tag = |part: &Part, value: &str| if *part == Part::Absent { String::new() } else { value.to_string() };
            let key = MeterKey { kind, user: tag(&user_part, user), client_id: tag(&client_part, client_id) };
            return Some((*rate, key));
        }
        None
    }
}

/// A rate over the last `QUOTA_SAMPLES` one-second samples.
#[derive(Debug)]
pub(crate) struct Meter {
    starts_ms: [AtomicI64; QUOTA_SAMPLES],
    bytes: [AtomicU64; QUOTA_SAMPLES],
    last_used_ms: AtomicI64,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            starts_ms: std::array::from_fn(|_| AtomicI64::new(i64::MIN)),
            bytes: std::array::from_fn(|_| AtomicU64::new(0)),
            last_used_ms: AtomicI64::new(0),
        }
    }

    /// Counts `bytes` at `now_ms`. Two shards starting the same new sample
    /// at once may lose a few bytes of it: a quota is a rate, not a ledger.
    fn record(&self, now_ms: i64, bytes: u64) {
        let start = now_ms - now_ms.rem_euclid(QUOTA_SAMPLE_MS);
        let slot = (start / QUOTA_SAMPLE_MS).rem_euclid(QUOTA_SAMPLES as i64) as usize;
        let seen = self.starts_ms[slot].load(Ordering::Acquire);
        if seen != start
            && self.starts_ms[slot].compare_exchange(seen, start, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.bytes[slot].store(0, Ordering::Release);
        }
        self.bytes[slot].fetch_add(bytes, Ordering::AcqRel);
        self.last_used_ms.store(now_ms, Ordering::Relaxed);
    }

    /// (bytes per second, the window it is over in ms), as Kafka's `Rate`:
    /// the window runs from the oldest live sample, and is never taken as
    /// shorter than all samples but one, so a first burst is not judged
    /// over a few milliseconds.
    fn rate(&self, now_ms: i64) -> (f64, i64) {
        let horizon = now_ms - QUOTA_SAMPLE_MS * QUOTA_SAMPLES as i64;
        let mut total = 0u64;
        let mut oldest = now_ms;
        for slot in 0..QUOTA_SAMPLES {
            let start = self.starts_ms[slot].load(Ordering::Acquire);
            if start > horizon && start <= now_ms {
                total += self.bytes[slot].load(Ordering::Acquire);
                oldest = oldest.min(start);
            }
        }
        let mut window_ms = now_ms - oldest;
        let full = window_ms / QUOTA_SAMPLE_MS;
        let min_full = QUOTA_SAMPLES as i64 - 1;
        if full < min_full {
            window_ms += (min_full - full) * QUOTA_SAMPLE_MS;
        }
        let window_ms = window_ms.max(1);
        (total as f64 * 1000.0 / window_ms as f64, window_ms)
    }

    /// Kafka's throttle time for a rate over its quota: long enough that
    /// the rate over the window falls back to the quota.
    fn throttle_ms(&self, now_ms: i64, quota: f64) -> u64 {
        let (rate, window_ms) = self.rate(now_ms);
        if rate <= quota {
            return 0;
        }
        let ms = (rate - quota) / quota * window_ms as f64;
        (ms as u64).min(QUOTA_THROTTLE_MS_MAX)
    }
}

/// Every meter of the broker, shared by its shards.
#[derive(Debug, Default)]
pub(crate) struct QuotaMeters {
    meters: RwLock<HashMap<MeterKey, Arc<Meter>>>,
}

impl QuotaMeters {
    /// The meter for `key`, made on first use. Bounded: past
    /// `QUOTA_METERS_MAX` (client ids are the client's to choose), meters
    /// idle for a whole window go; if none is, the newcomers share one
    /// overflow meter per kind, which only throttles them sooner.
    fn meter(&self, key: MeterKey, now_ms: i64) -> Arc<Meter> {
        if let Ok(meters) = self.meters.read()
            && let Some(meter) = meters.get(&key)
        {
            return meter.clone();
        }
        let Ok(mut meters) = self.meters.write() else { return Arc::new(Meter::new()) };
        if meters.len() >= QUOTA_METERS_MAX && !meters.contains_key(&key) {
            let idle_before = now_ms - QUOTA_SAMPLE_MS * QUOTA_SAMPLES as i64;
            meters.retain(|_, meter| meter.last_used_ms.load(Ordering::Relaxed) >= idle_before);
        }
        let key = if meters.len() >= QUOTA_METERS_MAX && !meters.contains_key(&key) {
            MeterKey { kind: key.kind, user: "<overflow>".into(), client_id: "<overflow>".into() }
        } else {
            key
        };
        meters.entry(key).or_insert_with(|| Arc::new(Meter::new())).clone()
    }
}

/// A connection's view of its quotas: the meter and rate each kind
/// resolved to, until the quotas change (a new `ClientQuotas`).
#[derive(Debug, Default)]
pub(crate) struct ConnQuotas {
    resolved: std::cell::RefCell<Option<Resolved>>,
}

#[derive(Debug)]
struct Resolved {
    quotas: Arc<ClientQuotas>,
    user: String,
    client_id: String,
    produce: Option<(f64, Arc<Meter>)>,
    fetch: Option<(f64, Arc<Meter>)>,
    request: Option<(f64, Arc<Meter>)>,
}

impl ConnQuotas {
    /// Counts `bytes` of `kind` (microseconds for `Request`) for this
    /// client and returns how long it is to be throttled (0: it is within
    /// its quota, or has none).
    /// `who` is the (user, client id) the request came from.
    pub fn record(
        &self,
        quotas: &Arc<ClientQuotas>,
        meters: &QuotaMeters,
        kind: QuotaKind,
        who: (&str, &str),
        bytes: u64,
        now_ms: i64,
    ) -> u64 {
        let (user, client_id) = who;
        if quotas.is_empty() {
            return 0;
        }
        let mut resolved = self.resolved.borrow_mut();
        let current = resolved
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.quotas, quotas) && r.user == user && r.client_id == client_id);
        if !current {
            let lookup =
                |kind| quotas.resolve(kind, user, client_id).map(|(rate, key)| (rate, meters.meter(key, now_ms)));
            *resolved = Some(Resolved {
                quotas: quotas.clone(),
                user: user.to_string(),
                client_id: client_id.to_string(),
                produce: lookup(QuotaKind::Produce),
                fetch: lookup(QuotaKind::Fetch),
                request: lookup(QuotaKind::Request),
            });
        }
        let Some(resolved) = resolved.as_ref() else { return 0 };
        let entry = match kind {
            QuotaKind::Produce => &resolved.produce,
            QuotaKind::Fetch => &resolved.fetch,
            QuotaKind::Request => &resolved.request,
        };
        let Some((quota, meter)) = entry else { return 0 };
        meter.record(now_ms, bytes);
        meter.throttle_ms(now_ms, kind.per_second(*quota))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// (client id part, user part, key, rate); a part is absent (None),
    /// the default (Some(None)) or a name.
    type Entry<'a> = (Option<Option<&'a str>>, Option<Option<&'a str>>, &'a str, f64);

    fn quotas(entries: &[Entry<'_>]) -> Arc<ClientQuotas> {
        let mut map: BTreeMap<Vec<QuotaEntityPart>, BTreeMap<String, String>> = BTreeMap::new();
        for (client, user, key, rate) in entries {
            let mut entity = Vec::new();
            if let Some(client) = client {
                entity.push(QuotaEntityPart { entity_type: "client-id".into(), name: client.map(str::to_string) });
            }
            if let Some(user) = user {
                entity.push(QuotaEntityPart { entity_type: "user".into(), name: user.map(str::to_string) });
            }
            map.entry(entity).or_default().insert(key.to_string(), rate.to_string());
        }
        Arc::new(ClientQuotas::from_image(&map))
    }

    #[test]
    fn the_most_specific_quota_wins_in_kafkas_order() {
        let q = quotas(&[
            (Some(None), None, "producer_byte_rate", 1.0),
            (Some(Some("app")), None, "producer_byte_rate", 2.0),
            (None, Some(None), "producer_byte_rate", 3.0),
            (None, Some(Some("alice")), "producer_byte_rate", 4.0),
            (Some(Some("app")), Some(Some("alice")), "producer_byte_rate", 5.0),
        ]);
        let rate = |user, client| q.resolve(QuotaKind::Produce, user, client).map(|(r, _)| r);
        assert_eq!(rate("alice", "app"), Some(5.0));
        assert_eq!(rate("alice", "other"), Some(4.0));
        assert_eq!(rate("bob", "app"), Some(3.0), "a <default> user quota comes before client-id quotas");
        assert_eq!(q.resolve(QuotaKind::Fetch, "alice", "app"), None, "no consumer_byte_rate anywhere");
        let q = quotas(&[
            (Some(None), None, "consumer_byte_rate", 1.0),
            (Some(Some("app")), None, "consumer_byte_rate", 2.0),
        ]);
        assert_eq!(q.resolve(QuotaKind::Fetch, "bob", "app").map(|(r, _)| r), Some(2.0));
        let (_, key) = q.resolve(QuotaKind::Fetch, "bob", "other").unwrap();
        // A default client-id quota meters each client id apart, users
        // together.
        assert_eq!((key.user.as_str(), key.client_id.as_str()), ("", "other"));
    }

    #[test]
    fn a_client_over_its_rate_is_throttled_until_the_window_average_is_back_at_the_quota() {
        let meter = Meter::new();
        let quota = 1000.0;
        // 10 s at exactly the quota: never throttled.
        for second in 0..10 {
            meter.record(second * 1000, 1000);
            assert_eq!(meter.throttle_ms(second * 1000 + 999, quota), 0, "at second {second}");
        }
        // Then 11,000 bytes at once: the 11-sample window holds 21,000 bytes
        // over ~11 s, ~1,900 B/s; waiting (1900-1000)/1000 x 11 s brings the
        // average back to the quota.
        meter.record(10_500, 11_000);
        let throttle = meter.throttle_ms(10_500, quota);
        assert!((9_000..=10_500).contains(&throttle), "{throttle}");
        // A first burst alone is judged over the whole window, not over the
        // milliseconds it took.
        let fresh = Meter::new();
        fresh.record(0, 5_000);
        assert_eq!(fresh.throttle_ms(1, quota), 0);
    }

    #[test]
    fn connections_share_a_meter_and_meters_are_bounded() {
        let q = quotas(&[(Some(None), None, "producer_byte_rate", 100.0)]);
        let meters = QuotaMeters::default();
        let (a, b) = (ConnQuotas::default(), ConnQuotas::default());
        // Two connections of one client id fill one meter between them.
        let mut throttled = 0;
        for i in 0..20 {
            let conn = if i % 2 == 0 { &a } else { &b };
            throttled = conn.record(&q, &meters, QuotaKind::Produce, ("", "greedy"), 200, 5_000);
        }
        assert!(throttled > 0);
        // Another client id is metered apart and not throttled.
        assert_eq!(ConnQuotas::default().record(&q, &meters, QuotaKind::Produce, ("", "polite"), 100, 5_000), 0);
        for i in 0..QUOTA_METERS_MAX + 10 {
            meters.meter(MeterKey { kind: QuotaKind::Produce, user: String::new(), client_id: i.to_string() }, 5_000);
        }
        assert!(meters.meters.read().unwrap().len() <= QUOTA_METERS_MAX + 1);
    }
}
