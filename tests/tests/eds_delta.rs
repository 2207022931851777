//! Faulty xDS clients next to a real Envoy 1.36.2 on delta EDS (`api_type: DELTA_GRPC`) from
//! `vigil --xds-address` (docs/eds.md): a raw gRPC client that subscribes (to the cluster and to
//! a cluster vigil does not run) and then never reads its stream, and one that sends a malformed
//! request. While blue's `/livez` flips four times, the Envoy follows every transition within
//! vigil's verdict + 1 s: the never-reading client's full queue holds up nobody. vigil logs each
//! fault once, and `/xds` shows the stalled queue and the unknown subscription.

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Command;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use vigil_tests::bootstrap::{EdsFront, HealthCheck, XdsApi, cluster_yaml, clusters_only_config};
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::{AdminProcess, READY_TIMEOUT};
use vigil_tests::process::Child;
use vigil_tests::{http, net, paths, wait_until};

const CLUSTER: &str = "web_cluster_01";
const UNKNOWN: &str = "no_such_cluster";
const EDS_TYPE_URL: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const DELTA_ENDPOINTS: &str = "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints";
const INTERVAL: Duration = Duration::from_millis(500);
const STEP: Duration = Duration::from_secs(10);

/// A request body fed from a channel: gRPC messages, already framed.
struct Outbound(mpsc::Receiver<Bytes>);

impl Body for Outbound {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// One gRPC message on the wire: uncompressed flag, length, bytes.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

/// A raw HTTP/2 client on `DeltaEndpoints` whose receive window is a few bytes and who never
/// reads: what vigil sends it stays in vigil's buffers. Keep the returned parts alive.
struct RawClient {
    requests: mpsc::Sender<Bytes>,
    _response: hyper::Response<Incoming>,
    _sender: http2::SendRequest<Outbound>,
}

async fn raw_client(xds: SocketAddr) -> RawClient {
    let tcp = TcpStream::connect(xds).await.unwrap();
    let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16)
        .adaptive_window(false)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let (requests, outbound) = mpsc::channel(4);
    let request = hyper::Request::post(format!("http://{xds}{DELTA_ENDPOINTS}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Outbound(outbound))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    RawClient {
        requests,
        _response: response,
        _sender: sender,
    }
}

async fn flags(process: &AdminProcess, host: SocketAddr) -> String {
    process
        .health_flags(CLUSTER)
        .await
        .ok()
        .and_then(|f| f.get(&host.to_string()).cloned())
        .unwrap_or_else(|| "(absent)".into())
}

async fn xds_view(admin: SocketAddr) -> serde_json::Value {
    let response = http::get(admin, "/xds").await.unwrap();
    assert_eq!(response.status, 200, "/xds: {}", response.body);
    serde_json::from_str(&response.body).unwrap()
}

fn entry<'a>(view: &'a serde_json::Value, node: &str) -> Option<&'a serde_json::Value> {
    view["envoys"]
        .as_array()?
        .iter()
        .find(|e| e["node_id"] == node)
}

