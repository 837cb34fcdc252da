//! Connections per client address (Kafka's `max.connections.per.ip` and
//! `max.connections.per.ip.overrides`), counted across every shard of the
//! broker: one client opening connections without end would otherwise
//! take every shard's slots (`connections_per_shard_max`) from the others.
//! A connection over its address's limit is closed as soon as it is
//! accepted, as Kafka closes it; the slot is given back when the
//! connection ends, however it ends (`Slot`'s drop).
//!
//! New connections on the whole broker are also held to Kafka's
//! `max.connection.creation.rate` (per second): past it, a shard's accept
//! loop waits before it serves the connection it accepted and before it
//! accepts another, as Kafka's acceptor blocks; the waiting ones sit in
//! the kernel's backlog (`creation_delay`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::limits::{IP_CREATION_BUCKETS_MAX, IP_CREATION_IDLE_MS};

/// The broker's counts of open client connections per address, with the
/// limits they are held to.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    per_ip_max: u64,
    overrides: HashMap<IpAddr, u64>,
    open: Mutex<HashMap<IpAddr, u64>>,
    /// Connections a second the broker takes, and the bucket that holds
    /// it to that: (tokens, when last refilled). Tokens go below zero:
    /// each connection over the rate reserves its turn, so that the
    /// shards' waits add up to the rate rather than all waking at once.
    creation_rate: u64,
    creation_tokens: Mutex<(f64, Instant)>,
    /// Per address, for the `connection_creation_rate` ip quotas: (tokens,
    /// when last refilled). At most `IP_CREATION_BUCKETS_MAX`.
    ip_tokens: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// One open connection's place in its address's count.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                // Addresses that come and go leave nothing behind.
                open.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    /// `overrides`: a limit per address of its own
    /// (`BrokerConfig::connection_overrides`); `creation_rate` > 0.
    pub(crate) fn new(per_ip_max: u64, overrides: HashMap<IpAddr, u64>, creation_rate: u64) -> ConnectionLimits {
        assert!(creation_rate > 0, "the config is validated");
        let overrides = overrides.into_iter().map(|(ip, count)| (canonical(ip), count)).collect();
        ConnectionLimits {
            per_ip_max,
            overrides,
            open: Mutex::new(HashMap::new()),
            creation_rate,
            creation_tokens: Mutex::new((creation_rate as f64, Instant::now())),
            ip_tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a new connection from `ip` at `now` is within its address's
    /// `connection_creation_rate` quota (`rate` a second, as resolved by
    /// `ClientQuotas::connection_creation_rate`; a second's worth at
    /// once). One over it is refused (Kafka closes it), and counts
    /// nothing.
    pub(crate) fn within_ip_creation_rate(&self, ip: IpAddr, rate: f64, now: Instant) -> bool {
        let capacity = rate.max(1.0);
        let mut buckets = self.ip_tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !buckets.contains_key(&ip) && buckets.len() >= IP_CREATION_BUCKETS_MAX {
            let idle = Duration::from_millis(IP_CREATION_IDLE_MS);
            buckets.retain(|_, (_, refilled)| now.saturating_duration_since(*refilled) < idle);
            if buckets.len() >= IP_CREATION_BUCKETS_MAX {
                return true;
            }
        }
        let (tokens, refilled) = buckets.entry(ip).or_insert((capacity, now));
        *tokens = (*tokens + now.saturating_duration_since(*refilled).as_secs_f64() * rate).min(capacity);
        *refilled = (*refilled).max(now);
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// How long a connection accepted at `now` waits before it is served
    /// (zero within the rate). A second's worth may come at once.
    pub(crate) fn creation_delay(&self, now: Instant) -> Duration {
        let rate = self.creation_rate as f64;
        let mut bucket = self.creation_tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (tokens, refilled) = &mut *bucket;
        let elapsed_s = now.saturating_duration_since(*refilled).as_secs_f64();
        *tokens = (*tokens + elapsed_s * rate).min(rate);
        *refilled = (*refilled).max(now);
        *tokens -= 1.0;
        if *tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-*tokens / rate) }
    }

    fn limit(&self, ip: IpAddr) -> u64 {
        self.overrides.get(&canonical(ip)).copied().unwrap_or(self.per_ip_max)
    }

    /// A slot for one more connection from `ip`, or None when its address
    /// has as many open as it may.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = canonical(ip);
        let limit = self.limit(ip);
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(Slot { limits: self.clone(), ip })
    }

    /// The connection limit of `ip` (for the refusal's log line).
    pub(crate) fn limit_of(&self, ip: IpAddr) -> u64 {
        self.limit(canonical(ip))
    }
}

