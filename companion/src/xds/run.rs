//! Starting and stopping the EDS server for the `vigil` binary (`--xds-address`).

use super::registry::Registry;
use super::server::EdsServer;
use super::source::RuntimeSource;
use super::tls::XdsTlsFiles;
use crate::registry::ClusterRegistry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a stop waits for the server to close its streams.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Refuses a non-loopback address in plain text unless `allow_remote`: without mTLS the server
/// has neither authentication nor encryption. With mTLS (`authenticated`) any address is fine.
pub fn check_address(
    address: SocketAddr,
    allow_remote: bool,
    authenticated: bool,
) -> Result<(), String> {
    if address.ip().is_loopback() || allow_remote || authenticated {
        Ok(())
    } else {
        Err(format!(
            "--xds-address {address} is not a loopback address: without --xds-tls-cert, \
             --xds-tls-key and --xds-client-ca the xDS server has no authentication or TLS, so \
             it listens on loopback unless --xds-allow-remote is given"
        ))
    }
}

/// A running EDS server.
pub struct Running {
    registry: Arc<Registry>,
    address: SocketAddr,
    stop: Vec<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// The admin view.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops publishing (which ends every stream) and the server.
    pub async fn stop(self) {
        for stop in self.stop {
            let _ = stop.send(());
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.task).await.is_err() {
            log::warn!("xds: the server did not stop within {STOP_TIMEOUT:?}");
        }
    }
}

/// Serves EDS for `clusters` (the runtime's running clusters) on `address`, over mTLS when
/// `tls` names the files.
pub async fn start(
    address: SocketAddr,
    allow_remote: bool,
    tls: Option<&XdsTlsFiles>,
    clusters: ClusterRegistry,
) -> Result<Running, String> {
    check_address(address, allow_remote, tls.is_some())?;
    let acceptor = tls.map(super::tls::acceptor).transpose()?;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|err| format!("cannot listen on --xds-address {address}: {err}"))?;
    let address = listener.local_addr().unwrap_or(address);
    let (stop_publisher, publisher_stopped) = oneshot::channel::<()>();
    let eds = EdsServer::spawn(Arc::new(RuntimeSource::new(clusters)), None, async {
        let _ = publisher_stopped.await;
    });
    let registry = eds.registry();
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stopped = async {
            let _ = server_stopped.await;
        };
        let served = match acceptor {
            Some(acceptor) => eds.serve_tls(listener, acceptor, stopped).await,
            None => eds.serve(listener, stopped).await,
        };
        if let Err(err) = served {
            log::error!("xds: the server on {address} failed: {err}");
        }
    });
    log::info!(
        "xds: serving EDS (gRPC and ADS, state of the world and delta; REST-JSON) on {address}{}",
        if tls.is_some() {
            " over mTLS (client certificates required)"
        } else {
            ""
        }
    );
    Ok(Running {
        registry,
        address,
        stop: vec![stop_publisher, stop_server],
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_addresses_need_an_explicit_opt_in() {
        let loopback: SocketAddr = "127.0.0.1:18000".parse().unwrap();
        let v6: SocketAddr = "[::1]:18000".parse().unwrap();
        let remote: SocketAddr = "0.0.0.0:18000".parse().unwrap();
        assert!(check_address(loopback, false, false).is_ok());
        assert!(check_address(v6, false, false).is_ok());
        let refused = check_address(remote, false, false).unwrap_err();
        assert!(refused.contains("--xds-allow-remote"), "{refused}");
        assert!(check_address(remote, true, false).is_ok());
        // Authenticated clients over TLS: any address.
        assert!(check_address(remote, false, true).is_ok());
    }
}
