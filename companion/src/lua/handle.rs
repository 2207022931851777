//! The stream handle API of Envoy's Lua filter, as scripts call it: `headers()` (get,
//! getAtIndex, getNumValues, add, replace, remove, setHttp1ReasonPhrase, `pairs`), `body()` and
//! `bodyChunks()` (buffers with length, getBytes, setBytes), `trailers()`, the `log*` family,
//! `respond()`, `httpCall()`, `streamInfo()`, `connection()`, `metadata()`, `base64Escape()` and
//! `timestamp()`, with the error messages Envoy's wrappers raise. One [`Stream`] is one
//! direction of one request; the response side may stream its body chunk by chunk to the
//! client while the script runs (`bodyChunks()`).

use super::{Body, CallRequest, ResponseOutcome, Upstreams, first_line};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use mlua::{
    Function, Lua, MetaMethod, Result as LuaResult, Table, UserData, UserDataMethods, Value,
    Variadic,
};
use serde_json::Value as Json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use tokio::sync::{mpsc, oneshot};

/// The downstream facts a script reads, and the request's dynamic metadata (shared by the
/// request and response sides and by every Lua filter of the chain).
#[derive(Clone)]
pub struct StreamMeta {
    protocol: &'static str,
    peer: String,
    local: String,
    server_name: String,
    tls: bool,
    dynamic: Arc<Mutex<serde_json::Map<String, Json>>>,
    /// The route's `filter_metadata` entry for this filter (`metadata()`).
    route_metadata: Arc<Json>,
}

impl StreamMeta {
    pub(super) fn new(
        protocol: http::Version,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        server_name: &str,
        tls: bool,
    ) -> StreamMeta {
        let protocol = match protocol {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        };
        StreamMeta {
            protocol,
            peer: peer.to_string(),
            local: local.map(|l| l.to_string()).unwrap_or_default(),
            server_name: server_name.to_string(),
            tls,
            dynamic: Arc::default(),
            route_metadata: Arc::new(Json::Null),
        }
    }

    /// The same request as a filter sees it whose route metadata is `metadata` (the route's
    /// `filter_metadata` entry under the filter's name, else `envoy.filters.http.lua`).
    pub fn with_route_metadata(&self, metadata: Json) -> StreamMeta {
        StreamMeta {
            route_metadata: Arc::new(metadata),
            ..self.clone()
        }
    }
}

/// A `respond()`: the local reply the script asked for.
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
}

/// The response head and body a response-side script hands the client.
type Head = (http::StatusCode, Vec<(String, Vec<u8>)>, Body);

struct Inner {
    response: bool,
    headers: Vec<(String, Vec<u8>)>,
    /// The body, once read whole (the request's always is).
    body: Option<Vec<u8>>,
    /// Whether the stream had a body at all (`body()` is nil otherwise).
    has_body: bool,
    /// The response body not yet read.
    pending: Option<Body>,
    /// The headers went on: they can no longer be modified.
    continued: bool,
    /// A `pairs()` over the headers is running.
    iterating: bool,
    reply: Option<LocalReply>,
    /// Bumped at each point where Envoy's script yields (waiting for the body, a chunk, an
    /// `httpCall`): the wrappers handed out before it no longer work, as Envoy's do not
    /// survive a yield.
    generation: u64,
    /// Where the response head goes once known (response side).
    head_tx: Option<oneshot::Sender<Head>>,
    /// Streaming (`bodyChunks()` on the response): where chunks go, and the chunk the script
    /// holds now.
    chunk_tx: Option<mpsc::Sender<Result<Frame<Bytes>, hyper::Error>>>,
    chunk: Option<Arc<Mutex<Vec<u8>>>>,
}

/// One direction of one request, as its script sees it.
pub(super) struct Stream {
    inner: Mutex<Inner>,
    meta: StreamMeta,
    upstreams: Arc<dyn Upstreams>,
}

impl Stream {
    fn new(inner: Inner, meta: StreamMeta, upstreams: Arc<dyn Upstreams>) -> Arc<Stream> {
        Arc::new(Stream {
            inner: Mutex::new(inner),
            meta,
            upstreams,
        })
    }

