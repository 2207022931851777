#!/usr/bin/env python3
"""Where the bytes of a wasm module go: function bodies by what they are, and the largest ones.

The module needs its name section, which `./lab build` strips; build one with names kept
(docs/filter.md, "Size"):

    CARGO_TARGET_DIR=/tmp/names CARGO_PROFILE_WASM_STRIP=debuginfo \
      cargo build -p vigil-filter --target wasm32-wasip1 --profile wasm
    wasm-metadce -g --graph-file GRAPH RAW -o DCE && wasm-opt -Oz -g DCE -o NAMED   (+ features)
    bench/wasm/sizes.py NAMED [TOP]

Rust's legacy symbol mangling is decoded here; the standard library's v0 names are matched as
they are. Each function counts once, under the first category whose pattern its name matches.
"""
import collections
import re
import sys

CATEGORIES = [
    ("configuration readers (plugin, routing, outlier; inlined into on_configure)",
     r"RootContext>::on_configure|Config::from|vigil_core::protojson|vigil_core::plugin::config"
     r"|vigil_core::outlier::config|vigil_core::rules::config"),
    ("regex_lite (header regex matchers)", r"regex_lite"),
    ("serde_json (parsing the configuration)", r"serde_json|zmij|itoa"),
    ("std sort", r"core::slice::sort"),
    ("proxy-wasm SDK (dispatcher, host calls, default trait methods), its hash maps",
     r"proxy_wasm|hashbrown|foldhash|hash_one"),
    ("core::fmt, Display / Debug", r"fmt|Display|Debug|escape_debug|printable"),
    ("panics, std runtime (thread-locals, stderr, env)",
     r"panic|backtrace|std::|getenv|getcwd|_RNv.*3std|__wasm|_initialize|abort"),
    ("address parsing (core::net)", r"net[0-9a-z]*parser|net::parser|ip_addr|socket_addr|core3net"),
    ("rules engine, balancers, matchers", r"vigil_core::rules|vigil_core::balance|vigil_core::matcher"),
    ("vigil_core, other (supervisor, outlier detector, verdict codec, ...)", r"vigil_core"),
    ("the shell (filter/, filter-service/)", r"vigil_filter|vigil_service|proxy_on"),
    ("allocator (dlmalloc)",
     r"dlmalloc|dlfree|dispose_chunk|realloc|malloc|prepend_alloc|memalign|rust_alloc|rust_dealloc"),
    ("alloc (Vec, String, BTreeMap code)", r"alloc"),
    ("str, memchr, iterators", r"str|memchr|iter|slice"),
]

ESCAPES = {"$LT$": "<", "$GT$": ">", "$RF$": "&", "$BP$": "*", "$C$": ",", "$u20$": " ",
           "$u27$": "'", "$u5b$": "[", "$u5d$": "]", "$u7b$": "{", "$u7d$": "}", "$u3b$": ";",
           "$u2b$": "+", "$u22$": '"', "$SP$": "@", "$u7e$": "~", "$u21$": "!", "$u3d$": "="}


def leb(b, i):
    result = shift = 0
    while True:
        x = b[i]
        i += 1
        result |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return result, i


def demangle(name):
    if not name.startswith("_ZN"):
        return name
    i, parts = 3, []
    while i < len(name) and name[i] != "E":
        m = re.match(r"\d+", name[i:])
        if not m:
            return name
        length = int(m.group(0))
        i += len(m.group(0))
        parts.append(name[i:i + length])
        i += length
    if parts and re.match(r"h[0-9a-f]{16}$", parts[-1]):
        parts.pop()
    out = []
    for part in parts:
        if part.startswith("_$"):
            part = part[1:]
        for k, v in ESCAPES.items():
            part = part.replace(k, v)
        out.append(part.replace("..", "::"))
    return "::".join(out)


def read(path):
    b = open(path, "rb").read()
    i, imported, bodies, names, sections = 8, 0, [], {}, collections.Counter()
    while i < len(b):
        sid = b[i]
        size, i = leb(b, i + 1)
        end = i + size
        if sid == 2:  # imports: function indices start after the imported functions
            n, j = leb(b, i)
            for _ in range(n):
                length, j = leb(b, j)
                j += length
                length, j = leb(b, j)
                j += length
                kind = b[j]
                j += 1
                if kind == 0:
                    _, j = leb(b, j)
                    imported += 1
                elif kind == 1:
                    j += 1
                    flags = b[j]
                    _, j = leb(b, j + 1)
                    if flags & 1:
                        _, j = leb(b, j)
                elif kind == 2:
                    flags = b[j]
                    _, j = leb(b, j + 1)
                    if flags & 1:
                        _, j = leb(b, j)
                elif kind == 3:
                    j += 2
        elif sid == 10:
            n, j = leb(b, i)
            for _ in range(n):
                length, k = leb(b, j)
                bodies.append(length + (k - j))
                j = k + length
        elif sid == 0:
            length, j = leb(b, i)
            custom = b[j:j + length].decode()
            j += length
            if custom == "name":
                while j < end:
                    sub = b[j]
                    sub_size, j = leb(b, j + 1)
                    sub_end = j + sub_size
                    if sub == 1:
                        n, j = leb(b, j)
                        for _ in range(n):
                            index, j = leb(b, j)
                            length, j = leb(b, j)
                            names[index] = b[j:j + length].decode("utf8", "replace")
                            j += length
                    j = sub_end
        sections[{0: "custom", 10: "code", 11: "data"}.get(sid, "other")] += size
        i = end
    rows = [(size, demangle(names.get(imported + k, f"func{imported + k}")))
            for k, size in enumerate(bodies)]
    return len(b), sections, rows


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    total, sections, rows = read(path)
    print(f"{path}: {total} bytes: code {sections['code']}, data {sections['data']}, "
          f"custom (names) {sections['custom']}, other {sections['other']}\n")
    by = collections.Counter()
    for size, name in rows:
        for label, pattern in CATEGORIES:
            if re.search(pattern, name):
                by[label] += size
                break
        else:
            by["other"] += size
    print("| function bodies | KB |\n|---|---:|")
    for label, size in by.most_common():
        print(f"| {label} | {size / 1024:.1f} |")
    print(f"\nlargest {top} functions:")
    for size, name in sorted(rows, reverse=True)[:top]:
        print(f"{size:7d} {name[:140]}")


if __name__ == "__main__":
    main()
