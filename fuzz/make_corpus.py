#!/usr/bin/env python3
"""make_corpus.py — writes the seed inputs of fuzz/corpus/<target>/.

    python3 fuzz/make_corpus.py

Seeds are named seed-*; it rewrites those and leaves every other file
(crash-*: inputs a fuzzer found, kept so that the suite replays them).
Standard library only: the msgpack writer below is just enough for kiln's
frames.
"""
import io
import json
import os
import struct
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
UUID = "3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


# ---------------------------------------------------------------- msgpack
class Bin(bytes):
    pass


def pack(value):
    if value is None:
        return b"\xc0"
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 128:
            return bytes([value])
        if -32 <= value < 0:
            return struct.pack("b", value)
        if 0 <= value < 1 << 32:
            return b"\xce" + struct.pack(">I", value)
        if value >= 0:
            return b"\xcf" + struct.pack(">Q", value)
        return b"\xd3" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, Bin):
        return b"\xc6" + struct.pack(">I", len(value)) + bytes(value)
    if isinstance(value, str):
        data = value.encode()
        if len(data) < 32:
            return bytes([0xA0 | len(data)]) + data
        return b"\xdb" + struct.pack(">I", len(data)) + data
    if isinstance(value, (list, tuple)):
        return b"\xdd" + struct.pack(">I", len(value)) + b"".join(pack(v) for v in value)
    if isinstance(value, dict):
        out = b"\xdf" + struct.pack(">I", len(value))
        for k, v in value.items():
            out += pack(k) + pack(v)
        return out
    raise TypeError(value)


def msg(type_, fields, version=1):
    return bytes([version, type_]) + pack(fields)


def msg_seeds():
    log = {"level": "INFO", "message": "hello", "source": "app", "timestamp": 1764300000000}
    return {
        "worker_hello": msg(1, {"worker_id": "w-1", "host": "gpu01", "slots": {"CPU": 4, "GPU-H100": 2},
                                "draining": True}),
        "runner_hello": msg(2, {"runner_id": "r-1", "worker_id": "w-1", "app": "local/echo",
                                "revision": 3, "max_multiplexing": 4, "gpu": 0}),
        "heartbeat": msg(3, {}),
        "heartbeat_requests": msg(3, {"requests": [UUID, "r-2"]}),
        "runner_start": msg(4, {"runner_id": "r-1", "app": "local/echo", "revision": 1,
                                "artifact": SHA, "machine_type": "CPU", "gpu": -1}),
        "runner_stop": msg(5, {"runner_id": "r-1"}),
        "runner_exited": msg(6, {"runner_id": "r-1", "status": -9, "error": "no free CPU slot"}),
        "request": msg(7, {"request_id": UUID, "path": "/sub", "content_type": "application/json",
                           "body": Bin(b'{"x": 1}')}),
        "result": msg(8, {"request_id": UUID, "status": 200, "content_type": "image/png",
                          "body": Bin(b"\x89PNG"), "error": None, "error_type": "runner_draining",
                          "inference_ms": 12,
                          "files": [{"id": UUID, "content_type": "image/png", "file_name": "a.png",
                                     "data": Bin(b"\x00\x01")}]}),
        "log": msg(9, {"request_id": UUID, "logs": [log, {"message": "bare"}]}),
        "log_worker": msg(9, {"runner_id": "r-1", "logs": [log]}),
        "disconnect": msg(10, {}),
        "cancel": msg(11, {"request_id": UUID}),
        "unknown_field": msg(11, {"request_id": UUID, "future": [1, {"a": None}]}),
        # nasty ones
        "empty": b"",
        "short": b"\x01",
        "bad_version": msg(11, {"request_id": UUID}, version=2),
        "bad_type": msg(99, {}),
        "type_zero": msg(0, {}),
        "not_a_map": bytes([1, 3]) + pack([1, 2, 3]),
        "truncated": msg(7, {"request_id": UUID, "path": "/"})[:-3],
        "trailing": msg(3, {}) + b"\x00",
        "huge_array": bytes([1, 9]) + b"\x81\xa4logs\xdd\xff\xff\xff\xff",
        "huge_map": bytes([1, 3]) + b"\xdf\xff\xff\xff\xff",
        "huge_str": bytes([1, 5]) + b"\x81\xa9runner_id\xdb\xff\xff\xff\xf0ab",
        "deep": bytes([1, 3]) + b"\x81\xa8requests" + b"\x91" * 20 + b"\xc0",
        "duplicate_field": bytes([1, 11]) + b"\x82" + pack("request_id") + pack("a")
                           + pack("request_id") + pack("b"),
        "nul_in_string": msg(11, {"request_id": "a\x00b"}),
        "nil_required": msg(11, {"request_id": None}),
        "int_key": bytes([1, 11]) + b"\x81\x01\xa1a",
        "wrong_type": msg(6, {"runner_id": "r-1", "status": "x"}),
        "status_overflow": msg(6, {"runner_id": "r-1", "status": 1 << 40}),
        "negative_revision": msg(4, {"runner_id": "r", "app": "a/b", "revision": -1, "artifact": SHA,
                                     "machine_type": "CPU"}),
        "slot_twice": bytes([1, 1]) + b"\x83" + pack("worker_id") + pack("w") + pack("host") + pack("h")
                      + pack("slots") + b"\x82" + pack("CPU") + pack(1) + pack("CPU") + pack(2),
        "slot_empty_name": msg(1, {"worker_id": "w", "host": "h", "slots": {"": 1}}),
        "log_no_message": msg(9, {"logs": [{"level": "INFO"}]}),
        "file_no_data": msg(8, {"request_id": "x", "status": 200, "files": [{"id": "f"}]}),
        "long_string": msg(11, {"request_id": "x" * 5000}),
        "ext_and_float": bytes([1, 3]) + b"\x82\xa1a\xd4\x01\x02\xa1b\xcb" + struct.pack(">d", 1.5),
        "reserved_byte": bytes([1, 3]) + b"\x81\xa1a\xc1",
    }