    fn empty(response: bool) -> Inner {
        Inner {
            response,
            headers: Vec::new(),
            body: None,
            has_body: false,
            pending: None,
            continued: false,
            iterating: false,
            reply: None,
            generation: 0,
            head_tx: None,
            chunk_tx: None,
            chunk: None,
        }
    }

    pub(super) fn request(
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
        meta: StreamMeta,
        upstreams: Arc<dyn Upstreams>,
    ) -> Arc<Stream> {
        let inner = Inner {
            headers,
            has_body: !body.is_empty(),
            body: Some(body.to_vec()),
            ..Self::empty(false)
        };
        Self::new(inner, meta, upstreams)
    }

    pub(super) fn response(
        headers: Vec<(String, Vec<u8>)>,
        body: Body,
        meta: StreamMeta,
        upstreams: Arc<dyn Upstreams>,
    ) -> Arc<Stream> {
        use hyper::body::Body as _;
        let inner = Inner {
            headers,
            has_body: !body.is_end_stream(),
            pending: Some(body),
            ..Self::empty(true)
        };
        Self::new(inner, meta, upstreams)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn into_request_outcome(self: Arc<Self>) -> super::RequestOutcome {
        let mut inner = self.lock();
        if let Some(reply) = inner.reply.take() {
            return super::RequestOutcome::Respond(reply);
        }
        super::RequestOutcome::Continue {
            headers: std::mem::take(&mut inner.headers),
            body: Bytes::from(inner.body.take().unwrap_or_default()),
        }
    }

    /// The generation wrappers made now belong to.
    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// A yield: every wrapper made so far is dead.
    fn yielded(&self) {
        self.lock().generation += 1;
    }

    /// Envoy's error for a wrapper used after a yield.
    fn check_alive(&self, generation: u64) -> LuaResult<()> {
        if self.lock().generation != generation {
            return Err(error("object used outside of proper scope"));
        }
        Ok(())
    }

    fn check_modifiable(&self) -> LuaResult<()> {
        let inner = self.lock();
        if inner.iterating {
            return Err(error("header map cannot be modified while iterating"));
        }
        if inner.continued {
            return Err(error("header map can no longer be modified"));
        }
        Ok(())
    }

    /// The response body read whole (the script's `body()`), `None` when there is none.
    async fn read_whole(&self) -> LuaResult<Option<()>> {
        let pending = {
            let mut inner = self.lock();
            if inner.body.is_some() {
                return Ok(Some(()));
            }
            if inner.chunk_tx.is_some() {
                return Err(error("cannot call body() after body streaming has started"));
            }
            inner.pending.take()
        };
        let Some(pending) = pending else {
            return Ok(None);
        };
        let bytes = match pending.collect().await {
            Ok(collected) => collected.to_bytes().to_vec(),
            Err(e) => return Err(error(&format!("body read failed: {e}"))),
        };
        self.lock().body = Some(bytes);
        Ok(Some(()))
    }

    /// Sends the response head (once) with `body` as its body.
    fn send_head(inner: &mut Inner, body: Body) {
        let Some(tx) = inner.head_tx.take() else {
            return;
        };
        let status = super::first(&inner.headers, ":status")
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| http::StatusCode::from_u16(s).ok())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let _ = tx.send((status, inner.headers.clone(), body));
    }

