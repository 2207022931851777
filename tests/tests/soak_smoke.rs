//! The soak (`./lab soak`, `tests/src/soak.rs`) in CI's short form: the same code for 20 s, with
//! RSS sampled every 2 s and blue's `/livez` failing 3 s of every 6 s. The report must be sane:
//! both proxies carried requests, vigil's clients saw no error (blue keeps answering `/` while
//! its check fails), RSS was sampled throughout, vigil ejected blue at least once, and the
//! verdict passes.

use std::time::Duration;
use vigil_tests::paths;
use vigil_tests::progress::Progress;
use vigil_tests::soak::{self, SoakOptions};

#[tokio::test]
async fn a_short_soak_reports_sanely() {
    let dir = paths::scratch_dir("soak-smoke");
    let mut options = SoakOptions::new(Duration::from_secs(20), 4);
    options.sample_every = Duration::from_secs(2);
    options.toggle_every = Duration::from_secs(6);
    options.report_every = Duration::from_secs(5);
    let progress = Progress::new("soak", 2, Some(options.duration));
    progress.step("starting");
    let report = soak::run(&options, &dir, &progress)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let rendered = report.render();
    println!("{rendered}");

    let names: Vec<&str> = report.proxies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["vigil", "envoy"], "{rendered}");
    for proxy in &report.proxies {
        assert!(proxy.load.requests() > 1000, "{}: {rendered}", proxy.name);
        // One sample every 2 s over 20 s, each a plausible resident size.
        assert!(proxy.rss.len() >= 9, "{}: {:?}", proxy.name, proxy.rss);
        assert!(
            proxy
                .rss
                .iter()
                .all(|(_, kib)| (1024..4 * 1024 * 1024).contains(kib)),
            "{}: {:?}",
            proxy.name,
            proxy.rss
        );
        assert!(proxy.rss_summary(&report.options).is_some(), "{rendered}");
    }
    assert!(report.toggles >= 3, "{rendered}");
    let vigil = report.vigil().unwrap();
    assert_eq!(vigil.load.errors(), 0, "{rendered}");
    assert!(vigil.ejections >= 1, "vigil never ejected blue: {rendered}");
    assert!(report.verdict().pass, "{rendered}");
    assert!(rendered.contains("verdict: PASS"), "{rendered}");
}
