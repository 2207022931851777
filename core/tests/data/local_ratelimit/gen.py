#!/usr/bin/env python3
"""Records what Envoy 1.36.2's HTTP local rate limit filter does with bursts of requests.

Run from the repository root:

    python3 core/tests/data/local_ratelimit/gen.py [path/to/envoy]

It starts Envoy on loopback addresses only (listener, admin, and a tiny upstream that echoes the
request headers it received), with one listener-level `envoy.filters.http.local_ratelimit`
config and several per-route configs (`typed_per_filter_config`), sends bursts of requests at
known times (each request's send time is recorded relative to the first), and writes
`core/tests/data/local_ratelimit/vectors.json`: the filter configs, and per request its route,
connection, send and answer times, and Envoy's answer (status, body, the x-ratelimit / x-envoy / grpc headers,
the configured response header, and for requests that reached the upstream the headers it saw),
then Envoy's `http_local_rate_limit` counters. `cargo test -p vigil-core local_ratelimit`
replays it through vigil's reader and engine with the recorded times.

Token buckets refill continuously in Envoy 1.36 (tokens_per_fill / fill_interval per second), so
the phases are placed well away from the moments a whole token accrues: timing noise of tens of
milliseconds cannot change an answer.
"""

import http.client
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(ROOT))
import envoy_run  # noqa: E402  (core/tests/data/envoy_run.py)
OUT = os.path.join(ROOT, "vectors.json")
ENVOY = sys.argv[1] if len(sys.argv) > 1 else ".venv/bin/envoy"
TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


def pct(n, d="HUNDRED"):
    return {"default_value": {"numerator": n, "denominator": d}, "runtime_key": "rl_unset_key"}


# The listener-level config (routes without their own config use it, and share its bucket).
FILTER = {
    "stat_prefix": "rl_global",
    "token_bucket": {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "1s"},
    "filter_enabled": pct(100),
    "filter_enforced": pct(100),
    "response_headers_to_add": [{"header": {"key": "x-local-rl", "value": "denied"}}],
    "request_headers_to_add_when_not_enforced": [{"header": {"key": "x-rl-shadow", "value": "global"}}],
    "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
}

