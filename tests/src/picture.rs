//! The comparison as a picture: one lab's recorded run ([`Recording`]) drawn as a self-contained
//! SVG timeline ([`timeline_svg`]), the HTML page that shows it above the terminal's tables
//! ([`report_html`]), and the index page that links every lab of a run ([`index_html`]).
//!
//! The timeline has one group of lanes per path (envoy, filter, vigil, vigil+rules): a lane per
//! host whose coloured bands are the host's health as that path saw it (healthy, failed active
//! check, outlier-ejected, degraded, excluded, or unusable by the filter's verdict), and under
//! them a lane of ticks, one per client request, coloured by who answered (blue, yellow) or red
//! for an error. Vertical markers show the fault and the fix with their commands; the time axis
//! counts seconds from the fault. Nothing is fetched: styles are inline, text is escaped, and the
//! file opens from the file system. Every element a reader (or a test) looks for carries a
//! `class` and `data-*` attributes naming its path, host and state.

use crate::timeline::Change;
use std::fmt::Write as _;
use std::time::Duration;

/// A host as the picture names it: its label (`blue`) and the key `/clusters` prints for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub label: String,
    pub key: String,
}

/// What one client request got: the label of the host that answered, or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    Served(String),
    Error(String),
}

/// One path's recorded run: its health transitions (every host) and its requests.
#[derive(Debug, Clone, Default)]
pub struct PathTrace {
    pub name: String,
    pub changes: Vec<Change>,
    pub requests: Vec<(Duration, Tick)>,
}

/// One lab's run, all times from the same start.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// `HTTP lab`, `HTTP lab, server errors only` ...
    pub title: String,
    pub fault_at: Duration,
    pub fault: String,
    pub fix_at: Duration,
    pub fix: String,
    /// When recording stopped: the right edge of the picture.
    pub end: Duration,
    pub hosts: Vec<Host>,
    pub paths: Vec<PathTrace>,
}

/// The health a band shows, from a host's `/clusters` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Healthy,
    FailedActiveCheck,
    OutlierEjected,
    Degraded,
    Excluded,
    /// The filter's gauges say the host is not to be used (its probes or its outlier detection).
    FilterUnusable,
    Other,
}

impl State {
    /// The state a flags string shows; when several flags are set, the active check's failure
    /// wins (it is what keeps a host out longest), then the outlier ejection.
    pub fn of(flags: &str) -> State {
        if flags == "healthy" {
            State::Healthy
        } else if flags.contains("/failed_active_hc") {
            State::FailedActiveCheck
        } else if flags.contains("/failed_outlier_check") {
            State::OutlierEjected
        } else if flags.contains("/excluded_via_immediate_hc_fail") {
            State::Excluded
        } else if flags.contains("/degraded_active_hc") {
            State::Degraded
        } else if flags.contains("/vigil_unhealthy") {
            State::FilterUnusable
        } else {
            State::Other
        }
    }

    pub const ALL: [State; 7] = [
        State::Healthy,
        State::FailedActiveCheck,
        State::OutlierEjected,
        State::Degraded,
        State::Excluded,
        State::FilterUnusable,
        State::Other,
    ];

    /// The CSS class (`state-healthy` ...).
    pub fn class(self) -> &'static str {
        match self {
            State::Healthy => "state-healthy",
            State::FailedActiveCheck => "state-failed-active-check",
            State::OutlierEjected => "state-outlier-ejected",
            State::Degraded => "state-degraded",
            State::Excluded => "state-excluded",
            State::FilterUnusable => "state-filter-unusable",
            State::Other => "state-other",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::FailedActiveCheck => "failed active check",
            State::OutlierEjected => "outlier-ejected",
            State::Degraded => "degraded",
            State::Excluded => "excluded (immediate fail)",
            State::FilterUnusable => "unusable (filter's verdict)",
            State::Other => "other flags",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            State::Healthy => "#2e7d32",
            State::FailedActiveCheck => "#c62828",
            State::OutlierEjected => "#ef6c00",
            State::Degraded => "#f9a825",
            State::Excluded => "#6d4c41",
            State::FilterUnusable => "#ad1457",
            State::Other => "#9e9e9e",
        }
    }
}