    /// The next response chunk for `bodyChunks()`: the previous one goes to the client as the
    /// script left it first. The head goes out with the first call.
    async fn next_chunk(&self) -> LuaResult<Option<Arc<Mutex<Vec<u8>>>>> {
        let (tx, pending) = {
            let mut inner = self.lock();
            if !inner.response {
                // The request was read whole: it is one chunk, the body itself.
                if inner.continued {
                    return Ok(None);
                }
                inner.continued = true;
                return Ok(inner.has_body.then(|| Arc::new(Mutex::new(Vec::new()))));
            }
            if inner.chunk_tx.is_none() {
                let (tx, rx) = mpsc::channel(16);
                inner.chunk_tx = Some(tx);
                inner.continued = true;
                Self::send_head(&mut inner, ChannelBody(rx).boxed());
            }
            let previous = inner.chunk.take();
            let tx = inner.chunk_tx.clone();
            (tx.map(|tx| (tx, previous)), inner.pending.take())
        };
        let Some((tx, previous)) = tx else {
            return Ok(None);
        };
        if let Some(previous) = previous {
            let bytes = std::mem::take(&mut *previous.lock().unwrap_or_else(|p| p.into_inner()));
            let _ = tx.send(Ok(Frame::data(Bytes::from(bytes)))).await;
        }
        let Some(mut pending) = pending else {
            return Ok(None);
        };
        loop {
            match pending.frame().await {
                None => return Ok(None),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let chunk = Arc::new(Mutex::new(data.to_vec()));
                        let mut inner = self.lock();
                        inner.pending = Some(pending);
                        inner.chunk = Some(chunk.clone());
                        return Ok(Some(chunk));
                    }
                    Err(frame) => {
                        let _ = tx.send(Ok(frame)).await;
                    }
                },
                Some(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return Ok(None);
                }
            }
        }
    }

    /// After the response script: the head goes out if it has not (with the body read whole,
    /// or the untouched stream), else what the script did not iterate goes on.
    async fn finish_response(&self) {
        let (tx, previous, pending) = {
            let mut inner = self.lock();
            if inner.head_tx.is_some() {
                let body = match inner.body.take() {
                    Some(bytes) => Full::new(Bytes::from(bytes))
                        .map_err(|never| match never {})
                        .boxed(),
                    None => inner.pending.take().unwrap_or_else(|| {
                        Full::new(Bytes::new())
                            .map_err(|never| match never {})
                            .boxed()
                    }),
                };
                Self::send_head(&mut inner, body);
                return;
            }
            (
                inner.chunk_tx.take(),
                inner.chunk.take(),
                inner.pending.take(),
            )
        };
        let Some(tx) = tx else {
            return;
        };
        if let Some(previous) = previous {
            let bytes = std::mem::take(&mut *previous.lock().unwrap_or_else(|p| p.into_inner()));
            let _ = tx.send(Ok(Frame::data(Bytes::from(bytes)))).await;
        }
        if let Some(mut pending) = pending {
            while let Some(frame) = pending.frame().await {
                if tx.send(frame).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// A body fed by the response script's chunks.
struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, hyper::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.0.poll_recv(cx)
    }
}

fn error(message: &str) -> mlua::Error {
    mlua::Error::RuntimeError(message.to_string())
}

/// Runs a request-side hook to its end or its `respond()`; an error is logged as Envoy logs
/// it (`script log: ...`), and what the script did before it stands.
pub(super) async fn run(hook: &Function, stream: &Arc<Stream>, errors: super::ErrorCount) {
    let call = hook.call_async::<()>(StreamHandle(stream.clone()));
    if let Some(e) = drive(call, stream).await {
        log::error!("script log: {}", first_line(&e));
        errors();
    }
}

/// Polls a hook's call until it ends or the script has responded (`respond()` never returns to
/// the script: it is the end of it, as in Envoy).
async fn drive(call: impl Future<Output = LuaResult<()>>, stream: &Stream) -> Option<mlua::Error> {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(result.err()),
        Poll::Pending if stream.lock().reply.is_some() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
    .await
}

/// Runs a response-side hook in a task of its own, so that a script iterating `bodyChunks()`
/// streams the response: the head is answered as soon as the script lets it go.
pub(super) async fn run_response(
    hook: &Function,
    stream: Arc<Stream>,
    errors: super::ErrorCount,
) -> ResponseOutcome {
    let (tx, rx) = oneshot::channel();
    stream.lock().head_tx = Some(tx);
    let hook = hook.clone();
    tokio::spawn(async move {
        let call = hook.call_async::<()>(StreamHandle(stream.clone()));
        if let Some(e) = drive(call, &stream).await {
            log::error!("script log: {}", first_line(&e));
            errors();
        }
        stream.finish_response().await;
    });
    match rx.await {
        Ok((status, headers, body)) => ResponseOutcome {
            status,
            headers: super::header_map(&headers),
            body,
        },
        // The task ended without a head (it cannot, short of a panic): Envoy's answer to a
        // filter that failed.
        Err(_) => ResponseOutcome {
            status: http::StatusCode::INTERNAL_SERVER_ERROR,
            headers: http::HeaderMap::new(),
            body: Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        },
    }
}

/// `envoy_on_route(route_handle)`: the cluster it returns, `None` on an error or nil.
pub(super) fn run_route(hook: &Function, headers: &[(String, Vec<u8>)]) -> Option<String> {
    let inner = Inner {
        headers: headers.to_vec(),
        continued: true,
        ..Stream::empty(false)
    };
    let meta = StreamMeta::new(
        http::Version::HTTP_11,
        SocketAddr::from(([0, 0, 0, 0], 0)),
        None,
        "",
        false,
    );
    let stream = Stream::new(inner, meta, Arc::new(super::NoUpstreams));
    match hook.call::<Option<mlua::String>>(RouteHandle(stream)) {
        Ok(cluster) => cluster.map(|c| c.to_string_lossy()),
        Err(e) => {
            log::error!("script log: {}", first_line(&e));
            None
        }
    }
}

/// The cluster specifier's `route_handle`.
struct RouteHandle(Arc<Stream>);

impl UserData for RouteHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("headers", |_, this, ()| {
            Ok(Headers(this.0.clone(), this.0.generation()))
        });
    }
}

