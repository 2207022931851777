//! Recording health transitions from several admin APIs at once (Envoy and vigil speak the same
//! `/clusters`), so their timelines can be compared.

use crate::envoy::parse_clusters;
use crate::http;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One observed change: when (from the recorder's start), which host, the new flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub at: Duration,
    pub host: String,
    pub flags: String,
}

/// Polls `/clusters` of every admin address every `period` until stopped.
pub struct Recorder {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<BTreeMap<String, Vec<Change>>>,
    pub start: Instant,
}

impl Recorder {
    /// Starts polling `sources` (label, admin address) for `cluster`.
    pub fn start(sources: Vec<(String, SocketAddr)>, cluster: &str, period: Duration) -> Recorder {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let start = Instant::now();
        let cluster = cluster.to_string();
        let task = tokio::spawn(async move {
            let mut changes: BTreeMap<String, Vec<Change>> = BTreeMap::new();
            let mut last: BTreeMap<(String, String), String> = BTreeMap::new();
            loop {
                for (label, admin) in &sources {
                    let at = start.elapsed();
                    let Ok(response) = http::get(*admin, "/clusters").await else {
                        continue;
                    };
                    for host in parse_clusters(&response.body)
                        .into_iter()
                        .filter(|h| h.cluster == cluster)
                    {
                        let flags = host.health_flags().to_string();
                        let key = (label.clone(), host.address.clone());
                        if last.get(&key) != Some(&flags) {
                            last.insert(key, flags.clone());
                            changes.entry(label.clone()).or_default().push(Change {
                                at,
                                host: host.address.clone(),
                                flags,
                            });
                        }
                    }
                }
                tokio::select! {
                    _ = &mut stopped => return changes,
                    _ = tokio::time::sleep(period) => {}
                }
            }
        });
        Recorder {
            stop: Some(stop),
            task,
            start,
        }
    }

    /// Stops and returns every source's changes, in order.
    pub async fn finish(mut self) -> BTreeMap<String, Vec<Change>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap_or_default()
    }
}

/// A readable table of several sources' changes, for failure messages and the README.
pub fn table(timelines: &BTreeMap<String, Vec<Change>>) -> String {
    let mut rows: Vec<(Duration, String)> = Vec::new();
    for (label, changes) in timelines {
        for change in changes {
            rows.push((
                change.at,
                format!(
                    "{:>8.2}s  {label:<8} {:<22} {}",
                    change.at.as_secs_f64(),
                    change.host,
                    change.flags
                ),
            ));
        }
    }
    rows.sort_by_key(|(at, _)| *at);
    rows.into_iter().map(|(_, row)| row + "\n").collect()
}
