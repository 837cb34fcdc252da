//! Whether this broker's previous process stopped cleanly, and whether the
//! machine rebooted since (KIP-966, issue 13), from two files in the data
//! directory (byte layouts in `docs/format.md`, "Broker stop marker"):
//!
//! - `clean-stop`: written (and synced, with the directory) after a
//!   graceful stop closed every log without an error; removed (the
//!   directory synced) at start, before any log opens. Present at start:
//!   the previous process stopped cleanly.
//! - `boot-id`: the machine's boot id (`/proc/sys/kernel/random/boot_id`)
//!   as of the previous start, replaced atomically once a start has
//!   registered with the controller. A different one at start: the
//!   machine rebooted since.
//!
//! An unclean stop alone loses nothing this broker reported to a leader:
//! followers report what they wrote (or synced, under durability `always`),
//! and written pages survive a process. An unclean stop AND a reboot (a
//! power loss, an OS crash) may have lost every write that was not synced,
//! so the broker registers `unsynced_writes_lost` and the controller stops
//! counting on its replicas of partitions not synced on every write.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use spate_replication::BrokerRestart;

use crate::limits::BOOT_ID_BYTES_MAX;

/// Present at start: the previous process stopped cleanly.
pub(crate) const CLEAN_STOP_FILE: &str = "clean-stop";
/// The machine's boot id as of the previous start.
pub(crate) const BOOT_ID_FILE: &str = "boot-id";
const BOOT_ID_TMP_FILE: &str = "boot-id.tmp";
/// Linux's id of the current boot: a fresh random UUID at every boot.
const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// The marker's content, so that a stray empty file is not taken for one.
const CLEAN_STOP_CONTENT: &[u8] = b"spate clean stop v1\n";

/// How the previous process ended, worked out at start (before any log
/// opens), and the marker consumed so that a crash from here on reads as
/// unclean. A data directory with no recorded boot id (a first start, or
/// one by a version before this file) counts as not rebooted: nothing
/// tells otherwise, and treating it as a power loss would take every
/// claim of an upgraded broker away.
pub(crate) fn on_start(data_dir: &Path, default_durability_always: bool) -> std::io::Result<BrokerRestart> {
    let marker = data_dir.join(CLEAN_STOP_FILE);
    let clean = std::fs::read(&marker).is_ok_and(|content| content == CLEAN_STOP_CONTENT);
    let recorded = read_boot_id(&data_dir.join(BOOT_ID_FILE));
    let current = read_boot_id(Path::new(KERNEL_BOOT_ID));
    let rebooted = match (&recorded, &current) {
        (Some(recorded), Some(current)) => recorded != current,
        (None, _) => false,
        // A kernel without the file: it cannot be told, so a reboot it is.
        (Some(_), None) => true,
    };
    if marker.exists() {
        std::fs::remove_file(&marker)?;
        sync_dir(data_dir)?;
    }
    // The boot id is recorded only once the controller has this start's
    // registration (`record_boot_id`): a start that fails before that
    // (a port in use, a quorum not reached) must leave the next start to
    // find the reboot too, or it would lead by right with writes lost.
    let unsynced_writes_lost = !clean && rebooted;
    if unsynced_writes_lost {
        tracing::warn!(
            "the previous process did not stop cleanly and the machine rebooted since: writes not synced may be \
             lost; this broker leads no partition it did not sync on every write until it is back in sync"
        );
    } else if !clean && recorded.is_some() {
        tracing::info!("the previous process did not stop cleanly (no reboot since: nothing reported was lost)");
    }
    Ok(BrokerRestart { unsynced_writes_lost, default_durability_always })
}

/// Records the machine's boot id as this broker's, once the controller
/// has the registration that reported how the previous process ended.
pub(crate) fn record_boot_id(data_dir: &Path) -> std::io::Result<()> {
    match read_boot_id(Path::new(KERNEL_BOOT_ID)) {
        Some(current) => write_boot_id(data_dir, &current),
        None => Ok(()),
    }
}

