//! Envoy's Lua HTTP filter and Lua cluster specifier, vigil against real Envoy 1.36.2 on the
//! same YAML and the same scripts: request header add / replace / remove and reads
//! (`get`, `getAtIndex`, `getNumValues`), request and response body rewrites (`body():setBytes`),
//! a streamed response rewritten chunk by chunk (`bodyChunks()`), `respond()` local replies,
//! script errors on either side, `httpCall` to a second cluster, dynamic metadata from the
//! request to the response side, `streamInfo()` / `connection()` / `base64Escape`, globals kept
//! across requests, `LuaPerRoute` (disabled, a named script, a route's own script), a script file
//! that `require`s a module, and the cluster specifier picking clusters by header (a nil answer
//! and an error give `default_cluster`). Each answer's status, the headers the scripts and the
//! upstream touch, and the body must be the same from both.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{assert_same_answers, start_envoy_and_vigil};
use vigil_tests::{http, net, paths};

/// The main filter's default script.
const MAIN: &str = r#"
function envoy_on_request(h)
  local headers = h:headers()
  local path = headers:get(":path")
  headers:add("x-lua-added", "req")
  headers:replace("x-lua-replaced", "new")
  headers:remove("x-lua-removed")
  headers:add("x-lua-count", tostring(headers:getNumValues("x-multi")))
  headers:add("x-lua-at1", headers:getAtIndex("x-multi", 1) or "nil")
  headers:add("x-lua-joined", headers:get("x-multi") or "nil")
  counter = (counter or 0) + 1
  headers:add("x-lua-counter", tostring(counter))
  if path == "/deny" then
    h:respond({[":status"] = "403", ["x-lua-denied"] = "yes"}, "denied by lua")
  end
  if path == "/deny-json" then
    h:respond({[":status"] = "401", ["content-type"] = "application/json",
      ["x-lua-multi"] = {"a", "b"}}, "{\"error\": 1}")
  end
  if path == "/empty-reply" then
    h:respond({[":status"] = "204"})
  end
  if path == "/error" then
    error("request boom")
  end
  if path == "/rewrite" then
    local body = h:body()
    body:setBytes("rewritten:" .. body:getBytes(0, body:length()))
  end
  if path == "/call" then
    local answer, body = h:httpCall("side", {
      [":method"] = "GET", [":path"] = "/from-lua", [":authority"] = "side"
    }, nil, 2000)
    -- Wrappers do not survive a yield: the headers are asked for again.
    h:headers():add("x-lua-call-status", answer[":status"])
    h:headers():add("x-lua-call-body", body or "nil")
  end
  if path == "/call-dead" then
    local answer, body = h:httpCall("dead", {
      [":method"] = "GET", [":path"] = "/", [":authority"] = "dead"
    }, nil, 2000)
    h:headers():add("x-lua-call-status", answer[":status"])
    h:headers():add("x-lua-call-body", body or "nil")
  end
  if path == "/stale" then
    h:httpCall("side", {[":method"] = "GET", [":path"] = "/from-lua", [":authority"] = "side"},
      "ping", 2000)
    headers:add("x-lua-stale", "used after a yield")
  end
    if path == "/meta" then
    h:streamInfo():dynamicMetadata():set("lua.test", "k", "v1")
  end
    if path == "/route-meta" or path == "/canonical-meta" then
    h:headers():add("x-lua-team", h:metadata():get("team") or "nil")
    local keys = {}
    for key, _ in pairs(h:metadata()) do table.insert(keys, key) end
    h:headers():add("x-lua-meta-keys", table.concat(keys, ","))
  end
  if path == "/info" then
    headers:add("x-lua-proto", h:streamInfo():protocol())
    headers:add("x-lua-ssl", tostring(h:connection():ssl()))
    headers:add("x-lua-b64", h:base64Escape("hello?>"))
    local names = {}
    for name, _ in pairs(headers) do
      if string.sub(name, 1, 6) == "x-test" then table.insert(names, name) end
    end
    headers:add("x-lua-iterated", table.concat(names, ","))
  end
end

