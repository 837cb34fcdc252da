//! A timeout future that registers with glommio's timer wheel once.
//!
//! glommio-ng 0.12's `Timer` registers a new wheel entry every time it is
//! polled while pending and forgets the previous one, which stays (and is
//! scanned on every reactor turn) until it expires. A request timeout
//! polled inside a `select!` is polled on every wake of its task, so each
//! request leaked entries that lived for its whole timeout (30 s): at a
//! few thousand requests a second the reactor scanned ~100k stale entries
//! per turn (a quarter of the shard's CPU in the round-trip benchmark).
//! `Deadline` polls its timer only to register it; later polls check the
//! clock, and the one registration (whose waker is the task's, stable in
//! glommio) wakes the task when it is due.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use glommio::timer::Timer;

#[derive(Debug)]
pub(crate) struct Deadline {
    at: Instant,
    timer: Option<Timer>,
}

impl Deadline {
    pub fn after(duration: Duration) -> Self {
        Deadline { at: Instant::now() + duration, timer: None }
    }

    pub fn at(at: Instant) -> Self {
        Deadline { at, timer: None }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.at {
            self.timer = None;
            return Poll::Ready(());
        }
        if self.timer.is_none() {
            let mut timer = Timer::new(self.at - now);
            // Registers the wheel entry with this task's waker.
            if Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.timer = Some(timer);
        }
        Poll::Pending
    }
}