/// Escapes text for SVG / HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const LABEL_WIDTH: f64 = 130.0;
const PLOT_WIDTH: f64 = 900.0;
const RIGHT_MARGIN: f64 = 20.0;
const TOP: f64 = 58.0;
const PATH_TITLE: f64 = 18.0;
const LANE: f64 = 14.0;
const LANE_GAP: f64 = 3.0;
const PATH_GAP: f64 = 14.0;
/// Colours of the served-by ticks, by host label; others get grey.
const HOST_COLOURS: [(&str, &str); 2] = [("blue", "#1565c0"), ("yellow", "#fbc02d")];
const ERROR_COLOUR: &str = "#d50000";

fn host_colour(label: &str) -> &'static str {
    HOST_COLOURS
        .iter()
        .find(|(name, _)| *name == label)
        .map_or("#616161", |(_, colour)| colour)
}

/// Maps recording time to the plot's x.
struct Scale {
    end: f64,
}

impl Scale {
    fn x(&self, at: Duration) -> f64 {
        let fraction = if self.end > 0.0 {
            (at.as_secs_f64() / self.end).clamp(0.0, 1.0)
        } else {
            0.0
        };
        LABEL_WIDTH + fraction * PLOT_WIDTH
    }
}

/// The health bands of one host on one path: `(from, to, state)`, from its first observed state
/// to the end of the recording.
pub fn bands(changes: &[Change], host: &str, end: Duration) -> Vec<(Duration, Duration, State)> {
    let ours: Vec<&Change> = changes.iter().filter(|c| c.host == host).collect();
    ours.iter()
        .enumerate()
        .map(|(i, change)| {
            let to = ours.get(i + 1).map_or(end, |next| next.at).max(change.at);
            (change.at, to, State::of(&change.flags))
        })
        .collect()
}