/// `request_handle` / `response_handle`.
struct StreamHandle(Arc<Stream>);

impl UserData for StreamHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("headers", |_, this, ()| {
            Ok(Headers(this.0.clone(), this.0.generation()))
        });
        methods.add_async_method("body", |lua, this, always_wrap: Option<bool>| async move {
            let stream = this.0.clone();
            let has_body = stream.lock().has_body;
            if !has_body && !always_wrap.unwrap_or(false) {
                return Ok(Value::Nil);
            }
            // Envoy's script yields here until the body is in.
            if has_body {
                stream.yielded();
            }
            if stream.lock().response {
                stream.read_whole().await?;
            }
            {
                let mut inner = stream.lock();
                if inner.body.is_none() {
                    inner.body = Some(Vec::new());
                }
            }
            let generation = stream.generation();
            lua.create_userdata(Buffer {
                stream,
                chunk: None,
                generation,
            })
            .map(Value::UserData)
        });
        methods.add_method("bodyChunks", |lua, this, ()| {
            let stream = this.0.clone();
            lua.create_async_function(move |lua, ()| {
                let stream = stream.clone();
                async move {
                    // Each chunk is waited for: a yield.
                    stream.yielded();
                    let response = stream.lock().response;
                    let chunk = stream.next_chunk().await?;
                    let generation = stream.generation();
                    match chunk {
                        None => Ok(Value::Nil),
                        // The request's one chunk is its body.
                        Some(_) if !response => lua
                            .create_userdata(Buffer {
                                stream,
                                chunk: None,
                                generation,
                            })
                            .map(Value::UserData),
                        Some(chunk) => lua
                            .create_userdata(Buffer {
                                stream,
                                chunk: Some(chunk),
                                generation,
                            })
                            .map(Value::UserData),
                    }
                }
            })
        });
        // vigil's bodies are read without their trailers: a script sees none.
        methods.add_method("trailers", |_, _, ()| Ok(Value::Nil));
        for (name, level) in [
            ("logTrace", log::Level::Trace),
            ("logDebug", log::Level::Debug),
            ("logInfo", log::Level::Info),
            ("logWarn", log::Level::Warn),
            ("logErr", log::Level::Error),
            ("logCritical", log::Level::Error),
        ] {
            methods.add_method(name, move |_, _, message: mlua::String| {
                log::log!(target: "lua", level, "script log: {}", message.to_string_lossy());
                Ok(())
            });
        }
        methods.add_async_method(
            "respond",
            |_, this, (headers, body): (Table, Option<mlua::String>)| async move {
                let stream = this.0.clone();
                {
                    let inner = stream.lock();
                    if inner.response {
                        return Err(error(
                            "respond not currently supported in the response path",
                        ));
                    }
                    if inner.continued {
                        return Err(error(
                            "respond() cannot be called if headers have been continued",
                        ));
                    }
                }
                let headers = header_table(&headers)?;
                let status = headers
                    .iter()
                    .find(|(n, _)| n == ":status")
                    .and_then(|(_, v)| v.parse::<u16>().ok())
                    .filter(|s| (200..600).contains(s))
                    .ok_or_else(|| error(":status must be between 200-599"))?;
                let body = body.map(|b| Bytes::from(b.as_bytes().to_vec()));
                stream.lock().reply = Some(LocalReply {
                    status,
                    headers,
                    body,
                });
                // The end of the script: the driver stops polling it here.
                std::future::pending::<()>().await;
                Ok(())
            },
        );
        methods.add_async_method(
            "httpCall",
            |lua,
             this,
             (cluster, headers, body, timeout_ms, asynchronous): (
                mlua::String,
                Table,
                Option<mlua::String>,
                i64,
                Option<Value>,
            )| async move {
                let asynchronous = match asynchronous {
                    None | Some(Value::Nil) => false,
                    Some(Value::Boolean(b)) => b,
                    Some(_) => {
                        return Err(error(
                            "http call asynchronous flag must be 'true', 'false', or empty",
                        ));
                    }
                };
                if timeout_ms < 0 {
                    return Err(error("http call timeout must be >= 0"));
                }
                let headers = header_table(&headers)?;
                for required in [":path", ":method", ":authority"] {
                    if !headers.iter().any(|(n, _)| n == required) {
                        return Err(error(
                            "http call headers must include ':path', ':method', and ':authority'",
                        ));
                    }
                }
                let request = CallRequest {
                    cluster: cluster.to_string_lossy(),
                    headers,
                    body: body.map(|b| Bytes::from(b.as_bytes().to_vec())),
                    timeout: (timeout_ms > 0)
                        .then(|| std::time::Duration::from_millis(timeout_ms.unsigned_abs())),
                };
                let call = this
                    .0
                    .upstreams
                    .call(request)
                    .ok_or_else(|| error("http call cluster invalid. Must be configured"))?;
                if asynchronous {
                    tokio::spawn(call);
                    return Ok((Value::Nil, Value::Nil));
                }
                this.0.yielded();
                let answer = call.await;
                let table = lua.create_table()?;
                for (name, value) in &answer.headers {
                    table.set(name.as_str(), lua.create_string(value)?)?;
                }
                let body = if answer.body.is_empty() {
                    Value::Nil
                } else {
                    Value::String(lua.create_string(&answer.body)?)
                };
                Ok((Value::Table(table), body))
            },
        );
        methods.add_method("streamInfo", |_, this, ()| {
            Ok(StreamInfo(this.0.clone(), this.0.generation()))
        });
        methods.add_method("connection", |_, this, ()| {
            Ok(Connection(this.0.clone(), this.0.generation()))
        });
        methods.add_method("metadata", |_, this, ()| {
            Ok(RouteMetadata(this.0.clone(), this.0.generation()))
        });
        methods.add_method("base64Escape", |_, _, text: mlua::String| {
            Ok(base64_encode(&text.as_bytes()))
        });
        methods.add_method("timestamp", |_, _, _: Variadic<Value>| {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            Ok(ms)
        });
    }
}

