//! Byte budgets for requests in flight (issue 14): one per connection and
//! one per shard. A request is charged from when its frame is decoded
//! (its frame's bytes, and for a fetch the most its answer may hold) until
//! its response is written; the charge then follows the response's real
//! size. A connection reads no further frame while either budget lacks
//! room for it, so memory held for requests and unwritten responses stays
//! within the budgets, and TCP pushes back on the client instead.
//!
//! Charging never waits; only admission does. So nothing that releases a
//! budget (a response being written, an append completing) ever waits on
//! one, and the budgets cannot deadlock. A request larger than a budget
//! is admitted once nothing else holds that budget (else it could never
//! run), which bounds each budget's use by the larger of its size and one
//! request.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// One budget: bytes charged against a maximum, and the readers waiting
/// for room.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used_bytes: Cell<usize>,
    /// The most ever charged at once (`spate_bytes_in_flight_peak`).
    peak_bytes: Cell<usize>,
    bytes_max: usize,
    waiters: RefCell<Vec<Waker>>,
}

impl ByteBudget {
    pub(crate) fn new(bytes_max: usize) -> Rc<Self> {
        assert!(bytes_max > 0, "a budget has room for something");
        Rc::new(ByteBudget {
            used_bytes: Cell::new(0),
            peak_bytes: Cell::new(0),
            bytes_max,
            waiters: RefCell::new(Vec::new()),
        })
    }

    pub(crate) fn used_bytes(&self) -> usize {
        self.used_bytes.get()
    }

    pub(crate) fn peak_bytes(&self) -> usize {
        self.peak_bytes.get()
    }

    /// Room for `bytes` more: within the maximum, or `held_here` (what the
    /// asker itself holds of this budget) is all there is.
    fn has_room(&self, bytes: usize, held_here: usize) -> bool {
        let used = self.used_bytes.get();
        used <= held_here || used.saturating_add(bytes) <= self.bytes_max
    }

    fn add(&self, bytes: usize) {
        let used = self.used_bytes.get() + bytes;
        self.used_bytes.set(used);
        self.peak_bytes.set(self.peak_bytes.get().max(used));
    }

    fn remove(&self, bytes: usize) {
        let used = self.used_bytes.get();
        assert!(bytes <= used, "a budget releases only what was charged ({bytes} of {used})");
        self.used_bytes.set(used - bytes);
        if bytes > 0 {
            for waker in self.waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }
}

/// A connection's view: its own budget and its shard's.
#[derive(Debug, Clone)]
pub(crate) struct Budgets {
    pub connection: Rc<ByteBudget>,
    pub shard: Rc<ByteBudget>,
}

impl Budgets {
    /// Waits until both budgets have room for `bytes` more (or the
    /// connection holds nothing, and nobody else holds the shard's).
    pub(crate) async fn room_for(&self, bytes: usize) {
        poll_fn(|cx| {
            let held = self.connection.used_bytes();
            if !self.connection.has_room(bytes, 0) {
                self.connection.waiters.borrow_mut().push(cx.waker().clone());
                return Poll::Pending;
            }
            if !self.shard.has_room(bytes, held) {
                self.shard.waiters.borrow_mut().push(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(())
        })
        .await
    }

    /// The bytes both budgets could still take (0 when either is full).
    pub(crate) fn room_bytes(&self) -> usize {
        let left = |b: &ByteBudget| b.bytes_max.saturating_sub(b.used_bytes.get());
        left(&self.connection).min(left(&self.shard))
    }

    /// Charges `bytes` to both budgets at once (never waits).
    pub(crate) fn charge(&self, bytes: usize) -> Charge {
        self.connection.add(bytes);
        self.shard.add(bytes);
        Charge(Rc::new(ChargeInner { budgets: self.clone(), bytes: Cell::new(bytes) }))
    }
}

/// Bytes charged for one request, released when the last clone is dropped
/// (the response written, or the connection gone). Clones share the
/// amount: a fetch resizes it while it waits.
#[derive(Debug, Clone)]
pub(crate) struct Charge(Rc<ChargeInner>);

#[derive(Debug)]
struct ChargeInner {
    budgets: Budgets,
    bytes: Cell<usize>,
}

impl Charge {
    pub(crate) fn budgets(&self) -> &Budgets {
        &self.0.budgets
    }

    /// Charges `bytes` instead of what was charged (never waits: a response
    /// larger than its reservation overshoots, and the reader waits longer).
    pub(crate) fn resize(&self, bytes: usize) {
        let inner = &self.0;
        let old = inner.bytes.replace(bytes);
        if bytes > old {
            inner.budgets.connection.add(bytes - old);
            inner.budgets.shard.add(bytes - old);
        } else {
            inner.budgets.connection.remove(old - bytes);
            inner.budgets.shard.remove(old - bytes);
        }
    }
}

impl Drop for ChargeInner {
    fn drop(&mut self) {
        self.budgets.connection.remove(self.bytes.get());
        self.budgets.shard.remove(self.bytes.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(connection: usize, shard: usize) -> Budgets {
        Budgets { connection: ByteBudget::new(connection), shard: ByteBudget::new(shard) }
    }

    #[test]
    fn charges_follow_resizes_and_are_released_when_dropped() {
        let b = budgets(100, 1000);
        let charge = b.charge(60);
        let clone = charge.clone();
        assert_eq!((b.connection.used_bytes(), b.shard.used_bytes()), (60, 60));
        assert!(!b.connection.has_room(50, 0), "60 + 50 is over 100");
        charge.resize(10);
        assert!(b.connection.has_room(50, 0));
        drop(charge);
        assert_eq!(b.shard.used_bytes(), 10, "a clone still holds it");
        drop(clone);
        assert_eq!((b.connection.used_bytes(), b.shard.used_bytes()), (0, 0));
        assert_eq!(b.shard.peak_bytes(), 60);
    }

    #[test]
    fn a_request_larger_than_the_budget_is_admitted_when_nothing_else_holds_it() {
        let b = budgets(100, 150);
        assert!(b.connection.has_room(500, 0), "an empty budget admits anything");
        let _held = b.charge(80);
        assert!(!b.connection.has_room(500, 0));
        // The shard's budget counts what this connection holds as its own.
        assert!(b.shard.has_room(500, 80));
        let other = Budgets { connection: ByteBudget::new(100), shard: b.shard.clone() };
        assert!(!other.shard.has_room(100, 0), "another connection waits for the shard's room");
    }
}
