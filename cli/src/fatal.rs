//! Panics end the broker process.
//!
//! A broker is many threads: one per shard, the controller's Raft thread,
//! glommio's helpers. By default a panic ends only the thread it happens
//! on, and the rest of the process lives on: a broker whose shard is gone
//! still heartbeats to the controller (so it keeps its leaderships and its
//! place in every ISR) while the partitions of that shard answer nothing. A
//! zombie like that is worse than a dead broker, which the controller fences
//! and replaces and which systemd or an operator restarts. So `serve`
//! installs this hook: it logs the panic with its thread and location (the
//! default hook's message and backtrace follow) and aborts the process.
//!
//! A hook rather than `panic = "abort"` in the release profile: it works in
//! every build (debug builds, tests, a release built without our profile),
//! and only for `serve`: the client verbs keep the default behaviour. Abort
//! rather than `exit`: no destructor or atexit handler runs on the way out
//! (other threads may hold locks or half-written state), the exit status
//! says SIGABRT and a core dump is possible when enabled.

use std::panic::PanicHookInfo;

/// Makes a panic on any thread log and abort the process.
pub fn abort_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log_panic(info);
        default_hook(info);
        std::process::abort();
    }));
}

fn log_panic(info: &PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let thread_name = thread.name().unwrap_or("<unnamed>");
    let location = info.location().map_or_else(|| "<unknown>".to_string(), ToString::to_string);
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string payload>");
    tracing::error!(thread = thread_name, %location, "panic, ending the process: {message}");
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// Set in the child process only: the test binary re-runs itself with
    /// it to play a broker whose worker thread panics.
    const CHILD_ENV: &str = "SPATE_TEST_PANIC_HOOK_CHILD";
    const CHILD_TEST: &str = "fatal::tests::child_a_worker_thread_panics";

    /// The child: installs the hook, panics on a named worker thread and
    /// then, if it is still alive, ends normally, as a broker's remaining
    /// threads would carry on. Does nothing unless started by the test
    /// below.
    #[test]
    fn child_a_worker_thread_panics() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        super::abort_on_panic();
        let worker = std::thread::Builder::new()
            .name("shard-1".into())
            .spawn(|| panic!("injected by the panic hook test"))
            .expect("spawn");
        // Without the hook, join returns the panic and the process lives
        // on: this is the zombie the hook prevents.
        let joined = worker.join();
        println!("CHILD SURVIVED THE PANIC: {}", joined.is_err());
    }

    /// A panic on any thread ends the process with SIGABRT, after logging
    /// the thread and location. Without the hook (the code before it) the
    /// child exited 0 after its worker's panic, "CHILD SURVIVED" in its
    /// output: this test failed.
    #[test]
    fn a_panic_on_any_thread_aborts_the_process_after_logging_it() {
        use std::os::unix::process::ExitStatusExt as _;
        let output = Command::new(std::env::current_exe().expect("test binary"))
            .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stdout.contains("CHILD SURVIVED"), "the process outlived a thread's panic:\n{stdout}\n{stderr}");
        assert_eq!(
            output.status.signal(),
            Some(signal_hook::consts::SIGABRT),
            "{:?}\n{stdout}\n{stderr}",
            output.status
        );
        assert!(stderr.contains("shard-1"), "the thread is named: {stderr}");
        assert!(stderr.contains("fatal.rs"), "the location is named: {stderr}");
        assert!(stderr.contains("injected by the panic hook test"), "the message is kept: {stderr}");
    }
}
