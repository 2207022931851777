//! The HTTP endpoints: the original app's (`/`, `/hostname`, `/livez`, `/readyz`, `/configs`,
//! `/user-agent`) with their exact bodies, plus the toggles (`/grpc-health`, `/tcp`, `/faults`)
//! and the request counters (`/hits`).

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use log::{debug, info};
use serde_json::Value;
use tokio::net::TcpListener;
use vigil_core::grpc_health::ServingStatus;

use crate::hex;
use crate::serve::{ConnInfo, Shutdown, serve_connections};
use crate::state::{AppState, Faults, lock};
use crate::tcp::{TcpMode, TcpUpdate, TcpUpdateError};

/// Largest request body accepted; anything bigger is answered with 413.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

type HttpResponse = Response<Full<Bytes>>;

pub(crate) async fn serve(listener: TcpListener, app: Arc<AppState>, shutdown: Shutdown) {
    serve_connections("http", listener, shutdown, move |conn| {
        let app = app.clone();
        service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(handle(&app, conn, request).await) }
        })
    })
    .await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Root,
    Hostname,
    Livez,
    Readyz,
    Configs,
    UserAgent,
    GrpcHealth,
    Tcp,
    Faults,
    Hits,
    HitsReset,
}

impl Endpoint {
    fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/" => Endpoint::Root,
            "/hostname" => Endpoint::Hostname,
            "/livez" => Endpoint::Livez,
            "/readyz" => Endpoint::Readyz,
            "/configs" => Endpoint::Configs,
            "/user-agent" => Endpoint::UserAgent,
            "/grpc-health" => Endpoint::GrpcHealth,
            "/tcp" => Endpoint::Tcp,
            "/faults" => Endpoint::Faults,
            "/hits" => Endpoint::Hits,
            "/hits/reset" => Endpoint::HitsReset,
            _ => return None,
        })
    }

    fn accepts(self, verb: Verb) -> bool {
        match verb {
            Verb::Get => self != Endpoint::HitsReset,
            Verb::Post => matches!(
                self,
                Endpoint::Livez
                    | Endpoint::Readyz
                    | Endpoint::GrpcHealth
                    | Endpoint::Tcp
                    | Endpoint::Faults
                    | Endpoint::HitsReset
            ),
        }
    }

    /// The `Allow` header for a 405.
    fn allow(self) -> &'static str {
        match (self.accepts(Verb::Get), self.accepts(Verb::Post)) {
            (true, true) => "GET, HEAD, POST",
            (true, false) => "GET, HEAD",
            (false, _) => "POST",
        }
    }

    /// Reading the counters must not change them, or every poll of `/hits` would show up in it.
    fn is_counted(self) -> bool {
        !matches!(self, Endpoint::Hits | Endpoint::HitsReset)
    }
}

/// Methods the endpoints distinguish; HEAD is answered as GET, without the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
}

async fn handle(app: &AppState, conn: ConnInfo, request: Request<Incoming>) -> HttpResponse {
    let path = request.uri().path().to_string();
    let user_agent = header_text(request.headers(), USER_AGENT);
    let endpoint = Endpoint::from_path(&path);
    if endpoint.is_none_or(Endpoint::is_counted) {
        app.hits.record(&path, &user_agent);
    }
    let method = request.method().clone();
    let uri = request.uri().clone();

    let mut response = match endpoint {
        Some(endpoint) => dispatch(app, conn, endpoint, request, &user_agent).await,
        None => text(StatusCode::NOT_FOUND, format!("not found: {path}\n")),
    };
    if method == Method::HEAD {
        // HEAD announces the length the GET body would have, without sending it.
        let length = response.body().size_hint().exact().unwrap_or(0);
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
        *response.body_mut() = Full::default();
    }
    debug!(
        "http {} {method} {uri} {user_agent:?} -> {}",
        conn.peer,
        response.status().as_u16()
    );
    response
}

async fn dispatch(
    app: &AppState,
    conn: ConnInfo,
    endpoint: Endpoint,
    request: Request<Incoming>,
    user_agent: &str,
) -> HttpResponse {
    let verb = match *request.method() {
        Method::GET | Method::HEAD => Some(Verb::Get),
        Method::POST => Some(Verb::Post),
        _ => None,
    };
    let Some(verb) = verb.filter(|&verb| endpoint.accepts(verb)) else {
        return method_not_allowed(endpoint, request.method()).into_response();
    };
    if declared_length(request.headers()).is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return too_large().into_response();
    }
    let result = match verb {
        Verb::Get => Ok(get(app, conn, endpoint, user_agent).await),
        Verb::Post => match read_form(request.into_body()).await {
            Ok(form) => post(app, endpoint, &form).await,
            Err(rejection) => Err(rejection),
        },
    };
    result.unwrap_or_else(Rejection::into_response)
}

