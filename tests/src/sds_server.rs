//! A small SDS server for the tests (`envoy.service.secret.v3.SecretDiscoveryService`, state of
//! the world), standing in for SPIRE's agent or any SDS server: it listens on a TCP address or a
//! unix socket, answers each `StreamSecrets` stream's subscription with the secrets it holds
//! (each change is pushed, with a new version and nonce, to the streams subscribed to that name),
//! and records every request each stream sent, so a test can check the node, the names asked
//! for and the ACKs and NACKs (`error_detail`) of each client. Dropping it closes its
//! connections, as a server that goes away does.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Which stream (numbered from 1 in the order they opened).
    pub stream: usize,
    pub node_id: String,
    pub resource_names: Vec<String>,
    pub version_info: String,
    pub response_nonce: String,
    /// The NACK's message, if the request is one.
    pub error: Option<String>,
}

/// The secrets held (name → version and resource) and what was asked.
#[derive(Default)]
struct State {
    secrets: BTreeMap<String, (u64, Any)>,
    seen: Vec<SeenRequest>,
    streams: usize,
    nonces: u64,
}

/// A running SDS server; it stops when dropped.
pub struct SdsServer {
    state: Arc<Mutex<State>>,
    changed: broadcast::Sender<String>,
    task: JoinHandle<()>,
    /// A copy of each accepted connection's socket, shut down when the server is dropped
    /// (tonic's connection tasks outlive the server's own, and a client must see it go).
    connections: Arc<Mutex<Vec<Closer>>>,
}

/// A socket to shut down.
enum Closer {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Closer {
    fn shut_down(&self) {
        let _ = match self {
            Closer::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Closer::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// A copy of `socket`'s descriptor (the same socket), if the system gives one.
fn copy_of(socket: &impl std::os::fd::AsFd) -> Option<std::os::fd::OwnedFd> {
    socket.as_fd().try_clone_to_owned().ok()
}

/// Where the server listens.
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl SdsServer {
    /// Serves on `at` (a unix socket file is replaced).
    pub async fn start(at: Listen) -> SdsServer {
        let state = Arc::new(Mutex::new(State::default()));
        let (changed, _) = broadcast::channel(16);
        let service = Service {
            state: state.clone(),
            changed: changed.clone(),
        };
        let (connections, incoming) = mpsc::channel(16);
        let accepted: Arc<Mutex<Vec<Closer>>> = Arc::default();
        let keep = accepted.clone();
        let remember = move |closer: Closer| {
            keep.lock().unwrap_or_else(|p| p.into_inner()).push(closer);
        };
        let accept = match at {
            Listen::Tcp(address) => {
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .unwrap_or_else(|e| panic!("SDS server: bind {address}: {e}"));
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        if let Some(fd) = copy_of(&stream) {
                            remember(Closer::Tcp(std::net::TcpStream::from(fd)));
                        }
                        if connections
                            .send(Ok::<_, std::io::Error>(Io::Tcp(stream)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                })
            }
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(&path);
                let listener = tokio::net::UnixListener::bind(&path)
                    .unwrap_or_else(|e| panic!("SDS server: bind {}: {e}", path.display()));
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        if let Some(fd) = copy_of(&stream) {
                            remember(Closer::Unix(std::os::unix::net::UnixStream::from(fd)));
                        }
                        if connections.send(Ok(Io::Unix(stream))).await.is_err() {
                            return;
                        }
                    }
                })
            }
        };
        let task = tokio::spawn(async move {
            let _accept = AbortOnDrop(accept);
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming(
                    SecretDiscoveryServiceServer::new(service),
                    ReceiverStream::new(incoming),
                )
                .await;
        });
        SdsServer {
            state,
            changed,
            task,
            connections: accepted,
        }
    }

    /// Holds `secret` under its name (a new version) and pushes it to the streams that asked
    /// for it.
    pub fn set(&self, secret: &Secret) {
        let any = Any {
            type_url: SECRET_TYPE.to_string(),
            value: secret.encode_to_vec(),
        };
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let version = state.secrets.get(&secret.name).map_or(1, |(v, _)| v + 1);
            state.secrets.insert(secret.name.clone(), (version, any));
        }
        let _ = self.changed.send(secret.name.clone());
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .clone()
    }
}

impl Drop for SdsServer {
    fn drop(&mut self) {
        self.task.abort();
        for connection in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            connection.shut_down();
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A certificate secret with the PEM texts inline.
pub fn certificate_secret(name: &str, chain_pem: &str, key_pem: &str) -> Secret {
    let inline = |text: &str| {
        Some(DataSource {
            specifier: Some(Specifier::InlineString(text.to_string())),
            ..DataSource::default()
        })
    };
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain_pem),
            private_key: inline(key_pem),
            ..TlsCertificate::default()
        })),
    }
}

/// A validation context secret trusting the CA in `ca_file`.
pub fn trusted_ca_secret(name: &str, ca_file: &Path) -> Secret {
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(Specifier::Filename(ca_file.display().to_string())),
                    ..DataSource::default()
                }),
                ..CertificateValidationContext::default()
            },
        )),
    }
}

#[derive(Clone)]
struct Service {
    state: Arc<Mutex<State>>,
    changed: broadcast::Sender<String>,
}

impl Service {
    /// The response for `names` if the server holds all of them... or at least one: a state of
    /// the world answer holds those it has.
    fn response(&self, names: &[String]) -> Option<DiscoveryResponse> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let found: Vec<(u64, Any)> = names
            .iter()
            .filter_map(|n| state.secrets.get(n).cloned())
            .collect();
        if found.is_empty() {
            return None;
        }
        state.nonces += 1;
        let version: Vec<String> = found.iter().map(|(v, _)| v.to_string()).collect();
        Some(DiscoveryResponse {
            version_info: version.join("."),
            resources: found.into_iter().map(|(_, any)| any).collect(),
            type_url: SECRET_TYPE.to_string(),
            nonce: state.nonces.to_string(),
            ..DiscoveryResponse::default()
        })
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Service {
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let mut requests = request.into_inner();
        let (responses, out) = mpsc::channel(16);
        let service = self.clone();
        let stream = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.streams += 1;
            state.streams
        };
        let mut changed = self.changed.subscribe();
        tokio::spawn(async move {
            let mut names: Vec<String> = Vec::new();
            loop {
                tokio::select! {
                    request = requests.message() => {
                        let Ok(Some(request)) = request else { return };
                        let first = request.response_nonce.is_empty();
                        service.state.lock().unwrap_or_else(|p| p.into_inner()).seen.push(SeenRequest {
                            stream,
                            node_id: request.node.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
                            resource_names: request.resource_names.clone(),
                            version_info: request.version_info.clone(),
                            response_nonce: request.response_nonce.clone(),
                            error: request.error_detail.as_ref().map(|e| e.message.clone()),
                        });
                        names = request.resource_names.clone();
                        // A subscription (no nonce) is answered; ACKs and NACKs are not.
                        if first && let Some(response) = service.response(&names)
                            && responses.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                    name = changed.recv() => {
                        let Ok(name) = name else { return };
                        if names.contains(&name)
                            && let Some(response) = service.response(&names)
                            && responses.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn delta_secrets(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("this test server speaks SotW only"))
    }

    async fn fetch_secrets(
        &self,
        _: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented(
            "this test server speaks StreamSecrets only",
        ))
    }
}

/// A connection the server accepted.
enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl tonic::transport::server::Connected for Io {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}
