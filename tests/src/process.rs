//! Spawned processes owned by guards.
//!
//! A [`Child`] writes its stdout and stderr to files in a scratch directory, is stopped when the
//! guard drops (SIGTERM, then SIGKILL after a grace period), also when the test panics, and dies
//! with the harness if the harness itself is killed (`PR_SET_PDEATHSIG`). When a guard drops
//! during a panic it prints the tail of its logs, so a failing test shows what its processes said.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child exits, so spawn from a thread
//! that lives as long as the child: the test's own thread, or the main thread of a
//! current-thread runtime (never from `spawn_blocking`).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A running child process, stopped when dropped.
pub struct Child {
    name: String,
    process: std::process::Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Child {
    /// Spawns `command`, logging to `<dir>/<name>.out` and `<dir>/<name>.err`.
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Child {
        let stdout_path = dir.join(format!("{name}.out"));
        let stderr_path = dir.join(format!("{name}.err"));
        let open = |path: &Path| {
            File::create(path)
                .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()))
        };
        command
            .stdin(Stdio::null())
            .stdout(open(&stdout_path))
            .stderr(open(&stderr_path));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name} ({command:?}): {err}"));
        Child {
            name: name.to_string(),
            process,
            stdout_path,
            stderr_path,
            exited: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.process.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits until stdout contains `needle`; fails early if the process exits first.
    pub async fn wait_for_stdout(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.stdout();
            if out.contains(needle) {
                return Ok(out);
            }
            if let Some(status) = self.try_exit_status() {
                return Err(format!(
                    "{} exited ({status}) before printing `{needle}`\n{}",
                    self.name,
                    self.log_tail(40)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not print `{needle}` within {timeout:?}\n{}",
                    self.name,
                    self.log_tail(40)
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends `signal` to the process (only ever to this child's own PID).
    pub fn signal(&self, signal: libc::c_int) {
        if self.exited.is_none() {
            // SAFETY: kill(2) with the PID of a child we own and have not reaped.
            unsafe {
                libc::kill(self.process.id() as libc::pid_t, signal);
            }
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after a grace period. Returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.try_exit_status() {
            return Some(status);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.process.kill();
        self.exited = self.process.wait().ok();
        self.exited
    }

    /// The last `lines` lines of stdout and stderr, labelled, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |text: String| {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        format!(
            "----- {} stdout ({}) -----\n{}\n----- {} stderr ({}) -----\n{}",
            self.name,
            self.stdout_path.display(),
            tail(self.stdout()),
            self.name,
            self.stderr_path.display(),
            tail(self.stderr())
        )
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
    }
}