async fn get(app: &AppState, conn: ConnInfo, endpoint: Endpoint, user_agent: &str) -> HttpResponse {
    match endpoint {
        Endpoint::Root => root(app, conn).await,
        Endpoint::Hostname => text(StatusCode::OK, format!("ServerName: {}\n", app.name)),
        Endpoint::Livez => {
            let (status, body) = app.livez.answer().await;
            text(status, body)
        }
        Endpoint::Readyz => {
            let (status, body) = app.readyz.answer().await;
            text(status, body)
        }
        Endpoint::Configs => text(
            StatusCode::OK,
            format!(
                "DEPLOYENV: {}\nRELEASE: {}\n",
                app.deploy_env.as_deref().unwrap_or("None"),
                app.release.as_deref().unwrap_or("None")
            ),
        ),
        Endpoint::UserAgent => text(StatusCode::OK, format!("User-Agent: {user_agent}\n")),
        Endpoint::GrpcHealth => json(app.grpc_health.to_json()),
        Endpoint::Tcp => match &app.tcp {
            Some(control) => json(control.to_json()),
            None => tcp_disabled().into_response(),
        },
        Endpoint::Faults => json(lock(&app.faults).to_json()),
        Endpoint::Hits => json(app.hits.to_json()),
        Endpoint::HitsReset => method_not_allowed(endpoint, &Method::GET).into_response(),
    }
}

async fn root(app: &AppState, conn: ConnInfo) -> HttpResponse {
    let faults = lock(&app.faults).clone();
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }
    let body = faults.body.unwrap_or_else(|| {
        // Canonical form, so an IPv4 client of a dual-stack listener shows as 1.2.3.4, not
        // ::ffff:1.2.3.4.
        format!(
            "demoapp v1.0 !! ClientIP: {}, ServerName: {}, ServerIP: {}!\n",
            conn.peer.ip().to_canonical(),
            app.name,
            conn.local.ip().to_canonical()
        )
    });
    text(faults.status.unwrap_or(StatusCode::OK), body)
}

/// POST handlers.
async fn post(app: &AppState, endpoint: Endpoint, form: &Form) -> Result<HttpResponse, Rejection> {
    match endpoint {
        Endpoint::Livez => {
            let value = form.require("livez", "<text>")?;
            info!("livez set to {value:?}");
            app.livez.set(value.to_string());
        }
        Endpoint::Readyz => {
            let value = form.require("readyz", "<text>")?;
            info!("readyz set to {value:?}");
            app.readyz.set(value.to_string());
        }
        Endpoint::GrpcHealth => set_grpc_health(app, form)?,
        Endpoint::Tcp => set_tcp(app, form).await?,
        Endpoint::Faults => set_faults(app, form)?,
        Endpoint::HitsReset => {
            info!("hit counters reset");
            app.hits.reset();
        }
        Endpoint::Root
        | Endpoint::Hostname
        | Endpoint::Configs
        | Endpoint::UserAgent
        | Endpoint::Hits => return Err(method_not_allowed(endpoint, &Method::POST)),
    }
    Ok(text(StatusCode::OK, ""))
}

const GRPC_STATUS_NAMES: &str = "SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN";

fn set_grpc_health(app: &AppState, form: &Form) -> Result<(), Rejection> {
    let raw = form.require("status", GRPC_STATUS_NAMES)?;
    let status =
        ServingStatus::from_name(raw).ok_or_else(|| invalid("status", GRPC_STATUS_NAMES, raw))?;
    let service = form.get("service").unwrap_or_default();
    info!("grpc health of {service:?} set to {}", status.name());
    app.grpc_health.set(service, status);
    Ok(())
}

const TCP_MODES: &str = "serve, refuse, close or silent";