# Per-route configs by path prefix.
PER_ROUTE = {
    "/b": {
        "stat_prefix": "rl_b",
        "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "2s"},
        "status": {"code": 503},
        "filter_enabled": pct(100),
        "filter_enforced": pct(10000, "TEN_THOUSAND"),
        "response_headers_to_add": [
            {"header": {"key": "x-b", "value": "one"}},
            {"header": {"key": "x-b", "value": "two"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"},
        ],
    },
    "/shadow": {
        "stat_prefix": "rl_shadow",
        "token_bucket": {"max_tokens": 1, "fill_interval": "1s"},
        "filter_enabled": pct(100),
        "filter_enforced": pct(0),
        "request_headers_to_add_when_not_enforced": [{"header": {"key": "x-rl-shadow", "value": "limited"}}],
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
    },
    "/off": {
        "stat_prefix": "rl_off",
        "token_bucket": {"max_tokens": 1, "fill_interval": "1s"},
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
    },
    "/conn": {
        "stat_prefix": "rl_conn",
        "token_bucket": {"max_tokens": 2, "fill_interval": "10s"},
        "filter_enabled": pct(100),
        "filter_enforced": pct(100),
        "local_rate_limit_per_downstream_connection": True,
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
    },
    "/grpc": {
        "stat_prefix": "rl_grpc",
        "token_bucket": {"max_tokens": 1, "fill_interval": "10s"},
        "filter_enabled": pct(100),
        "filter_enforced": pct(100),
        "rate_limited_as_resource_exhausted": True,
        "status": {"code": "OK"},
    },
    "/grpc_plain": {
        "stat_prefix": "rl_grpc_plain",
        "token_bucket": {"max_tokens": 1, "fill_interval": "10s"},
        "filter_enabled": pct(100),
        "filter_enforced": pct(100),
    },
    "/status200": {
        "stat_prefix": "rl_status200",
        "token_bucket": {"max_tokens": 1, "fill_interval": "10s"},
        "filter_enabled": pct(100),
        "filter_enforced": pct(100),
        "status": {"code": 200},
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
    },
    "/slow": {
        "stat_prefix": "rl_slow",
        "token_bucket": {"max_tokens": 5, "tokens_per_fill": 1, "fill_interval": "4s"},
        "filter_enabled": pct(100),
        "filter_enforced": pct(100),
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
    },
}

# Phases: (start second, [(path, connection name, extra headers)]).
GRPC = [("content-type", "application/grpc")]
PHASES = [
    (0.0, [("/global", "c1", [])] * 2 + [("/direct", "c1", [])] * 2 + [("/global", "c2", [])]
     + [("/b", "c1", [])] * 3 + [("/shadow", "c1", [])] * 2 + [("/off", "c1", [])] * 3
     + [("/conn", "k1", [])] * 3 + [("/conn", "k2", [])] * 2
     + [("/grpc", "c1", GRPC)] * 2 + [("/grpc_plain", "c1", GRPC)] * 2
     + [("/status200", "c1", [])] * 2 + [("/slow", "c1", [])] * 6),
    (1.5, [("/global", "c1", [])] * 3 + [("/b", "c2", [])] * 2 + [("/shadow", "c1", [])] * 2
     + [("/conn", "k1", [])] + [("/slow", "c1", [])] * 2),
    (5.5, [("/global", "c1", [])] * 4 + [("/b", "c1", [])] * 3 + [("/conn", "k1", [])]
     + [("/conn", "k3", [])] + [("/grpc_plain", "c2", GRPC)] + [("/slow", "c1", [])] * 2),
]

KEEP = ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-envoy-ratelimited",
        "x-local-rl", "x-b", "content-type", "grpc-status", "grpc-message"]


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_one(self):
        body = json.dumps({"headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = handle_one

    def log_message(self, *args):
        pass


def main():
    echo_port, listen_port, admin_port = (envoy_run.free_port() for _ in range(3))
    echo = ThreadingHTTPServer(("127.0.0.1", echo_port), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    routes = []
    for prefix, cfg in PER_ROUTE.items():
        routes.append({"match": {"path": prefix}, "route": {"cluster": "echo"},
                       "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": dict(cfg, **{"@type": TYPE})}})
    routes.append({"match": {"path": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "hello"}}})
    routes.append({"match": {"prefix": "/"}, "route": {"cluster": "echo"}})
    vhosts = [{"name": "all", "domains": ["*"], "routes": routes}]
    manager = envoy_run.hcm("ingress", vhosts, "envoy.filters.http.local_ratelimit", dict(FILTER, **{"@type": TYPE}))
    bootstrap = envoy_run.bootstrap(admin_port, [envoy_run.listener("l", listen_port, manager)], echo_port)
    with envoy_run.running_envoy(ENVOY, bootstrap, admin_port, 2, "envoy.yaml"):
        try:
            conns = {}
            results = []
            start = time.monotonic()
            for at, requests in PHASES:
                while time.monotonic() - start < at:
                    time.sleep(0.005)
                for route, conn_name, headers in requests:
                    if conn_name not in conns:
                        conns[conn_name] = http.client.HTTPConnection("127.0.0.1", listen_port, timeout=5)
                    conn = conns[conn_name]
                    t = time.monotonic() - start
                    conn.putrequest("GET", route, skip_host=True, skip_accept_encoding=True)
                    conn.putheader("host", "example.com")
                    for k, v in headers:
                        conn.putheader(k, v)
                    conn.endheaders()
                    r = conn.getresponse()
                    body = r.read().decode()
                    done = time.monotonic() - start
                    out = {"status": r.status,
                           "headers": [[k.lower(), v] for k, v in r.getheaders() if k.lower() in KEEP]}
                    if r.getheader("content-type") == "application/json":
                        seen = json.loads(body)["headers"]
                        out["upstream_headers"] = [[k, v] for k, v in seen if k.startswith("x-rl")]
                    else:
                        out["body"] = body
                    results.append({"at_ms": round(t * 1000, 3), "done_ms": round(done * 1000, 3), "path": route, "connection": conn_name,
                                    "headers": headers, "envoy": out})
            stats = envoy_run.stats(admin_port, "http_local_rate_limit")
        finally:
            echo.shutdown()
    with open(OUT, "w") as f:
        json.dump({"envoy": "1.36.2", "filter": FILTER, "per_route": PER_ROUTE, "stats": stats,
                   "requests": results}, f, indent=1)
        f.write("\n")
    print(f"{len(results)} requests -> {OUT}")


if __name__ == "__main__":
    main()
