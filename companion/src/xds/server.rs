//! The gRPC shell: EDS (`EndpointDiscoveryService.StreamEndpoints`, and `DeltaEndpoints`) and
//! ADS (`AggregatedDiscoveryService.StreamAggregatedResources`, and `DeltaAggregatedResources`;
//! EDS resources only), whose streams the router frames itself ([`grpc`]: less memory per
//! Envoy), with tonic's generated services for the unary `FetchEndpoints` and for UNIMPLEMENTED;
//! the REST-JSON path ([`rest`]) on the same port; and the publisher that turns the
//! [`ClusterSource`] into encoded resources.
//!
//! The publisher wakes when a check loop or an outlier detector announces a change
//! ([`crate::changes`]), and at least every [`POLL`] (for discovery counters), looks at the
//! source's fingerprint (a few atomic loads: the snapshots are `arc-swap`ed by the check loops)
//! and republishes the ready clusters' encoded assignments on a `watch` channel when they
//! changed (with the names withheld during warm start, which delta needs to tell "not ready" from
//! "gone"). Every stream task ([`stream`]) waits on that channel and on its Envoy's requests,
//! feeds both to its state machine ([`StreamState`] or [`DeltaState`]), and sends what it
//! decides; so a health transition reaches every connected Envoy as soon as its snapshot is
//! stored, with no polling delay, and the publisher never waits for any stream.

use super::assignment::{ClusterInput, assignment};
use super::delta::DeltaState;
use super::grpc;
use super::protocol::{self, Resource, Resources, StreamState};
use super::registry::{Mode, Registry};
use super::rest;
use super::source::ClusterSource;
use super::stream::{self, Delta, Label, Published, QUEUE, Session, Sotw};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use prost::Message;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// How often the publisher looks for changes when nothing announced one (discovery counters and
/// warm-start readiness of clusters that publish nothing else).
pub const POLL: Duration = Duration::from_secs(1);

/// A test-only hook: rewrites each assignment after vigil built it, to send what vigil itself
/// would never build (an update Envoy must reject, for NACK tests).
pub type Transform = Arc<dyn Fn(&mut ClusterLoadAssignment) + Send + Sync>;

/// The encoded resources of the ready clusters, with what the admin view shows about them.
pub fn build_resources(
    clusters: &[ClusterInput],
    transform: Option<&Transform>,
) -> (Resources, Vec<String>) {
    let mut resources = Resources::new();
    let mut withheld = Vec::new();
    for cluster in clusters {
        if !cluster.ready {
            withheld.push(cluster.name.clone());
            continue;
        }
        let mut cla = assignment(cluster);
        if let Some(transform) = transform {
            transform(&mut cla);
        }
        let body = cla.encode_to_vec();
        resources.insert(
            cluster.name.clone(),
            Resource {
                name: Arc::new(cluster.name.clone()),
                version: Arc::new(protocol::resource_version(&body)),
                body,
            },
        );
    }
    (resources, withheld)
}

/// The EDS server: a publisher task over a source, and the gRPC services over its output.
#[derive(Clone)]
pub struct EdsServer {
    published: watch::Receiver<Arc<Published>>,
    registry: Arc<Registry>,
    /// Makes nonces unique across runs of the server.
    run: String,
}

impl EdsServer {
    /// Starts publishing `source` (until `shutdown`); serve it with [`EdsServer::serve`].
    pub fn spawn(
        source: Arc<dyn ClusterSource>,
        transform: Option<Transform>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> EdsServer {
        let registry = Arc::new(Registry::new());
        let (tx, rx) = watch::channel(Arc::new(Published::default()));
        tokio::spawn(publish(source, transform, tx, registry.clone(), shutdown));
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        EdsServer {
            published: rx,
            registry,
            run: format!("{:x}", run as u64 ^ u64::from(std::process::id())),
        }
    }

    /// The admin view.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The resources served now.
    pub fn resources(&self) -> Resources {
        self.published.borrow().resources.clone()
    }

    /// Serves EDS and ADS on `listener` (plain text) until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        self.serve_incoming(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
    }

    /// Serves EDS and ADS over mTLS on `listener` until `shutdown`: only clients with a
    /// certificate from the client CA get past the handshake ([`super::tls`]).
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        self.serve_incoming(super::tls::incoming(listener, acceptor), shutdown)
            .await
    }

    async fn serve_incoming<S, IO, E>(
        self,
        incoming: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error>
    where
        S: tokio_stream::Stream<Item = Result<IO, E>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        tonic::transport::Server::builder()
            // Envoy keeps one long-lived stream per management server: keep it alive through
            // idle NATs and notice dead peers.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // REST-JSON clients (and curl) may speak HTTP/1.1.
            .accept_http1(true)
            .serve_with_incoming_shutdown(
                Router {
                    server: self.clone(),
                    eds: EndpointDiscoveryServiceServer::new(self.clone()),
                    rest_resources: self.published.clone(),
                    run: self.run.clone(),
                    ads: AggregatedDiscoveryServiceServer::new(self),
                },
                incoming,
                shutdown,
            )
            .await
    }

    /// Opens one stream: its task ([`stream::run`]) and the response that carries what it
    /// sends ([`grpc`]).
    fn open<S: Session>(
        &self,
        api: &'static str,
        request: http::Request<tonic::body::Body>,
        session: impl FnOnce(String) -> S,
    ) -> http::Response<tonic::body::Body> {
        let request = match grpc::requests::<S::Request>(request) {
            Ok(request) => request,
            Err(status) => return status.into_http(),
        };
        let remote = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.registry.open_stream(api, S::MODE, remote, QUEUE);
        let nonce_prefix = match S::MODE {
            Mode::Sotw => format!("{}-{id}", self.run),
            Mode::Delta => format!("{}-d{id}", self.run),
        };
        tokio::spawn(stream::run(
            Label {
                api,
                mode: S::MODE,
                stream: id,
            },
            session(nonce_prefix),
            inbound,
            tx,
            self.published.clone(),
            self.registry.clone(),
        ));
        grpc::response(rx)
    }
}

