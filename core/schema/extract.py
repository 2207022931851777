#!/usr/bin/env python3
"""Derives vigil's Envoy schema table from the protobuf descriptors compiled into an Envoy binary.

    python3 core/schema/extract.py /path/to/envoy "$(/path/to/envoy --version | grep version)" \
        > core/schema/envoy-1.36.2.schema

Envoy's generated C++ code embeds every API file's serialized FileDescriptorProto
(`descriptor_table_protodef_*`). This script finds them in the binary, decodes them with a small
wire-format reader (no protobuf package needed), decodes the PGV `(validate.rules)` options with
the descriptors of validate/validate.proto found in the same binary, and writes one line per
message, field, oneof, enum and enum value (format below). Standard library only.

Format (tab-separated; `-` = empty):
    M <full message name> [map]                 a message (`map` = a map entry type)
    O <oneof name> [req]                       a oneof of the message above (`req`: validate.required)
    F <name> <json name or -> <type> <label> <oneof index or -> <rules JSON or -> [dep]
        type: a scalar (`string`, `uint32`, ...) or `.full.Name` of a message / enum (`E` prefix
        for enums: `E.envoy.Foo`); label: `1` optional, `3` repeated; rules: the field's
        `(validate.rules)` as JSON (field names as in validate.proto)
    E <full enum name>
    V <value name> <number>
"""
import json
import re
import sys

SCALARS = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64",
           7: "fixed32", 8: "bool", 9: "string", 12: "bytes", 13: "uint32", 15: "sfixed32",
           16: "sfixed64", 17: "sint32", 18: "sint64"}
VALIDATE_RULES = 1071  # (validate.rules) on FieldOptions, (validate.required) on OneofOptions
VALIDATE_DISABLED = 1071  # (validate.disabled) on MessageOptions


def varint(b, i):
    shift = 0
    out = 0
    while True:
        c = b[i]
        i += 1
        out |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return out, i


def fields(b, start=0, end=None):
    """(number, wire type, value) of each field; raises on malformed input."""
    i = start
    end = len(b) if end is None else end
    while i < end:
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ValueError("field 0")
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 1:
            v = b[i:i + 8]
            i += 8
        elif wt == 2:
            n, i = varint(b, i)
            v = b[i:i + n]
            i += n
        elif wt == 5:
            v = b[i:i + 4]
            i += 4
        else:
            raise ValueError("wire type %d" % wt)
        if i > end:
            raise ValueError("truncated")
        yield num, wt, v


# FileDescriptorProto's fields and wire types: a serialized file ends where these stop.
FILE_FIELDS = {1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 0, 11: 0, 12: 2, 14: 0}


def file_end(b, i):
    """Where the FileDescriptorProto starting at `i` ends (a second `name` or a stray byte)."""
    seen_name = False
    while True:
        try:
            key, j = varint(b, i)
        except IndexError:
            return i
        num, wt = key >> 3, key & 7
        if FILE_FIELDS.get(num) != wt or (num == 1 and seen_name):
            return i
        seen_name = seen_name or num == 1
        if wt == 0:
            _, j = varint(b, j)
        else:
            n, j = varint(b, j)
            j += n
        if j > len(b):
            return i
        i = j


def find_files(b):
    files = {}
    for m in re.finditer(rb"\x0a([\x01-\x7f]|[\x80-\xff][\x01-\x7f])([A-Za-z0-9_/\.\-]+?\.proto)\x12", b):
        n, _ = varint(m.group(1), 0)
        if n != len(m.group(2)):
            continue
        end = file_end(b, m.start())
        raw = b[m.start():end]
        name = m.group(2).decode()
        try:
            f = parse_file(raw)
        except Exception:
            continue
        if not f["messages"] and not f["enums"]:
            continue
        # Some files are embedded twice (serialized with and without file-level options);
        # their messages and enums must agree.
        if name in files and (files[name]["messages"], files[name]["enums"]) != (
                f["messages"], f["enums"]):
            raise SystemExit("two different descriptors for " + name)
        files[name] = f
    return files


