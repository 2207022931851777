//! A private network namespace for one test: the calling thread leaves the machine's network
//! (`unshare(CLONE_NEWNET)`), so the processes it spawns afterwards ([`crate::process::Child`]
//! inherit the spawning thread's namespaces), the sockets it opens, and the NAT rules it installs
//! ([`PrivateNetwork::redirect`]) live in a namespace of their own, with only a loopback
//! interface. Nothing there touches the machine's interfaces or tables, and the namespace goes
//! away with the last thread and process in it: the test's guards (killed by PID) are the
//! teardown.
//!
//! Run a test that uses it on a current-thread runtime (`#[tokio::test]`), entering first thing:
//! the runtime's tasks then run on the thread that entered. Creating a network namespace needs
//! `CAP_SYS_ADMIN`; without it [`PrivateNetwork::enter`] fails with the reason, and the test
//! fails loudly rather than skipping.

use std::net::Ipv4Addr;
use std::process::Command;

/// The calling thread's private network namespace (see the module docs).
pub struct PrivateNetwork {
    /// The machine's namespace (its `/proc` inode), which no rule may ever be installed in.
    machine: u64,
}

impl PrivateNetwork {
    /// Moves the calling thread into a new network namespace and brings its loopback up
    /// (127.0.0.0/8 is all local on it).
    pub fn enter() -> Result<PrivateNetwork, String> {
        let machine = current_namespace()?;
        // SAFETY: unshare takes no pointers; CLONE_NEWNET alone changes only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot create a network namespace (unshare(CLONE_NEWNET): {}); this test needs \
                 CAP_SYS_ADMIN (run it as root or in a container that allows namespaces)",
                std::io::Error::last_os_error()
            ));
        }
        let network = PrivateNetwork { machine };
        network.check_private()?;
        network.run("ip", &["link", "set", "lo", "up"])?;
        Ok(network)
    }

    /// iptables NAT: TCP from `source` to `destination` (any port) goes to `to_port` on the
    /// loopback (`REDIRECT` in `OUTPUT`, where locally made connections are translated).
    pub fn redirect(
        &self,
        source: Ipv4Addr,
        destination: Ipv4Addr,
        to_port: u16,
    ) -> Result<(), String> {
        let (source, destination, to_port) = (
            format!("{source}/32"),
            format!("{destination}/32"),
            to_port.to_string(),
        );
        let args = [
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-s",
            &source,
            "-d",
            &destination,
            "-j",
            "REDIRECT",
            "--to-ports",
            &to_port,
        ];
        self.run("iptables", &args)
    }

    /// Runs `program` in the namespace, to completion; an error says what it printed.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        self.check_private()?;
        let output = Command::new(program)
            .args(args)
            .output()
            .map_err(|err| format!("cannot run {program}: {err}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }

    /// A guard before every command: the thread is still in its private namespace.
    fn check_private(&self) -> Result<(), String> {
        if current_namespace()? == self.machine {
            return Err("still in the machine's network namespace: refusing to go on".into());
        }
        Ok(())
    }
}

/// The calling thread's network namespace, by inode.
fn current_namespace() -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let path = "/proc/thread-self/ns/net";
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|err| format!("cannot read {path}: {err}"))
}