# ---------------------------------------------------------------- routes
def route_seeds():
    seeds = {
        "sync": "POST\n/local/echo",
        "sync_sub": "POST\n/fal-ai/flux_1/dev/a%20b",
        "queue_submit_webhook": "POST\n/queue/local/echo/sub?fal_webhook=http%3A%2F%2Fexample.com%2Fhook&x=1",
        "queue_status_logs": "GET\n/queue/local/echo/requests/%s/status?logs=1" % UUID,
        "queue_stream": "GET\n/queue/local/echo/requests/%s/status/stream" % UUID,
        "queue_result": "HEAD\n/queue/local/echo/requests/%s" % UUID,
        "queue_cancel": "PUT\n/queue/local/echo/requests/%s/cancel" % UUID,
        "file": "GET\n/files/%s/out.png" % UUID,
        "health": "GET\n/health/",
        "metrics": "GET\n/metrics",
        "artifact": "PUT\n/v1/artifacts/%s" % SHA,
        "apps": "POST\n/v1/apps",
        "app_scale": "PATCH\n/v1/apps/local/echo",
        "app_delete": "DELETE\n/v1/apps/local/echo",
        "revisions": "GET\n/v1/apps/local/echo/revisions",
        "rollback": "POST\n/v1/apps/local/echo/rollback",
        "request_get": "GET\n/v1/requests/%s" % UUID,
        "request_cancel": "PUT\n/v1/requests/%s/cancel" % UUID,
        "runners_app": "GET\n/v1/runners?app=local%2Fecho",
        "workers": "GET\n/v1/workers",
        # nasty ones
        "no_method": "/local/echo",
        "empty": "",
        "dotdot": "POST\n/local/echo/%2e%2e/x",
        "encoded_slash": "POST\n/local/echo/a%2Fb",
        "nul_escape": "POST\n/local/echo/a%00b",
        "bad_escape": "POST\n/local/echo/a%",
        "double_slash": "GET\n//",
        "reserved_owner": "POST\n/%71ueue/echo",
        "wrong_method": "DELETE\n/queue/local/echo/requests/%s/cancel" % UUID,
        "absolute_uri": "POST\nhttp://example.com:8080/local/echo?fal_webhook=x#frag",
        "asterisk": "OPTIONS\n*",
        "query_only": "GET\n?logs=1&logs=2&=&&a",
        "query_escapes": "GET\n/health?a=%zz&b=%00&c=%",
        "long_name": "POST\n/%s/%s/x" % ("a" * 63, "b" * 64),
        "deep": "POST\n/local/echo" + "/x" * 70,
        "long_path": "POST\n/local/echo/" + "y" * 1100,
        "fragment": "GET\n/health#x",
        "utf8": "POST\n/local/echo/%C3%A9\xc3\xa9",
        "control": "POST\n/local/echo/a\tb",
    }
    return {k: v.encode("utf-8", "surrogateescape") for k, v in seeds.items()}