function envoy_on_response(h)
  local headers = h:headers()
  local path = headers:get("x-up-path") or ""
  headers:add("x-lua-resp", "yes")
  headers:remove("x-up-remove")
  headers:replace("x-up", "replaced")
  if path == "/respbody" then
    local body = h:body()
    body:setBytes(string.upper(body:getBytes(0, body:length())))
  end
  if string.sub(path, 1, 4) == "/sse" then
    for chunk in h:bodyChunks() do
      if chunk:length() > 0 then
        chunk:setBytes("[" .. chunk:getBytes(0, chunk:length()) .. "]")
      end
    end
  end
  if path == "/respond-in-response" then
    h:respond({[":status"] = "500"}, "never")
  end
  if path == "/resperror" then
    headers:add("x-lua-before-error", "yes")
    error("response boom")
  end
  if path == "/meta" then
    local m = h:streamInfo():dynamicMetadata():get("lua.test")
    headers:add("x-lua-meta", m and m.k or "nil")
  end
end
"#;

/// The main filter's named script (`LuaPerRoute.name`).
const NAMED: &str = r#"
function envoy_on_request(h)
  h:headers():add("x-lua-named", "yes")
end
"#;

/// A route's own script (`LuaPerRoute.source_code`).
const ROUTE_CODE: &str = r#"
function envoy_on_request(h)
  h:headers():add("x-lua-route-code", "yes")
end
"#;

/// The cluster specifier's script.
const PICK: &str = r#"
function envoy_on_route(route_handle)
  local wanted = route_handle:headers():get("x-pick")
  if wanted == "err" then error("no cluster for you") end
  if wanted == "side" then return "side" end
  return nil
end
"#;

