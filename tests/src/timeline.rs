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

/// Where a path's health verdicts are read.
#[derive(Debug, Clone)]
pub enum HealthSource {
    /// An Envoy-compatible admin API's `/clusters` (Envoy's native checks, or vigil's).
    Clusters(SocketAddr),
    /// vigil's wasm filter inside the Envoy with this admin API: its per-host gauges
    /// (`wasmcustom.vigil.host.<cluster>.<address>.healthy`) for these hosts. A host the filter
    /// does not judge usable shows as `/vigil_unhealthy`.
    FilterGauges {
        admin: SocketAddr,
        hosts: Vec<SocketAddr>,
    },
}

impl HealthSource {
    /// Each host's flags as this source reports them (hosts of `cluster` only).
    pub async fn flags(&self, cluster: &str) -> Result<Vec<(String, String)>, String> {
        match self {
            HealthSource::Clusters(admin) => {
                let response = http::get(*admin, "/clusters").await?;
                Ok(parse_clusters(&response.body)
                    .into_iter()
                    .filter(|h| h.cluster == cluster)
                    .map(|h| (h.address.clone(), h.health_flags().to_string()))
                    .collect())
            }
            HealthSource::FilterGauges { admin, hosts } => {
                let response = http::get(*admin, "/stats?filter=wasmcustom.vigil.host").await?;
                let mut out = Vec::new();
                for host in hosts {
                    let gauge = format!("wasmcustom.{}: ", crate::wasm::host_gauge(cluster, *host));
                    if let Some(value) = response
                        .body
                        .lines()
                        .find_map(|line| line.strip_prefix(&gauge))
                    {
                        let flags = if value.trim() == "1" {
                            "healthy"
                        } else {
                            "/vigil_unhealthy"
                        };
                        out.push((host.to_string(), flags.to_string()));
                    }
                }
                Ok(out)
            }
        }
    }
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
        Self::start_sources(
            sources
                .into_iter()
                .map(|(label, admin)| (label, HealthSource::Clusters(admin)))
                .collect(),
            cluster,
            period,
        )
    }

    /// Starts polling `sources` (label, where its verdicts are read) for `cluster`.
    pub fn start_sources(
        sources: Vec<(String, HealthSource)>,
        cluster: &str,
        period: Duration,
    ) -> Recorder {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let start = Instant::now();
        let cluster = cluster.to_string();
        let task = tokio::spawn(async move {
            let mut changes: BTreeMap<String, Vec<Change>> = BTreeMap::new();
            let mut last: BTreeMap<(String, String), String> = BTreeMap::new();
            loop {
                for (label, source) in &sources {
                    let at = start.elapsed();
                    let Ok(hosts) = source.flags(&cluster).await else {
                        continue;
                    };
                    for (address, flags) in hosts {
                        let key = (label.clone(), address.clone());
                        if last.get(&key) != Some(&flags) {
                            last.insert(key, flags.clone());
                            changes.entry(label.clone()).or_default().push(Change {
                                at,
                                host: address,
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