/// A Lua table of headers (a value may be a table of values), as Envoy's
/// `buildHeadersFromTable`: names lowercased.
fn header_table(table: &Table) -> LuaResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in table.pairs::<mlua::String, Value>() {
        let (name, value) = pair?;
        let name = name.to_string_lossy().to_ascii_lowercase();
        match value {
            Value::Table(values) => {
                for value in values.sequence_values::<mlua::String>() {
                    out.push((name.clone(), value?.to_string_lossy()));
                }
            }
            Value::String(s) => out.push((name, s.to_string_lossy())),
            Value::Integer(i) => out.push((name, i.to_string())),
            Value::Number(n) => out.push((name, format!("{n}"))),
            other => {
                return Err(error(&format!(
                    "bad argument (string expected, got {})",
                    other.type_name()
                )));
            }
        }
    }
    Ok(out)
}

/// Standard base64 with padding (Envoy's `base64Escape`).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `headers()`.
struct Headers(Arc<Stream>, u64);

impl UserData for Headers {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |lua, this, name: mlua::String| {
            this.0.check_alive(this.1)?;
            let name = name.to_string_lossy().to_ascii_lowercase();
            let inner = this.0.lock();
            let values: Vec<&[u8]> = inner
                .headers
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v.as_slice())
                .collect();
            if values.is_empty() {
                return Ok(Value::Nil);
            }
            lua.create_string(values.join(&b","[..])).map(Value::String)
        });
        methods.add_method(
            "getAtIndex",
            |lua, this, (name, index): (mlua::String, i64)| {
                this.0.check_alive(this.1)?;
                let name = name.to_string_lossy().to_ascii_lowercase();
                let inner = this.0.lock();
                let value = usize::try_from(index).ok().and_then(|i| {
                    inner
                        .headers
                        .iter()
                        .filter(|(n, _)| *n == name)
                        .nth(i)
                        .map(|(_, v)| v.clone())
                });
                match value {
                    Some(v) if !v.is_empty() => lua.create_string(v).map(Value::String),
                    _ => Ok(Value::Nil),
                }
            },
        );
        methods.add_method("getNumValues", |_, this, name: mlua::String| {
            this.0.check_alive(this.1)?;
            let name = name.to_string_lossy().to_ascii_lowercase();
            let inner = this.0.lock();
            Ok(inner.headers.iter().filter(|(n, _)| *n == name).count())
        });
        methods.add_method(
            "add",
            |_, this, (name, value): (mlua::String, mlua::String)| {
                this.0.check_alive(this.1)?;
                this.0.check_modifiable()?;
                let name = name.to_string_lossy().to_ascii_lowercase();
                this.0
                    .lock()
                    .headers
                    .push((name, value.as_bytes().to_vec()));
                Ok(())
            },
        );
        methods.add_method(
            "replace",
            |_, this, (name, value): (mlua::String, mlua::String)| {
                this.0.check_alive(this.1)?;
                this.0.check_modifiable()?;
                let name = name.to_string_lossy().to_ascii_lowercase();
                let value = value.as_bytes().to_vec();
                let mut inner = this.0.lock();
                replace(&mut inner.headers, &name, value);
                Ok(())
            },
        );
        methods.add_method("remove", |_, this, name: mlua::String| {
            this.0.check_alive(this.1)?;
            this.0.check_modifiable()?;
            let name = name.to_string_lossy().to_ascii_lowercase();
            this.0.lock().headers.retain(|(n, _)| *n != name);
            Ok(())
        });
        // vigil's HTTP/1 codec sends the standard reason phrase: accepted and ignored.
        methods.add_method("setHttp1ReasonPhrase", |_, this, _: mlua::String| {
            this.0.check_alive(this.1)?;
            this.0.check_modifiable()
        });
        methods.add_meta_method(MetaMethod::Pairs, |lua, this, ()| {
            this.0.check_alive(this.1)?;
            let stream = this.0.clone();
            {
                let mut inner = stream.lock();
                if inner.iterating {
                    return Err(error(
                        "cannot create a second iterator before completing the first",
                    ));
                }
                inner.iterating = true;
            }
            let snapshot = stream.lock().headers.clone();
            let next = Mutex::new(0usize);
            lua.create_function(move |lua, _: Variadic<Value>| {
                let mut index = next.lock().unwrap_or_else(|p| p.into_inner());
                match snapshot.get(*index) {
                    Some((name, value)) => {
                        *index += 1;
                        Ok((
                            Value::String(lua.create_string(name)?),
                            Value::String(lua.create_string(value)?),
                        ))
                    }
                    None => {
                        stream.lock().iterating = false;
                        Ok((Value::Nil, Value::Nil))
                    }
                }
            })
        });
    }
}

