//! Charging a client's usage to its quotas, for both front-ends (native
//! and Kafka): bytes produced and fetched (`producer_byte_rate`,
//! `consumer_byte_rate`) and the time its requests take on the shard
//! (`request_percentage`). A client over a quota is kept quiet: the
//! connection reads nothing more from it until then (KIP-219). The quotas
//! and meters are `security::quota`'s; this is where a shard's catalog,
//! meters and metrics meet a connection's state.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::security::Principal;
use crate::security::principal::USER_TYPE;
use crate::security::quota::{ConnQuotas, QuotaKind};
use crate::shard::Shard;
use crate::wire::{Reply, Response};

/// A connection's quota state: its resolved quotas and how long it is
/// kept quiet.
#[derive(Debug, Default)]
pub(crate) struct ConnThrottle {
    quotas: ConnQuotas,
    quiet_until: Cell<Option<Instant>>,
}

impl ConnThrottle {
    /// Until when the connection is not read from, if it is throttled.
    pub fn quiet_until(&self) -> Option<Instant> {
        self.quiet_until.get()
    }

    /// Counts `amount` (bytes, or microseconds for `Request`) against the
    /// client's quota of `kind` and returns the throttle time (0: none);
    /// a throttled connection is kept quiet that long.
    pub fn charge(&self, shard: &Shard, who: (&Principal, &str), kind: QuotaKind, amount: u64) -> u64 {
        let catalog = shard.shared.catalog.load();
        if catalog.client_quotas.is_empty() {
            return 0;
        }
        let (principal, client_id) = who;
        let user = if principal.principal_type == USER_TYPE { principal.name.as_str() } else { "" };
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let throttle_ms = self.quotas.record(
            &catalog.client_quotas,
            &shard.shared.quota_meters,
            kind,
            (user, client_id),
            amount,
            now_ms,
        );
        if throttle_ms > 0 {
            let until = Instant::now() + Duration::from_millis(throttle_ms);
            self.quiet_until.set(Some(self.quiet_until.get().map_or(until, |current| current.max(until))));
            shard.metrics.throttled(kind, throttle_ms);
        }
        throttle_ms
    }
}

/// The time a request takes on this shard, charged to the client's
/// `request_percentage` quota (KIP-124) once it is answered: the
/// synchronous part of its dispatch and every poll of what it left to do
/// later. The answer carries no throttle time for it (it is already
/// encoded); the connection is kept quiet instead.
pub(crate) struct RequestTime {
    shard: Rc<Shard>,
    throttle: Rc<ConnThrottle>,
    principal: Rc<Principal>,
    client_id: String,
    started: Instant,
    spent: Duration,
}

impl RequestTime {
    /// Starts timing a request; None while no client quota exists
    /// (nothing is timed).
    pub fn start(
        shard: &Rc<Shard>,
        throttle: &Rc<ConnThrottle>,
        principal: &Rc<Principal>,
        client_id: &str,
    ) -> Option<RequestTime> {
        if shard.shared.catalog.load().client_quotas.is_empty() {
            return None;
        }
        Some(RequestTime {
            shard: shard.clone(),
            throttle: throttle.clone(),
            principal: principal.clone(),
            client_id: client_id.to_string(),
            started: Instant::now(),
            spent: Duration::ZERO,
        })
    }

    fn charge(&self) {
        let micros = u64::try_from(self.spent.as_micros()).unwrap_or(u64::MAX);
        self.throttle.charge(&self.shard, (&self.principal, &self.client_id), QuotaKind::Request, micros);
    }

    /// Charges the dispatch that `start` began and that returned `reply`.
    pub fn charged(mut self, reply: Reply) -> Reply {
        self.spent += self.started.elapsed();
        match reply {
            Reply::Now(response) => {
                self.charge();
                Reply::Now(response)
            }
            Reply::Later(later) => Reply::Later(Box::pin(Timed { later, time: self })),
        }
    }
}

/// A reply's future, with the time spent polling it counted.
struct Timed {
    later: crate::wire::response::Later,
    time: RequestTime,
}

impl std::future::Future for Timed {
    type Output = Response;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Response> {
        let polled = Instant::now();
        let poll = self.later.as_mut().poll(cx);
        self.time.spent += polled.elapsed();
        if poll.is_ready() {
            self.time.charge();
        }
        poll
    }
}
