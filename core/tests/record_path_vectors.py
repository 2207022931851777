#!/usr/bin/env python3
"""Record what a real Envoy does with tricky request paths, for core/tests/path_normalize.rs.

Starts one Envoy (the binary given as the first argument, default .venv/bin/envoy in the repo)
with one listener (codec AUTO: HTTP/1.1 and HTTP/2) per combination of the connection manager's
`normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action` (0..=4), each routing
every path to an echo upstream this script runs itself (it answers 200 with the request target it
received as the body). Every case in CASES is sent raw over HTTP/1.1 to every listener, every
SWEEP case to the normalize_path-only KEEP_UNCHANGED listener, each request on its own connection
from its own 127.1.x.y source address (which is how the access log's details are matched to it),
and the outcome is recorded as one of:

    F <path>            forwarded upstream with this request target
    R <location>        Envoy answered 307 with this Location
    S <status> <details> Envoy answered itself (status, %RESPONSE_CODE_DETAILS%)
    X <details>         (HTTP/2) Envoy reset the stream, with these details

H2_CASES go over HTTP/2 (prior knowledge) instead, for paths the HTTP/1 codec refuses (non-ASCII
bytes above all); that part needs the `h2` package (`python3 -m venv /tmp/h2venv &&
/tmp/h2venv/bin/pip install h2`, then run this script with /tmp/h2venv/bin/python).

The table between the `BEGIN VECTORS` / `END VECTORS` markers of path_normalize.rs is rewritten
in place (pass --print to only print it). Everything listens on 127.0.0.1 with ports the kernel
picks; only the Envoy this script starts is stopped, by its PID.

    /tmp/h2venv/bin/python core/tests/record_path_vectors.py [/path/to/envoy] [--print]
"""

import datetime
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

# Each case is the raw request target, as bytes on the request line. A case that is not valid
# UTF-8 cannot be a Rust &str: it is recorded (the report shows it) but left out of the table.
CASES = [
    b"/admin",
    b"//admin",
    b"///admin//x///",
    b"/a//b?x=//y",
    b"/a/../admin",
    b"/./admin",
    b"/admin/.",
    b"/admin/..",
    b"/admin/./",
    b"/a/%2e%2e/admin",
    b"/a/%2E%2E/admin",
    b"/a/.%2e/admin",
    b"/a/%2e./admin",
    b"/a/%2e/admin",
    b"/%2e%2e/admin",
    b"/a/..%2fadmin",
    b"/a/%2e%2e%2fadmin",
    b"/a/%2e%2e%5cadmin",
    b"/a%2Fb",
    b"/a%2fb",
    b"/a%5Cb",
    b"/a%5cb",
    b"/a\\b",
    b"/a\\..\\admin",
    b"/%2F%2Fadmin",
    b"/%2fadmin/%2e%2e/x",
    b"/a%2F..%2Fadmin",
    b"/a%252Fb",
    b"/%61dmin",
    b"/%41dmin",
    b"/%7euser",
    b"/%7Euser",
    b"/%2d%2E%5f%30",
    b"/a%20b",
    b"/a%3fb",
    b"/a%3Fb",
    b"/a%23b",
    b"/a%25b",
    b"/a%2a",
    b"/a%3Bb",
    b"/a%40b",
    b"/a%7Bb%7d",
    b"/a%e9b",
    b"/a%C3%A9",
    b"/a b",
    b"/%zz",
    b"/%",
    b"/a%",
    b"/a%2",
    b"/%%30%30",
    b"/%%3030",
    b"/%2%30",
    b"/a?x=/../y",
    b"/a/../b?x=%2F&y=/./z",
    b"/a%2Fb?c%2Fd",
    b"/a#frag",
    b"/a?x#frag",
    b"/..",
    b"/../..",
    b"/../admin",
    b"/.",
    b"//",
    b"/",
    b"/a/b/../../../c",
    b"/a/b/../../../c/",
    b"/a/./b/../c//d",
    b"/a//../b",
    b"/a/.../b",
    b"/a/..b/c",
    b"/a/b..",
    b"/a;b",
    b"/a/..;/admin",
    b"/a/.;/admin",
    b"/%00",
    b"/a%00b",
    b"/a\"b",
    b"/a<b>",
    b"/a`b",
    b"/a{b}",
    b"/a|b",
    b"/a^b",
    b"/a'b!$&()*+,;=:@",
    b"/a[b]",
    b"/~user",
    b"/caf\xc3\xa9",
    b"/\xe2\x82\xac/../x",
    b"/a\xffb",
    b"/a\x7fb",
    b"/a\tb",
    b"*",
    b"admin",
    b"http://h/a/../b",
    b"http://h//a%2Fb",
    b"http://h",
    b"/a%2F%2E%2E/admin",
    b"/a/.//../b",
    b"/a/%2e%2e//b",
    b"/aaaa/%/../b%30c",
    b"/%/../%30%30",
    b"/a%5C..%5Cadmin",
    b"/a/..%5c..%5cadmin",
    b"/%2F",
    b"/a%2F?x#y",
]

