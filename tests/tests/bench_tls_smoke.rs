//! A smoke run of `vigil-bench --only tls`: every proxy under test must complete full TLS
//! handshakes (each with its one request) and serve keep-alive requests over TLS and in plain
//! text through real wrk runs, all without errors, and the report must give the goals their
//! ratios. It fails (never skips) when wrk, h2load, haproxy or nginx are missing (`./lab setup`
//! installs them) or vigil is not built.

use std::process::Command;

const PROXIES: [&str; 4] = ["vigil", "envoy", "haproxy", "nginx"];

#[test]
fn tls_bench_serves_handshakes_and_keep_alive_on_every_proxy() {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil-bench"))
        .args([
            "--only",
            "tls",
            "--quick",
            "--duration",
            "1s",
            "--warmup",
            "0",
        ])
        .output()
        .expect("vigil-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "vigil-bench failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // One progress line per measured run: per proxy a plain and a TLS wrk run, one handshake run.
    let steps = stderr.lines().filter(|l| l.starts_with("bench [")).count();
    assert_eq!(steps, 3 * PROXIES.len(), "steps\n{stderr}");
    assert!(
        !stdout.contains("## Proxy throughput"),
        "--only tls ran the proxy benchmark too\n{stdout}"
    );
    let tls = stdout
        .split("## TLS termination")
        .nth(1)
        .unwrap_or_else(|| panic!("no TLS section\n{stdout}"));
    let table = |title: &str| -> &str {
        tls.split(title)
            .nth(1)
            // Up to the next heading, whatever its level.
            .and_then(|rest| rest.split("\n#").next())
            .unwrap_or_else(|| panic!("no `{title}` table\n{stdout}"))
    };
    let split = |row: &str| -> Vec<String> {
        row.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let number = |cell: &str| -> f64 {
        cell.trim_end_matches('k')
            .parse()
            .unwrap_or_else(|_| panic!("not a number: `{cell}`"))
    };
    let handshakes = table("### Full handshakes");
    let keep_alive = table("### Keep-alive requests over TLS");
    for proxy in PROXIES {
        let row = handshakes
            .lines()
            .find(|l| l.starts_with(&format!("| {proxy} |")))
            .unwrap_or_else(|| panic!("no handshake row for {proxy}\n{stdout}"));
        let cells = split(row);
        assert!(
            number(&cells[1]) > 0.0,
            "{proxy} completed no handshake: `{row}`"
        );
        assert!(
            cells[3].ends_with(" ms") || cells[3].ends_with(" us"),
            "no p99: `{row}`"
        );
        assert!(
            cells[6].ends_with(" us"),
            "{proxy}: no CPU per handshake: `{row}`"
        );
        assert_eq!(cells[10], "0", "{proxy} had handshake errors: `{row}`");

        let row = keep_alive
            .lines()
            .find(|l| l.starts_with(&format!("| {proxy} | 32 |")))
            .unwrap_or_else(|| panic!("no keep-alive row for {proxy}\n{stdout}"));
        let cells = split(row);
        assert!(
            number(&cells[2]) > 0.0,
            "{proxy} served nothing over TLS: `{row}`"
        );
        assert!(
            number(&cells[4]) > 0.0,
            "{proxy} served nothing in plain text: `{row}`"
        );
        assert!(
            cells[7].ends_with(" us"),
            "{proxy}: no CPU per request: `{row}`"
        );
        assert_eq!(cells[8], "0", "{proxy} had keep-alive errors: `{row}`");
        assert!(
            cells[10].ends_with('x'),
            "{proxy}: no ratio to HAProxy: `{row}`"
        );
    }
    let goals = table("### Goals");
    assert_eq!(
        goals.lines().filter(|l| l.starts_with("- ")).count(),
        4,
        "two handshake goals and two keep-alive goals at -c32\n{goals}"
    );
    assert!(!goals.contains("not measured"), "{goals}");
}
