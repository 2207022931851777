//! The real `demoapp` binary: startup line, serving, signals, bind errors, environment.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A demoapp process, killed on drop if a test fails midway.
struct Demoapp {
    child: Child,
}

impl Drop for Demoapp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn demoapp() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_demoapp"));
    command
        .env_remove("HOST")
        .env_remove("PORT")
        .env_remove("DEPLOYENV")
        .env_remove("RELEASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

impl Demoapp {
    /// Spawns the binary and waits for its startup line.
    fn start(mut command: Command) -> (Demoapp, String) {
        let mut child = command.spawn().expect("spawn demoapp");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, line) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = lines.send(first);
            // Keep draining so the child never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let app = Demoapp { child };
        let line = line.recv_timeout(TIMEOUT).expect("no startup line in time");
        (app, line.trim_end().to_string())
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait(&mut self) -> ExitStatus {
        wait_with_timeout(&mut self.child)
    }
}

fn wait_with_timeout(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "demoapp did not exit in time");
        thread::sleep(Duration::from_millis(20));
    }
}

/// `key=value` from the startup line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|part| part.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

fn body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("")
}

#[test]
fn prints_the_startup_line_serves_and_exits_0_on_sigterm() {
    let mut command = demoapp();
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--tcp-listen",
        "127.0.0.1:0",
        "--name",
        "blue",
        "--livez-delay",
        "0",
    ]);
    command.env("DEPLOYENV", "lab");
    let (mut app, line) = Demoapp::start(command);
    assert!(
        line.starts_with("demoapp listening http=127.0.0.1:"),
        "{line}"
    );
    assert!(line.ends_with(" name=blue"), "{line}");
    let http: SocketAddr = field(&line, "http").parse().unwrap();
    let grpc: SocketAddr = field(&line, "grpc").parse().unwrap();
    let tcp: SocketAddr = field(&line, "tcp").parse().unwrap();
    assert_ne!(http.port(), 0);
    assert_ne!(grpc.port(), 0);

    let root = http_get(http, "/");
    assert!(root.starts_with("HTTP/1.1 200"), "{root}");
    assert_eq!(
        body(&root),
        "demoapp v1.0 !! ClientIP: 127.0.0.1, ServerName: blue, ServerIP: 127.0.0.1!\n"
    );
    assert_eq!(
        body(&http_get(http, "/configs")),
        "DEPLOYENV: lab\nRELEASE: None\n"
    );
    assert_eq!(body(&http_get(http, "/livez")), "OK");

    let mut tcp_stream = TcpStream::connect_timeout(&tcp, TIMEOUT).unwrap();
    tcp_stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp_stream.write_all(b"ping").unwrap();
    let mut pong = [0u8; 4];
    tcp_stream.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"pong");
    drop(tcp_stream);

    app.signal("TERM");
    let status = app.wait();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn exits_0_on_sigint_with_defaults_and_no_optional_listeners() {
    let mut command = demoapp();
    command.args(["--listen", "127.0.0.1:0"]);
    let (mut app, line) = Demoapp::start(command);
    assert!(line.contains(" grpc=- tcp=- name="), "{line}");
    // The default name is the machine's hostname.
    let name = field(&line, "name");
    assert!(!name.is_empty());
    let http: SocketAddr = field(&line, "http").parse().unwrap();
    assert_eq!(
        body(&http_get(http, "/hostname")),
        format!("ServerName: {name}\n")
    );

    app.signal("INT");
    assert_eq!(app.wait().code(), Some(0));
}

#[test]
fn host_and_port_come_from_flags_or_the_environment() {
    let free_port = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let port = free_port();
    let mut command = demoapp();
    command
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string());
    let (mut app, line) = Demoapp::start(command);
    assert_eq!(field(&line, "http"), format!("127.0.0.1:{port}"));
    app.signal("TERM");
    assert_eq!(app.wait().code(), Some(0));

    // Flags win over the environment; -h is --host.
    let port = free_port();
    let mut command = demoapp();
    command.env("HOST", "not-an-ip").env("PORT", "bogus").args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]);
    let (mut app, line) = Demoapp::start(command);
    assert_eq!(field(&line, "http"), format!("127.0.0.1:{port}"));
    app.signal("TERM");
    assert_eq!(app.wait().code(), Some(0));
}

#[test]
fn a_busy_address_is_a_clear_error_and_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let output = demoapp()
        .args(["--listen", "127.0.0.1:0", "--tcp-listen", &addr.to_string()])
        .output()
        .expect("run demoapp");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
    assert!(stderr.contains("tcp"), "{stderr}");
    assert!(output.stdout.is_empty(), "no startup line on failure");
}

#[test]
fn bad_flag_values_are_usage_errors() {
    for args in [
        &["--livez-delay", "-1"][..],
        &["--livez-delay", "soon"],
        &["--tcp-reply-hex", "xyz"],
        &["--listen", "localhost:80"],
        &["--grpc-listen", "127.0.0.1"],
    ] {
        let output = demoapp().args(args).output().expect("run demoapp");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
    let help = demoapp().arg("--help").output().expect("run demoapp");
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("-h, --host"), "{help}");
}
