//! A test's data directory under `target/`, removed when the test passes.
//!
//! A broker's partitions preallocate their segments (32 MiB each), so a
//! full test run kept every passed test's data on disk: several GB, which
//! outgrew CI's disk at stop 24. A failed test keeps its directory for
//! the post-mortem (the guard drops while the thread panics).
//!
//! Bind it to a local declared before the broker that uses it (locals drop
//! in reverse order): a temporary (`Broker::start(&data_dir(..))`) drops
//! at the end of its statement and would delete a running broker's files.

use std::ops::Deref;
use std::path::{Path, PathBuf};

#[derive(Debug)]
#[must_use = "the directory is removed when this drops"]
pub struct TestDir(PathBuf);

impl TestDir {
    /// `root/name`, emptied of an earlier run's files (not created).
    pub fn fresh(root: &Path, name: &str) -> TestDir {
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        TestDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn to_path_buf(&self) -> PathBuf {
        self.0.clone()
    }
}

impl Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TestDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
