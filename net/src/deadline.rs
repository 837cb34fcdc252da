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
//! glommio) wakes the task when it is due: registered a wheel tick late,
//! since the wheel may fire up to a tick early.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use glommio::timer::Timer;

/// The timer wheel's resolution (glommio-ng 0.12: whole milliseconds).
const TIMER_WHEEL_TICK: Duration = Duration::from_millis(1);

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
            // glommio-ng's wheel fires an entry in the whole millisecond its
            // instant falls in, so up to 1 ms early; woken early, this
            // future would be pending with nothing left to wake it. One
            // millisecond more and the wheel can only fire late.
            let mut timer = Timer::new(self.at - now + TIMER_WHEEL_TICK);
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

    /// glommio-ng's timer wheel counts whole milliseconds from its start
    /// and fires an entry in the tick its deadline falls in: up to a
    /// millisecond before the deadline when the reactor runs its timers
    /// often (a busy shard). A `Deadline` woken by its one timer before it
    /// is due used to return Pending with nothing left to wake it: the task
    /// waited forever (a long-poll fetch never answered, found by the
    /// `requests` fuzz target; an ISR check loop that stops). Each deadline
    /// here runs alone in its task, as the shard's loops do, while another
    /// task keeps the reactor busy; every one must fire.
    #[test]
    fn fires_even_when_the_timer_wheel_wakes_it_early() {
        use std::cell::Cell;
        use std::rc::Rc;
        glommio::LocalExecutorBuilder::default().make().expect("executor").run(async {
            let busy = Rc::new(Cell::new(true));
            let spinner = glommio::spawn_local({
                let busy = busy.clone();
                async move {
                    // Timers every 50 µs: the reactor runs its wheel often.
                    while busy.get() {
                        glommio::timer::sleep(Duration::from_micros(50)).await;
                    }
                }
            });
            // Past 256 live timers glommio-ng moves them from a list (exact
            // instants) to its wheel (whole milliseconds), for good: a
            // broker's connections keep that many (idle, write and request
            // timeouts, long polls).
            for _ in 0..300 {
                glommio::spawn_local(glommio::timer::sleep(Duration::from_secs(60))).detach();
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
            let fired = Rc::new(Cell::new(0u32));
            let count = 40u32;
            for i in 0..count {
                let fired = fired.clone();
                // Deadlines between whole milliseconds.
                let after = Duration::from_micros(2_000 + u64::from(i) * 1_137 % 1_000 + u64::from(i) * 250);
                glommio::spawn_local(async move {
                    Deadline::after(after).await;
                    fired.set(fired.get() + 1);
                })
                .detach();
            }
            // Well past the last deadline (12 ms): every task has had time.
            glommio::timer::sleep(Duration::from_millis(500)).await;
            busy.set(false);
            spinner.await;
            assert_eq!(fired.get(), count, "deadlines that never fired");
        });
    }
}