# ---------------------------------------------------------------- manifests
def manifest_seeds():
    native = {"name": "echo", "machine_types": ["CPU"], "keep_alive": 300, "min_concurrency": 0,
              "max_concurrency": 2, "concurrency_buffer": 0, "max_multiplexing": 1,
              "request_timeout": 3600, "startup_timeout": 600, "endpoints": ["/", "/echo"],
              "kind": "native", "requirements": []}
    python = dict(native, name="hello", kind="python", machine_types=["GPU-H100", "CPU"],
                  requirements=["torch==2.3.1", "git+https://example.com/x.git"])
    seeds = {
        "native": json.dumps(native),
        "python": json.dumps(python),
        "minimal": '{"name": "a", "endpoints": ["/"]}',
        # nasty ones
        "empty": "",
        "not_object": "[1, 2]",
        "duplicate_key": '{"name": "a", "name": "b", "endpoints": ["/"]}',
        "nan": '{"name": "a", "endpoints": ["/"], "keep_alive": NaN}',
        "huge_int": '{"name": "a", "endpoints": ["/"], "keep_alive": 99999999999999999999}',
        "int_over_intmax": '{"name": "a", "endpoints": ["/"], "max_concurrency": 2147483648}',
        "real_number": '{"name": "a", "endpoints": ["/"], "keep_alive": 1.5}',
        "nul_in_name": '{"name": "echo\\u0000evil", "endpoints": ["/"]}',
        "nul_in_kind": '{"name": "a", "endpoints": ["/"], "kind": "python\\u0000x"}',
        "bad_kind": '{"name": "a", "endpoints": ["/"], "kind": 3}',
        "native_requirements": '{"name": "a", "endpoints": ["/"], "requirements": ["x"]}',
        "endpoint_twice": '{"name": "a", "endpoints": ["/", "/"]}',
        "endpoint_query": '{"name": "a", "endpoints": ["/a?b"]}',
        "min_over_max": '{"name": "a", "endpoints": ["/"], "min_concurrency": 5, "max_concurrency": 2}',
        "many_types": json.dumps({"name": "a", "endpoints": ["/"],
                                  "machine_types": ["T%d" % i for i in range(17)]}),
        "deep": '{"name": "a", "endpoints": ["/"], "x": ' + "[" * 200 + "]" * 200 + "}",
        "bad_utf8": b'{"name": "a", "endpoints": ["/\xff"]}',
        "surrogate": '{"name": "a", "endpoints": ["/\\ud800"]}',
        "trailing": '{"name": "a", "endpoints": ["/"]} x',
        "control_requirement": '{"name": "a", "kind": "python", "endpoints": ["/"], "requirements": ["a\\tb"]}',
    }
    return {k: v if isinstance(v, bytes) else v.encode() for k, v in seeds.items()}


# ---------------------------------------------------------------- frames
def frame(header, body=b"", header_bytes=None):
    head = header_bytes if header_bytes is not None else json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + struct.pack(">I", len(body)) + body