# Sent over HTTP/2: raw bytes the HTTP/1 codec refuses, and a few paths to compare with HTTP/1.
H2_CASES = [
    b"/caf\xc3\xa9",
    b"/\xe2\x82\xac/../x",
    b"/caf\xc3\xa9/%2e%2e/x%2Fy\xc3\xa9",
    b"/\xc3\xa9?q=\xc3\xa9/../",
    b"/a\xffb",
    b"/a b",
    b"/a\tb",
    b"/a\x7fb",
    b"/a\x00b",
    b"*",
    b"admin",
    b"/a\"b{}",
    b"/a#b",
    b"/a%2Fb",
    b"//admin/./x/../y",
]

# Every escaped byte and every printable raw byte, sent to the normalize_path listeners only
# (merge_slashes off, so the row shows the canonicalizer alone).
SWEEP = (
    [b"/x%%%02Xy" % b for b in range(256)]
    + [b"/x%%%02xy" % b for b in range(256) if not (b"%02x" % b).isdigit()]
    + [b"/x" + bytes([b]) + b"y" for b in range(0x20, 0x7F)]
)

ACTIONS = [0, 1, 2, 3, 4]
ACTION_NAMES = {
    0: "IMPLEMENTATION_SPECIFIC_DEFAULT",
    1: "KEEP_UNCHANGED",
    2: "REJECT_REQUEST",
    3: "UNESCAPE_AND_REDIRECT",
    4: "UNESCAPE_AND_FORWARD",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_server():
    """A raw HTTP/1.1 upstream: answers 200 with the request target as the body."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def serve(conn):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                target = head.split(b"\r\n", 1)[0].split(b" ")[1]
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                    + b"content-length: %d\r\n\r\n" % len(target)
                    + target
                )
        except OSError:
            pass
        finally:
            conn.close()

    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


def listener(name, port, normalize, merge, action, log_path):
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "normalize_path": normalize,
        "merge_slashes": merge,
        "path_with_escaped_slashes_action": ACTION_NAMES[action],
        "access_log": [
            {
                "name": "log",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": log_path,
                    "log_format": {
                        "text_format_source": {
                            "inline_string": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\t%RESPONSE_CODE%\t%RESPONSE_CODE_DETAILS%\n"
                        }
                    },
                },
            }
        ],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": ""}, "route": {"cluster": "echo"}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }


def send(port, target, source):
    """One request on a fresh connection from `source`; returns (status, headers, body)."""
    req = b"GET " + target + b" HTTP/1.1\r\nhost: vigil.test\r\nconnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(req)
        # Read one response by its content-length rather than waiting for Envoy to close.
        data = b""
        while True:
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    break
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1]) if lines and lines[0] else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def send_h2(port, path, source):
    """One HTTP/2 request; returns (status, headers, body), status 0 if the stream was reset."""
    import h2.config
    import h2.connection
    import h2.events

    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    conn.send_headers(
        1,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"vigil.test"),
         (b":path", path)],
        end_stream=True,
    )
    headers, body, done = {}, b"", False
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(conn.data_to_send())
        while not done:
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    headers = {k.lower(): v for k, v in ev.headers}
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset,
                                     h2.events.ConnectionTerminated)):
                    done = True
            s.sendall(conn.data_to_send())
    status = int(headers.get(b":status", b"0"))
    return status, headers, body


def rust_str(b):
    """A Rust string literal for UTF-8 bytes `b`."""
    out = []
    for ch in b.decode("utf-8"):
        if ch in "\\\"":
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\u{%x}" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    only_print = "--print" in sys.argv
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    envoy = args[0] if args else os.path.join(repo, ".venv", "bin", "envoy")
    try:
        import h2  # noqa: F401  (the HTTP/2 part needs it; fail before starting anything)
    except ImportError:
        raise SystemExit("needs the h2 package: python3 -m venv /tmp/h2venv && "
                         "/tmp/h2venv/bin/pip install h2, then run this with /tmp/h2venv/bin/python")
    version = subprocess.run([envoy, "--version"], capture_output=True, text=True).stdout
    version = version.split("version:", 1)[-1].strip()

    upstream = echo_server()
    tmp = tempfile.mkdtemp(prefix="vigil-pathvec-")
    log_path = os.path.join(tmp, "access.log")
    combos = []
    listeners = []
    for normalize in (False, True):
        for merge in (False, True):
            for action in ACTIONS:
                name = "n%dm%da%d" % (normalize, merge, action)
                port = free_port()
                combos.append((normalize, merge, action, port))
                listeners.append(listener(name, port, normalize, merge, action, log_path))
    admin = free_port()
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    cfg_path = os.path.join(tmp, "envoy.json")
    with open(cfg_path, "w") as f:
        json.dump(config, f)
    proc = subprocess.Popen(
        [envoy, "-c", cfg_path, "--disable-hot-restart", "--concurrency", "1", "-l", "error",
         "--file-flush-interval-msec", "50"],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(tmp, "envoy.err"), "w"),
    )
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/ready" % admin, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("envoy did not become ready; see " + tmp)

        # The access log names each request by its own loopback source address (a codec error
        # happens before any header is read, so a header cannot name it).
        sent = {}

        def run(key, port, target):
            n = len(sent) + 1
            source = "127.1.%d.%d" % (n >> 8, n & 0xFF)
            sent[source] = key
            return send(port, target, source)

        raw = {}
        for ci, case in enumerate(CASES):
            for normalize, merge, action, port in combos:
                raw[(ci, normalize, merge, action)] = run((ci, normalize, merge, action), port, case)
        for hi, case in enumerate(H2_CASES):
            for normalize, merge, action, port in combos:
                key = ("h2", hi, normalize, merge, action)
                n = len(sent) + 1
                source = "127.1.%d.%d" % (n >> 8, n & 0xFF)
                sent[source] = key
                raw[key] = send_h2(port, case, source)
        sweep_port = [p for n, m, a, p in combos if n and not m and a == 1][0]
        sweep_raw = {}
        for si, case in enumerate(SWEEP):
            sweep_raw[si] = run(("sweep", si), sweep_port, case)
        time.sleep(1.0)
        details = {}
        with open(log_path, "rb") as f:
            for line in f:
                parts = line.rstrip(b"\n").split(b"\t")
                if len(parts) == 3 and parts[0].decode() in sent:
                    details[sent[parts[0].decode()]] = parts[2].decode()
    finally:
        proc.terminate()
        proc.wait()

    def outcome(key, status, headers, body):
        if status == 200:
            return "F " + body.decode("latin-1")
        if status == 307:
            return "R " + headers.get(b"location", b"").decode("latin-1")
        if status == 0:
            return "X " + details.get(key, "-")
        return "S %d %s" % (status, details.get(key, "-"))

    rows = []
    skipped = []
    for ci, case in enumerate(CASES):
        for normalize in (False, True):
            for merge in (False, True):
                outcomes = []
                for action in ACTIONS:
                    key = (ci, normalize, merge, action)
                    outcomes.append(outcome(key, *raw[key]))
                try:
                    case.decode("utf-8")
                except UnicodeDecodeError:
                    skipped.append((case, normalize, merge, outcomes))
                    continue
                rows.append(
                    "    (%s, %s, %s, [%s]),"
                    % (
                        rust_str(case),
                        "true" if normalize else "false",
                        "true" if merge else "false",
                        ", ".join(rust_str(o.encode("latin-1")) for o in outcomes),
                    )
                )
    h2_rows = []
    for hi, case in enumerate(H2_CASES):
        for normalize in (False, True):
            for merge in (False, True):
                outcomes = [
                    outcome(("h2", hi, normalize, merge, a), *raw[("h2", hi, normalize, merge, a)])
                    for a in ACTIONS
                ]
                try:
                    case.decode("utf-8")
                except UnicodeDecodeError:
                    skipped.append((case, normalize, merge, outcomes))
                    continue
                h2_rows.append(
                    "    (%s, %s, %s, [%s]),"
                    % (
                        rust_str(case),
                        "true" if normalize else "false",
                        "true" if merge else "false",
                        ", ".join(rust_str(o.encode("latin-1")) for o in outcomes),
                    )
                )
    sweep_rows = [
        "    (%s, %s),"
        % (rust_str(case), rust_str(outcome(("sweep", si), *sweep_raw[si]).encode("latin-1")))
        for si, case in enumerate(SWEEP)
    ]

    today = datetime.date.today().isoformat()
    table = [
        "// Recorded from Envoy %s on %s by core/tests/record_path_vectors.py." % (version, today),
        "// Columns: raw request target, normalize_path, merge_slashes, then the outcome for",
        "// path_with_escaped_slashes_action 0..=4 (IMPLEMENTATION_SPECIFIC_DEFAULT, KEEP_UNCHANGED,",
        "// REJECT_REQUEST, UNESCAPE_AND_REDIRECT, UNESCAPE_AND_FORWARD).",
        "#[rustfmt::skip]",
        "const VECTORS: &[(&str, bool, bool, [&str; 5])] = &[",
    ] + rows + [
        "];",
        "",
        "// The same over HTTP/2, for paths HTTP/1 cannot carry; `X <details>` is a stream reset.",
        "#[rustfmt::skip]",
        "const H2_VECTORS: &[(&str, bool, bool, [&str; 5])] = &[",
    ] + h2_rows + [
        "];",
        "",
        "// Every escaped byte (`%XX`, and `%xx` where that differs) and every printable raw byte,",
        "// between `/x` and `y`, through a listener with normalize_path, no merge_slashes and",
        "// KEEP_UNCHANGED; same recording.",
        "#[rustfmt::skip]",
        "const SWEEP: &[(&str, &str)] = &[",
    ] + sweep_rows + ["];"]
    out = "\n".join(table)
    for case, normalize, merge, outcomes in skipped:
        print("not valid UTF-8, not in the table: %r n=%d m=%d %s" % (case, normalize, merge, outcomes),
              file=sys.stderr)
    if only_print:
        print(out)
        return
    rs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "path_normalize.rs")
    with open(rs) as f:
        text = f.read()
    new, n = re.subn(
        r"(// BEGIN VECTORS\n).*?(// END VECTORS)",
        lambda m: m.group(1) + out + "\n" + m.group(2),
        text,
        flags=re.S,
    )
    if n != 1:
        raise SystemExit("markers not found in " + rs)
    with open(rs, "w") as f:
        f.write(new)
    print("rewrote %s (%d rows)" % (rs, len(rows)), file=sys.stderr)


if __name__ == "__main__":
    main()