/// Dispatches by gRPC service name (tonic's own router needs its `router` feature, i.e. axum).
#[derive(Clone)]
struct Router {
    /// The streaming methods ([`EdsServer::open`]).
    server: EdsServer,
    /// The unary fetch, and UNIMPLEMENTED for what vigil does not serve.
    eds: EndpointDiscoveryServiceServer<EdsServer>,
    ads: AggregatedDiscoveryServiceServer<EdsServer>,
    rest_resources: watch::Receiver<Arc<Published>>,
    run: String,
}

const ADS_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/";
const ADS_SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const ADS_DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const EDS_SOTW: &str = "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints";
const EDS_DELTA: &str = "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints";

impl tower_service::Service<http::Request<tonic::body::Body>> for Router {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Both generated servers are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == rest::PATH {
            let published = self.rest_resources.borrow().clone();
            let prefix = format!("{}-rest", self.run);
            return Box::pin(async move {
                let answer = if request.method() == http::Method::POST {
                    match http_body_util::BodyExt::collect(request.into_body()).await {
                        Ok(body) => rest::answer(&body.to_bytes(), &published.resources, &prefix),
                        Err(err) => rest::RestAnswer {
                            status: 400,
                            body: format!("{{\"error\":\"cannot read the body: {err}\"}}"),
                        },
                    }
                } else {
                    rest::RestAnswer {
                        status: 405,
                        body: "{\"error\":\"POST a DiscoveryRequest\"}".to_string(),
                    }
                };
                let mut response = http::Response::new(tonic::body::Body::new(
                    http_body_util::Full::new(bytes::Bytes::from(answer.body)),
                ));
                *response.status_mut() =
                    http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::OK);
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok(response)
            });
        }
        // The streams (every Envoy's one long-lived call) are framed here ([`grpc`]); the
        // generated services answer the rest.
        let stream = match request.uri().path() {
            ADS_SOTW => Some(("ADS", false)),
            ADS_DELTA => Some(("ADS", true)),
            EDS_SOTW => Some(("EDS", false)),
            EDS_DELTA => Some(("EDS", true)),
            _ => None,
        };
        if let Some((api, delta)) = stream {
            let response = if delta {
                self.server
                    .open(api, request, |prefix| Delta(DeltaState::new(prefix)))
            } else {
                self.server
                    .open(api, request, |prefix| Sotw(StreamState::new(prefix)))
            };
            return Box::pin(async move { Ok(response) });
        }
        if request.uri().path().starts_with(ADS_PATH) {
            self.ads.call(request)
        } else {
            // EndpointDiscoveryService, and UNIMPLEMENTED for any other path.
            self.eds.call(request)
        }
    }
}

async fn publish(
    source: Arc<dyn ClusterSource>,
    transform: Option<Transform>,
    tx: watch::Sender<Arc<Published>>,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut seen = None;
    let changes = source.changes();
    let mut generation = changes.generation();
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = changes.wait_past(generation) => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        first = false;
        generation = changes.generation();
        let fingerprint = source.fingerprint();
        if seen == Some(fingerprint) {
            continue;
        }
        seen = Some(fingerprint);
        let clusters = source.clusters();
        let (resources, withheld) = build_resources(&clusters, transform.as_ref());
        let counts: BTreeMap<&str, usize> = clusters
            .iter()
            .map(|c| (c.name.as_str(), c.endpoints.len()))
            .collect();
        registry.set_published(
            resources
                .values()
                .map(|r| {
                    let count = counts.get(r.name.as_str()).copied().unwrap_or(0);
                    (r.name.to_string(), (r.version.to_string(), count))
                })
                .collect(),
            withheld.clone(),
        );
        let published = Published {
            resources,
            withheld: withheld.into_iter().collect(),
            known: true,
        };
        tx.send_if_modified(|current| {
            if **current == published {
                false
            } else {
                *current = Arc::new(published);
                true
            }
        });
    }
}

/// The generated services' streaming methods are never called: the router hands those calls to
/// [`EdsServer::open`] first.
fn never_here() -> Status {
    Status::internal("the xDS streams are served by the router's own framing (xds::grpc)")
}

#[tonic::async_trait]
impl EndpointDiscoveryService for EdsServer {
    type StreamEndpointsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaEndpointsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_endpoints(
        &self,
        request: tonic::Request<Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamEndpointsStream>, Status> {
        let _ = request;
        Err(never_here())
    }

    async fn delta_endpoints(
        &self,
        request: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaEndpointsStream>, Status> {
        let _ = request;
        Err(never_here())
    }

    async fn fetch_endpoints(
        &self,
        request: tonic::Request<DiscoveryRequest>,
    ) -> Result<tonic::Response<DiscoveryResponse>, Status> {
        // Unary fetch (what REST polling does over gRPC): the current subscribed resources, or
        // NOT_FOUND-free empty answer while they are withheld.
        let mut state = StreamState::new(format!("{}-fetch", self.run));
        state.on_request(&protocol::Request {
            response_nonce: String::new(),
            ..stream::to_request(request.get_ref())
        });
        let current = self.published.borrow().clone();
        match state.whole_response(&current.resources) {
            Some(response) => Ok(tonic::Response::new(stream::to_response(response))),
            None => Err(Status::unavailable(
                "no subscribed cluster is ready yet (first round of checks pending)",
            )),
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for EdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, Status> {
        let _ = request;
        Err(never_here())
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let _ = request;
        Err(never_here())
    }
}