def frame_seeds():
    manifest = {"name": "upper", "machine_types": ["CPU"], "endpoints": ["/"], "requirements": []}
    ready = frame({"type": "ready", "protocol": 1, "manifest": manifest})
    log = frame({"type": "log", "request_id": UUID, "level": "INFO", "message": "3 bytes",
                 "timestamp": 1764300000000})
    result = frame({"type": "result", "request_id": UUID, "status": 200, "content_type": "text/plain"}, b"ABC")
    file_ = frame({"type": "file", "request_id": UUID, "id": UUID, "content_type": "image/png",
                   "file_name": "a.png"}, b"\x89PNG\r\n\x1a\n")
    stop = bytes.fromhex("0000000f7b2274797065223a2273746f70227d00000000")
    seeds = {
        "ready": b"\x00" + ready,
        "conversation": b"\x07" + ready + log + file_ + result,
        "bytewise": b"\x00" + stop + stop,
        "large_pieces": b"\xff" + ready + result,
        "describe": b"\x10" + frame({"type": "describe", "protocol": 1, "manifest": manifest}),
        "setup_failed": b"\x03" + frame({"type": "setup_failed", "error": "boom", "traceback": "..."}),
        "unknown_type": b"\x05" + frame({"type": "future", "x": [1, 2.5, None]}),
        # a header and a body past the reader's first allocation (64 KiB): it grows
        "grows": b"\xff" + frame({"type": "result", "request_id": UUID, "status": 200,
                                  "content_type": "text/plain", "error": "e" * 66000}, b"b" * 66000),
        # nasty ones
        "empty": b"",
        "piece_only": b"\x20",
        "header_too_long": b"\x00" + struct.pack(">I", (1 << 20) + 1) + b"{}",
        "header_max": b"\x00" + struct.pack(">I", 0xFFFFFFFF),
        "body_too_long": b"\x04" + struct.pack(">I", 13) + b'{"type":"x"}' + b" " + struct.pack(">I", (512 << 20) + 1),
        "not_json": b"\x02" + frame(None, header_bytes=b"{type: stop}"),
        "array_header": b"\x02" + frame(["type", "stop"]),
        "no_type": b"\x02" + frame({"kind": "stop"}),
        "number_type": b"\x02" + frame({"type": 1}),
        "nan": b"\x02" + frame(None, header_bytes=b'{"type": "log", "timestamp": NaN}'),
        "duplicate_key": b"\x02" + frame(None, header_bytes=b'{"type": "a", "type": "b"}'),
        "nul_in_string": b"\x02" + frame(None, header_bytes=b'{"type": "a\\u0000b"}'),
        "empty_header": b"\x02" + frame(None, header_bytes=b""),
        "ends_in_length": b"\x01" + ready[:2],
        "ends_in_header": b"\x01" + ready[:20],
        "ends_in_body": b"\x01" + result[:-1],
        "trailing_garbage": b"\x09" + stop + b"\x00\x00",
        "bad_utf8": b"\x09" + frame(None, header_bytes=b'{"type": "\xff"}'),
        # the fields a log, file or result frame must have
        "log_no_level": b"\x07" + frame({"type": "log", "request_id": UUID, "message": "m"}),
        "log_timestamp_string": b"\x07" + frame({"type": "log", "request_id": UUID, "level": "INFO",
                                                  "message": "m", "timestamp": "now"}),
        "log_timestamp_huge": b"\x07" + frame(None, header_bytes=b'{"type": "log", "request_id": "r", '
                                                b'"level": "INFO", "message": "m", "timestamp": 1e300}'),
        "log_timestamp_negative": b"\x07" + frame({"type": "log", "request_id": UUID, "level": "INFO",
                                                    "message": "m", "timestamp": -1}),
        "log_timestamp_real": b"\x07" + frame({"type": "log", "request_id": UUID, "level": "INFO",
                                                "message": "m", "timestamp": 1764300000000.5}),
        "file_no_name": b"\x07" + frame({"type": "file", "request_id": UUID, "id": UUID,
                                          "content_type": "image/png"}, b"x"),
        "result_status_string": b"\x07" + frame({"type": "result", "request_id": UUID, "status": "200",
                                                  "content_type": "text/plain"}),
        "result_status_real": b"\x07" + frame({"type": "result", "request_id": UUID, "status": 200.0,
                                                "content_type": "text/plain"}),
        "result_no_request": b"\x07" + frame({"type": "result", "status": 200, "content_type": "text/plain"}),
    }
    return seeds


# ---------------------------------------------------------------- bundles
def tar_bytes(entries, fmt=tarfile.USTAR_FORMAT):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    #  tarfile pads to 10 KiB records; a seed needs only the end blocks
    data = out.getvalue().rstrip(b"\x00")
    return data + b"\x00" * (-len(data) % 512) + b"\x00" * 1024


