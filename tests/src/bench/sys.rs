//! What the bench reads from the system: external tools on `PATH` (failing with the package to
//! install), the core count, and per-process figures from `/proc` (resident memory, CPU time,
//! open file descriptors).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The external programs the bench drives, found once up front so a missing one fails before
/// anything starts.
#[derive(Debug, Clone)]
pub struct Tools {
    pub wrk: PathBuf,
    /// Paced load for latency at a fixed offered rate (`h2load.rs`).
    pub h2load: PathBuf,
    pub haproxy: PathBuf,
    pub nginx: PathBuf,
    pub taskset: PathBuf,
    pub envoy: PathBuf,
    pub vigil: PathBuf,
}

impl Tools {
    /// Finds every tool; the error lists all that are missing and how to get them.
    pub fn find() -> Result<Tools, String> {
        let mut missing = Vec::new();
        let mut find = |name: &str, package: &str| {
            find_program(name).unwrap_or_else(|| {
                missing.push(format!("`{name}` (Debian package {package})"));
                PathBuf::new()
            })
        };
        let wrk = find("wrk", "wrk");
        let h2load = find("h2load", "nghttp2-client");
        let haproxy = find("haproxy", "haproxy");
        let nginx = find("nginx", "nginx-light");
        let taskset = find("taskset", "util-linux");
        if !missing.is_empty() {
            return Err(format!(
                "the bench needs {}: run `./lab setup`, which installs them",
                missing.join(", ")
            ));
        }
        // These two panic with their own fix when missing (Envoy in .venv, vigil not built).
        let envoy = crate::paths::envoy_binary();
        let vigil = crate::paths::workspace_binary("vigil");
        Ok(Tools {
            wrk,
            h2load,
            haproxy,
            nginx,
            taskset,
            envoy,
            vigil,
        })
    }

    /// `taskset -c <cpu> <program>`: the program runs pinned, under the same PID (taskset execs).
    pub fn pinned(&self, cpu: usize, program: &Path) -> Command {
        let mut command = Command::new(&self.taskset);
        command.arg("-c").arg(cpu.to_string()).arg(program);
        command
    }
}

/// `name` on `PATH`, or in the sbin directories a non-root `PATH` often lacks (nginx, haproxy).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// CPU time `pid` has used so far, user plus system, in seconds (all its threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// utime + stime from a `/proc/PID/stat` line. The command name may hold spaces and parentheses,
/// so fields are counted from the last `)`: state is field 3, utime 14, stime 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `(busy, total)` jiffies of core `cpu` since boot, from `/proc/stat`: everything but idle and
/// iowait counts as busy, whoever ran. Two readings give the core's busy share in between.
pub fn core_jiffies(cpu: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_core_jiffies(&stat, cpu)
}

fn parse_core_jiffies(stat: &str, cpu: usize) -> Option<(u64, u64)> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name.as_str()))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already
    // counted in user, so only the first eight add up to the total.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Open file descriptors of `pid` (entries of `/proc/PID/fd`).
pub fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|dir| dir.count())
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), as text; other work on the machine
/// shows here and makes numbers noisy.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The output of a short command, trimmed; `None` if it fails (used for labels only).
pub fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tnginx\nVmPeak:\t  20000 kB\nVmRSS:\t   13264 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(13264));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_past_a_name_with_spaces_and_parens() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
    }

    #[test]
    fn reads_one_core_of_proc_stat() {
        let stat = "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 1 4 40 10 0 0 0 0 0\ncpu1 50 0 20 30 0 0 0 0 7 0\nintr 1\n";
        assert_eq!(parse_core_jiffies(stat, 0), Some((10, 60)));
        assert_eq!(parse_core_jiffies(stat, 1), Some((70, 100)));
        assert_eq!(parse_core_jiffies(stat, 2), None);
        assert!(core_jiffies(0).is_some_and(|(busy, total)| busy <= total));
    }

    #[test]
    fn measures_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(cpu_seconds(pid).is_some());
        assert!(fd_count(pid).is_some_and(|n| n >= 3));
    }
}
