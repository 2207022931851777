//! Envoy's Lua extensions, run: the Lua HTTP filter's `envoy_on_request` /
//! `envoy_on_response` and the Lua cluster specifier's `envoy_on_route`, on LuaJIT (as Envoy).
//!
//! - [`LuaRuntime`]: every script of one connection manager (its Lua filters' default and named
//!   scripts, its routes' own `LuaPerRoute` scripts, its routes' cluster specifiers), loaded
//!   once per configuration state. Loading runs each script's global code, as Envoy does when
//!   it loads the file, so a script that fails to load refuses the file (`check`). Globals live
//!   in the script's state, shared by the requests it serves (Envoy keeps one state per worker).
//! - `handle`: the stream handle API scripts call (`headers()`, `body()`, `respond()`,
//!   `httpCall()`, `streamInfo()`, ...), on a per-request [`handle::Stream`].
//!
//! The module is a leaf: the proxy hands it the request's parts and an [`Upstreams`] for
//! `httpCall`, and applies what comes back.

mod handle;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::combinators::BoxBody;
use mlua::{Function, Lua};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use vigil_core::base::{DataSource, Sourced};
use vigil_core::config::{
    ClusterSpecifier, FilterOverride, HttpConnectionManager, HttpFilterKind, LuaPerRoute,
    RouteAction,
};

pub use handle::{LocalReply, StreamMeta};

/// A response body as the proxy carries it.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// What `httpCall` sends: a cluster of the configuration, Envoy's pseudo headers included.
pub struct CallRequest {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
    /// `None`: no timeout (`timeout_ms` 0).
    pub timeout: Option<std::time::Duration>,
}

/// What `httpCall` returns: the answer's headers (`:status` first) and body.
pub struct CallResponse {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Counts a script's run-time error (the filter's `errors` counter).
pub type ErrorCount = Arc<dyn Fn() + Send + Sync>;

/// A future of a [`CallResponse`], owned.
pub type CallFuture = Pin<Box<dyn Future<Output = CallResponse> + Send>>;

/// The clusters `httpCall` reaches (the proxy's upstream machinery).
pub trait Upstreams: Send + Sync {
    /// The call, or `None` when no cluster has that name.
    fn call(&self, request: CallRequest) -> Option<CallFuture>;
}

/// No clusters at all: what a cluster specifier's script (which has no `httpCall`) and a state
/// without scripts reach.
pub struct NoUpstreams;

impl Upstreams for NoUpstreams {
    fn call(&self, _: CallRequest) -> Option<CallFuture> {
        None
    }
}

/// One loaded script: its state (globals shared by the requests it serves) and its hooks.
pub struct Script {
    /// Kept for the state's lifetime (the hooks belong to it).
    _lua: Lua,
    on_request: Option<Function>,
    on_response: Option<Function>,
    on_route: Option<Function>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script").finish_non_exhaustive()
    }
}

/// The text of a data source: a file is read now (relative to the working directory, as Envoy
/// reads it).
fn source_text(sourced: &Sourced) -> Result<Vec<u8>, String> {
    match &sourced.source {
        DataSource::Inline(bytes) => Ok(bytes.clone()),
        DataSource::File(path) => std::fs::read(path).map_err(|_| format!("Invalid path: {path}")),
        DataSource::Env(name) => std::env::var(name)
            .map(String::into_bytes)
            .map_err(|_| format!("Environment variable doesn't exist: {name}")),
    }
}

/// What identifies a route's script: its text, or the file or variable it is read from (read
/// once, at load: a changed file is picked up on the next reload, as Envoy reads it once).
fn source_key(source: &Sourced) -> Vec<u8> {
    match &source.source {
        DataSource::Inline(code) => [b"inline:".as_slice(), code].concat(),
        DataSource::File(path) => format!("file:{path}").into_bytes(),
        DataSource::Env(name) => format!("env:{name}").into_bytes(),
    }
}

