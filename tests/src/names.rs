//! Private name resolution for spawned processes.
//!
//! A process that resolves names (Envoy's STRICT_DNS cluster resolving `myservice`) runs under
//! `unshare -m` with its own `/etc/hosts` and `/etc/resolv.conf` bind-mounted over the machine's,
//! inside a private mount namespace: the machine's files are never modified and its DNS server is
//! never asked (the private resolv.conf points at 127.0.0.1, where nothing of ours answers unless
//! a test runs a DNS server there).
//!
//! Rewrite the hosts file with [`Names::set_hosts`], which writes in place: a bind mount pins the
//! inode, so a rename-over would leave the process reading the old file.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A hosts file and resolv.conf for processes started with [`Names::command`].
pub struct Names {
    hosts_path: PathBuf,
    resolv_path: PathBuf,
}

impl Names {
    /// Creates the files in `dir`, with `entries` (name, address) in the hosts file.
    pub fn new(dir: &Path, entries: &[(&str, Ipv4Addr)]) -> Names {
        let names = Names {
            hosts_path: dir.join("hosts"),
            resolv_path: dir.join("resolv.conf"),
        };
        names.set_hosts(entries);
        write_file(
            &names.resolv_path,
            "# private resolv.conf: nothing leaves loopback\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        );
        names
    }

    /// Rewrites the hosts file in place with `localhost` plus `entries`.
    pub fn set_hosts(&self, entries: &[(&str, Ipv4Addr)]) {
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (name, ip) in entries {
            text.push_str(&format!("{ip} {name}\n"));
        }
        write_file(&self.hosts_path, &text);
    }

    pub fn hosts_path(&self) -> &Path {
        &self.hosts_path
    }

    /// A command that runs `program args...` with these files mounted as /etc/hosts and
    /// /etc/resolv.conf. `unshare` and `sh` both exec, so the PID is the program's own.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("unshare");
        command
            .arg("--mount")
            .arg("--propagation")
            .arg("private")
            .arg("sh")
            .arg("-c")
            .arg(r#"mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift 2 && exec "$@""#)
            .arg(&self.hosts_path)
            .arg(&self.resolv_path)
            .arg("--")
            .arg(program);
        command
    }
}

fn write_file(path: &Path, text: &str) {
    // Truncate and write the same inode (see the module doc).
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(err) = result {
        panic!("cannot write {}: {err}", path.display());
    }
}
