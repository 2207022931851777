//! The SDS client: secrets from SDS servers over gRPC, as Envoy subscribes to them. One
//! `StreamSecrets` stream (state of the world) per subscription (an SDS cluster and a secret
//! name: Envoy opens one stream per `SdsApi`, and shares an `SdsApi` between references with the
//! same source and name), to the cluster's endpoints in the order written, over TCP or a unix
//! `pipe` socket, with `:authority` the cluster's name as Envoy's own gRPC client sends it.
//!
//! Each request carries the node (`id`, `cluster`), the Secret type URL and the one resource
//! name. A response is turned into a `Secret` JSON tree ([`secret_json`]; a field vigil does not
//! read is refused) and handed to the main loop as a [`SecretUpdate`]; the loop's verdict (the
//! config loaded with it, or why not) is the ACK (`version_info` and `response_nonce`) or the
//! NACK (the last accepted version, the nonce, and `error_detail` with gRPC code 13, as Envoy's
//! mux sends it). When the stream breaks, the client reconnects after Envoy's jittered
//! exponential backoff (0.5 s base, 30 s cap), resending the last accepted version; the secrets
//! already received stay in use meanwhile.

use envoy_types::pb::envoy::config::core::v3::{DataSource, Node, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SubjectAltNameMatcher, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use vigil_core::config::{GrpcSds, SECRET_TYPE, SdsEndpoint, SecretKey};

/// A secret received, for the main loop to try: `verdict` gets `Ok` when it is in use (ACK), or
/// why not (NACK, the running secrets stay).
pub struct SecretUpdate {
    pub key: SecretKey,
    /// The `Secret` as a JSON tree (`name`, and `tls_certificate` or `validation_context`).
    pub secret: Value,
    pub verdict: oneshot::Sender<Result<(), String>>,
}

/// The gRPC code Envoy's mux puts in a NACK's `error_detail` (INTERNAL).
const NACK_CODE: i32 = 13;

/// Envoy's xDS reconnection backoff: a jittered exponential from 500 ms, at most 30 s.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The subscriptions' streams, started and stopped as configs come and go.
pub struct SdsClient {
    updates: mpsc::Sender<SecretUpdate>,
    /// Each subscription's task and the endpoints it connects to.
    streams: BTreeMap<SecretKey, (tokio::task::JoinHandle<()>, Vec<SdsEndpoint>)>,
}

impl SdsClient {
    /// A client handing what it receives to `updates`.
    pub fn new(updates: mpsc::Sender<SecretUpdate>) -> SdsClient {
        SdsClient {
            updates,
            streams: BTreeMap::new(),
        }
    }

    /// Subscribes to `plan`'s secrets not yet subscribed to, and ends the subscriptions it no
    /// longer names. A subscription whose server's endpoints changed is restarted.
    pub fn follow(&mut self, plan: &GrpcSds) {
        let wanted: BTreeMap<SecretKey, Vec<SdsEndpoint>> = plan
            .subscriptions()
            .into_iter()
            .map(|(key, _)| {
                let endpoints = plan.servers.get(&key.cluster).cloned().unwrap_or_default();
                (key, endpoints)
            })
            .collect();
        self.streams.retain(|key, (task, endpoints)| {
            let keep = wanted.get(key) == Some(endpoints);
            if !keep {
                log::info!(
                    "SDS: secret '{}' from cluster '{}' is no longer used, or its server moved: \
                     unsubscribing",
                    key.name,
                    key.cluster
                );
                task.abort();
            }
            keep
        });
        let node = Node {
            id: plan.node_id.clone(),
            cluster: plan.node_cluster.clone(),
            user_agent_name: "vigil".into(),
            ..Node::default()
        };
        for (key, endpoints) in wanted {
            if self.streams.contains_key(&key) {
                continue;
            }
            let subscription = Subscription {
                key: key.clone(),
                endpoints: Arc::new(endpoints.clone()),
                node: node.clone(),
                updates: self.updates.clone(),
            };
            let task = tokio::spawn(subscription.run_forever());
            self.streams.insert(key, (task, endpoints));
        }
    }
}

impl Drop for SdsClient {
    fn drop(&mut self) {
        for (task, _) in self.streams.values() {
            task.abort();
        }
    }
}

/// One secret's stream.
struct Subscription {
    key: SecretKey,
    endpoints: Arc<Vec<SdsEndpoint>>,
    node: Node,
    updates: mpsc::Sender<SecretUpdate>,
}

/// How a stream ended.
enum Ended {
    /// The main loop is gone: stop.
    Stopped,
    /// The connection or stream failed; `received` says whether a response came first (the
    /// backoff starts over then).
    Broken { why: String, received: bool },
}

impl Subscription {
    async fn run_forever(self) {
        // The version last ACKed, sent again when the stream is reopened, as Envoy does.
        let mut accepted = String::new();
        let mut failures: u32 = 0;
        loop {
            match self.stream_once(&mut accepted).await {
                Ended::Stopped => return,
                Ended::Broken { why, received } => {
                    if received {
                        failures = 0;
                    }
                    let wait = backoff(failures);
                    failures = failures.saturating_add(1);
                    log::warn!(
                        "SDS: the stream for secret '{}' from cluster '{}' failed ({why}); \
                         retrying in {wait:?}, the last secrets received stay in use",
                        self.key.name,
                        self.key.cluster
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn request(&self, version: &str, nonce: &str, error: Option<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.to_string(),
            node: Some(self.node.clone()),
            resource_names: vec![self.key.name.clone()],
            type_url: SECRET_TYPE.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: error.map(|message| Status {
                code: NACK_CODE,
                message,
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        }
    }

    async fn stream_once(&self, accepted: &mut String) -> Ended {
        let broken = |why: String, received: bool| Ended::Broken { why, received };
        // The URI only carries the authority (the cluster's name, as Envoy sends it); the
        // connector picks the endpoint.
        let uri = format!("http://{}", self.key.cluster);
        let endpoint = match tonic::transport::Endpoint::from_shared(uri)
            .or_else(|_| tonic::transport::Endpoint::from_shared("http://sds".to_string()))
        {
            Ok(endpoint) => endpoint.connect_timeout(Duration::from_secs(5)),
            Err(err) => return broken(format!("bad authority: {err}"), false),
        };
        let connector = Connector {
            endpoints: self.endpoints.clone(),
        };
        let channel = match endpoint.connect_with_connector(connector).await {
            Ok(channel) => channel,
            Err(err) => return broken(format!("cannot connect: {}", source_chain(&err)), false),
        };
        let mut client = SecretDiscoveryServiceClient::new(channel);
        let (requests, requests_rx) = mpsc::channel::<DiscoveryRequest>(4);
        if requests
            .send(self.request(accepted, "", None))
            .await
            .is_err()
        {
            return Ended::Stopped;
        }
        let outgoing = tokio_stream::wrappers::ReceiverStream::new(requests_rx);
        let mut responses = match client.stream_secrets(outgoing).await {
            Ok(answer) => answer.into_inner(),
            Err(status) => return broken(format!("StreamSecrets: {status}"), false),
        };
        let mut received = false;
        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return broken("the server closed the stream".into(), received),
                Err(status) => return broken(format!("{status}"), received),
            };
            received = true;
            let reply = match self.take(&response) {
                Err(why) => Err(why),
                Ok(secret) => {
                    let (verdict, verdict_rx) = oneshot::channel();
                    let update = SecretUpdate {
                        key: self.key.clone(),
                        secret,
                        verdict,
                    };
                    if self.updates.send(update).await.is_err() {
                        return Ended::Stopped;
                    }
                    match verdict_rx.await {
                        Ok(verdict) => verdict,
                        Err(_) => return Ended::Stopped,
                    }
                }
            };
            let request = match reply {
                Ok(()) => {
                    log::info!(
                        "SDS: secret '{}' version '{}' from cluster '{}' is in use",
                        self.key.name,
                        response.version_info,
                        self.key.cluster
                    );
                    accepted.clone_from(&response.version_info);
                    self.request(accepted, &response.nonce, None)
                }
                Err(why) => {
                    log::error!(
                        "SDS: secret '{}' version '{}' from cluster '{}' rejected, the previous \
                         one stays in use: {why}",
                        self.key.name,
                        response.version_info,
                        self.key.cluster
                    );
                    self.request(accepted, &response.nonce, Some(why))
                }
            };
            if requests.send(request).await.is_err() {
                return broken("the request stream closed".into(), received);
            }
        }
    }

    /// The subscribed secret in a response, as JSON, or why the response is refused (Envoy's
    /// `SdsApi` words where it has them).
    fn take(&self, response: &DiscoveryResponse) -> Result<Value, String> {
        let name = &self.key.name;
        if response.type_url != SECRET_TYPE {
            return Err(format!(
                "unexpected type_url '{}' (expecting {SECRET_TYPE})",
                response.type_url
            ));
        }
        let [resource] = response.resources.as_slice() else {
            return Err(match response.resources.len() {
                0 => format!("Missing SDS resources for {name} in onConfigUpdate()"),
                n => format!("Unexpected SDS secrets length: {n}"),
            });
        };
        if resource.type_url != SECRET_TYPE {
            return Err(format!(
                "a resource of type '{}' in an SDS response",
                resource.type_url
            ));
        }
        let secret = Secret::decode(resource.value.as_slice())
            .map_err(|err| format!("the Secret does not decode: {err}"))?;
        if secret.name != *name {
            return Err(format!(
                "Unexpected SDS secret (expecting {name}): {}",
                secret.name
            ));
        }
        secret_json(&secret)
    }
}

/// The wait before the `failures`-th reconnection: a random part of an exponential interval,
/// as Envoy's `JitteredExponentialBackOffStrategy` draws it (never less than 50 ms here, so a
/// server that is down is not hammered).
fn backoff(failures: u32) -> Duration {
    let interval = BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(BACKOFF_MAX);
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let millis = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis((u64::from(jitter) % millis).max(50))
}

/// An error with its sources, which is where tonic keeps the reason.
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// `Secret` to the JSON tree Envoy's proto-JSON gives, for the fields vigil reads; a secret
/// setting any other field is refused (vigil would serve or check something else than Envoy).
pub fn secret_json(secret: &Secret) -> Result<Value, String> {
    let mut out = Map::new();
    out.insert("name".into(), json!(secret.name));
    match &secret.r#type {
        Some(secret::Type::TlsCertificate(certificate)) => {
            out.insert("tls_certificate".into(), tls_certificate(certificate)?);
        }
        Some(secret::Type::ValidationContext(context)) => {
            out.insert("validation_context".into(), validation_context(context)?);
        }
        Some(secret::Type::SessionTicketKeys(_)) => {
            return Err("session ticket keys are not implemented by vigil".into());
        }
        Some(secret::Type::GenericSecret(_)) => {
            return Err(
                "a generic secret cannot be a TLS certificate or validation context".into(),
            );
        }
        None => return Err(format!("the secret '{}' holds nothing", secret.name)),
    }
    Ok(Value::Object(out))
}

fn tls_certificate(certificate: &TlsCertificate) -> Result<Value, String> {
    let mut rest = certificate.clone();
    let mut out = Map::new();
    if let Some(chain) = rest.certificate_chain.take() {
        out.insert("certificate_chain".into(), data_source(&chain)?);
    }
    if let Some(key) = rest.private_key.take() {
        out.insert("private_key".into(), data_source(&key)?);
    }
    if rest != TlsCertificate::default() {
        return Err(format!(
            "tls_certificate sets fields vigil does not implement (only certificate_chain and \
             private_key are): {rest:?}"
        ));
    }
    Ok(Value::Object(out))
}

fn validation_context(context: &CertificateValidationContext) -> Result<Value, String> {
    let mut rest = context.clone();
    let mut out = Map::new();
    if let Some(ca) = rest.trusted_ca.take() {
        out.insert("trusted_ca".into(), data_source(&ca)?);
    }
    if let Some(crl) = rest.crl.take() {
        out.insert("crl".into(), data_source(&crl)?);
    }
    let spki = std::mem::take(&mut rest.verify_certificate_spki);
    if !spki.is_empty() {
        out.insert("verify_certificate_spki".into(), json!(spki));
    }
    let hashes = std::mem::take(&mut rest.verify_certificate_hash);
    if !hashes.is_empty() {
        out.insert("verify_certificate_hash".into(), json!(hashes));
    }
    let matchers = std::mem::take(&mut rest.match_typed_subject_alt_names);
    if !matchers.is_empty() {
        let matchers = matchers
            .iter()
            .map(san_matcher)
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(
            "match_typed_subject_alt_names".into(),
            Value::Array(matchers),
        );
    }
    if std::mem::take(&mut rest.allow_expired_certificate) {
        out.insert("allow_expired_certificate".into(), json!(true));
    }
    match std::mem::take(&mut rest.trust_chain_verification) {
        0 => {}
        1 => {
            out.insert("trust_chain_verification".into(), json!("ACCEPT_UNTRUSTED"));
        }
        other => return Err(format!("unknown trust_chain_verification {other}")),
    }
    if rest != CertificateValidationContext::default() {
        return Err(format!(
            "validation_context sets fields vigil does not implement from SDS (trusted_ca, crl, \
             verify_certificate_spki / _hash, match_typed_subject_alt_names, \
             allow_expired_certificate and trust_chain_verification are): {rest:?}"
        ));
    }
    Ok(Value::Object(out))
}

fn san_matcher(matcher: &SubjectAltNameMatcher) -> Result<Value, String> {
    let san_type = match matcher.san_type {
        1 => "EMAIL",
        2 => "DNS",
        3 => "URI",
        4 => "IP_ADDRESS",
        5 => "OTHER_NAME",
        other => return Err(format!("unknown or unset san_type {other}")),
    };
    let mut out = json!({"san_type": san_type});
    if let Some(string) = &matcher.matcher {
        out["matcher"] = string_matcher(string)?;
    }
    if !matcher.oid.is_empty() {
        out["oid"] = json!(matcher.oid);
    }
    Ok(out)
}

fn string_matcher(matcher: &StringMatcher) -> Result<Value, String> {
    let mut out = match &matcher.match_pattern {
        Some(MatchPattern::Exact(s)) => json!({"exact": s}),
        Some(MatchPattern::Prefix(s)) => json!({"prefix": s}),
        Some(MatchPattern::Suffix(s)) => json!({"suffix": s}),
        Some(MatchPattern::Contains(s)) => json!({"contains": s}),
        Some(MatchPattern::SafeRegex(regex)) => {
            if regex.engine_type.is_some() {
                return Err("a regex matcher with an engine_type is not read by vigil".into());
            }
            json!({"safe_regex": {"regex": regex.regex}})
        }
        Some(MatchPattern::Custom(_)) => {
            return Err("custom string matchers are not implemented by vigil".into());
        }
        None => json!({}),
    };
    if matcher.ignore_case {
        out["ignore_case"] = json!(true);
    }
    Ok(out)
}

fn data_source(source: &DataSource) -> Result<Value, String> {
    if source.watched_directory.is_some() {
        return Err("a watched_directory is not implemented by vigil".into());
    }
    Ok(match &source.specifier {
        Some(Specifier::Filename(file)) => json!({"filename": file}),
        Some(Specifier::InlineString(text)) => json!({"inline_string": text}),
        Some(Specifier::EnvironmentVariable(name)) => json!({"environment_variable": name}),
        Some(Specifier::InlineBytes(bytes)) => match std::str::from_utf8(bytes) {
            // vigil reads PEM, which is text: the bytes are the same as an inline_string.
            Ok(text) => json!({"inline_string": text}),
            Err(_) => return Err("inline_bytes that are not PEM text are not read by vigil".into()),
        },
        None => json!({}),
    })
}

/// Connects to an SDS cluster's endpoints, the first that answers.
#[derive(Clone)]
struct Connector {
    endpoints: Arc<Vec<SdsEndpoint>>,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<ServerStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let endpoints = self.endpoints.clone();
        Box::pin(async move {
            let mut last = std::io::Error::other("the SDS cluster has no endpoints");
            for endpoint in endpoints.iter() {
                let connected = match endpoint {
                    SdsEndpoint::Tcp { address, port } => match address.parse::<std::net::IpAddr>()
                    {
                        Ok(ip) => TcpStream::connect((ip, *port)).await.map(ServerStream::Tcp),
                        Err(_) => Err(std::io::Error::other(format!(
                            "{address} is not an IP address"
                        ))),
                    },
                    SdsEndpoint::Pipe { path } => connect_pipe(path).await.map(ServerStream::Unix),
                };
                match connected {
                    Ok(stream) => return Ok(hyper_util::rt::TokioIo::new(stream)),
                    Err(err) => last = err,
                }
            }
            Err(last)
        })
    }
}

/// A unix socket, `@name` being Linux's abstract namespace as in Envoy.
async fn connect_pipe(path: &str) -> std::io::Result<UnixStream> {
    #[cfg(target_os = "linux")]
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let stream = std::os::unix::net::UnixStream::connect_addr(&address)?;
        stream.set_nonblocking(true)?;
        return UnixStream::from_std(stream);
    }
    UnixStream::connect(path).await
}

/// A connection to an SDS server.
enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;

    fn inline(text: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(Specifier::InlineString(text.into())),
            ..DataSource::default()
        })
    }

    #[test]
    fn secrets_become_the_json_envoy_reads_and_unknown_fields_are_refused() {
        let certificate = Secret {
            name: "server".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline("CHAIN"),
                private_key: Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(b"KEY".to_vec())),
                    ..DataSource::default()
                }),
                ..TlsCertificate::default()
            })),
        };
        assert_eq!(
            secret_json(&certificate).unwrap(),
            json!({"name": "server", "tls_certificate": {
                "certificate_chain": {"inline_string": "CHAIN"},
                "private_key": {"inline_string": "KEY"}}})
        );
        let ca = Secret {
            name: "ca".into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline("CA"),
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: SanType::Dns as i32,
                        matcher: Some(StringMatcher {
                            match_pattern: Some(MatchPattern::Exact("backend.test".into())),
                            ignore_case: false,
                        }),
                        oid: String::new(),
                    }],
                    ..CertificateValidationContext::default()
                },
            )),
        };
        assert_eq!(
            secret_json(&ca).unwrap(),
            json!({"name": "ca", "validation_context": {
                "trusted_ca": {"inline_string": "CA"},
                "match_typed_subject_alt_names": [
                    {"san_type": "DNS", "matcher": {"exact": "backend.test"}}]}})
        );
        // A password-protected key is not read by vigil: refused rather than ignored.
        let with_password = Secret {
            name: "server".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline("CHAIN"),
                private_key: inline("KEY"),
                password: inline("hunter2"),
                ..TlsCertificate::default()
            })),
        };
        let err = secret_json(&with_password).unwrap_err();
        assert!(err.contains("password"), "{err}");
    }

    #[test]
    fn the_backoff_grows_and_stays_within_envoys_bounds() {
        for failures in 0..40 {
            let wait = backoff(failures);
            let ceiling = BACKOFF_BASE
                .saturating_mul(2u32.saturating_pow(failures.min(16)))
                .min(BACKOFF_MAX);
            assert!(
                wait >= Duration::from_millis(50) && wait <= ceiling.max(Duration::from_millis(50))
            );
        }
    }
}