def parse_enum(b):
    e = {"name": "", "values": []}
    for num, _, v in fields(b):
        if num == 1:
            e["name"] = v.decode()
        elif num == 2:
            val = {"name": "", "number": 0}
            for n2, _, v2 in fields(v):
                if n2 == 1:
                    val["name"] = v2.decode()
                elif n2 == 2:
                    val["number"] = v2 - (1 << 64) if v2 >= 1 << 63 else v2
            e["values"].append(val)
    return e


def parse_field(b):
    f = {"name": "", "json": None, "number": 0, "label": 1, "type": 0, "type_name": "",
         "oneof": None, "options": b"", "proto3_optional": False}
    for num, _, v in fields(b):
        if num == 1:
            f["name"] = v.decode()
        elif num == 3:
            f["number"] = v
        elif num == 4:
            f["label"] = v
        elif num == 5:
            f["type"] = v
        elif num == 6:
            f["type_name"] = v.decode()
        elif num == 9:
            f["oneof"] = v
        elif num == 10:
            f["json"] = v.decode()
        elif num == 8:
            f["options"] = v
        elif num == 17:
            f["proto3_optional"] = bool(v)
    if f["json"] is None:  # protoc fills json_name in some embedded copies, not in others
        f["json"] = re.sub(r"_([a-z0-9])", lambda x: x.group(1).upper(), f["name"])
    return f


def parse_message(b):
    m = {"name": "", "fields": [], "nested": [], "enums": [], "oneofs": [], "options": b""}
    for num, _, v in fields(b):
        if num == 1:
            m["name"] = v.decode()
        elif num == 2:
            m["fields"].append(parse_field(v))
        elif num == 3:
            m["nested"].append(parse_message(v))
        elif num == 4:
            m["enums"].append(parse_enum(v))
        elif num == 8:
            o = {"name": "", "options": b""}
            for n2, _, v2 in fields(v):
                if n2 == 1:
                    o["name"] = v2.decode()
                elif n2 == 2:
                    o["options"] = v2
            m["oneofs"].append(o)
        elif num == 7:
            m["options"] = v
    return m


def parse_file(b):
    f = {"name": "", "package": "", "messages": [], "enums": []}
    for num, _, v in fields(b):
        if num == 1:
            f["name"] = v.decode()
        elif num == 2:
            f["package"] = v.decode()
        elif num == 4:
            f["messages"].append(parse_message(v))
        elif num == 5:
            f["enums"].append(parse_enum(v))
    return f


def walk(prefix, messages, enums, out_m, out_e):
    for e in enums:
        out_e[prefix + e["name"]] = e
    for m in messages:
        full = prefix + m["name"]
        out_m[full] = m
        walk(full + ".", m["nested"], m["enums"], out_m, out_e)


class Decoder:
    """Decodes option messages (validate.FieldRules, ...) generically, from their descriptors."""

    def __init__(self, messages, enums):
        self.messages = messages
        self.enums = enums

    def decode(self, type_name, b):
        m = self.messages[type_name]
        by_num = {f["number"]: f for f in m["fields"]}
        out = {}
        for num, wt, v in fields(b):
            f = by_num.get(num)
            if f is None:
                continue
            if f["label"] == 3 and wt == 2 and f["type"] not in (9, 12, 11):
                vals = [self.scalar(f, x) for x in packed(f["type"], v)]
            else:
                vals = [self.value(f, v)]
            if f["label"] == 3:
                out.setdefault(f["name"], []).extend(vals)
            else:
                out[f["name"]] = vals[0]
        return out

    def value(self, f, v):
        if f["type"] == 11:
            return self.decode(f["type_name"].lstrip("."), v)
        return self.scalar(f, v)

    def scalar(self, f, v):
        t = f["type"]
        if t in (9,):
            return v.decode()
        if t == 12:
            return v.hex()
        if t == 8:
            return bool(v)
        if t == 1:
            import struct
            return struct.unpack("<d", v)[0]
        if t == 2:
            import struct
            return struct.unpack("<f", v)[0]
        if t in (7, 6):
            return int.from_bytes(v, "little")
        if t in (15, 16):
            return int.from_bytes(v, "little", signed=True)
        if t in (17, 18):
            return (v >> 1) ^ -(v & 1)
        if t in (3, 5):
            return v - (1 << 64) if v >= 1 << 63 else v
        if t == 14:
            e = self.enums[f["type_name"].lstrip(".")]
            for val in e["values"]:
                if val["number"] == v:
                    return val["name"]
            return v
        return v