/// An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d: one
/// client, one count.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_address_gets_its_limit_and_its_slots_back_when_they_close() {
        let limits = Arc::new(ConnectionLimits::new(2, overrides(&[("10.0.0.9", 0), ("127.0.0.2", 3)]), 100));
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let first = limits.admit(local).unwrap();
        let _second = limits.admit(local).unwrap();
        assert!(limits.admit(local).is_none(), "two per address");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(limits.admit(mapped).is_none(), "the same client through a dual-stack socket");
        drop(first);
        assert!(limits.admit(local).is_some(), "a closed connection gives its slot back");
        assert!(limits.admit("10.0.0.9".parse().unwrap()).is_none(), "an override of 0 refuses every connection");
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let held: Vec<Slot> = (0..3).map(|_| limits.admit(other).unwrap()).collect();
        assert!(limits.admit(other).is_none());
        drop(held);
        assert!(limits.open.lock().unwrap().get(&other).is_none(), "nothing kept for an address with none open");
    }

    #[test]
    fn connections_past_the_creation_rate_wait_their_turn() {
        let limits = ConnectionLimits::new(10, HashMap::new(), 4);
        let start = Instant::now();
        let waits: Vec<Duration> = (0..6).map(|_| limits.creation_delay(start)).collect();
        assert_eq!(&waits[..4], &[Duration::ZERO; 4], "a second's worth at once");
        assert_eq!(waits[4], Duration::from_millis(250));
        assert_eq!(waits[5], Duration::from_millis(500), "each reserves the next turn");
        // Two seconds later the bucket is full again (and no fuller).
        let later = start + Duration::from_secs(2);
        let waits: Vec<Duration> = (0..5).map(|_| limits.creation_delay(later)).collect();
        assert_eq!(waits.iter().filter(|wait| wait.is_zero()).count(), 4);
    }

    #[test]
    fn an_address_over_its_creation_rate_is_refused_until_it_slows_down() {
        let limits = ConnectionLimits::new(10, HashMap::new(), 1_000);
        let start = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let admitted = (0..5).filter(|_| limits.within_ip_creation_rate(ip, 3.0, start)).count();
        assert_eq!(admitted, 3, "a second's worth");
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limits.within_ip_creation_rate(other, 3.0, start), "each address its own");
        let later = start + Duration::from_millis(400);
        assert!(limits.within_ip_creation_rate(ip, 3.0, later), "1.2 tokens back after 400 ms");
        assert!(!limits.within_ip_creation_rate(ip, 3.0, later));
        // A rate under one a second still lets one through now and then.
        assert!(limits.within_ip_creation_rate("10.0.0.3".parse().unwrap(), 0.5, start));
    }

    fn overrides(pairs: &[(&str, u64)]) -> HashMap<IpAddr, u64> {
        pairs.iter().map(|(ip, count)| (ip.parse().unwrap(), *count)).collect()
    }

    #[test]
    fn an_override_for_an_ipv4_address_holds_for_its_mapped_form_too() {
        let limits = ConnectionLimits::new(1, overrides(&[("::ffff:10.1.1.1", 5)]), 100);
        assert_eq!(limits.limit_of("10.1.1.1".parse().unwrap()), 5);
        assert_eq!(limits.limit_of("192.0.2.1".parse().unwrap()), 1);
    }
}