/// Sets `name` to `value`: the first entry takes the value, any others go (a new entry when
/// there is none).
fn replace(headers: &mut Vec<(String, Vec<u8>)>, name: &str, value: Vec<u8>) {
    match headers.iter().position(|(n, _)| n == name) {
        Some(at) => {
            headers[at].1 = value;
            let mut seen = 0;
            headers.retain(|(n, _)| {
                if n != name {
                    return true;
                }
                seen += 1;
                seen == 1
            });
        }
        None => headers.push((name.to_string(), value)),
    }
}

/// A body buffer: the whole body (`chunk: None`) or one response chunk.
struct Buffer {
    stream: Arc<Stream>,
    chunk: Option<Arc<Mutex<Vec<u8>>>>,
    generation: u64,
}

impl Buffer {
    fn with<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> LuaResult<R> {
        self.stream.check_alive(self.generation)?;
        Ok(match &self.chunk {
            Some(chunk) => f(&mut chunk.lock().unwrap_or_else(|p| p.into_inner())),
            None => {
                let mut inner = self.stream.lock();
                f(inner.body.get_or_insert_with(Vec::new))
            }
        })
    }
}

impl UserData for Buffer {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("length", |_, this, ()| this.with(|b| b.len()));
        methods.add_method("getBytes", |lua, this, (index, length): (i64, i64)| {
            let bytes = this.with(|b| {
                let (Ok(index), Ok(length)) = (usize::try_from(index), usize::try_from(length))
                else {
                    return None;
                };
                let end = index.checked_add(length)?;
                b.get(index..end).map(<[u8]>::to_vec)
            })?;
            match bytes {
                Some(bytes) => lua.create_string(bytes),
                None => Err(error(
                    "index/length must be >= 0 and (index + length) must be <= buffer size",
                )),
            }
        });
        methods.add_method("setBytes", |_, this, bytes: mlua::String| {
            let bytes = bytes.as_bytes().to_vec();
            let length = bytes.len();
            this.with(|b| *b = bytes)?;
            // The whole body's new length is the message's content-length, as Envoy's buffer
            // wrapper sets it (a chunk's change leaves the streamed framing alone).
            if this.chunk.is_none() {
                let mut inner = this.stream.lock();
                inner.has_body = true;
                replace(
                    &mut inner.headers,
                    "content-length",
                    length.to_string().into_bytes(),
                );
                inner.headers.retain(|(n, _)| n != "transfer-encoding");
            }
            Ok(length)
        });
    }
}