def packed(t, b):
    i = 0
    while i < len(b):
        if t in (1, 6, 16):
            yield b[i:i + 8]
            i += 8
        elif t in (2, 7, 15):
            yield b[i:i + 4]
            i += 4
        else:
            v, i = varint(b, i)
            yield v


def option(b, number):
    out = None
    for num, _, v in fields(b):
        if num == number:
            out = v
    return out


def main():
    b = open(sys.argv[1], "rb").read()
    files = find_files(b)
    messages, enums = {}, {}
    for f in files.values():
        prefix = f["package"] + "." if f["package"] else ""
        walk(prefix, f["messages"], f["enums"], messages, enums)
    dec = Decoder(messages, enums)
    skip = ("google.protobuf.FileDescriptor", "google.protobuf.Descriptor",
            "google.protobuf.FieldDescriptor", "google.protobuf.OneofDescriptor",
            "google.protobuf.EnumDescriptor", "google.protobuf.EnumValueDescriptor",
            "google.protobuf.ServiceDescriptor", "google.protobuf.MethodDescriptor",
            "google.protobuf.GeneratedCodeInfo", "google.protobuf.SourceCodeInfo",
            "google.protobuf.UninterpretedOption", "google.protobuf.FeatureSet",
            "google.protobuf.ExtensionRange", "google.protobuf.FileOptions",
            "google.protobuf.MessageOptions", "google.protobuf.FieldOptions",
            "google.protobuf.OneofOptions", "google.protobuf.EnumOptions",
            "google.protobuf.EnumValueOptions", "google.protobuf.ServiceOptions",
            "google.protobuf.MethodOptions", "google.protobuf.compiler.")
    out = sys.stdout
    import hashlib
    label = " ".join(sys.argv[2].split()) if len(sys.argv) > 2 else "envoy"
    out.write("# Envoy's API schema, from the descriptors of %d .proto files compiled into\n"
              "# %s\n# (binary sha256 %s); generated by core/schema/extract.py\n"
              % (len(files), label.replace(sys.argv[1], "envoy"), hashlib.sha256(b).hexdigest()))
    for name in sorted(messages):
        if name.startswith(skip):
            continue
        m = messages[name]
        opts = m["options"]
        is_map = bool(option(opts, 7)) if opts else False
        out.write("M\t%s%s\n" % (name, "\tmap" if is_map else ""))
        for o in m["oneofs"]:
            req = option(o["options"], VALIDATE_RULES) if o["options"] else None
            out.write("O\t%s%s\n" % (o["name"], "\treq" if req else ""))
        for f in m["fields"]:
            if f["type"] in (11, 10):
                t = f["type_name"]
            elif f["type"] == 14:
                t = "E" + f["type_name"]
            else:
                t = SCALARS[f["type"]]
            rules = "-"
            dep = False
            if f["options"]:
                raw = option(f["options"], VALIDATE_RULES)
                if raw is not None:
                    rules = json.dumps(dec.decode("validate.FieldRules", raw),
                                       separators=(",", ":"), sort_keys=True)
                dep = bool(option(f["options"], 3))
            oneof = "-" if f["oneof"] is None or f["proto3_optional"] else str(f["oneof"])
            default_json = re.sub(r"_([a-z0-9])", lambda x: x.group(1).upper(), f["name"])
            js = f["json"] if f["json"] and f["json"] != default_json else "-"
            out.write("F\t%s\t%s\t%s\t%d\t%s\t%s%s\n" % (f["name"], js, t, f["label"], oneof,
                                                        rules, "\tdep" if dep else ""))
    for name in sorted(enums):
        if name.startswith(skip):
            continue
        out.write("E\t%s\n" % name)
        for v in enums[name]["values"]:
            out.write("V\t%s\t%d\n" % (v["name"], v["number"]))


if __name__ == "__main__":
    main()
