"""What the recorders under core/tests/data share (they replay requests against a real Envoy
and write what it did): free loopback ports, a bootstrap with one HTTP filter before the router
and the `echo` cluster, Envoy run until `/ready` and stopped on every exit, and its stats.

Each recorder imports it with `sys.path.insert(0, <this folder>)`.
"""

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def hcm(stat_prefix, virtual_hosts, filter_name, filter_config):
    """An HTTP connection manager with `filter_config` (its `@type` included) before the router."""
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": {"virtual_hosts": virtual_hosts},
            "http_filters": [{"name": filter_name, "typed_config": filter_config}, ROUTER],
        },
    }


def listener(name, port, network_filter):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [network_filter]}],
    }


def bootstrap(admin_port, listeners, echo_port):
    """Loopback admin, `listeners`, and the STATIC cluster `echo` at `echo_port`."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": [{
                "name": "echo", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": echo_port}}}}]}]},
            }],
        },
    }


@contextlib.contextmanager
def running_envoy(envoy, config, admin_port, concurrency, file_name="envoy.yaml"):
    """Envoy on `config` until the block ends; exits the script with Envoy's log when it does
    not answer `/ready` within 30 s."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, file_name)
        with open(path, "w") as f:
            json.dump(config, f)
        log_path = os.path.join(tmp, "envoy.log")
        log = open(log_path, "w")
        proc = subprocess.Popen([envoy, "-c", path, "--concurrency", str(concurrency), "--base-id",
                                 str(os.getpid() % 60000 + 1000), "--log-level", "warn"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=1)
                    c.request("GET", "/ready")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    log.flush()
                    print(open(log_path).read())
                    sys.exit("envoy did not start")
                time.sleep(0.2)
            yield proc
        finally:
            proc.terminate()
            proc.wait()


def stats(admin_port, name_filter):
    """Envoy's `/stats?filter=...` as a dict of name to value text."""
    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    c.request("GET", "/stats?filter=" + name_filter)
    text = c.getresponse().read().decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