/// `metadata()`: the route's metadata for this filter.
struct RouteMetadata(Arc<Stream>, u64);

impl UserData for RouteMetadata {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |lua, this, key: mlua::String| {
            this.0.check_alive(this.1)?;
            match this
                .0
                .meta
                .route_metadata
                .get(key.to_string_lossy().as_str())
            {
                Some(value) => to_lua(lua, value),
                None => Ok(Value::Nil),
            }
        });
        methods.add_meta_method(MetaMethod::Pairs, |lua, this, ()| {
            this.0.check_alive(this.1)?;
            let snapshot: Vec<(String, Json)> = match this.0.meta.route_metadata.as_ref() {
                Json::Object(fields) => {
                    fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                }
                _ => Vec::new(),
            };
            let next = Mutex::new(0usize);
            lua.create_function(move |lua, _: Variadic<Value>| {
                let mut index = next.lock().unwrap_or_else(|p| p.into_inner());
                match snapshot.get(*index) {
                    Some((name, value)) => {
                        *index += 1;
                        Ok((Value::String(lua.create_string(name)?), to_lua(lua, value)?))
                    }
                    None => Ok((Value::Nil, Value::Nil)),
                }
            })
        });
    }
}

/// `streamInfo()`.
struct StreamInfo(Arc<Stream>, u64);

impl UserData for StreamInfo {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("protocol", |_, this, ()| {
            this.0.check_alive(this.1)?;
            Ok(this.0.meta.protocol)
        });
        methods.add_method("downstreamDirectRemoteAddress", |_, this, ()| {
            this.0.check_alive(this.1)?;
            Ok(this.0.meta.peer.clone())
        });
        methods.add_method("downstreamLocalAddress", |_, this, ()| {
            this.0.check_alive(this.1)?;
            Ok(this.0.meta.local.clone())
        });
        methods.add_method("requestedServerName", |_, this, ()| {
            this.0.check_alive(this.1)?;
            Ok(this.0.meta.server_name.clone())
        });
        methods.add_method("downstreamSslConnection", |_, this, ()| {
            this.0.check_alive(this.1)?;
            if this.0.meta.tls {
                return Err(error(
                    "downstreamSslConnection() over TLS is not supported by vigil",
                ));
            }
            Ok(Value::Nil)
        });
        methods.add_method("dynamicMetadata", |_, this, ()| {
            this.0.check_alive(this.1)?;
            Ok(DynamicMetadata(this.0.clone(), this.1))
        });
    }
}

/// `connection()`.
struct Connection(Arc<Stream>, u64);

impl UserData for Connection {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // nil in plain text, as Envoy; vigil does not expose TLS details to scripts.
        methods.add_method("ssl", |_, this, ()| {
            this.0.check_alive(this.1)?;
            if this.0.meta.tls {
                return Err(error(
                    "connection():ssl() over TLS is not supported by vigil",
                ));
            }
            Ok(Value::Nil)
        });
    }
}