impl Script {
    /// Loads `code` in a state of its own and runs its global code, as Envoy's `script load`.
    fn load(code: &[u8]) -> Result<Script, String> {
        let lua = Lua::new();
        // Lua's own chunk name for a string (`[string "..."]` in messages), as Envoy loads it.
        let name = String::from_utf8_lossy(code).into_owned();
        lua.load(code)
            .set_name(name)
            .exec()
            .map_err(|e| format!("script load error: {}", first_line(&e)))?;
        let globals = lua.globals();
        let hook = |name: &str| globals.get::<Option<Function>>(name).ok().flatten();
        let (on_request, on_response, on_route) = (
            hook("envoy_on_request"),
            hook("envoy_on_response"),
            hook("envoy_on_route"),
        );
        Ok(Script {
            _lua: lua,
            on_request,
            on_response,
            on_route,
        })
    }
}

/// A Lua error's message without mlua's stack traceback.
fn first_line(error: &mlua::Error) -> String {
    let text = match error {
        mlua::Error::CallbackError { cause, .. } => return first_line(cause),
        mlua::Error::RuntimeError(text) | mlua::Error::SyntaxError { message: text, .. } => {
            text.clone()
        }
        other => other.to_string(),
    };
    text.split("\nstack traceback:")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The scripts of one Lua filter.
#[derive(Debug, Default)]
struct FilterScripts {
    default: Option<Arc<Script>>,
    named: HashMap<String, Arc<Script>>,
}

/// Every script of one connection manager, loaded.
#[derive(Debug, Default)]
pub struct LuaRuntime {
    /// By the filter's position in `http_filters`.
    filters: HashMap<usize, FilterScripts>,
    /// Routes' own `LuaPerRoute` scripts and cluster specifiers, by their source (one state
    /// per distinct script; see [`source_key`]).
    inline: HashMap<Vec<u8>, Arc<Script>>,
}

/// Which script a route runs for a Lua filter.
pub enum Selection<'a> {
    /// The filter's default script (none: the filter does nothing).
    Default,
    /// `LuaPerRoute.name`.
    Named(&'a str),
    /// `LuaPerRoute.source_code`.
    Source(&'a Sourced),
}

impl<'a> Selection<'a> {
    /// The selection a route's most specific setting makes (`None`: disabled).
    pub fn from_override(setting: Option<&'a FilterOverride>) -> Option<Selection<'a>> {
        match setting {
            Some(FilterOverride::Disabled) => None,
            Some(FilterOverride::Lua(LuaPerRoute::Name(name))) => Some(Selection::Named(name)),
            Some(FilterOverride::Lua(LuaPerRoute::Source(source))) => {
                Some(Selection::Source(source))
            }
            _ => Some(Selection::Default),
        }
    }
}

impl LuaRuntime {
    /// Loads every script `hcm` has (`None` when it has none); the error names the filter or
    /// the route and Envoy's reason.
    pub fn new(hcm: &HttpConnectionManager) -> Result<Option<LuaRuntime>, String> {
        let mut runtime = LuaRuntime::default();
        let mut any = false;
        for (index, filter) in hcm.http_filters.iter().enumerate() {
            let HttpFilterKind::Lua(config) = &filter.kind else {
                continue;
            };
            any = true;
            let label = |e: String| format!("Lua filter {}: {e}", filter.name);
            let mut scripts = FilterScripts::default();
            if let Some(source) = &config.default_source {
                let code = source_text(source).map_err(label)?;
                scripts.default = Some(Arc::new(Script::load(&code).map_err(label)?));
            }
            for (name, source) in &config.source_codes {
                let code = source_text(source).map_err(label)?;
                scripts
                    .named
                    .insert(name.clone(), Arc::new(Script::load(&code).map_err(label)?));
            }
            runtime.filters.insert(index, scripts);
        }
        let config = &hcm.route_config;
        for vhost in &config.virtual_hosts {
            let levels = std::iter::once(&config.filters)
                .chain(std::iter::once(&vhost.filters))
                .chain(vhost.routes.iter().map(|r| &r.filters));
            for settings in levels {
                for (name, setting) in &settings.overrides {
                    if let FilterOverride::Lua(LuaPerRoute::Source(source)) = setting {
                        any = true;
                        let label = |e: String| format!("LuaPerRoute of '{name}': {e}");
                        runtime.load_inline(source).map_err(label)?;
                    }
                }
            }
            for route in &vhost.routes {
                if let RouteAction::Forward(action) = &route.action {
                    if let ClusterSpecifier::Lua(lua) = &action.cluster {
                        any = true;
                        let label = |e: String| {
                            format!("Lua cluster specifier of route '{}': {e}", route.name)
                        };
                        runtime.load_inline(&lua.source).map_err(label)?;
                    }
                }
            }
        }
        Ok(any.then_some(runtime))
    }

    fn load_inline(&mut self, source: &Sourced) -> Result<(), String> {
        if let std::collections::hash_map::Entry::Vacant(entry) =
            self.inline.entry(source_key(source))
        {
            let script = Arc::new(Script::load(&source_text(source)?)?);
            entry.insert(script);
        }
        Ok(())
    }

    fn inline(&self, source: &Sourced) -> Option<&Arc<Script>> {
        self.inline.get(&source_key(source))
    }

    /// The script the filter at `index` runs with `selection` (`None`: nothing to run; a name
    /// that is not one of `source_codes` runs nothing, as in Envoy).
    pub fn script(&self, index: usize, selection: &Selection<'_>) -> Option<Arc<Script>> {
        match selection {
            Selection::Default => self.filters.get(&index)?.default.clone(),
            Selection::Named(name) => self.filters.get(&index)?.named.get(*name).cloned(),
            Selection::Source(source) => self.inline(source).cloned(),
        }
    }

    /// The cluster a Lua cluster specifier names for a request with `headers` (its
    /// `default_cluster` when the script fails or returns nil).
    pub fn route_cluster(
        &self,
        spec: &vigil_core::config::LuaClusterSpecifier,
        headers: &[(String, Vec<u8>)],
    ) -> String {
        let named = self
            .inline(&spec.source)
            .and_then(|script| script.on_route.as_ref())
            .and_then(|hook| handle::run_route(hook, headers));
        named.unwrap_or_else(|| spec.default_cluster.clone())
    }
}

/// Loads every script of `hcm`, as `vigil -c` does before serving (and a reload before
/// applying): the error is what refuses the file.
pub fn check(hcm: &HttpConnectionManager) -> Result<(), String> {
    LuaRuntime::new(hcm).map(|_| ())
}

impl Script {
    pub fn has_request_hook(&self) -> bool {
        self.on_request.is_some()
    }

    pub fn has_response_hook(&self) -> bool {
        self.on_response.is_some()
    }
}

/// A request as a script sees it: Envoy's pseudo headers, then the headers.
pub fn request_headers(
    method: &http::Method,
    path: &str,
    authority: Option<&str>,
    scheme: &str,
    headers: &HeaderMap,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(headers.len() + 4);
    if let Some(authority) = authority {
        out.push((":authority".to_string(), authority.as_bytes().to_vec()));
    }
    out.push((":path".to_string(), path.as_bytes().to_vec()));
    out.push((":method".to_string(), method.as_str().as_bytes().to_vec()));
    out.push((":scheme".to_string(), scheme.as_bytes().to_vec()));
    for (name, value) in headers {
        if name == http::header::HOST {
            continue;
        }
        out.push((name.as_str().to_string(), value.as_bytes().to_vec()));
    }
    out
}

/// A response's headers as a script sees them: `:status`, then the headers.
pub fn response_headers(status: http::StatusCode, headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(headers.len() + 1);
    out.push((":status".to_string(), status.as_str().as_bytes().to_vec()));
    for (name, value) in headers {
        out.push((name.as_str().to_string(), value.as_bytes().to_vec()));
    }
    out
}

/// The headers back in a header map (pseudo headers left out; names or values that are not
/// valid HTTP are dropped).
pub fn header_map(headers: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if name.starts_with(':') {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The first value of a (pseudo) header.
pub fn first<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// What a request-side hook decided.
pub enum RequestOutcome {
    /// The request goes on with these headers and body.
    Continue {
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
    },
    /// `respond()`: a local reply.
    Respond(LocalReply),
}

/// Runs `envoy_on_request` on a request (its whole body read), as the filter's decode side.
/// A script error is logged and the request goes on as the script left it, as in Envoy.
pub async fn on_request(
    script: &Script,
    meta: &StreamMeta,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
    upstreams: Arc<dyn Upstreams>,
    errors: ErrorCount,
) -> RequestOutcome {
    let Some(hook) = &script.on_request else {
        return RequestOutcome::Continue { headers, body };
    };
    let stream = handle::Stream::request(headers, body, meta.clone(), upstreams);
    handle::run(hook, &stream, errors).await;
    stream.into_request_outcome()
}

/// What a response-side hook decided.
pub struct ResponseOutcome {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

/// Runs `envoy_on_response` on a response, as the filter's encode side. The body stays a
/// stream unless the script asks for it whole (`body()`); `bodyChunks()` passes each chunk on
/// as the script leaves it.
pub async fn on_response(
    script: &Script,
    meta: &StreamMeta,
    status: http::StatusCode,
    headers: &HeaderMap,
    body: Body,
    upstreams: Arc<dyn Upstreams>,
    errors: ErrorCount,
) -> ResponseOutcome {
    let Some(hook) = &script.on_response else {
        return ResponseOutcome {
            status,
            headers: headers.clone(),
            body,
        };
    };
    let stream = handle::Stream::response(
        response_headers(status, headers),
        body,
        meta.clone(),
        upstreams,
    );
    handle::run_response(hook, stream, errors).await
}

/// The downstream facts `streamInfo()` and `connection()` give.
pub fn meta(
    protocol: http::Version,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    server_name: &str,
    tls: bool,
) -> StreamMeta {
    StreamMeta::new(protocol, peer, local, server_name, tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A connection manager whose one Lua filter has `script` as its default script.
    fn hcm(script: &str) -> HttpConnectionManager {
        let value = json!({"static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "h",
                        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                        "http_filters": [
                            {"name": "my-lua", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                                "default_source_code": {"inline_string": script}}},
                            {"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                        ]
                    }
                }]}]
            }]
        }});
        let loaded = vigil_core::config::from_value(&value).unwrap_or_else(|e| panic!("{e}"));
        loaded.bootstrap.listeners[0].http[0].clone()
    }

    fn meta() -> StreamMeta {
        super::meta(
            http::Version::HTTP_11,
            SocketAddr::from(([127, 0, 0, 1], 5000)),
            None,
            "",
            false,
        )
    }

    fn script(source: &str) -> Arc<Script> {
        let runtime = LuaRuntime::new(&hcm(source))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a runtime"));
        runtime
            .script(0, &Selection::Default)
            .unwrap_or_else(|| panic!("a default script"))
    }

    #[test]
    fn a_script_that_does_not_load_names_the_filter_as_envoy_does() {
        let err = check(&hcm("function envoy_on_request(h")).expect_err("refused");
        assert!(
            err.starts_with("Lua filter my-lua: script load error: [string \""),
            "{err}"
        );
        assert!(err.contains("expected"), "{err}");
        // Global code runs at load: its error refuses the file too.
        let err = check(&hcm("error('at load')")).expect_err("refused");
        assert!(err.contains("at load"), "{err}");
        assert!(check(&hcm("x = 1")).is_ok());
    }

    #[tokio::test]
    async fn a_request_script_changes_the_headers_and_body() {
        let script = script(
            "function envoy_on_request(h)\n\
               h:headers():add('x-a', h:headers():get(':path'))\n\
               h:headers():remove('x-gone')\n\
               h:headers():replace(':path', '/new')\n\
               local b = h:body()\n\
               b:setBytes(string.upper(b:getBytes(0, b:length())))\n\
             end",
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-gone", http::HeaderValue::from_static("1"));
        let request = request_headers(&http::Method::POST, "/old", Some("h"), "http", &headers);
        let outcome = on_request(
            &script,
            &meta(),
            request,
            Bytes::from_static(b"abc"),
            Arc::new(NoUpstreams),
            Arc::new(|| {}),
        )
        .await;
        let RequestOutcome::Continue { headers, body } = outcome else {
            panic!("the request goes on");
        };
        assert_eq!(first(&headers, ":path"), Some(&b"/new"[..]));
        assert_eq!(first(&headers, "x-a"), Some(&b"/old"[..]));
        assert_eq!(first(&headers, "x-gone"), None);
        assert_eq!(first(&headers, "content-length"), Some(&b"3"[..]));
        assert_eq!(body, Bytes::from_static(b"ABC"));
    }

    #[tokio::test]
    async fn respond_ends_the_script_and_a_run_time_error_lets_the_request_go_on() {
        let script = script(
            "function envoy_on_request(h)\n\
               if h:headers():get(':path') == '/deny' then\n\
                 h:respond({[':status'] = '403', ['x-why'] = 'lua'}, 'no')\n\
                 h:headers():add('x-after', 'never')\n\
               end\n\
               h:headers():add('x-before-error', 'kept')\n\
               error('boom')\n\
             end",
        );
        let request = |path: &str| {
            request_headers(
                &http::Method::GET,
                path,
                Some("h"),
                "http",
                &HeaderMap::new(),
            )
        };
        let denied = on_request(
            &script,
            &meta(),
            request("/deny"),
            Bytes::new(),
            Arc::new(NoUpstreams),
            Arc::new(|| {}),
        )
        .await;
        let RequestOutcome::Respond(reply) = denied else {
            panic!("a local reply");
        };
        assert_eq!(reply.status, 403);
        assert_eq!(reply.body, Some(Bytes::from_static(b"no")));
        assert!(
            reply
                .headers
                .contains(&("x-why".to_string(), "lua".to_string()))
        );
        let failed = on_request(
            &script,
            &meta(),
            request("/"),
            Bytes::new(),
            Arc::new(NoUpstreams),
            Arc::new(|| {}),
        )
        .await;
        let RequestOutcome::Continue { headers, .. } = failed else {
            panic!("the request goes on");
        };
        assert_eq!(first(&headers, "x-before-error"), Some(&b"kept"[..]));
    }

    #[tokio::test]
    async fn an_unknown_http_call_cluster_is_a_script_error() {
        let script = script(
            "function envoy_on_request(h)\n\
               local ok, err = pcall(function()\n\
                 return h:httpCall('nope', {[':method'] = 'GET', [':path'] = '/', \
                   [':authority'] = 'x'}, nil, 100)\n\
               end)\n\
               h:headers():add('x-err', tostring(err))\n\
             end",
        );
        let request = request_headers(
            &http::Method::GET,
            "/",
            Some("h"),
            "http",
            &HeaderMap::new(),
        );
        let RequestOutcome::Continue { headers, .. } = on_request(
            &script,
            &meta(),
            request,
            Bytes::new(),
            Arc::new(NoUpstreams),
            Arc::new(|| {}),
        )
        .await
        else {
            panic!("the request goes on");
        };
        let err = String::from_utf8_lossy(first(&headers, "x-err").unwrap_or_default());
        assert!(
            err.contains("http call cluster invalid. Must be configured"),
            "{err}"
        );
    }
}
