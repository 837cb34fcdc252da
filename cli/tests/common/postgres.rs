//! A real PostgreSQL server for a test, from Debian's `postgresql`
//! package (`initdb`, `pg_ctl`): a fresh cluster in the test's directory,
//! trust authentication on 127.0.0.1 and a free port, its unix socket in
//! the same directory, stopped when dropped (a failing test too).
//! PostgreSQL refuses to run as root, and tests run as root in CI: then
//! the server runs as the `postgres` system user (or `nobody`), which owns
//! the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::free_port_below_ephemeral;

/// The database user every test connects as (trust: no password).
pub const USER: &str = "spate";

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// The user the server runs as when the test runs as root.
    run_as: Option<String>,
    /// The server's options (port, listen address, socket directory).
    options: String,
}

/// The newest installed server's bin directory, or a failure that says
/// how to install one: a missing server must not pass as a skipped test.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb), and this test starts a real \
             server. Install Debian's package: apt-get install -y postgresql (compat/install.sh does it for \
             ./test and CI)."
        ),
    }
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn user_exists(name: &str) -> bool {
    Command::new("getent").args(["passwd", name]).output().is_ok_and(|out| out.status.success())
}

fn check(what: &str, output: std::io::Result<Output>, log: Option<&Path>) -> Output {
    let output = output.unwrap_or_else(|e| panic!("{what}: {e}"));
    if !output.status.success() {
        let log = log.map(|l| std::fs::read_to_string(l).unwrap_or_default()).unwrap_or_default();
        panic!(
            "{what} failed ({}):\n{}\n{}\n{log}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

impl Postgres {
    /// A new cluster in `dir` (made anew), started and ready.
    pub fn start(dir: &Path) -> Postgres {
        let bin = bin_dir();
        let run_as = running_as_root()
            .then(|| if user_exists("postgres") { "postgres".to_string() } else { "nobody".to_string() });
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("postgres dir");
        if let Some(user) = &run_as {
            check(
                "chown of the PostgreSQL directory",
                Command::new("chown").args(["-R", user]).arg(dir).output(),
                None,
            );
        }
        let mut postgres =
            Postgres { port: free_port_below_ephemeral(), dir: dir.to_path_buf(), bin, run_as, options: String::new() };
        let data = postgres.data();
        check(
            "initdb",
            postgres
                .command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
                .output(),
            None,
        );
        // fsync=off: the tests crash the server process, never the machine,
        // and the kernel keeps what was written. synchronous_commit stays
        // on: off, a crash loses commits the client was told about.
        // The socket path must fit a sockaddr_un (107 bytes); a deep
        // checkout gets no socket (the tests use TCP).
        let socket_dir = if dir.as_os_str().len() < 80 { dir.display().to_string() } else { String::new() };
        postgres.options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{socket_dir}' -c fsync=off \
             -c full_page_writes=off",
            postgres.port
        );
        postgres.pg_ctl_start();
        postgres
    }

    fn pg_ctl_start(&self) {
        let log = self.dir.join("postgres.log");
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "30", "-o", &self.options, "start"])
            .output();
        check("pg_ctl start", output, Some(&log));
    }

    /// Kills the server as a crash would (immediate shutdown: every
    /// connection cut, no checkpoint), keeps it down for `down`, and
    /// starts it again on the same port.
    pub fn crash_and_restart(&self, down: std::time::Duration) {
        let output = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]).output();
        check("pg_ctl stop", output, None);
        std::thread::sleep(down);
        self.pg_ctl_start();
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// One of the server's programs, as the user the server runs as.
    fn command(&self, program: &str) -> Command {
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(self.bin.join(program));
                command
            }
            None => Command::new(self.bin.join(program)),
        }
    }

    /// `connection.url` for a connector.
    pub fn url(&self) -> String {
        format!("postgresql://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` with psql; its rows, one a line, columns split by `|`.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|error| panic!("psql {sql:?}: {error}"))
    }

    /// As `psql`, with the server's error as Err (a table not there yet).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", USER, "-d", "postgres"])
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: nothing of a test's database needs to survive.
        let _ = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]).output();
    }
}
