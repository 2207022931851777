//! Long work says how far it is: `./lab compare`, `./lab bench` and `./lab soak` report which step
//! runs, how many of how many, and the time left.
//!
//! On a terminal (standard error is a TTY) one status line at the bottom is redrawn every second
//! and at each step, and the program's own lines are printed above it through
//! [`Progress::say`]. Anywhere else (CI logs, a pipe) nothing is redrawn: each step is one line on
//! standard error, and [`Progress::say`] is a plain `println!`.
//!
//! The time left comes from the run's expected length when the caller knows it (a soak's
//! duration, a comparison's scenario bounds), otherwise from the mean length of the steps done so
//! far times the steps left.

use std::io::{IsTerminal, Write as _};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    what: String,
    total: usize,
    /// Steps begun; the current one is `begun` (1-based), the ones before it are done.
    begun: usize,
    label: String,
    started: Instant,
    expected: Option<Duration>,
    tty: bool,
}

/// A long run's progress. Cloning shares it; the redraw task ends with the last clone's
/// [`Progress::finish`] or drop.
#[derive(Debug, Clone)]
pub struct Progress {
    state: Arc<Mutex<State>>,
    ticker: Option<Arc<tokio::task::JoinHandle<()>>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `1m05s`, `42s`.
pub fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds >= 60 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{seconds}s")
    }
}

/// The time left: from the expected length while the run is within it, else from the mean of
/// the steps done so far; `None` before anything can be said.
pub fn time_left(
    elapsed: Duration,
    done: usize,
    total: usize,
    expected: Option<Duration>,
) -> Option<Duration> {
    if let Some(expected) = expected.filter(|expected| *expected > elapsed) {
        return Some(expected - elapsed);
    }
    if done == 0 || done >= total {
        return (done >= total).then_some(Duration::ZERO);
    }
    let per_step = elapsed / u32::try_from(done).unwrap_or(u32::MAX);
    Some(per_step * u32::try_from(total - done).unwrap_or(u32::MAX))
}

/// The status text: `compare [2/8] http lab: playing the scenario · 0m42s elapsed · about 3m10s
/// left`.
pub fn status_line(
    what: &str,
    step: usize,
    total: usize,
    label: &str,
    elapsed: Duration,
    left: Option<Duration>,
) -> String {
    let left = left.map_or_else(
        || "time left: estimating".to_string(),
        |left| format!("about {} left", short_duration(left)),
    );
    format!(
        "{what} [{step}/{total}] {label} · {} elapsed · {left}",
        short_duration(elapsed)
    )
}

impl State {
    fn line(&self) -> String {
        let elapsed = self.started.elapsed();
        let done = self.begun.saturating_sub(1);
        status_line(
            &self.what,
            self.begun,
            self.total,
            &self.label,
            elapsed,
            time_left(elapsed, done, self.total, self.expected),
        )
    }

    fn draw(&self) {
        if self.tty && self.begun > 0 {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{}", self.line());
            let _ = err.flush();
        }
    }

    fn clear(&self) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Progress {
    /// A run of `total` steps called `what`, `expected` long if the caller knows. On a terminal
    /// (and inside a tokio runtime) the status line is redrawn every second.
    pub fn new(what: &str, total: usize, expected: Option<Duration>) -> Progress {
        Self::with_terminal(what, total, expected, std::io::stderr().is_terminal())
    }

    /// As [`Progress::new`], saying whether standard error is a terminal (tests).
    pub fn with_terminal(
        what: &str,
        total: usize,
        expected: Option<Duration>,
        tty: bool,
    ) -> Progress {
        let state = Arc::new(Mutex::new(State {
            what: what.to_string(),
            total: total.max(1),
            begun: 0,
            label: String::new(),
            started: Instant::now(),
            expected,
            tty,
        }));
        let ticker = (tty && tokio::runtime::Handle::try_current().is_ok()).then(|| {
            let state = Arc::downgrade(&state);
            Arc::new(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let Some(state) = state.upgrade() else { return };
                    lock(&state).draw();
                }
            }))
        });
        Progress { state, ticker }
    }

    /// Begins the next step. Off a terminal this prints the step's line.
    pub fn step(&self, label: &str) {
        let mut state = lock(&self.state);
        state.begun = (state.begun + 1).min(state.total);
        state.label = label.to_string();
        if state.tty {
            state.draw();
        } else {
            eprintln!("{}", state.line());
        }
    }

    /// Prints a line of the program's output above the status line.
    pub fn say(&self, line: &str) {
        let state = lock(&self.state);
        state.clear();
        println!("{line}");
        let _ = std::io::stdout().flush();
        state.draw();
    }

    /// The current step's number and the total (tests, reports).
    pub fn position(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.begun, state.total)
    }

    /// Ends the run: the status line is cleared and one closing line printed.
    pub fn finish(&self) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
        let state = lock(&self.state);
        state.clear();
        eprintln!(
            "{}: {} step(s) in {}",
            state.what,
            state.begun,
            short_duration(state.started.elapsed())
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            if Arc::strong_count(&ticker) == 1 {
                ticker.abort();
                lock(&self.state).clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn time_left_prefers_the_expected_length_then_the_mean_step() {
        assert_eq!(time_left(secs(10), 0, 4, Some(secs(100))), Some(secs(90)));
        // Past the expectation: the steps' mean takes over.
        assert_eq!(time_left(secs(120), 3, 4, Some(secs(100))), Some(secs(40)));
        assert_eq!(time_left(secs(30), 3, 6, None), Some(secs(30)));
        assert_eq!(time_left(secs(5), 0, 6, None), None);
        assert_eq!(time_left(secs(50), 6, 6, None), Some(Duration::ZERO));
    }

    #[test]
    fn the_status_line_says_which_step_of_how_many_and_the_time_left() {
        assert_eq!(
            status_line(
                "compare",
                2,
                8,
                "http lab: playing",
                secs(42),
                Some(secs(190))
            ),
            "compare [2/8] http lab: playing · 42s elapsed · about 3m10s left"
        );
        assert_eq!(
            status_line("bench", 1, 30, "vigil-c32-r1", secs(3), None),
            "bench [1/30] vigil-c32-r1 · 3s elapsed · time left: estimating"
        );
    }

    #[test]
    fn steps_count_up_to_the_total_and_no_further() {
        let progress = Progress::with_terminal("test", 2, None, false);
        assert_eq!(progress.position(), (0, 2));
        progress.step("one");
        progress.step("two");
        progress.step("three");
        assert_eq!(progress.position(), (2, 2));
        progress.finish();
    }
}