/// `streamInfo():dynamicMetadata()`.
struct DynamicMetadata(Arc<Stream>, u64);

impl DynamicMetadata {
    fn lock(&self) -> LuaResult<MutexGuard<'_, serde_json::Map<String, Json>>> {
        self.0.check_alive(self.1)?;
        Ok(self
            .0
            .meta
            .dynamic
            .lock()
            .unwrap_or_else(|p| p.into_inner()))
    }
}

impl UserData for DynamicMetadata {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |lua, this, filter: mlua::String| {
            let filter = filter.to_string_lossy();
            match this.lock()?.get(&filter) {
                Some(value) => to_lua(lua, value),
                None => Ok(Value::Nil),
            }
        });
        methods.add_method(
            "set",
            |_, this, (filter, key, value): (mlua::String, mlua::String, Value)| {
                let value = from_lua(&value)?;
                let mut map = this.lock()?;
                let entry = map
                    .entry(filter.to_string_lossy())
                    .or_insert_with(|| Json::Object(serde_json::Map::new()));
                if let Json::Object(fields) = entry {
                    fields.insert(key.to_string_lossy(), value);
                }
                Ok(())
            },
        );
        methods.add_meta_method(MetaMethod::Pairs, |lua, this, ()| {
            let snapshot: Vec<(String, Json)> = this
                .lock()?
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let next = Mutex::new(0usize);
            lua.create_function(move |lua, _: Variadic<Value>| {
                let mut index = next.lock().unwrap_or_else(|p| p.into_inner());
                match snapshot.get(*index) {
                    Some((name, value)) => {
                        *index += 1;
                        Ok((Value::String(lua.create_string(name)?), to_lua(lua, value)?))
                    }
                    None => Ok((Value::Nil, Value::Nil)),
                }
            })
        });
    }
}

/// A metadata value as Lua sees it (Envoy's `MetadataMapHelper::createTable`).
fn to_lua(lua: &Lua, value: &Json) -> LuaResult<Value> {
    Ok(match value {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => {
            let table = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                table.set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
        Json::Object(fields) => {
            let table = lua.create_table()?;
            for (k, v) in fields {
                table.set(k.as_str(), to_lua(lua, v)?)?;
            }
            Value::Table(table)
        }
    })
}

/// A Lua value stored as metadata (Envoy's `MetadataMapHelper::loadValue`): a table with only
/// consecutive integer keys from 1 is a list.
fn from_lua(value: &Value) -> LuaResult<Json> {
    Ok(match value {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::from(*i),
        Value::Number(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.to_string_lossy()),
        Value::Table(table) => {
            let length = table.raw_len();
            let mut pairs = Vec::new();
            for pair in table.clone().pairs::<Value, Value>() {
                pairs.push(pair?);
            }
            if length > 0 && pairs.len() == length {
                let mut items = Vec::with_capacity(length);
                for v in table.clone().sequence_values::<Value>() {
                    items.push(from_lua(&v?)?);
                }
                Json::Array(items)
            } else {
                let mut fields = serde_json::Map::new();
                for (k, v) in pairs {
                    let key = match k {
                        Value::String(s) => s.to_string_lossy(),
                        other => {
                            return Err(error(&format!(
                                "unexpected table key type {}",
                                other.type_name()
                            )));
                        }
                    };
                    fields.insert(key, from_lua(&v)?);
                }
                Json::Object(fields)
            }
        }
        other => {
            return Err(error(&format!(
                "unexpected type '{}' in dynamicMetadata",
                other.type_name()
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_escape_pads_as_envoy() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"hello?>"), "aGVsbG8/Pg==");
    }

    #[test]
    fn replace_keeps_the_first_place_and_drops_the_others() {
        let mut headers = vec![
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
            ("a".to_string(), b"3".to_vec()),
        ];
        replace(&mut headers, "a", b"x".to_vec());
        assert_eq!(
            headers,
            [
                ("a".to_string(), b"x".to_vec()),
                ("b".to_string(), b"2".to_vec())
            ]
        );
        replace(&mut headers, "c", b"y".to_vec());
        assert_eq!(headers.len(), 3);
    }
}