/// Written after every log closed at a graceful stop. A failure is logged
/// by the caller: the next start then reads as unclean, which is only
/// cautious.
pub(crate) fn mark_clean_stop(data_dir: &Path) -> std::io::Result<()> {
    let mut file = File::create(data_dir.join(CLEAN_STOP_FILE))?;
    file.write_all(CLEAN_STOP_CONTENT)?;
    file.sync_all()?;
    sync_dir(data_dir)
}

fn read_boot_id(path: &Path) -> Option<String> {
    let mut bytes = Vec::with_capacity(BOOT_ID_BYTES_MAX + 1);
    File::open(path).ok()?.take(BOOT_ID_BYTES_MAX as u64 + 1).read_to_end(&mut bytes).ok()?;
    if bytes.len() > BOOT_ID_BYTES_MAX {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// Replaced atomically (tmp, fsync, rename, fsync the directory), so a
/// crash leaves the old id or the new one, never a torn one.
fn write_boot_id(data_dir: &Path, boot_id: &str) -> std::io::Result<()> {
    assert!(!boot_id.is_empty() && boot_id.len() <= BOOT_ID_BYTES_MAX);
    let tmp = data_dir.join(BOOT_ID_TMP_FILE);
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{boot_id}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(BOOT_ID_FILE))?;
    sync_dir(data_dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/net-unit/clean-stop").join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn a_clean_stop_or_no_reboot_loses_nothing_and_an_unclean_reboot_does() {
        let d = dir("states");
        // First start: nothing recorded, nothing lost; once registered,
        // the boot id is this one.
        assert!(!on_start(&d, false).expect("start").unsynced_writes_lost);
        assert!(!d.join(BOOT_ID_FILE).exists(), "recorded only once registered");
        record_boot_id(&d).expect("record");
        let booted = std::fs::read_to_string(d.join(BOOT_ID_FILE)).expect("boot id recorded");
        assert_eq!(Some(booted.trim().to_string()), read_boot_id(Path::new(KERNEL_BOOT_ID)));
        // Killed (no marker), same boot: nothing reported was lost.
        assert!(!on_start(&d, false).expect("start").unsynced_writes_lost);
        // Killed, and the machine rebooted (another recorded id).
        std::fs::write(d.join(BOOT_ID_FILE), "00000000-0000-0000-0000-000000000000\n").expect("rewrite");
        let restart = on_start(&d, true).expect("start");
        assert!(restart.unsynced_writes_lost);
        assert!(restart.default_durability_always);
        // A start that fails before it registers leaves the old id: the
        // next start still knows of the reboot.
        assert!(on_start(&d, true).expect("start again").unsynced_writes_lost);
        // A graceful stop, then a reboot: clean.
        mark_clean_stop(&d).expect("mark");
        std::fs::write(d.join(BOOT_ID_FILE), "00000000-0000-0000-0000-000000000000\n").expect("rewrite");
        assert!(!on_start(&d, false).expect("start").unsynced_writes_lost);
        // The marker is consumed at start: a crash after it reads unclean.
        assert!(!d.join(CLEAN_STOP_FILE).exists());
        std::fs::write(d.join(BOOT_ID_FILE), "00000000-0000-0000-0000-000000000000\n").expect("rewrite");
        assert!(on_start(&d, false).expect("start").unsynced_writes_lost);
    }

    #[test]
    fn a_damaged_marker_or_boot_id_is_not_trusted() {
        let d = dir("damaged");
        on_start(&d, false).expect("first start");
        std::fs::write(d.join(CLEAN_STOP_FILE), b"").expect("empty marker");
        std::fs::write(d.join(BOOT_ID_FILE), "x".repeat(BOOT_ID_BYTES_MAX + 1)).expect("long id");
        // An unreadable recorded id counts as none (no reboot known).
        assert!(!on_start(&d, false).expect("start").unsynced_writes_lost);
        std::fs::write(d.join(CLEAN_STOP_FILE), b"").expect("empty marker");
        std::fs::write(d.join(BOOT_ID_FILE), "another-boot\n").expect("other id");
        assert!(on_start(&d, false).expect("start").unsynced_writes_lost, "an empty marker is no clean stop");
    }
}