async fn set_tcp(app: &AppState, form: &Form) -> Result<(), Rejection> {
    let Some(control) = &app.tcp else {
        return Err(tcp_disabled());
    };
    let mode = form
        .get("mode")
        .map(|raw| {
            raw.parse::<TcpMode>()
                .map_err(|_| invalid("mode", TCP_MODES, raw))
        })
        .transpose()?;
    let reply = form.hex("reply_hex")?;
    let request = form.hex("request_hex")?;
    if mode.is_none() && reply.is_none() && request.is_none() {
        return Err(missing("mode", TCP_MODES));
    }
    let update = TcpUpdate {
        mode,
        request,
        reply,
    };
    control.apply(update).await.map_err(|err| {
        let status = match err {
            TcpUpdateError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            TcpUpdateError::Rebind { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Rejection::new(status, err.to_string())
    })
}

fn set_faults(app: &AppState, form: &Form) -> Result<(), Rejection> {
    const STATUS_RANGE: &str = "an HTTP status code from 100 to 599";
    let status = form
        .get("status")
        .map(|raw| {
            raw.parse::<u16>()
                .ok()
                .filter(|code| (100..=599).contains(code))
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or_else(|| invalid("status", STATUS_RANGE, raw))
        })
        .transpose()?;
    let delay = form
        .get("delay_ms")
        .map(|raw| {
            raw.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| invalid("delay_ms", "a whole number of milliseconds", raw))
        })
        .transpose()?;
    let reset = match form.get("reset") {
        None => false,
        Some("1") => true,
        Some(raw) => return Err(invalid("reset", "1", raw)),
    };
    let body = form.get("body");
    if status.is_none() && delay.is_none() && body.is_none() && !reset {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "status, body, delay_ms, reset: missing form field; expected at least one of them",
        ));
    }

    let mut faults = lock(&app.faults);
    if reset {
        *faults = Faults::default();
    }
    if status.is_some() {
        faults.status = status;
    }
    if let Some(body) = body {
        faults.body = Some(body.to_string());
    }
    if delay.is_some() {
        faults.delay = delay;
    }
    info!("faults now {faults:?}");
    Ok(())
}

/// Form fields of a POST body (`application/x-www-form-urlencoded`). When a field repeats, the
/// first occurrence counts, as in Flask's `request.form[...]`.
#[derive(Debug)]
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Self {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, value)| value.as_str())
    }

    fn require(&self, field: &str, expected: &str) -> Result<&str, Rejection> {
        self.get(field).ok_or_else(|| missing(field, expected))
    }

    fn hex(&self, field: &str) -> Result<Option<Vec<u8>>, Rejection> {
        self.get(field)
            .map(|raw| {
                hex::decode(raw).map_err(|err| {
                    let expected = format!("hex digits ({err})");
                    invalid(field, &expected, raw)
                })
            })
            .transpose()
    }
}

async fn read_form(body: Incoming) -> Result<Form, Rejection> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(Form::parse(&collected.to_bytes())),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(err) => Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!("body: could not read the request body: {err}"),
        )),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn header_text(headers: &HeaderMap, name: hyper::header::HeaderName) -> String {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(value: Value) -> HttpResponse {
    let mut response = text(StatusCode::OK, format!("{value}\n"));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A request the app will not carry out: answered with `status` and a one-line message.
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    message: String,
    /// Set for 405, which must say what is allowed.
    allow: Option<&'static str>,
}

impl Rejection {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn into_response(self) -> HttpResponse {
        let mut response = text(self.status, format!("{}\n", self.message));
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

fn missing(field: &str, expected: &str) -> Rejection {
    Rejection::new(
        StatusCode::BAD_REQUEST,
        format!("{field}: missing form field; expected {field}={expected}"),
    )
}

fn invalid(field: &str, expected: &str, got: &str) -> Rejection {
    Rejection::new(
        StatusCode::BAD_REQUEST,
        format!("{field}: expected {expected}, got {:?}", Shortened(got)),
    )
}

/// A user-supplied value cut to a length fit for a one-line error message.
struct Shortened<'a>(&'a str);

impl fmt::Debug for Shortened<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 64;
        match self.0.char_indices().nth(MAX_CHARS) {
            Some((cut, _)) => write!(f, "{:?}...", &self.0[..cut]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

fn method_not_allowed(endpoint: Endpoint, method: &Method) -> Rejection {
    let allow = endpoint.allow();
    Rejection {
        allow: Some(allow),
        ..Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} is not allowed here; allowed: {allow}"),
        )
    }
}

fn too_large() -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body: request body exceeds {MAX_BODY_BYTES} bytes"),
    )
}

fn tcp_disabled() -> Rejection {
    Rejection::new(
        StatusCode::CONFLICT,
        "tcp: the TCP responder is not enabled; start demoapp with --tcp-listen IP:PORT",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_header_matches_accepted_methods() {
        assert_eq!(Endpoint::Root.allow(), "GET, HEAD");
        assert_eq!(Endpoint::Livez.allow(), "GET, HEAD, POST");
        assert_eq!(Endpoint::HitsReset.allow(), "POST");
    }

    #[test]
    fn form_takes_the_first_occurrence() {
        let form = Form::parse(b"a=1&a=2&b=x+y%21");
        assert_eq!(form.get("a"), Some("1"));
        assert_eq!(form.get("b"), Some("x y!"));
        assert_eq!(form.get("c"), None);
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = "é".repeat(100);
        let shown = format!("{:?}", Shortened(&long));
        assert!(shown.ends_with("\"..."), "{shown}");
        assert_eq!(shown.matches('é').count(), 64);
        assert_eq!(format!("{:?}", Shortened("a\nb")), "\"a\\nb\"");
    }
}