def entry(name, data=b"", type_=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = type_
    info.size = len(data) if type_ == tarfile.REGTYPE else 0
    info.linkname = linkname
    info.mtime = 1764300000
    return info, data if type_ == tarfile.REGTYPE else None


def header_block(name, size, type_=b"0", prefix=b"", size_field=None):
    """One ustar header with a right checksum, for what tarfile will not write."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\x00"
    h[124:136] = size_field if size_field is not None else b"%011o\x00" % size
    h[156:157] = type_
    h[257:263] = b"ustar\x00"
    h[263:265] = b"00"
    h[345:345 + len(prefix)] = prefix
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


def bundle_seeds():
    description = json.dumps({"class": "Hello", "entry": "hello.py", "kind": "python",
                              "manifest": {"name": "hello", "endpoints": ["/"]}}).encode()
    app = b"import kiln\nclass Hello(kiln.App):\n    pass\n"
    good = tar_bytes([entry("kiln.json", description), entry("hello.py", app)])
    end = b"\x00" * 1024
    bad_sum = bytearray(good)
    bad_sum[148:154] = b"000000"
    seeds = {
        "bundle": good,
        "empty_file": tar_bytes([entry("kiln.json", b""), entry("e", b"")]),
        # nasty ones
        "empty": b"",
        "only_zero": b"\x00" * 1024,
        "not_tar": b"\x7fELF" + b"\x00" * 600,
        "dotdot": header_block(b"../evil", 1) + b"x" + b"\x00" * 511 + end,
        "slash": tar_bytes([entry("a/b", b"x")]),
        "absolute": header_block(b"/tmp/kiln-fuzz-evil", 1) + b"x" + b"\x00" * 511 + end,
        "dot": header_block(b".", 0) + end,
        "prefix": header_block(b"x", 0, prefix=b"..") + end,
        "symlink": tar_bytes([entry("link", type_=tarfile.SYMTYPE, linkname="/etc/passwd")]),
        "hardlink": tar_bytes([entry("a", b"x"), entry("b", type_=tarfile.LNKTYPE, linkname="a")]),
        "directory": tar_bytes([entry("d", type_=tarfile.DIRTYPE)]),
        "gnu_longname": tar_bytes([entry("n" * 150, b"x")], fmt=tarfile.GNU_FORMAT),
        "pax": tar_bytes([entry("p" * 120, b"x")], fmt=tarfile.PAX_FORMAT),
        "bad_checksum": bytes(bad_sum),
        "size_past_end": header_block(b"big", 5000) + b"x" * 512,
        "size_not_octal": header_block(b"x", 0, size_field=b"0000000009\x00\x00") + end,
        "size_huge": header_block(b"x", 0, size_field=b"77777777777\x00") + end,
        "twice": tar_bytes([entry("a", b"1"), entry("a", b"2")]),
        "no_end": header_block(b"a", 1) + b"x" + b"\x00" * 511,
        "control_name": header_block(b"a\nb", 0) + end,
        "truncated_header": good[:300],
    }
    return seeds


# ---------------------------------------------------------------- kiln.json
def bundle_meta_seeds():
    good = {"class": "Hello", "entry": "hello.py", "kind": "python",
            "manifest": {"name": "hello", "endpoints": ["/"]}}
    full = dict(good, manifest={"name": "big", "kind": "python", "machine_types": ["CPU", "GPU-H100"],
                                "endpoints": ["/", "/sub"], "requirements": ["numpy==2.1.0"],
                                "max_multiplexing": 4, "startup_timeout": 600, "app_auth": "public"})
    seeds = {
        "good": json.dumps(good),
        "full": json.dumps(full),
        "dot_entry": json.dumps(dict(good, entry=".hidden.py")),
        # nasty ones
        "empty": "",
        "not_object": "[1, 2]",
        "truncated": json.dumps(good)[:40],
        "duplicate_kind": '{"kind": "python", "kind": "native", "entry": "a.py", "class": "A", "manifest": {"name": "a", "endpoints": ["/"]}}',
        "kind_native": json.dumps(dict(good, kind="native")),
        "no_kind": json.dumps({k: v for k, v in good.items() if k != "kind"}),
        "entry_dotdot": json.dumps(dict(good, entry="..")),
        "entry_path": json.dumps(dict(good, entry="../../etc/passwd")),
        "entry_absolute": json.dumps(dict(good, entry="/usr/bin/python3")),
        "entry_newline": json.dumps(dict(good, entry="a\nb.py")),
        "entry_nul": json.dumps(dict(good, entry="a\u0000b.py")),
        "entry_number": json.dumps(dict(good, entry=7)),
        "no_class": json.dumps({k: v for k, v in good.items() if k != "class"}),
        "empty_class": json.dumps(dict(good, **{"class": ""})),
        "manifest_string": json.dumps(dict(good, manifest=json.dumps(good["manifest"]))),
        "manifest_invalid": json.dumps(dict(good, manifest={"name": "Bad Name", "endpoints": []})),
        "manifest_deep": '{"kind": "python", "entry": "a.py", "class": "A", "manifest": {"name": "a", "x": ' + "[" * 2000 + "]" * 2000 + "}}",
        "bad_utf8": b'{"kind": "python", "entry": "\xff.py", "class": "A", "manifest": {"name": "a", "endpoints": ["/"]}}',
    }
    return {k: v if isinstance(v, bytes) else v.encode() for k, v in seeds.items()}


# ---------------------------------------------------------------- JSON bodies
def json_seeds():
    deploy = {"name": "local/echo", "artifact": SHA,
              "manifest": {"name": "echo", "endpoints": ["/"]}}
    seeds = {
        "submit_object": b"\x00" + b'{"prompt": "a cat", "n": 2, "x": [1.5, null, true]}',
        "submit_scalar": b"\x00" + b'"just a string"',
        "submit_nul": b"\x00" + b'{"a": "x\\u0000y"}',
        "submit_bad": b"\x00" + b'{"a": ',
        "submit_deep": b"\x00" + b"[" * 3000,
        "submit_big_number": b"\x00" + b"1e400",
        "deploy": b"\x01" + json.dumps(deploy).encode(),
        "deploy_manifest_string": b"\x01" + json.dumps(dict(deploy, manifest=json.dumps(deploy["manifest"]))).encode(),
        "deploy_reserved": b"\x01" + json.dumps(dict(deploy, name="queue/echo")).encode(),
        "deploy_bad_sha": b"\x01" + json.dumps(dict(deploy, artifact=SHA.upper())).encode(),
        "deploy_bad_manifest": b"\x01" + json.dumps(dict(deploy, manifest=[1])).encode(),
        "deploy_nul_name": b"\x01" + b'{"name": "local/echo\\u0000x", "artifact": "' + SHA.encode() + b'"}',
        "rollback": b"\x02" + b'{"revision": 3}',
        "rollback_bad": b"\x02" + b'{"revision": -1}',
        "rollback_not_object": b"\x02" + b"[3]",
        "rollback_float": b"\x02" + b'{"revision": 3.0}',
        "rollback_huge": b"\x02" + b'{"revision": 9223372036854775807}',
        "rollback_overflow": b"\x02" + b'{"revision": 99999999999999999999}',
        "rollback_duplicate": b"\x02" + b'{"revision": 0, "revision": 2}',
        "deploy_owner_only": b"\x01" + b'{"name": "bob/app"}',
        "deploy_duplicate_name": b"\x01" + json.dumps(deploy).encode()[:-1] + b', "name": "mallory/echo"}',
        "deploy_long_owner": b"\x01" + json.dumps(dict(deploy, name="o" * 64 + "/echo")).encode(),
        "scale": b"\x03" + b'{"min_concurrency": 1, "max_concurrency": 4, "keep_alive": null, "reset": false}',
        "scale_duplicate": b"\x03" + b'{"min_concurrency": 1, "min_concurrency": 2}',
        "scale_unknown": b"\x03" + b'{"nope": 1}',
        "webhook": b"\x04" + b"https://hooks.example.com:8443/kiln?x=1",
        "webhook_v6": b"\x04" + b"http://[::1]:9/x",
        "webhook_userinfo": b"\x04" + b"http://user:pw@host/x#f",
        "webhook_no_host": b"\x04" + b"http:///x",
        "webhook_relative": b"\x04" + b"/just/a/path",
        "webhook_scheme": b"\x04" + b"javascript:alert(1)",
        "webhook_space": b"\x04" + b"http://exa mple.com/",
        "content_type_plus_json": b"\x05" + b"application/problem+json; charset=utf-8",
        "flag_true": b"\x05" + b"true",
        "timeout_fraction": b"\x06" + b" 2.5 ",
        "timeout_huge": b"\x06" + b"9999999999999",
        "timeout_exponent": b"\x06" + b"1e3",
        "file_name_nasty": b"\x07" + b'a"b/c\\\x01\xc3\xa9.png',
        "scale_reset_only": b"\x03" + b'{"reset": true}',
        "keys": b"\x08" + b'{"scope": "API", "owner": "alice"}',
        "keys_operator": b"\x08" + b'{"scope": "ADMIN", "owner": "*"}',
        "keys_bad": b"\x08" + b'{"scope": "api", "owner": "queue"}',
        "keys_empty": b"\x08",
    }
    return seeds


# ---------------------------------------------------------------- Redis URLs
def redis_url_seeds():
    urls = {
        "plain": "redis://localhost",
        "port_db": "redis://127.0.0.1:6380/2",
        "password": "redis://:s3cret@host:1/0",
        "user_password": "redis://alice:p%40ss@db.example.com:6379/15",
        "at_in_password": "redis://:a@b@host",
        "v6": "redis://[::1]:6379/1",
        "upper_scheme": "REDIS://HOST",
        "trailing_slash": "redis://host/",
        # nasty ones
        "empty": "",
        "no_host": "redis://",
        "only_port": "redis://:6379",
        "port_zero": "redis://host:0",
        "port_big": "redis://host:65536",
        "port_long": "redis://host:99999999999",
        "db_negative": "redis://host/-1",
        "db_huge": "redis://host/2147483648",
        "bad_escape": "redis://:%zz@host",
        "nul_escape": "redis://:%00@host",
        "short_escape": "redis://:%4@host",
        "empty_v6": "redis://[]:1",
        "open_v6": "redis://[::1",
        "v6_junk": "redis://[::1]x",
        "host_chars": "redis://ho st",
        "host_percent": "redis://h%41st",
        "other_scheme": "rediss://host",
        "query": "redis://host/0?timeout=1",
    }
    return {k: v.encode() for k, v in urls.items()}


# ---------------------------------------------------------------- Authorization
def auth_seeds():
    secret = "0123456789abcdef" * 4
    values = {
        "key": "Key %s:%s" % (UUID, secret),
        "lower_spaces": "key   %s:%s  " % (UUID.upper(), secret.upper()),
        # nasty ones
        "empty": "",
        "bearer": "Bearer %s:%s" % (UUID, secret),
        "no_secret": "Key %s" % UUID,
        "short_secret": "Key %s:%s" % (UUID, secret[:-1]),
        "long_secret": "Key %s:%s0" % (UUID, secret),
        "not_hex": "Key %s:%sg" % (UUID, secret[:-1]),
        "bad_dashes": "Key %s:%s" % (UUID.replace("-", "x"), secret),
        "two_colons": "Key %s::%s" % (UUID, secret),
        "tab": "Key\t%s:%s" % (UUID, secret),
        "only_word": "Key ",
    }
    return {k: v.encode() for k, v in values.items()}


# ---------------------------------------------------------------- webhooks
def webhook_seeds():
    def body(status, error, result):
        return b"\x00" + struct.pack(">h", status) + bytes([len(error)]) + error + result
    def address(raw):
        return b"\x01" + raw
    return {
        "ok_json": body(200, b"", b'{"images": [{"url": "http://x/files/1"}]}'),
        "ok_text": body(201, b"", "caf\u00e9 text".encode()),
        "ok_binary": body(200, b"", b"\x89PNG\r\n\x1a\n\xff\xfe"),
        "error_detail": body(500, b"boom", b'{"detail": "boom", "error_type": "runner_server_error"}'),
        "error_no_text": body(404, b"", b""),
        "negative_status": body(-1, b"\xff\xfe", b"\x00"),
        "json_nul": body(200, b"", b'"a\\u0000b"'),
        "v4_public": address(bytes([93, 184, 216, 34])),
        "v4_loopback": address(bytes([127, 0, 0, 1])),
        "v4_metadata": address(bytes([169, 254, 169, 254])),
        "v6_loopback": address(bytes(15) + b"\x01"),
        "v6_mapped_private": address(bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])),
        "v6_unique_local": address(b"\xfd" + bytes(15)),
        "v6_public": address(bytes.fromhex("2606470000000000000000006810b0b0")),
    }


def write(target, seeds):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.startswith("seed-"):
            os.remove(os.path.join(directory, name))
    for name, data in seeds.items():
        with open(os.path.join(directory, "seed-" + name), "wb") as out:
            out.write(data)


def main():
    write("fuzz_msg", msg_seeds())
    write("fuzz_route", route_seeds())
    write("fuzz_manifest", manifest_seeds())
    write("fuzz_frame", frame_seeds())
    write("fuzz_bundle", bundle_seeds())
    write("fuzz_bundle_meta", bundle_meta_seeds())
    write("fuzz_json", json_seeds())
    write("fuzz_redis_url", redis_url_seeds())
    write("fuzz_auth", auth_seeds())
    write("fuzz_webhook", webhook_seeds())


if __name__ == "__main__":
    main()