/// One lab's timeline as a standalone SVG document.
pub fn timeline_svg(recording: &Recording) -> String {
    let end = recording.end.max(recording.fix_at).max(recording.fault_at);
    let scale = Scale {
        end: end.as_secs_f64(),
    };
    let per_path = PATH_TITLE + (recording.hosts.len() as f64 + 1.0) * (LANE + LANE_GAP) + PATH_GAP;
    let plot_bottom = TOP + per_path * recording.paths.len() as f64;
    let height = plot_bottom + 90.0;
    let width = LABEL_WIDTH + PLOT_WIDTH + RIGHT_MARGIN;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" width=\"{width}\" \
         height=\"{height:.0}\" viewBox=\"0 0 {width} {height:.0}\" \
         font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        svg,
        "<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height:.0}\" fill=\"#ffffff\"/>"
    );
    let _ = writeln!(
        svg,
        "<text class=\"title\" x=\"10\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        escape(&recording.title)
    );

    // Axis: whole seconds from the fault, across the plot.
    let fault = recording.fault_at.as_secs_f64();
    let _ = writeln!(svg, "<g class=\"axis\">");
    let first = (-fault).ceil() as i64;
    let last = (scale.end - fault).floor() as i64;
    let step = if last - first > 40 { 5 } else { 1 };
    for second in (first..=last).filter(|s| s % step == 0) {
        let x = scale.x(Duration::from_secs_f64(fault + second as f64));
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#424242\">{second:+}s</text>",
            TOP - 6.0,
            plot_bottom,
            plot_bottom + 14.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#424242\">seconds from the fault</text></g>",
        LABEL_WIDTH + PLOT_WIDTH / 2.0,
        plot_bottom + 30.0
    );

    let mut y = TOP;
    for path in &recording.paths {
        let _ = writeln!(
            svg,
            "<g class=\"path\" data-path=\"{}\">",
            escape(&path.name)
        );
        let _ = writeln!(
            svg,
            "<text class=\"path-name\" x=\"10\" y=\"{:.1}\" font-weight=\"bold\">{}</text>",
            y + 12.0,
            escape(&path.name)
        );
        y += PATH_TITLE;
        for host in &recording.hosts {
            let _ = writeln!(
                svg,
                "<g class=\"lane\" data-path=\"{}\" data-host=\"{}\">\
                 <text x=\"24\" y=\"{:.1}\" fill=\"#424242\">{}</text>\
                 <rect x=\"{LABEL_WIDTH}\" y=\"{y:.1}\" width=\"{PLOT_WIDTH}\" height=\"{LANE}\" fill=\"#f5f5f5\"/>",
                escape(&path.name),
                escape(&host.label),
                y + 11.0,
                escape(&host.label)
            );
            for (from, to, state) in bands(&path.changes, &host.key, end) {
                let x = scale.x(from);
                let w = (scale.x(to) - x).max(0.5);
                let _ = writeln!(
                    svg,
                    "<rect class=\"band {}\" data-state=\"{}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" \
                     height=\"{LANE}\" fill=\"{}\"><title>{} {}: {} from {:.2}s to {:.2}s</title></rect>",
                    state.class(),
                    state.label(),
                    state.colour(),
                    escape(&path.name),
                    escape(&host.label),
                    state.label(),
                    from.as_secs_f64() - fault,
                    to.as_secs_f64() - fault
                );
            }
            let _ = writeln!(svg, "</g>");
            y += LANE + LANE_GAP;
        }
        let _ = writeln!(
            svg,
            "<g class=\"requests\" data-path=\"{}\"><text x=\"24\" y=\"{:.1}\" fill=\"#424242\">requests</text>",
            escape(&path.name),
            y + 11.0
        );
        for (at, tick) in &path.requests {
            let x = scale.x(*at);
            let (class, colour, tip) = match tick {
                Tick::Served(host) => (
                    format!("tick served-{}", escape(host)),
                    host_colour(host),
                    format!("served by {}", escape(host)),
                ),
                Tick::Error(error) => (
                    "tick error".to_string(),
                    ERROR_COLOUR,
                    format!("error: {}", escape(error)),
                ),
            };
            let _ = writeln!(
                svg,
                "<rect class=\"{class}\" x=\"{:.1}\" y=\"{y:.1}\" width=\"2\" height=\"{LANE}\" \
                 fill=\"{colour}\"><title>{:.2}s {tip}</title></rect>",
                x - 1.0,
                at.as_secs_f64() - fault
            );
        }
        let _ = writeln!(svg, "</g></g>");
        y += LANE + LANE_GAP + PATH_GAP;
    }

    for (class, at, text) in [
        ("fault", recording.fault_at, &recording.fault),
        ("fix", recording.fix_at, &recording.fix),
    ] {
        let x = scale.x(at);
        let (text_y, anchor) = if class == "fault" {
            (34.0, "start")
        } else {
            (48.0, "start")
        };
        let _ = writeln!(
            svg,
            "<g class=\"marker {class}\"><line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{plot_bottom:.1}\" \
             stroke=\"#212121\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{:.1}\" y=\"{text_y}\" text-anchor=\"{anchor}\" fill=\"#212121\">{class}: {}</text></g>",
            text_y + 4.0,
            x + 3.0,
            escape(text)
        );
    }

    // Legend: the states on one row, the ticks on the next.
    let _ = writeln!(svg, "<g class=\"legend\">");
    let states: Vec<(&str, String)> = State::ALL
        .into_iter()
        .filter(|s| *s != State::Other)
        .map(|s| (s.colour(), s.label().to_string()))
        .collect();
    let mut ticks: Vec<(&str, String)> = recording
        .hosts
        .iter()
        .map(|h| {
            (
                host_colour(&h.label),
                format!("request served by {}", h.label),
            )
        })
        .collect();
    ticks.push((ERROR_COLOUR, "request failed".to_string()));
    for (row, items) in [states, ticks].iter().enumerate() {
        let legend_y = plot_bottom + 48.0 + 16.0 * row as f64;
        let mut x = 10.0;
        for (colour, text) in items {
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"10\" fill=\"{colour}\"/>\
                 <text x=\"{:.1}\" y=\"{legend_y:.1}\">{}</text>",
                legend_y - 9.0,
                x + 16.0,
                escape(text)
            );
            x += 28.0 + 6.0 * text.len() as f64;
        }
    }
    let _ = writeln!(svg, "</g>\n</svg>");
    svg
}

