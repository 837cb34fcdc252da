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

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn fires_when_due_however_often_its_task_is_woken() {
        glommio::LocalExecutorBuilder::default().make().expect("executor").run(async {
            let started = Instant::now();
            let mut deadline = Deadline::after(Duration::from_millis(40));
            let mut wakes = 0;
            loop {
                // Another branch wakes the task every millisecond, as a
                // request's other futures do.
                futures::select! {
                    () = (&mut deadline).fuse() => break,
                    _ = glommio::timer::sleep(Duration::from_millis(1)).fuse() => wakes += 1,
                }
            }
            let waited = started.elapsed();
            assert!(waited >= Duration::from_millis(40), "fired early: {waited:?}");
            assert!(waited < Duration::from_secs(2), "fired late: {waited:?}");
            assert!(wakes >= 5, "the task was polled {wakes} times");
            // Polled again after firing, it stays ready.
            assert!((&mut deadline).now_or_never().is_some());
        });
    }
}