#[tokio::test]
async fn a_client_that_never_reads_holds_up_no_one_and_faults_are_logged_once() {
    let dir = paths::scratch_dir("eds-delta");
    let blue_at = net::fresh_socket();
    let yellow_at = net::fresh_socket();
    let blue = DemoApp::start("blue", blue_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let _yellow = DemoApp::start("yellow", yellow_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let vigil_admin = net::fresh_socket();
    let xds = net::fresh_socket();
    let check = HealthCheck::new(INTERVAL, Duration::from_millis(500));
    let config = clusters_only_config(
        vigil_admin,
        &cluster_yaml(CLUSTER, &[blue_at, yellow_at], "", Some(&check)),
    );
    let path = dir.join("vigil.yaml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(paths::workspace_binary("vigil"));
    command
        .arg("-c")
        .arg(&path)
        .args(["--log-level", "info", "--xds-address"])
        .arg(xds.to_string());
    let vigil = AdminProcess {
        child: Child::spawn("vigil", command, &dir),
        admin: vigil_admin,
    };
    wait_until("vigil /ready", READY_TIMEOUT, || async {
        (http::get(vigil_admin, "/ready").await.ok()?.status == 200).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", vigil.child.log_tail(30)));

    let admin = net::fresh_socket();
    let listen = net::fresh_socket();
    let yaml = EdsFront {
        node_id: "front-delta",
        node_cluster: "fleet",
        admin,
        listen,
        xds,
        initial_fetch_timeout: "5s",
    }
    .render_api(XdsApi::Delta)
    .unwrap();
    let envoy = AdminProcess::start("envoy", &yaml, admin, None, &dir)
        .await
        .unwrap();
    wait_until("blue healthy on the Envoy", STEP, || async {
        (flags(&envoy, blue_at).await == "healthy").then_some(())
    })
    .await
    .unwrap();

    // The client that never reads: it subscribes to the cluster and to one vigil does not run.
    let never_reads = raw_client(xds).await;
    let subscribe = DeltaDiscoveryRequest {
        node: Some(Node {
            id: "never-reads".into(),
            cluster: "faults".into(),
            ..Node::default()
        }),
        type_url: EDS_TYPE_URL.into(),
        resource_names_subscribe: vec![CLUSTER.into(), UNKNOWN.into()],
        ..DeltaDiscoveryRequest::default()
    };
    never_reads
        .requests
        .send(grpc_frame(&subscribe.encode_to_vec()))
        .await
        .unwrap();
    // A malformed request: not a DeltaDiscoveryRequest.
    let malformed = raw_client(xds).await;
    malformed
        .requests
        .send(grpc_frame(&[0xff, 0xff, 0xff, 0xff]))
        .await
        .unwrap();
    wait_until("the never-reading client registered", STEP, || async {
        let view = xds_view(vigil_admin).await;
        let client = entry(&view, "never-reads")?;
        (client["unknown"] == serde_json::json!([UNKNOWN])).then_some(())
    })
    .await
    .unwrap();

    // Four transitions: the first response fills the client's window, the next two its queue,
    // the fourth finds it full. The Envoy follows each one at once all the same.
    for (livez, expected) in [
        ("FAIL", "/failed_eds_health"),
        ("OK", "healthy"),
        ("FAIL", "/failed_eds_health"),
        ("OK", "healthy"),
    ] {
        blue.set_livez(livez).await.unwrap();
        let verdict = if livez == "FAIL" {
            "/failed_active_hc"
        } else {
            "healthy"
        };
        wait_until("vigil's verdict on blue", STEP, || async {
            flags(&vigil, blue_at).await.contains(verdict).then_some(())
        })
        .await
        .unwrap();
        let decided = Instant::now();
        wait_until("the Envoy to follow", STEP, || async {
            (flags(&envoy, blue_at).await == expected).then_some(())
        })
        .await
        .unwrap();
        assert!(
            decided.elapsed() <= Duration::from_secs(1),
            "blue {expected} on the Envoy {:?} after vigil's verdict",
            decided.elapsed()
        );
    }

    let stalled = wait_until(
        "the never-reading client shown as stalled",
        STEP,
        || async {
            let view = xds_view(vigil_admin).await;
            let queue = &entry(&view, "never-reads")?["queue"];
            (queue["stalled"] == true && queue["queued"] == 2).then_some(())
        },
    )
    .await;
    let view = xds_view(vigil_admin).await;
    if let Err(err) = stalled {
        panic!("{err}\n{view:#}");
    }
    let front = entry(&view, "front-delta").unwrap();
    assert_eq!(front["mode"], "delta");
    assert_eq!(front["queue"]["stalled"], false, "{front}");
    assert_eq!(front["nacks"], 0, "{front}");
    assert!(front.get("unknown").is_none(), "{front}");
    // Only the malformed client's stream is gone.
    assert_eq!(view["envoys"].as_array().unwrap().len(), 2, "{view}");

    let log = vigil.child.stderr() + &vigil.child.stdout();
    for (what, needle) in [
        ("the never-reading client", "is not reading its responses"),
        ("the unknown cluster", "which vigil does not run"),
        ("the malformed request", "malformed request"),
    ] {
        assert_eq!(
            log.matches(needle).count(),
            1,
            "{what} logged once:\n{}",
            vigil.child.log_tail(40)
        );
    }
}
