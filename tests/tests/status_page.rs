//! The admin status page in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `./lab setup`; the test fails, never skips, without them)
//! opens `GET /` of a running vigil (blue and yellow, checked every 2 s), and:
//!
//! 1. the page shows both hosts healthy, each with its last check;
//! 2. a marker is set on `window`; blue's `/livez` fails; blue's new state
//!    (`/failed_active_hc`, its last check `failure (ACTIVE)`) is in the DOM within two check
//!    intervals, with the marker still set: the page updated itself, it was not reloaded;
//! 3. vigil reloads a config adding an endpoint whose `hostname` is
//!    `<img src=x onerror=window.pwned=1>`: the live-updated page shows that name as text,
//!    has no `img` element, and `window.pwned` stays undefined.
//!
//! The same page's headers are checked over plain HTTP (the command list for `curl`, the page
//! with `Content-Security-Policy: default-src 'self'` for a browser), and `/status.json`, which
//! the page polls, shows each host's last check.

use std::time::{Duration, Instant};
use vigil_tests::demoapp::DemoApp;
use vigil_tests::status_page::{StatusLab, wait_row};
use vigil_tests::webdriver::Browser;
use vigil_tests::{http, paths};

const INTERVAL: Duration = Duration::from_secs(2);
const PAYLOAD: &str = "<img src=x onerror=window.pwned=1>";

#[tokio::test]
async fn the_status_page_updates_live_and_prints_names_as_text() {
    let started = Instant::now();
    let dir = paths::scratch_dir("status-page");
    let lab = StatusLab::start(&dir, INTERVAL).await.unwrap();
    let admin = lab.vigil.admin;

    // curl keeps the command list; a browser gets the page, with its policy.
    let plain = http::get(admin, "/").await.unwrap();
    assert!(
        plain.body.starts_with("admin commands are:"),
        "{}",
        plain.body
    );
    let page = http::request(admin, "GET", "/", &[("accept", "text/html")], "")
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        page.headers["content-security-policy"],
        "default-src 'self'"
    );
    assert!(
        page.body.contains("<main id=\"clusters\">"),
        "{}",
        page.body
    );

    let browser = Browser::start(&dir, 1280, 800).await.unwrap();
    browser.navigate(&lab.page_url()).await.unwrap();
    let wait = Duration::from_secs(15);
    for app in [lab.blue.http, lab.yellow.http] {
        let row = wait_row(&browser, app, "a healthy, checked host", wait, |row| {
            row.flags == "healthy" && row.text.contains("passed")
        })
        .await
        .unwrap();
        assert!(row.text.contains(" ms"), "the latency is shown: {row:?}");
    }

    // What the page polls: vigil's /status.json, with each host's last check.
    let status = http::get(admin, "/status.json").await.unwrap();
    assert_eq!(status.headers["content-type"], "application/json");
    let status: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    let blue = status["clusters"][0]["hosts"]
        .as_array()
        .and_then(|hosts| {
            hosts
                .iter()
                .find(|host| host["address"] == lab.blue.http.to_string())
        })
        .cloned()
        .unwrap_or_else(|| panic!("blue in /status.json: {status:#}"));
    assert_eq!(blue["hostname"], "blue", "{blue:#}");
    assert_eq!(blue["last_check"]["passed"], true, "{blue:#}");
    assert!(
        blue["last_check"]["latency_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0 && ms < 1000.0),
        "{blue:#}"
    );

    let marked = browser
        .execute("window.vigilMarker = 'set before the fault'; return window.vigilMarker;")
        .await
        .unwrap();
    assert_eq!(marked, "set before the fault");
    lab.blue.set_livez("FAIL").await.unwrap();
    let fault = Instant::now();
    let row = wait_row(
        &browser,
        lab.blue.http,
        "blue failed on the page",
        2 * INTERVAL,
        |row| row.flags == "/failed_active_hc",
    )
    .await
    .unwrap();
    let seen_after = fault.elapsed();
    assert!(
        row.text.contains("failure (ACTIVE)"),
        "the last check and the transition's reason: {row:?}"
    );
    let marker = browser.execute("return window.vigilMarker;").await.unwrap();
    assert_eq!(
        marker, "set before the fault",
        "the page was not reloaded (it took {seen_after:?})"
    );

    // A name with markup in it, added by a reload.
    let green_at = lab.fresh_address();
    let _green = DemoApp::start("green", green_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    lab.reload_with(&[(green_at, PAYLOAD)]).await.unwrap();
    let row = wait_row(
        &browser,
        green_at,
        "the host named with markup on the page",
        wait,
        |row| row.text.contains(PAYLOAD),
    )
    .await
    .unwrap();
    assert!(row.text.contains(PAYLOAD), "{row:?}");
    // Give an injected image every chance to fail to load and run its handler, over a poll.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let verdict = browser
        .execute(
            "return { pwned: typeof window.pwned, images: document.images.length, \
             named: Array.from(document.querySelectorAll('.hostname')).map((e) => e.textContent), \
             marker: window.vigilMarker };",
        )
        .await
        .unwrap();
    assert_eq!(verdict["pwned"], "undefined", "{verdict}");
    assert_eq!(verdict["images"], 0, "{verdict}");
    assert!(
        verdict["named"]
            .as_array()
            .is_some_and(|names| names.iter().any(|name| name == PAYLOAD)),
        "the name is shown as text: {verdict}"
    );
    assert_eq!(verdict["marker"], "set before the fault", "{verdict}");
    eprintln!(
        "blue's failure was on the page {seen_after:?} after its /livez failed; the test took {:?}",
        started.elapsed()
    );
}