/// The module the second filter's script file `require`s.
const LIBRARY: &str = r#"
local M = {}
function M.greet(name) return "hello " .. name end
return M
"#;

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
        .trim_end()
        .to_string()
}

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    echo: SocketAddr,
    side: SocketAddr,
    dead: SocketAddr,
    file: &Path,
) -> String {
    let filters = format!(
        "
          - name: lua-main
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              stat_prefix: main
              default_source_code:
                inline_string: |
{}
              source_codes:
                named:
                  inline_string: |
{}
          - name: lua-file
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code: {{ filename: {} }}",
        indent(MAIN, 18),
        indent(NAMED, 20),
        file.display()
    );
    let routes = format!(
        "
              - match: {{ prefix: \"/named\" }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  lua-main:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    name: named
              - match: {{ prefix: \"/unknown-name\" }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  lua-main:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    name: not-a-script
              - match: {{ prefix: \"/disabled\" }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  lua-main:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    disabled: true
              - match: {{ prefix: \"/route-code\" }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  lua-main:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    source_code:
                      inline_string: |
{}
              - match: {{ prefix: \"/pick\" }}
                route:
                  inline_cluster_specifier_plugin:
                    extension:
                      name: envoy.router.cluster_specifier_plugin.lua
                      typed_config:
                        \"@type\": type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig
                        default_cluster: echo
                        source_code:
                          inline_string: |
{}
              - match: {{ prefix: \"/route-meta\" }}
                route: {{ cluster: echo }}
                metadata:
                  filter_metadata:
                    lua-main: {{ team: by-name }}
                    envoy.filters.http.lua: {{ team: canonical }}
              - match: {{ prefix: \"/canonical-meta\" }}
                route: {{ cluster: echo }}
                metadata:
                  filter_metadata:
                    envoy.filters.http.lua: {{ team: canonical }}
              - match: {{ prefix: \"/direct\" }}
                direct_response: {{ status: 202, body: {{ inline_string: direct }} }}
              - match: {{ prefix: \"/\" }}
                route: {{ cluster: echo }}",
        indent(ROUTE_CODE, 24),
        indent(PICK, 28)
    );
    let clusters = format!(
        "{}{}{}",
        cluster_yaml("echo", &[echo], "", None),
        cluster_yaml("side", &[side], "", None),
        cluster_yaml("dead", &[dead], "", None)
    );
    let mut spec = ListenerSpec::new("lua_lab", &routes, &clusters);
    spec.http_filters = filters;
    spec.render(listen, admin)
}

/// An upstream that answers each request with its name, the request line, the `x-lua-*` /
/// `x-test-*` headers it received (sorted) and the body; `/sse` is answered in three chunks, a
/// little apart, and `/from-lua` (the scripts' `httpCall`) with `pong`.
async fn upstream(ip: IpAddr, name: &'static str, release: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|err| panic!("cannot bind the {name} upstream: {err}"));
    let address = listener
        .local_addr()
        .unwrap_or_else(|err| panic!("{name} upstream address: {err}"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, name, release.clone()));
        }
    });
    address
}

/// One request: its line, headers (lowercased names) and body (`content-length` framing only:
/// what the tests send).
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, Vec<(String, String)>, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: Vec<u8> = buf.drain(..length).collect();
    Some((line, headers, body))
}

async fn serve(mut stream: TcpStream, name: &'static str, release: Arc<Notify>) {
    let mut buf = Vec::new();
    while let Some((line, headers, body)) = read_request(&mut stream, &mut buf).await {
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        let head = |extra: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nx-up: original\r\nx-up-remove: 1\r\nx-up-path: {path}\r\n{extra}"
            )
        };
        if path == "/sse-held" {
            // The first event, then nothing until the test has seen it through the proxy: a
            // proxy that held the response back until its end would never show it.
            let start =
                head("content-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
            let first = "data: 1\n\n";
            let frame = format!("{start}{:x}\r\n{first}\r\n", first.len());
            if stream.write_all(frame.as_bytes()).await.is_err() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), release.notified()).await;
            let last = "data: 2\n\n";
            let frame = format!("{:x}\r\n{last}\r\n0\r\n\r\n", last.len());
            if stream.write_all(frame.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if path == "/sse" {
            let start =
                head("content-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
            if stream.write_all(start.as_bytes()).await.is_err() {
                return;
            }
            for n in 1..=3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let data = format!("data: {n}\n\n");
                let frame = format!("{:x}\r\n{data}\r\n", data.len());
                if stream.write_all(frame.as_bytes()).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
            continue;
        }
        let text = if path == "/from-lua" {
            "pong".to_string()
        } else {
            let mut seen: Vec<String> = headers
                .iter()
                .filter(|(n, _)| n.starts_with("x-lua-") || n.starts_with("x-test-"))
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            seen.sort();
            format!(
                "{name} {line}\n{}\nbody={}",
                seen.join("\n"),
                String::from_utf8_lossy(&body)
            )
        };
        let answer = format!(
            "{}content-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            head(""),
            text.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `GET /sse-held` on a raw connection: what had arrived of the body when the first event was
/// seen (or a note that it was not within 3 s), then the upstream is released and the rest read.
async fn first_event(listen: SocketAddr, release: &Notify) -> String {
    let mut stream = TcpStream::connect(listen)
        .await
        .unwrap_or_else(|err| panic!("connect {listen}: {err}"));
    let request = format!("GET /sse-held HTTP/1.1\r\nhost: {listen}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|err| panic!("send: {err}"));
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let seen = tokio::time::timeout(Duration::from_secs(3), async {
        while !String::from_utf8_lossy(&got).contains("[data: 1") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    release.notify_one();
    if !seen {
        return "the first event did not arrive while the upstream held the rest".into();
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while !String::from_utf8_lossy(&got).contains("[data: 2") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    // The chunk framing of the events, without the sizes' exact digits mattering.
    let events: Vec<&str> = body
        .split("\r\n")
        .filter(|part| part.starts_with('['))
        .collect();
    format!("first event streamed; events {events:?}")
}

/// The headers compared: those the scripts and the upstream set, and the framing ones.
fn shown_headers(headers: &::http::HeaderMap) -> String {
    let mut shown: Vec<String> = headers
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            n.starts_with("x-lua-") || n.starts_with("x-up") || n == "content-type"
        })
        .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    shown.sort();
    shown.join(" ")
}

#[tokio::test]
async fn lua_as_in_envoy() {
    let dir = paths::scratch_dir("lua");
    let v4 = net::fresh_loopback();
    let ip = IpAddr::V4(v4);
    let release = Arc::new(Notify::new());
    let echo = upstream(ip, "echo", release.clone()).await;
    let side = upstream(ip, "side", release.clone()).await;
    // A cluster whose one host accepts no connection (a port nothing listens on).
    let dead = SocketAddr::new(ip, net::free_port_on(&[v4]));
    // The second filter's script is a file that finds its module on a path of the scratch
    // directory (Envoy's examples `require("lib.mylibrary")` from the working directory).
    let lib_dir = dir.join("lib");
    std::fs::create_dir_all(&lib_dir).unwrap_or_else(|err| panic!("{err}"));
    std::fs::write(lib_dir.join("mylib.lua"), LIBRARY).unwrap_or_else(|err| panic!("{err}"));
    let file = dir.join("second.lua");
    let second = format!(
        "package.path = \"{}/?.lua;\" .. package.path\n\
         local lib = require(\"lib.mylib\")\n\
         function envoy_on_request(h)\n  h:headers():add(\"x-lua-lib\", lib.greet(\"proxy\"))\nend\n\
         function envoy_on_response(h)\n  h:headers():add(\"x-lua-file-resp\", \"yes\")\nend\n",
        dir.display()
    );
    std::fs::write(&file, second).unwrap_or_else(|err| panic!("{err}"));
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        config(listen, admin, echo, side, dead, &file)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/",
            vec![
                ("x-multi", "one"),
                ("x-multi", "two"),
                ("x-lua-replaced", "old"),
                ("x-lua-removed", "gone"),
            ],
            "",
        ),
        ("GET", "/deny", vec![], ""),
        ("GET", "/deny-json", vec![], ""),
        ("GET", "/direct", vec![], ""),
        ("GET", "/empty-reply", vec![], ""),
        ("GET", "/error", vec![], ""),
        (
            "POST",
            "/rewrite",
            vec![("content-type", "text/plain")],
            "hello",
        ),
        ("GET", "/call", vec![], ""),
        ("GET", "/stale", vec![], ""),
        ("GET", "/call-dead", vec![], ""),
        ("GET", "/respond-in-response", vec![], ""),
        ("GET", "/meta", vec![], ""),
        ("GET", "/route-meta", vec![], ""),
        ("GET", "/canonical-meta", vec![], ""),
        (
            "GET",
            "/info",
            vec![("x-test-a", "1"), ("x-test-b", "2")],
            "",
        ),
        ("GET", "/respbody", vec![], ""),
        ("GET", "/sse", vec![], ""),
        ("GET", "/resperror", vec![], ""),
        ("GET", "/named", vec![], ""),
        ("GET", "/disabled", vec![], ""),
        ("GET", "/unknown-name", vec![], ""),
        ("GET", "/route-code", vec![], ""),
        ("GET", "/pick", vec![("x-pick", "side")], ""),
        ("GET", "/pick", vec![("x-pick", "err")], ""),
        ("GET", "/pick", vec![], ""),
    ];
    let mut seen = Vec::new();
    for (_, listen, _) in &procs {
        let mut answers = Vec::new();
        for (method, path, headers, body) in &cases {
            let response = http::request(*listen, method, path, headers, body)
                .await
                .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
            answers.push(format!(
                "{method} {path} {headers:?}: {} [{}] {:?}",
                response.status,
                shown_headers(&response.headers),
                response.body
            ));
        }
        seen.push(answers);
    }
    // The streamed response goes on chunk by chunk through the response script's
    // bodyChunks(): its first (rewritten) event arrives while the upstream holds the rest.
    for (name, listen, _) in &procs {
        let first = first_event(*listen, &release).await;
        seen[if *name == "envoy" { 0 } else { 1 }].push(format!("GET /sse-held: {first}"));
    }
    // The filters' error counters (`http.<prefix>.lua[.<stat_prefix>].errors`).
    for (name, _, process) in &procs {
        let stats = process.stats().await.unwrap_or_default();
        let counted: Vec<String> = stats
            .iter()
            .filter(|(k, _)| k.contains(".lua.") && k.ends_with(".errors"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        seen[if *name == "envoy" { 0 } else { 1 }].push(format!("counters: {counted:?}"));
    }
    assert_same_answers(&seen);
    // What the comparison covered, as Envoy answered it.
    let envoy = seen[0].join("\n");
    for expected in [
        "x-lua-added=req",
        "x-lua-replaced=new",
        "x-lua-count=2",
        "x-lua-joined=one,two",
        "GET /deny []: 403",
        "denied by lua",
        "body=rewritten:hello",
        "x-lua-call-body=pong",
        "x-lua-meta=v1",
        "HELLO",
        "[data: 1",
        "x-lua-named=yes",
        "x-lua-route-code=yes",
        "side GET /pick",
        "x-lua-lib=hello proxy",
        "x-lua-team=by-name",
        "x-lua-team=canonical",
        "http.lua_lab.lua.main.errors=4",
        "http.lua_lab.lua.errors=0",
        "first event streamed; events [\"[data: 1\\n\\n]\", \"[data: 2\\n\\n]\"]",
    ] {
        assert!(envoy.contains(expected), "{expected} in\n{envoy}");
    }
}
