#!/usr/bin/env python3
"""Records what Envoy 1.36.2's JWT authentication filter does with a few hundred requests.

Run from the repository root (needs Python's `cryptography`, and Envoy in .venv):

    python3 core/tests/data/jwt_authn/gen.py [path/to/envoy]

It makes fresh keys (RSA, EC P-256 / P-384, HMAC, Ed25519) and tokens, starts Envoy on loopback
addresses only (listener, admin, and a tiny upstream that echoes the request it received), sends
every case, and writes `core/tests/data/jwt_authn/vectors.json`: the filter config, the time the
requests were made (`now`: the engine is given it, so expired / not-yet-valid / max-lifetime
cases never drift), and per case the request, the per-route config of its route, and what Envoy
did (status, body, www-authenticate, and for allowed requests the headers and path the upstream
received). `cargo test -p vigil-core --features jwt jwt_authn` replays it through the engine.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(ROOT))
import envoy_run  # noqa: E402  (core/tests/data/envoy_run.py)
OUT = os.path.join(ROOT, "vectors.json")
ENVOY = sys.argv[1] if len(sys.argv) > 1 else ".venv/bin/envoy"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def int_b64u(n: int, length=None) -> str:
    length = length or (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))



# ---- keys ----------------------------------------------------------------------------------
RSA1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC256 = ec.generate_private_key(ec.SECP256R1())
EC384 = ec.generate_private_key(ec.SECP384R1())
ED = ed25519.Ed25519PrivateKey.generate()
HMAC1 = os.urandom(32)
HMAC2 = os.urandom(48)
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_jwk(key, kid, alg=None):
    pub = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "kid": kid, "n": int_b64u(pub.n), "e": int_b64u(pub.e)}
    if alg:
        jwk["alg"] = alg
    return jwk


def ec_jwk(key, kid, crv, size, alg=None):
    pub = key.public_key().public_numbers()
    jwk = {"kty": "EC", "kid": kid, "crv": crv, "x": int_b64u(pub.x, size), "y": int_b64u(pub.y, size)}
    if alg:
        jwk["alg"] = alg
    return jwk


def ed_jwk(key, kid):
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64u(raw)}


HASHES = {"256": (hashes.SHA256(), hashlib.sha256), "384": (hashes.SHA384(), hashlib.sha384),
          "512": (hashes.SHA512(), hashlib.sha512)}


def sign(alg: str, key, data: bytes) -> bytes:
    fam, bits = alg[:2], alg[2:]
    if alg == "EdDSA":
        return key.sign(data)
    h, hl = HASHES[bits]
    if fam == "RS":
        return key.sign(data, padding.PKCS1v15(), h)
    if fam == "PS":
        return key.sign(data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    if fam == "ES":
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(h)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if fam == "HS":
        return hmac.new(key, data, hl).digest()
    raise ValueError(alg)


def token(alg, key, payload, kid=None, header_extra=None, raw_header=None):
    header = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    header.update(header_extra or {})
    h = b64u(raw_header if raw_header is not None else json.dumps(header).encode())
    p = b64u(json.dumps(payload).encode())
    sig = sign(alg, key, f"{h}.{p}".encode())
    return f"{h}.{p}.{b64u(sig)}"


def tamper(tok: str) -> str:
    h, p, s = tok.split(".")
    mid = len(s) // 2
    c = "A" if s[mid] != "A" else "B"
    return f"{h}.{p}.{s[:mid]}{c}{s[mid + 1:]}"


# ---- config --------------------------------------------------------------------------------
JWKS_RSA = {"keys": [rsa_jwk(RSA1, "rsa1", "RS256"), rsa_jwk(RSA2, "rsa2")]}
JWKS_EC = {"keys": [ec_jwk(EC256, "ec256", "P-256", 32, "ES256"), ec_jwk(EC384, "ec384", "P-384", 48)]}
JWKS_HMAC = {"keys": [{"kty": "oct", "kid": "h1", "alg": "HS256", "k": b64u(HMAC1)},
                      {"kty": "oct", "kid": "h2", "k": b64u(HMAC2)}]}
JWKS_ED = {"keys": [ed_jwk(ED, "ed1")]}

FILTER = {
    "providers": {
        "rsa": {
            "issuer": "https://rsa.example",
            "audiences": ["api", "https://api2.example/"],
            "local_jwks": {"inline_string": json.dumps(JWKS_RSA)},
            "forward_payload_header": "x-jwt-payload",
            "claim_to_headers": [
                {"header_name": "x-jwt-sub", "claim_name": "sub"},
                {"header_name": "x-jwt-num", "claim_name": "num"},
                {"header_name": "x-jwt-nested", "claim_name": "a.b"},
                {"header_name": "x-jwt-flag", "claim_name": "flag"},
            ],
        },
        "ec": {
            "issuer": "https://ec.example",
            "local_jwks": {"inline_string": json.dumps(JWKS_EC)},
            "from_headers": [{"name": "x-ec-token"}, {"name": "authorization", "value_prefix": "EC "}],
            "forward": True,
            "forward_payload_header": "x-ec-payload",
            "pad_forward_payload_header": True,
            "clock_skew_seconds": 10,
        },
        "hmac": {
            "issuer": "https://hmac.example",
            "local_jwks": {"inline_string": json.dumps(JWKS_HMAC)},
            "from_params": ["token"],
            "from_cookies": ["jwt"],
            "subjects": {"prefix": "user-"},
            "require_expiration": True,
        },
        "life": {
            "issuer": "https://life.example",
            "local_jwks": {"inline_string": json.dumps(JWKS_HMAC)},
            "from_headers": [{"name": "x-life-token"}],
            "max_lifetime": "3600s",
        },
        "ed": {
            "issuer": "https://ed.example",
            "local_jwks": {"inline_string": json.dumps(JWKS_ED)},
            "from_headers": [{"name": "x-ed-token", "value_prefix": "Token "}],
        },
    },
    "rules": [
        {"match": {"prefix": "/rsa"}, "requires": {"provider_name": "rsa"}},
        {"match": {"prefix": "/aud"}, "requires": {"provider_and_audiences": {"provider_name": "rsa", "audiences": ["other"]}}},
        {"match": {"prefix": "/ec"}, "requires": {"provider_name": "ec"}},
        {"match": {"prefix": "/hmac"}, "requires": {"provider_name": "hmac"}},
        {"match": {"prefix": "/life"}, "requires": {"provider_name": "life"}},
        {"match": {"prefix": "/ed"}, "requires": {"provider_name": "ed"}},
        {"match": {"prefix": "/any"}, "requires": {"requires_any": {"requirements": [{"provider_name": "rsa"}, {"provider_name": "ec"}]}}},
        {"match": {"prefix": "/all"}, "requires": {"requires_all": {"requirements": [{"provider_name": "rsa"}, {"provider_name": "hmac"}]}}},
        {"match": {"prefix": "/optional"}, "requires": {"requires_any": {"requirements": [{"provider_name": "rsa"}, {"allow_missing": {}}]}}},
        {"match": {"prefix": "/failed-ok"}, "requires": {"allow_missing_or_failed": {}}},
        {"match": {"prefix": "/missing-ok"}, "requires": {"allow_missing": {}}},
        {"match": {"prefix": "/byname"}, "requirement_name": "rsa_or_ec"},
        {"match": {"prefix": "/open"}},
        {"match": {"path": "/CaseTest", "case_sensitive": False}, "requires": {"provider_name": "ec"}},
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-need-ec", "present_match": True}]}, "requires": {"provider_name": "ec"}},
        {"match": {"safe_regex": {"regex": "/re/[0-9]+"}}, "requires": {"provider_name": "hmac"}},
        {"match": {"prefix": "/"}, "requires": {"provider_name": "rsa"}},
    ],
    "requirement_map": {
        "rsa_or_ec": {"requires_any": {"requirements": [{"provider_name": "rsa"}, {"provider_name": "ec"}]}},
        "ed_only": {"provider_name": "ed"},
    },
    "bypass_cors_preflight": True,
}

# Per-route configs by route prefix (the routes before the catch-all).
PER_ROUTE = {
    "/pr-disabled": {"disabled": True},
    "/pr-wrong": {"requirement_name": "nope"},
    "/pr-ed": {"requirement_name": "ed_only"},
}

NOW = int(time.time())
LATER = NOW + 100 * 365 * 86400  # far future: valid for a century
PAST = NOW - 10 * 86400


def claims(iss, **extra):
    c = {"iss": iss, "sub": "user-1", "aud": "api", "exp": LATER, "iat": NOW - 100}
    c.update(extra)
    return c


R = "https://rsa.example"
T = {}  # name -> token
T["rsa_ok"] = token("RS256", RSA1, claims(R, num=42, a={"b": "deep"}, flag=True), kid="rsa1")
T["rsa_ok_nokid"] = token("RS256", RSA1, claims(R))
T["rsa_ok_aud2"] = token("RS256", RSA1, claims(R, aud=["x", "api2.example"]), kid="rsa1")
T["rsa_ok_float"] = token("RS256", RSA1, claims(R, num=1.5, sub="user-2"), kid="rsa1")
T["rsa_ps256"] = token("PS256", RSA2, claims(R), kid="rsa2")
T["rsa_ps384"] = token("PS384", RSA2, claims(R), kid="rsa2")
T["rsa_rs512_rsa2"] = token("RS512", RSA2, claims(R), kid="rsa2")
T["rsa_ps_on_rs_key"] = token("PS256", RSA1, claims(R), kid="rsa1")
T["rsa_expired"] = token("RS256", RSA1, claims(R, exp=PAST), kid="rsa1")
T["rsa_exp_in_skew"] = token("RS256", RSA1, claims(R, exp=NOW - 30), kid="rsa1")
T["rsa_nbf_future"] = token("RS256", RSA1, claims(R, nbf=LATER - 1000), kid="rsa1")
T["rsa_nbf_in_skew"] = token("RS256", RSA1, claims(R, nbf=NOW + 30), kid="rsa1")
T["rsa_no_exp"] = token("RS256", RSA1, {"iss": R, "aud": "api", "sub": "s"}, kid="rsa1")
T["rsa_wrong_iss"] = token("RS256", RSA1, claims("https://evil.example"), kid="rsa1")
T["rsa_wrong_aud"] = token("RS256", RSA1, claims(R, aud="nope"), kid="rsa1")
T["rsa_no_aud"] = token("RS256", RSA1, {"iss": R, "exp": LATER}, kid="rsa1")
T["rsa_bad_sig"] = tamper(T["rsa_ok"])
T["rsa_unknown_kid"] = token("RS256", RSA1, claims(R), kid="zzz")
T["rsa_other_key"] = token("RS256", OTHER_RSA, claims(R), kid="rsa1")
T["rsa_other_key_nokid"] = token("RS256", OTHER_RSA, claims(R))
T["rsa_hs256_confusion"] = token("HS256", HMAC1, claims(R), kid="rsa1")
T["rsa_iss_number"] = token("RS256", RSA1, claims(R, sub=5), kid="rsa1")
T["rsa_exp_string"] = token("RS256", RSA1, claims(R, exp="soon"), kid="rsa1")
T["rsa_exp_negative"] = token("RS256", RSA1, claims(R, exp=-5), kid="rsa1")
T["rsa_aud_list_bad"] = token("RS256", RSA1, claims(R, aud=["api", 3]), kid="rsa1")
T["rsa_kid_number"] = token("RS256", RSA1, claims(R), header_extra={"kid": 7})
T["alg_none"] = b64u(b'{"alg":"none"}') + "." + b64u(json.dumps(claims(R)).encode()) + ".c2ln"
T["alg_missing"] = b64u(b'{"typ":"JWT"}') + "." + b64u(json.dumps(claims(R)).encode()) + ".c2ln"
T["header_not_json"] = b64u(b"not json") + "." + b64u(json.dumps(claims(R)).encode()) + ".c2ln"
T["header_bad_b64"] = "@@@." + b64u(json.dumps(claims(R)).encode()) + ".c2ln"
T["payload_not_json"] = b64u(b'{"alg":"RS256"}') + "." + b64u(b"[1,2]") + ".c2ln"
T["sig_bad_b64"] = T["rsa_ok"].rsplit(".", 1)[0] + ".***"
T["two_parts"] = "abc.def"
T["four_parts"] = "a.b.c.d"
T["empty_middle"] = "a..c"
T["garbage"] = "not-a-token"
E = "https://ec.example"
T["ec_ok"] = token("ES256", EC256, claims(E), kid="ec256")
T["ec384_ok"] = token("ES384", EC384, claims(E), kid="ec384")
T["ec_nokid_ok"] = token("ES256", EC256, claims(E))
T["ec_bad_sig"] = tamper(T["ec_ok"])
T["ec_wrong_curve_kid"] = token("ES384", EC384, claims(E), kid="ec256")
T["ec_skew_expired"] = token("ES256", EC256, claims(E, exp=NOW - 30), kid="ec256")
T["ec_skew_ok"] = token("ES256", EC256, claims(E, exp=NOW - 5 if False else NOW + 3000), kid="ec256")
H = "https://hmac.example"
T["hmac_ok"] = token("HS256", HMAC1, claims(H), kid="h1")
T["hmac512_ok"] = token("HS512", HMAC2, claims(H), kid="h2")
T["hmac_bad_sub"] = token("HS256", HMAC1, claims(H, sub="admin"), kid="h1")
T["hmac_no_exp"] = token("HS256", HMAC1, {"iss": H, "sub": "user-9"}, kid="h1")
T["hmac_bad_sig"] = tamper(T["hmac_ok"])
L = "https://life.example"
T["life_ok"] = token("HS256", HMAC1, {"iss": L, "exp": NOW + 1800}, kid="h1")
T["life_too_long"] = token("HS256", HMAC1, {"iss": L, "exp": NOW + 7200}, kid="h1")
T["life_no_exp"] = token("HS256", HMAC1, {"iss": L}, kid="h1")
D = "https://ed.example"
T["ed_ok"] = token("EdDSA", ED, claims(D), kid="ed1")
T["ed_bad_sig"] = tamper(T["ed_ok"])
T["ed_short_sig"] = T["ed_ok"].rsplit(".", 1)[0] + "." + b64u(b"short")


def bearer(name):
    return [("authorization", "Bearer " + T[name])]


CASES = []


def case(name, path, headers=(), method="GET", per_route=None):
    CASES.append({"name": name, "method": method, "path": path, "headers": list(headers),
                  "per_route": per_route})


RSA_TOKENS = [n for n in T if n.startswith(("rsa_", "alg_", "header_", "payload_", "sig_", "two_",
                                            "four_", "empty_", "garbage"))]
for path in ["/rsa", "/aud", "/any", "/all", "/optional", "/failed-ok", "/missing-ok", "/byname",
             "/open", "/other/x?y=1"]:
    case(f"{path} no token", path)
    for n in RSA_TOKENS:
        case(f"{path} bearer {n}", path, bearer(n))
for n in ["ec_ok", "ec384_ok", "ec_nokid_ok", "ec_bad_sig", "ec_wrong_curve_kid", "ec_skew_expired",
          "ec_skew_ok", "rsa_ok", "garbage"]:
    for path in ["/ec", "/any", "/casetest", "/hdr", "/failed-ok", "/missing-ok"]:
        case(f"{path} x-ec-token {n}", path, [("x-ec-token", T[n]), ("x-need-ec", "1")])
    case(f"/ec authorization EC {n}", "/ec", [("authorization", "EC " + T[n])])
for n in ["hmac_ok", "hmac512_ok", "hmac_bad_sub", "hmac_no_exp", "hmac_bad_sig", "rsa_ok"]:
    case(f"/hmac query {n}", f"/hmac?a=1&token={T[n]}&b=%41")
    case(f"/hmac cookie {n}", "/hmac", [("cookie", f"x=1; jwt={T[n]}; y=2")])
    case(f"/re/12 query {n}", f"/re/12?token={T[n]}")
    case(f"/all {n}", f"/all?token={T[n]}", bearer("rsa_ok"))
    case(f"/missing-ok query {n}", f"/missing-ok?token={T[n]}")
case("/re/ab no match falls to catch-all", "/re/ab", bearer("rsa_ok"))
case("/hmac quoted cookie", "/hmac", [("cookie", f'jwt="{T["hmac_ok"]}"')])
case("/hmac two tokens", f"/hmac?token={T['hmac_ok']}", [("cookie", f"jwt={T['hmac_bad_sig']}")])
case("/hmac two tokens reversed", f"/hmac?token={T['hmac_bad_sig']}", [("cookie", f"jwt={T['hmac_ok']}")])
for n in ["life_ok", "life_too_long", "life_no_exp", "hmac_ok"]:
    case(f"/life {n}", "/life", [("x-life-token", T[n])])
    case(f"/failed-ok life {n}", "/failed-ok", [("x-life-token", T[n])])
for n in ["ed_ok", "ed_bad_sig", "ed_short_sig", "rsa_ok"]:
    case(f"/ed {n}", "/ed", [("x-ed-token", "Token " + T[n])])
    case(f"/ed spaced {n}", "/ed", [("x-ed-token", "xx Token   " + T[n])])
    case(f"/pr-ed per-route {n}", "/pr-ed", [("x-ed-token", "Token " + T[n])], per_route={"requirement_name": "ed_only"})
case("/ed no prefix", "/ed", [("x-ed-token", T["ed_ok"])])
for n in ["rsa_ok", "rsa_bad_sig"]:
    case(f"/pr-disabled {n}", "/pr-disabled", bearer(n), per_route={"disabled": True})
    case(f"/pr-wrong {n}", "/pr-wrong", bearer(n), per_route={"requirement_name": "nope"})
case("/pr-disabled no token", "/pr-disabled", per_route={"disabled": True})
case("/pr-wrong no token", "/pr-wrong", per_route={"requirement_name": "nope"})
# CORS preflight bypass, and near misses.
case("preflight", "/rsa", [("origin", "https://web.example"), ("access-control-request-method", "POST")], method="OPTIONS")
case("preflight without request method", "/rsa", [("origin", "https://web.example")], method="OPTIONS")
case("preflight as GET", "/rsa", [("origin", "https://web.example"), ("access-control-request-method", "POST")])
# Token placement and header handling.
case("/rsa two bearer headers", "/rsa", [("authorization", "Bearer " + T["rsa_ok"]), ("x-other", "1")])
case("/rsa lowercase bearer", "/rsa", [("authorization", "bearer " + T["rsa_ok"])])
case("/rsa bearer inside", "/rsa", [("authorization", "Basic xyz, Bearer " + T["rsa_ok"])])
case("/rsa query access_token", f"/rsa?access_token={T['rsa_ok']}&z=1")
case("/rsa query access_token encoded", f"/rsa?z=%2F&access_token={T['rsa_ok']}")
case("/rsa query and header", f"/rsa?access_token={T['rsa_ok']}", bearer("rsa_ok"))
case("/rsa query bad header good", f"/rsa?access_token={T['rsa_bad_sig']}", bearer("rsa_ok"))
case("/rsa spoofed payload header", "/rsa", [("x-jwt-payload", "spoof"), ("x-jwt-sub", "root")] + bearer("rsa_ok"))
case("/open spoofed payload header", "/open", [("x-jwt-payload", "spoof")])
case("/rsa long path realm", "/rsa/" + "p" * 300)
case("/rsa float claim", "/rsa", bearer("rsa_ok_float"))


# ---- run Envoy -----------------------------------------------------------------------------
class Echo(BaseHTTPRequestHandler):
    def handle_one(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"path": self.path,
                           "headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_OPTIONS = handle_one

    def log_message(self, *args):
        pass


def main():
    echo_port, listen_port, admin_port = (envoy_run.free_port() for _ in range(3))
    echo = ThreadingHTTPServer(("127.0.0.1", echo_port), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    route = lambda prefix, extra=None: dict({"match": {"prefix": prefix}, "route": {"cluster": "echo"}}, **(extra or {}))
    routes = []
    for prefix, cfg in PER_ROUTE.items():
        routes.append(route(prefix, {"typed_per_filter_config": {"jwt": dict(cfg, **{
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"})}}))
    routes.append(route("/"))
    jwt = dict(FILTER, **{"@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"})
    vhosts = [{"name": "all", "domains": ["*"], "routes": routes}]
    bootstrap = envoy_run.bootstrap(
        admin_port, [envoy_run.listener("l", listen_port, envoy_run.hcm("ingress", vhosts, "jwt", jwt))], echo_port)
    with envoy_run.running_envoy(ENVOY, bootstrap, admin_port, 1, "envoy.yaml"):
        try:
            now = int(time.time())
            results = []
            for c in CASES:
                conn = http.client.HTTPConnection("127.0.0.1", listen_port, timeout=5)
                conn.putrequest(c["method"], c["path"], skip_host=True, skip_accept_encoding=True)
                conn.putheader("host", "example.com")
                for k, v in c["headers"]:
                    conn.putheader(k, v)
                conn.endheaders()
                r = conn.getresponse()
                body = r.read().decode()
                out = {"status": r.status, "www_authenticate": r.getheader("www-authenticate")}
                if r.status == 200 and r.getheader("content-type") == "application/json":
                    seen = json.loads(body)
                    out["upstream_path"] = seen["path"]
                    out["upstream_headers"] = seen["headers"]
                else:
                    out["body"] = body
                conn.close()
                results.append(dict(c, envoy=out))
            stats = envoy_run.stats(admin_port, "jwt_authn")
        finally:
            echo.shutdown()
    with open(OUT, "w") as f:
        json.dump({"envoy": "1.36.2", "now": now, "generated_at": NOW, "filter": FILTER,
                   "stats": stats, "cases": results}, f, indent=1)
        f.write("\n")
    print(f"{len(results)} cases -> {OUT}")


if __name__ == "__main__":
    main()
