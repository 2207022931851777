//! The admin server: accepting connections (backing off when `accept` fails), the token check
//! for changing requests, `POST /reload` and `POST /runtime_modify` (which wait for a reload),
//! and the routing of every path to its page (`GET /`
//! from a browser to the status page, by its `Accept` header).

use super::clusters::{clusters_json, clusters_text, initialized};
use super::history::history_json;
use super::prometheus::prometheus;
use super::query::form_pairs;
use super::reply::{json_response, method_not_allowed, post_required, text, unauthorized};
use super::stats::stats;
use super::status;
use super::{AdminState, Body};
use crate::conn_limit::AcceptBackoff;
use crate::events::rfc3339_millis;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        // A failed accept (e.g. descriptors exhausted) must not stop the admin server, nor spin.
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(err) => {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = backoff.wait("admin", &err) => continue,
                }
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Routes one admin request.
pub async fn handle(state: &AdminState, request: Request<Incoming>) -> Response<Body> {
    if !authorized(state, request.method(), request.headers()) {
        return unauthorized();
    }
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    if path == "/reload" {
        return reload(state, request.method()).await;
    }
    if path == "/runtime_modify" {
        let method = request.method().clone();
        let form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/x-www-form-urlencoded");
        // The body is read only when it can hold the parameters (bounded: a form of keys).
        let body = if form && query.is_empty() && method == Method::POST {
            let limited = http_body_util::Limited::new(request.into_body(), 64 * 1024);
            match http_body_util::BodyExt::collect(limited).await {
                Ok(collected) => Some(String::from_utf8_lossy(&collected.to_bytes()).into_owned()),
                Err(_) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the form is larger than 64 KiB\n".into(),
                    );
                }
            }
        } else {
            None
        };
        return super::runtime::runtime_modify(state, &method, &query, body.as_deref()).await;
    }
    route_request(state, request.method(), &path, &query, request.headers())
}

/// [`route`], except that `GET /` (or `HEAD`) from a client accepting `text/html` (a browser)
/// answers the status page instead of the command list.
pub fn route_request(
    state: &AdminState,
    method: &Method,
    path: &str,
    query: &str,
    headers: &http::HeaderMap,
) -> Response<Body> {
    if path == "/"
        && (method == Method::GET || method == Method::HEAD)
        && status::wants_page(headers)
    {
        return status::page();
    }
    route(state, method, path, query)
}

/// Whether a request may proceed: reads always, anything else only with the admin token when
/// one is set.
pub fn authorized(state: &AdminState, method: &Method, headers: &http::HeaderMap) -> bool {
    match &state.token {
        None => true,
        Some(_) if method == Method::GET || method == Method::HEAD => true,
        Some(token) => token.admits(headers.get(header::AUTHORIZATION)),
    }
}

/// `POST /reload`: asks the main loop to re-read the config file; a bad file is refused and the
/// running config stays.
pub async fn reload(state: &AdminState, method: &Method) -> Response<Body> {
    if method != Method::POST {
        return post_required(method);
    }
    let Some(requests) = &state.reload else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "reload is not available\n".into(),
        );
    };
    let (reply, answer) = oneshot::channel();
    if requests.send(reply).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    match answer.await {
        Ok(Ok(summary)) => text(StatusCode::OK, format!("{summary}\n")),
        Ok(Err(reason)) => text(
            StatusCode::BAD_REQUEST,
            format!("reload rejected, the previous config keeps running:\n{reason}\n"),
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()),
    }
}

/// The routing itself, separate from hyper so it can be tested directly.
pub fn route(state: &AdminState, method: &Method, path: &str, query: &str) -> Response<Body> {
    if let Some(response) = status::route(state, method, path) {
        return response;
    }
    let params: Vec<(String, String)> = form_pairs(query);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match path {
        "/clusters" | "/stats" | "/stats/prometheus" | "/ready" | "/help" | "/"
        | "/hosts/history" | "/xds"
            if method != Method::GET && method != Method::HEAD =>
        {
            method_not_allowed("GET")
        }
        "/healthcheck/fail" | "/healthcheck/ok" if method != Method::POST => post_required(method),
        "/clusters" => match param("format") {
            Some("json") => json_response(clusters_json(state)),
            None | Some("text") => text(StatusCode::OK, clusters_text(state)),
            Some(other) => text(
                StatusCode::BAD_REQUEST,
                format!("invalid format '{other}': use format=json or format=text\n"),
            ),
        },
        "/stats" => {
            let filter = match param("filter").map(regex::Regex::new).transpose() {
                Ok(filter) => filter,
                Err(err) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("invalid regex in filter: {err}\n"),
                    );
                }
            };
            let mut out = String::new();
            for (name, value, _) in stats(state) {
                if filter.as_ref().is_none_or(|re| re.is_match(&name)) {
                    let _ = writeln!(out, "{name}: {value}");
                }
            }
            text(StatusCode::OK, out)
        }
        "/stats/prometheus" => text(StatusCode::OK, prometheus(state)),
        "/ready" => {
            if initialized(state) {
                text(StatusCode::OK, "LIVE\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "INITIALIZING\n".into())
            }
        }
        "/healthcheck/fail" => {
            state.failing.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n".into())
        }
        "/healthcheck/ok" => {
            state.failing.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n".into())
        }
        "/hosts/history" => json_response(history_json(state)),
        "/runtime" => super::runtime::runtime(state),
        "/xds" => match &state.xds {
            Some(registry) => json_response(registry.to_json()),
            None => text(
                StatusCode::NOT_FOUND,
                "the xDS server is not running: start vigil with --xds-address\n".into(),
            ),
        },
        "/config_dump" => {
            let dump = state.config.load();
            let source = match dump.source() {
                Ok(source) => source,
                Err(err) => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("the config in force cannot be read back: {err}\n"),
                    );
                }
            };
            let mut entry = serde_json::Map::new();
            entry.insert(
                "@type".into(),
                json!("type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"),
            );
            entry.insert("bootstrap".into(), source);
            if let Some(at) = dump.loaded_at {
                entry.insert("last_updated".into(), json!(rfc3339_millis(at)));
            }
            json_response(json!({ "configs": [Value::Object(entry)] }))
        }
        "/help" | "/" => text(StatusCode::OK, HELP.into()),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("invalid path: {path}\n{HELP}"),
        ),
    }
}

const HELP: &str = "admin commands are:
  /: this text
  /reload (POST): re-read the config file; a bad file is refused and the running config stays (vigil)
  /clusters: upstream cluster status (format=json for JSON)
  /config_dump: the running config as read (BootstrapConfigDump)
  /healthcheck/fail (POST): cause the server to fail health checks
  /healthcheck/ok (POST): cause the server to pass health checks
  /help: this text
  /runtime: the runtime layers and every key's value in each
  /runtime_modify (POST): set runtime keys in the admin layer (key=value; an empty value removes one)
  /hosts/history: the last health transitions of every host, with their reasons (vigil)
  /ready: print server state, return 200 if LIVE, otherwise 503
  /stats: print server stats (filter=REGEX)
  /stats/prometheus: print server stats in prometheus format
  /status.json: every cluster's hosts with their flags, last check (result, latency, time), outlier state and transitions, as JSON; a browser's GET / shows them as a live page (vigil)
  /xds: the EDS server's connected Envoys, their node ids, and per cluster the versions sent, ACKed and NACKed (vigil, with --xds-address)
";
