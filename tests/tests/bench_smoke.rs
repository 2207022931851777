//! A smoke run of `vigil-bench`: every proxy under test must serve through a real wrk run with
//! nonzero throughput and no errors, every mode of the wasm filter's benchmark must serve with
//! the filter actually routing and observing, both probers must check every host of a small
//! cluster, and a one-Envoy fleet must stop reaching a failed app in both EDS setups (own checks,
//! vigil's EDS), and ten simulated xDS clients plus a real Envoy must all receive one host's
//! transition, in both xDS variants, with the simulation agreeing with the Envoy. The proxy rows
//! run the default `--features full` configs (routes, retries, health checks on the path). A
//! second test runs the HTTP/2 benchmark (`--only proxy-h2`): h2c and gRPC unary calls through
//! every proxy, without errors, with the CPU readings its validity check needs. It fails (never
//! skips) when wrk, h2load, haproxy or nginx are missing (`./lab setup` installs them) or the filter is
//! not built (`./lab build`).

use std::process::Command;

#[test]
fn quick_bench_reports_every_proxy_and_prober() {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil-bench"))
        .args([
            "--quick",
            "--duration",
            "1s",
            "--warmup",
            "0",
            "--hosts",
            "20",
            "--hc-warmup",
            "2s",
            "--hc-window",
            "2s",
            "--eds-fleets",
            "1",
            "--eds-warmup",
            "0",
            "--eds-window",
            "2s",
            "--fleet-clients",
            "10",
            "--fleet-changes",
            "1",
            "--fleet-clusters",
            "10",
            "--fleet-hosts",
            "10",
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
    // Off a terminal, progress is one line per measured run on stderr, the last one [n/n].
    let steps: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("bench ["))
        .collect();
    let last = steps
        .last()
        .and_then(|l| l.strip_prefix("bench ["))
        .and_then(|l| l.split(']').next())
        .and_then(|l| l.split_once('/'))
        .unwrap_or_else(|| panic!("no progress lines\n{stderr}"));
    assert_eq!(last.0, last.1, "the last step is not the total\n{stderr}");
    assert_eq!(
        steps.len().to_string(),
        last.1,
        "one line per step\n{stderr}"
    );
    assert!(
        !stderr.contains('\r'),
        "no redrawn status line off a terminal\n{stderr}"
    );
    let cells = |row: &str| -> Vec<String> {
        row.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    for proxy in ["vigil", "envoy", "haproxy", "nginx"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {proxy} | 32 |")))
            .unwrap_or_else(|| panic!("no -c32 row for {proxy}\n{stdout}"));
        let cells = cells(row);
        let rps: f64 = cells[2]
            .trim_end_matches('k')
            .parse()
            .unwrap_or_else(|_| panic!("bad req/s in `{row}`"));
        assert!(rps > 0.0, "{proxy} served nothing: `{row}`");
        assert_eq!(cells[6], "0", "{proxy} had errors: `{row}`");
    }
    let filter = stdout
        .split("## The wasm filter's cost")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_else(|| panic!("no filter section\n{stdout}"));
    for (mode, host_calls) in [
        ("no filter", "0"),
        ("idle filter", "0"),
        ("observe", "3"),
        ("route", "2"),
        ("route (cluster rule)", "2"),
        ("observe+route", "4"),
    ] {
        let row = filter
            .lines()
            .find(|l| l.starts_with(&format!("| {mode} | 32 |")))
            .unwrap_or_else(|| panic!("no -c32 row for the filter mode {mode}\n{stdout}"));
        let cells = cells(row);
        assert_eq!(cells[2], host_calls, "{mode}: `{row}`");
        let rps: f64 = cells[3]
            .trim_end_matches('k')
            .parse()
            .unwrap_or_else(|_| panic!("bad req/s in `{row}`"));
        assert!(rps > 0.0, "{mode} served nothing: `{row}`");
        assert!(
            cells[6].ends_with(" us"),
            "{mode}: no CPU per request: `{row}`"
        );
        assert_eq!(cells[7], "0", "{mode} had errors: `{row}`");
        let compared = mode != "no filter";
        assert_eq!(cells[8].ends_with(" %"), compared, "{mode}: `{row}`");
        assert_eq!(cells[10].ends_with(" ms"), compared, "{mode}: `{row}`");
    }
    // The filter did its work on the measured requests: its rule routed them (no fallback: the
    // singleton had found the upstream healthy) and it observed them.
    let activity = filter
        .lines()
        .find(|l| l.starts_with("The filter's own counters"))
        .unwrap_or_else(|| panic!("no filter activity line\n{stdout}"));
    let numbers: Vec<u64> = activity
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        matches!(numbers[..], [routed, 0, observed, _] if routed > 0 && observed > 0),
        "`{activity}`"
    );
    // Both fixed-rate sections: every proxy and every filter mode served the paced load
    // without errors, and its p99 is a latency.
    let throughput = stdout
        .split("## Proxy throughput")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_else(|| panic!("no proxy section\n{stdout}"));
    for (section, paths) in [
        (throughput, &["vigil", "envoy", "haproxy", "nginx"][..]),
        (
            filter,
            &[
                "no filter",
                "minimal module (floor)",
                "idle filter",
                "observe+route",
            ][..],
        ),
    ] {
        let paced = section
            .split("### At a fixed offered rate")
            .nth(1)
            .unwrap_or_else(|| panic!("no fixed-rate section\n{stdout}"));
        for path in paths {
            let row = paced
                .lines()
                .find(|l| l.starts_with(&format!("| {path} |")))
                .unwrap_or_else(|| panic!("no fixed-rate row for {path}\n{stdout}"));
            let cells = cells(row);
            let achieved: f64 = cells[1].parse().unwrap_or(0.0);
            assert!(
                achieved > 0.0,
                "{path} served nothing at the fixed rate: `{row}`"
            );
            assert!(cells[3].ends_with(" ms"), "{path}: no p99: `{row}`");
            assert_eq!(
                cells[5], "0",
                "{path} had errors at the fixed rate: `{row}`"
            );
        }
    }
    let health = stdout
        .split("## Health checking at scale")
        .nth(1)
        .unwrap_or_else(|| panic!("no health-check section\n{stdout}"));
    for prober in ["vigil", "envoy"] {
        let row = health
            .lines()
            .find(|l| l.starts_with(&format!("| {prober} |")))
            .unwrap_or_else(|| panic!("no health-check row for {prober}\n{stdout}"));
        let cells = cells(row);
        assert!(
            cells[1].ends_with(" s"),
            "{prober} was not ready in time: `{row}`"
        );
        assert_eq!(
            cells[9], "20 / 20",
            "{prober} did not find every host healthy: `{row}`"
        );
        let probes: f64 = cells[2].parse().unwrap_or(0.0);
        // 20 hosts at 1 s: about 20 probes/s; a prober that stopped checking shows far fewer.
        assert!(probes >= 10.0, "{prober} probed too little: `{row}`");
    }
    let eds = stdout
        .split("## Central health for Envoy fleets (EDS)")
        .nth(1)
        .unwrap_or_else(|| panic!("no EDS section\n{stdout}"));
    for setup in ["(a) own checks", "(b) EDS from vigil"] {
        let row = eds
            .lines()
            .find(|l| l.starts_with(&format!("| 1 | {setup} |")))
            .unwrap_or_else(|| panic!("no EDS row for one Envoy, {setup}\n{stdout}"));
        let cells = cells(row);
        // One prober checking two apps every second: 2 probes/s, give or take a check at either
        // end of the 2 s window.
        let probes: f64 = cells[2].parse().unwrap_or(-1.0);
        assert!(
            (1.0..=3.0).contains(&probes),
            "{setup}: the apps saw the wrong probe rate: `{row}`"
        );
        assert_eq!(cells[3], "2", "{setup}: `{row}`");
        // A failed check ejects at once: one 1 s interval plus the round trip, with slack for a
        // busy machine.
        let last: f64 = cells[5]
            .trim_end_matches(" s")
            .parse()
            .unwrap_or_else(|_| panic!("bad fault time in `{row}`"));
        assert!(
            (0.0..5.0).contains(&last),
            "{setup}: the Envoy kept reaching the failed app: `{row}`"
        );
        assert_eq!(cells[6], "0.00 s", "one Envoy has no spread: `{row}`");
    }
    let fleet = stdout
        .split("## Fleet scale (simulated xDS clients)")
        .nth(1)
        .unwrap_or_else(|| panic!("no fleet section\n{stdout}"));
    for mode in ["SotW", "delta"] {
        let row = fleet
            .lines()
            .find(|l| l.starts_with(&format!("| {mode} | 10 |")))
            .unwrap_or_else(|| panic!("no fleet row for 10 clients on {mode}\n{stdout}"));
        let cells = cells(row);
        let last: f64 = cells[5]
            .trim_end_matches(" ms")
            .parse()
            .unwrap_or_else(|_| panic!("bad max latency in `{row}`"));
        // One transition reaches ten clients on loopback well within a few seconds, even on a
        // busy CI machine with debug builds.
        assert!((0.0..5000.0).contains(&last), "{mode}: `{row}`");
        let bytes: f64 = cells[7].parse().unwrap_or(0.0);
        assert!(bytes > 0.0, "{mode}: no bytes per client: `{row}`");
        assert_eq!(
            cells[12], "1 agree",
            "{mode}: the simulation and the Envoy differ: `{row}`"
        );
    }
}

#[test]
fn h2_bench_reports_h2c_and_grpc_through_every_proxy() {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil-bench"))
        .args([
            "--only",
            "proxy-h2",
            "--rounds",
            "1",
            "--duration",
            "1s",
            "--warmup",
            "0",
            "--h2-connections",
            "4",
            "--h2-streams",
            "4",
            "--out",
            "/dev/null",
        ])
        .output()
        .expect("vigil-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "vigil-bench --only proxy-h2 failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    let section = stdout
        .split("## HTTP/2: h2c and gRPC unary")
        .nth(1)
        .unwrap_or_else(|| panic!("no HTTP/2 section\n{stdout}"));
    for workload in ["h2c GET", "gRPC unary"] {
        for proxy in ["vigil", "envoy", "haproxy", "nginx"] {
            let row = section
                .lines()
                .find(|l| l.starts_with(&format!("| {workload} | {proxy} |")))
                .unwrap_or_else(|| panic!("no {workload} row for {proxy}\n{stdout}"));
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            let rps: f64 = cells[2]
                .trim_end_matches('k')
                .parse()
                .unwrap_or_else(|_| panic!("bad req/s in `{row}`"));
            assert!(rps > 0.0, "{proxy} served nothing: `{row}`");
            assert_eq!(cells[3], "0", "{proxy} had errors: `{row}`");
            // The validity check's inputs were read (their verdict depends on the machine).
            for cell in &cells[6..=8] {
                assert!(cell.ends_with(" %"), "{proxy}: no CPU reading: `{row}`");
            }
        }
    }
}
