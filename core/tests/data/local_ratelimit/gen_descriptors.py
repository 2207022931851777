#!/usr/bin/env python3
"""Records what Envoy 1.36.2's HTTP local rate limit filter does with descriptors.

Run from the repository root:

    python3 core/tests/data/local_ratelimit/gen_descriptors.py [path/to/envoy]

It starts Envoy on loopback addresses only (two listeners, the admin, and a tiny upstream that
echoes the request headers it received) and sends requests from several 127.0.0.x source
addresses (the `remote_address` action names the client), then writes `descriptors.json`: the
whole bootstrap (JSON), and per request its listener, path, source address, headers, send and
answer times relative to the first request, and Envoy's answer (status, the x-ratelimit headers,
the body of a local reply), then Envoy's `http_local_rate_limit` counters.
`cargo test -p vigil-core --test local_ratelimit_descriptors` replays it through vigil's loader,
route table and engine.

- Listener `own` runs a filter with its own `rate_limits` (`remote_address`) and a wildcard
  `remote_address` descriptor capped at 2 dynamic buckets (`max_dynamic_descriptors`), without
  `always_consume_default_token_bucket`; a client's `x-forwarded-for` names the remote address
  (`use_remote_address` is false); entries with `hits_addend` 2 and 0 (which refuses every
  request it matches), and one with `apply_on_stream_done` (never applied).
- Listener `routes` runs a filter with descriptors and no `rate_limits`: the routes' and the
  virtual host's entries make the descriptors (`request_headers` with and without
  `skip_if_absent`, `generic_key`, `header_value_match` with `expect_match` both ways,
  `destination_cluster`, `masked_remote_address`, `query_parameter_value_match` and
  `query_parameters` (percent-decoded first values), a `stage` and a `disable_key` the filter
  skips, two matched descriptors taken slowest first), the virtual host's entries under
  `OVERRIDE` (the default), and per-route configs with `INCLUDE` and `IGNORE`.

Every bucket refills slowly (10 s or more) except one, so the burst sees no refill.
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
OUT = os.path.join(ROOT, "descriptors.json")
ENVOY = sys.argv[1] if len(sys.argv) > 1 else ".venv/bin/envoy"
TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ON = {"default_value": {"numerator": 100}, "runtime_key": "rl_unset"}


def bucket(n, seconds=10, per_fill=1):
    return {"max_tokens": n, "tokens_per_fill": per_fill, "fill_interval": f"{seconds}s"}


def desc(entries, b):
    return {"entries": [{"key": k, "value": v} if v else {"key": k} for k, v in entries], "token_bucket": b}


def gk(value):
    return {"generic_key": {"descriptor_value": value}}


OWN = {
    "stat_prefix": "rl_own",
    "token_bucket": bucket(3),
    "filter_enabled": ON,
    "filter_enforced": ON,
    "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
    "always_consume_default_token_bucket": False,
    "max_dynamic_descriptors": 2,
    "descriptors": [
        desc([("remote_address", "")], bucket(2)),
        desc([("heavy", "yes")], bucket(3)),
        desc([("zero", "yes")], bucket(5)),
        desc([("generic_key", "late")], bucket(1)),
    ],
    "rate_limits": [
        {"actions": [{"remote_address": {}}]},
        {"hits_addend": {"number": 2}, "actions": [{"request_headers": {"header_name": "x-heavy", "descriptor_key": "heavy"}}]},
        {"hits_addend": {"number": 0}, "actions": [{"request_headers": {"header_name": "x-zero", "descriptor_key": "zero"}}]},
        {"apply_on_stream_done": True, "actions": [gk("late")]},
    ],
}

ROUTES_FILTER = {
    "stat_prefix": "rl_routes",
    "token_bucket": bucket(100),
    "filter_enabled": ON,
    "filter_enforced": ON,
    "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
    "descriptors": [
        desc([("generic_key", "ro")], bucket(1)),
        desc([("user", "")], bucket(2)),
        desc([("generic_key", "skip")], bucket(1)),
        desc([("header_match", "admin")], bucket(1)),
        desc([("not_admin", "yes")], bucket(1)),
        desc([("generic_key", "vh")], bucket(1)),
        desc([("generic_key", "fast")], bucket(5, 1, 5)),
        desc([("generic_key", "slow")], bucket(2, 20)),
        desc([("destination_cluster", "echo")], bucket(1)),
        desc([("masked_remote_address", "127.0.0.0/24")], bucket(2)),
        desc([("query_match", "yes")], bucket(1)),
        desc([("qk", "")], bucket(1)),
    ],
}

PER_ROUTE_INCLUDE = {
    "stat_prefix": "rl_include",
    "token_bucket": bucket(100),
    "filter_enabled": ON,
    "filter_enforced": ON,
    "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
    "vh_rate_limits": "INCLUDE",
    "descriptors": [desc([("generic_key", "vh")], bucket(1)), desc([("generic_key", "route")], bucket(5))],
}

PER_ROUTE_IGNORE = dict(PER_ROUTE_INCLUDE, stat_prefix="rl_ignore", vh_rate_limits="IGNORE")


def route(path, rate_limits=None, per_route=None, direct=False):
    r = {"match": {"path": path}}
    if direct:
        r["direct_response"] = {"status": 200, "body": {"inline_string": "direct"}}
    else:
        r["route"] = {"cluster": "echo"}
        if rate_limits is not None:
            r["route"]["rate_limits"] = rate_limits
    if per_route is not None:
        r["typed_per_filter_config"] = {"envoy.filters.http.local_ratelimit": dict(per_route, **{"@type": TYPE})}
    return r


ROUTES = [
    route("/gk", [{"actions": [gk("ro")]}]),
    route("/user", [{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}]),
    route("/skip", [{"actions": [
        {"request_headers": {"header_name": "x-user", "descriptor_key": "user", "skip_if_absent": True}},
        gk("skip")]}]),
    route("/admin", [
        {"actions": [{"header_value_match": {"descriptor_value": "admin",
                                             "headers": [{"name": "x-admin", "present_match": True}]}}]},
        {"actions": [{"header_value_match": {"descriptor_key": "not_admin", "descriptor_value": "yes",
                                             "expect_match": False,
                                             "headers": [{"name": "x-admin", "present_match": True}]}}]},
    ]),
    route("/stage", [{"stage": 1, "actions": [gk("ro")]}]),
    route("/disabled", [{"disable_key": "off", "actions": [gk("ro")]}]),
    route("/multi", [{"actions": [gk("fast")]}, {"actions": [gk("slow")]}]),
    route("/cluster", [{"actions": [{"destination_cluster": {}}]}]),
    route("/masked", [{"actions": [{"masked_remote_address": {"v4_prefix_mask_len": 24}}]}]),
    route("/qvm", [{"actions": [{"query_parameter_value_match": {
        "descriptor_value": "yes", "query_parameters": [{"name": "m", "string_match": {"exact": "a b"}}]}}]}]),
    route("/qp", [{"actions": [{"query_parameters": {"query_parameter_name": "q", "descriptor_key": "qk"}}]}]),
    route("/override_empty"),
    route("/override_has", [{"actions": [gk("other")]}]),
    route("/include", [{"actions": [gk("route")]}], PER_ROUTE_INCLUDE),
    route("/ignore", None, PER_ROUTE_IGNORE),
    route("/direct", None, None, direct=True),
]

VH_RATE_LIMITS = [{"actions": [gk("vh")]}]

# (listener, path, source address, extra headers)
REQUESTS = (
    # own: one bucket per client, two kept: .11 is evicted by .13 and comes back full.
    [("own", "/x", "127.0.0.11", [])] * 3
    + [("own", "/x", "127.0.0.12", [])]
    + [("own", "/x", "127.0.0.13", [])]
    + [("own", "/x", "127.0.0.11", [])] * 2
    + [("own", "/x", "127.0.0.14", [("x-forwarded-for", "10.9.9.9")])] * 3
    + [("own", "/x", "127.0.0.15", [("x-forwarded-for", "10.9.9.9")])]
    + [("own", "/x", "127.0.0.16", [("x-heavy", "yes")])] * 2
    + [("own", "/x", "127.0.0.17", [("x-zero", "yes")])]
    # routes
    + [("routes", "/gk", "127.0.0.21", [])] * 2
    + [("routes", "/user", "127.0.0.21", [("x-user", "alice")])] * 3
    + [("routes", "/user", "127.0.0.21", [("x-user", "bob")])]
    + [("routes", "/user", "127.0.0.21", [])] * 2
    + [("routes", "/skip", "127.0.0.21", [])] * 2
    + [("routes", "/skip", "127.0.0.21", [("x-user", "carol")])] * 2
    + [("routes", "/admin", "127.0.0.21", [("x-admin", "1")])] * 2
    + [("routes", "/admin", "127.0.0.21", [])] * 2
    + [("routes", "/stage", "127.0.0.21", [])] * 2
    + [("routes", "/disabled", "127.0.0.21", [])] * 2
    + [("routes", "/multi", "127.0.0.21", [])] * 3
    + [("routes", "/cluster", "127.0.0.21", [])] * 2
    + [("routes", "/masked", "127.0.0.22", [])]
    + [("routes", "/masked", "127.0.0.23", [])] * 2
    + [("routes", "/qvm?m=a%20b", "127.0.0.21", [])] * 2
    + [("routes", "/qvm?m=a+b", "127.0.0.21", [])]
    + [("routes", "/qp?q=a%20b", "127.0.0.21", [])] * 2
    + [("routes", "/qp?q=a+b&q=x", "127.0.0.21", [])]
    + [("routes", "/qp?r=1", "127.0.0.21", [])]
    + [("routes", "/qp?%71=a%20b", "127.0.0.21", [])]
    + [("routes", "/override_empty", "127.0.0.21", [])] * 2
    + [("routes", "/override_has", "127.0.0.21", [])] * 2
    + [("routes", "/include", "127.0.0.21", [])] * 2
    + [("routes", "/ignore", "127.0.0.21", [])] * 2
    + [("routes", "/direct", "127.0.0.21", [])] * 2
)

KEEP = ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_one(self):
        body = json.dumps({"headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = handle_one

    def log_message(self, *args):
        pass


def hcm(name, filter_config, vhost):
    return envoy_run.hcm(name, [vhost], "envoy.filters.http.local_ratelimit", dict(filter_config, **{"@type": TYPE}))


def main():
    echo_port, own_port, routes_port, admin_port = (envoy_run.free_port() for _ in range(4))
    echo = ThreadingHTTPServer(("127.0.0.1", echo_port), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    ports = {"own": own_port, "routes": routes_port}
    vh_own = {"name": "own", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}
    vh_routes = {"name": "routes", "domains": ["*"], "routes": ROUTES, "rate_limits": VH_RATE_LIMITS}
    listeners = [envoy_run.listener(name, ports[name], hcm(name, cfg, vh))
                 for name, cfg, vh in [("own", OWN, vh_own), ("routes", ROUTES_FILTER, vh_routes)]]
    bootstrap = envoy_run.bootstrap(admin_port, listeners, echo_port)
    with envoy_run.running_envoy(ENVOY, bootstrap, admin_port, 2, "envoy.json"):
        try:
            results = []
            start = time.monotonic()
            for listener, route_path, source, headers in REQUESTS:
                conn = http.client.HTTPConnection("127.0.0.1", ports[listener], timeout=5,
                                                  source_address=(source, 0))
                t = time.monotonic() - start
                conn.putrequest("GET", route_path, skip_host=True, skip_accept_encoding=True)
                conn.putheader("host", "example.com")
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders()
                r = conn.getresponse()
                body = r.read().decode()
                done = time.monotonic() - start
                conn.close()
                out = {"status": r.status,
                       "headers": [[k.lower(), v] for k, v in r.getheaders() if k.lower() in KEEP]}
                if r.getheader("content-type") != "application/json":
                    out["body"] = body
                results.append({"at_ms": round(t * 1000, 3), "done_ms": round(done * 1000, 3),
                                "listener": listener, "path": route_path, "source": source,
                                "headers": headers, "envoy": out})
            stats = envoy_run.stats(admin_port, "http_local_rate_limit")
        finally:
            echo.shutdown()
    with open(OUT, "w") as f:
        json.dump({"envoy": "1.36.2", "bootstrap": bootstrap, "stats": stats, "requests": results}, f, indent=1)
        f.write("\n")
    print(f"{len(results)} requests -> {OUT}")


if __name__ == "__main__":
    main()