const PAGE_STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#212121}\
pre{background:#f5f5f5;padding:12px;overflow-x:auto}a{color:#1565c0}";

/// A lab's page: the timeline, then `summary` (the terminal's table) and `transitions`.
pub fn report_html(recording: &Recording, summary: &str, transitions: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>vigil compare: {title}</title><style>{PAGE_STYLE}</style></head><body>\n\
         <h1>{title}</h1>\n<p>Each path's view of each host over time, and every client request \
         through it; dashed lines: the fault and the fix.</p>\n{svg}\n<h2>Summary</h2>\n<pre>{summary}</pre>\n\
         <h2>Health transitions</h2>\n<pre>{transitions}</pre>\n</body></html>\n",
        title = escape(&recording.title),
        svg = timeline_svg(recording),
        summary = escape(summary),
        transitions = escape(transitions),
    )
}

/// The run's index: each lab's title, a link to its page (relative), and its summary table.
pub fn index_html(labs: &[(String, String, String)]) -> String {
    let mut body = String::new();
    for (title, link, summary) in labs {
        let _ = writeln!(
            body,
            "<h2><a href=\"{}\">{}</a></h2>\n<pre>{}</pre>",
            escape(link),
            escape(title),
            escape(summary)
        );
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>vigil compare</title><style>{PAGE_STYLE}</style></head><body>\n\
         <h1>vigil compare</h1>\n{body}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    fn change(seconds: f64, host: &str, flags: &str) -> Change {
        Change {
            at: at(seconds),
            host: host.to_string(),
            flags: flags.to_string(),
        }
    }

    fn recording() -> Recording {
        let hosts = vec![
            Host {
                label: "blue".into(),
                key: "127.0.0.2:80".into(),
            },
            Host {
                label: "yellow".into(),
                key: "127.0.0.3:80".into(),
            },
        ];
        let path = |name: &str, ejected: &str| PathTrace {
            name: name.to_string(),
            changes: vec![
                change(0.0, "127.0.0.2:80", "healthy"),
                change(0.0, "127.0.0.3:80", "healthy"),
                change(2.0, "127.0.0.2:80", ejected),
                change(6.0, "127.0.0.2:80", "healthy"),
            ],
            requests: vec![
                (at(0.5), Tick::Served("blue".into())),
                (at(0.6), Tick::Served("yellow".into())),
                (at(1.5), Tick::Error("503 no healthy upstream".into())),
                (at(3.0), Tick::Served("yellow".into())),
            ],
        };
        Recording {
            title: "HTTP lab <test>".into(),
            fault_at: at(1.0),
            fault: "curl -X POST -d 'livez=FAIL' http://127.0.0.2:80/livez".into(),
            fix_at: at(5.0),
            fix: "curl -X POST -d 'livez=OK' http://127.0.0.2:80/livez".into(),
            end: at(8.0),
            hosts,
            paths: vec![
                path("envoy", "/failed_active_hc"),
                path("filter", "/vigil_unhealthy"),
                path("vigil", "/failed_active_hc/failed_outlier_check"),
                path("vigil+rules", "/failed_outlier_check"),
            ],
        }
    }

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    #[test]
    fn one_lane_per_path_and_host_and_one_request_lane_per_path() {
        let svg = timeline_svg(&recording());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        for path in ["envoy", "filter", "vigil", "vigil+rules"] {
            assert_eq!(
                count(&svg, &format!("<g class=\"path\" data-path=\"{path}\">")),
                1
            );
            for host in ["blue", "yellow"] {
                assert_eq!(
                    count(
                        &svg,
                        &format!("<g class=\"lane\" data-path=\"{path}\" data-host=\"{host}\">")
                    ),
                    1,
                    "{path} {host}"
                );
            }
            assert_eq!(
                count(
                    &svg,
                    &format!("<g class=\"requests\" data-path=\"{path}\">")
                ),
                1
            );
        }
    }

    #[test]
    fn bands_follow_each_hosts_transitions_with_the_state_they_show() {
        let svg = timeline_svg(&recording());
        // Blue: healthy, ejected, healthy again; yellow: healthy throughout. Four paths.
        assert_eq!(count(&svg, "class=\"band "), 4 * (3 + 1));
        assert_eq!(count(&svg, "class=\"band state-healthy\""), 4 * 3);
        assert_eq!(count(&svg, "class=\"band state-failed-active-check\""), 2);
        assert_eq!(count(&svg, "class=\"band state-outlier-ejected\""), 1);
        assert_eq!(count(&svg, "class=\"band state-filter-unusable\""), 1);
        let blue = bands(&recording().paths[0].changes, "127.0.0.2:80", at(8.0));
        assert_eq!(
            blue,
            vec![
                (at(0.0), at(2.0), State::Healthy),
                (at(2.0), at(6.0), State::FailedActiveCheck),
                (at(6.0), at(8.0), State::Healthy),
            ]
        );
    }

    #[test]
    fn markers_ticks_and_axis_are_where_the_run_put_them() {
        let svg = timeline_svg(&recording());
        assert_eq!(count(&svg, "<g class=\"marker fault\">"), 1);
        assert_eq!(count(&svg, "<g class=\"marker fix\">"), 1);
        // The fault at 1 s of 8: x = 130 + 900 / 8.
        assert!(svg.contains("<line x1=\"242.5\""), "{svg}");
        assert!(svg.contains("fault: curl -X POST -d &#39;livez=FAIL&#39;"));
        assert_eq!(count(&svg, "class=\"tick served-blue\""), 4);
        assert_eq!(count(&svg, "class=\"tick served-yellow\""), 8);
        assert_eq!(count(&svg, "class=\"tick error\""), 4);
        // Seconds from the fault: -1 .. +7.
        assert!(svg.contains(">-1s</text>") && svg.contains(">+0s</text>"));
        assert!(svg.contains(">+7s</text>") && !svg.contains(">+8s</text>"));
    }

    #[test]
    fn every_name_is_escaped() {
        let mut recording = recording();
        recording.paths[0].name = "<img src=x onerror=alert(1)>".into();
        let svg = timeline_svg(&recording);
        assert!(!svg.contains("<img"));
        assert!(svg.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(svg.contains("HTTP lab &lt;test&gt;"));
        let page = report_html(&recording, "a <b> table", "t");
        assert!(page.contains("a &lt;b&gt; table") && !page.contains("<b>"));
    }

    #[test]
    fn pages_are_self_contained() {
        let recording = recording();
        let page = report_html(&recording, "summary", "transitions");
        assert!(page.contains("<svg xmlns="));
        for fetch in ["src=", "href=\"http", "@import", "url("] {
            assert!(!page.contains(fetch), "{fetch}");
        }
        let index = index_html(&[("HTTP lab".into(), "http/report.html".into(), "table".into())]);
        assert!(index.contains("<a href=\"http/report.html\">HTTP lab</a>"));
    }

    #[test]
    fn flags_map_to_the_state_that_keeps_the_host_out() {
        assert_eq!(State::of("healthy"), State::Healthy);
        assert_eq!(
            State::of("/failed_active_hc/failed_outlier_check"),
            State::FailedActiveCheck
        );
        assert_eq!(State::of("/failed_outlier_check"), State::OutlierEjected);
        assert_eq!(
            State::of("/failed_active_hc/excluded_via_immediate_hc_fail"),
            State::FailedActiveCheck
        );
        assert_eq!(
            State::of("/excluded_via_immediate_hc_fail"),
            State::Excluded
        );
        assert_eq!(State::of("/degraded_active_hc"), State::Degraded);
        assert_eq!(State::of("/vigil_unhealthy"), State::FilterUnusable);
        assert_eq!(State::of("/pending_dynamic_removal"), State::Other);
    }
}
