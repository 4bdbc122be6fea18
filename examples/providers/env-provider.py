#!/usr/bin/env python3
"""A complete DSO provider program (protocol 1, see docs/provider-protocol.md). Python 3 stdlib only.

It serves secrets from a JSON file, re-read on every request (edit the file to rotate):

    {
      "secrets": {
        "app/db":  {"password": "s3cret", "user": "app"},   # a key/value map
        "app/key": "a single value"
      },
      "access_token": "optional: when set, EXAMPLE_TOKEN must equal it"
    }

Environment (DSO starts providers with a cleared environment: pass these with the provider's
`env` table or `pass_env` list):

    EXAMPLE_SECRETS_FILE   the JSON file. When unset, secrets come from this program's own
                           environment instead: path `FOO` is the variable `SECRET_FOO`.
    EXAMPLE_TOKEN          the credential checked against `access_token` (-32002 when it differs).

Test knobs (for DSO's own tests; a real provider has no such thing):

    DSO_EXAMPLE_CRASH_ON=<path>     exit with status 3 when asked for <path>
    DSO_EXAMPLE_GARBAGE_ON=<path>   write a line that is not JSON when asked for <path>
    DSO_EXAMPLE_HANG_ON=<path>      never answer a request for <path> (others still are)
    DSO_EXAMPLE_DELAY_MS=<ms>       sleep that long before every resolve/version answer

Requests are read and answered one at a time, in order; DSO pipelines them over stdin, which is
fine: an answer carries its request's id. Logs go to stderr (DSO forwards them to its own logs);
stdout carries JSON-RPC answers only. Values are never logged.
"""

import hashlib
import hmac
import json
import os
import secrets as _random
import sys
import time

NOT_FOUND = -32001
DENIED = -32002
UNAVAILABLE = -32003
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
PARSE_ERROR = -32700

# Versions are keyed hashes of the content: they change when a value changes, stay equal while it
# does not, and (keyed with a per-process random key) say nothing about the value itself.
VERSION_KEY = _random.token_bytes(32)


def log(msg):
    sys.stderr.write("env-provider: %s\n" % msg)
    sys.stderr.flush()


def send(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def answer(rid, result):
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def error(rid, code, message):
    send({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}})


class Failure(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def load_store():
    """The secrets and the required token (None: no token required)."""
    path = os.environ.get("EXAMPLE_SECRETS_FILE")
    if not path:
        return {k[len("SECRET_"):]: v for k, v in os.environ.items() if k.startswith("SECRET_")}, None
    try:
        with open(path, "r", encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise Failure(UNAVAILABLE, "cannot read the secrets file %s: %s" % (path, e.strerror))
    except ValueError:
        raise Failure(UNAVAILABLE, "the secrets file %s is not valid JSON" % path)
    if not isinstance(doc, dict) or not isinstance(doc.get("secrets", {}), dict):
        raise Failure(UNAVAILABLE, "the secrets file %s must hold {\"secrets\": {...}}" % path)
    return doc.get("secrets", {}), doc.get("access_token")


def lookup(params):
    if not isinstance(params, dict) or not isinstance(params.get("path"), str):
        raise Failure(INVALID_PARAMS, "params must be {\"path\": string}")
    path = params["path"]
    store, token = load_store()
    if token is not None and not hmac.compare_digest(
        os.environ.get("EXAMPLE_TOKEN", "").encode(), str(token).encode()
    ):
        raise Failure(DENIED, "EXAMPLE_TOKEN does not match the store's access token")
    if path not in store:
        raise Failure(NOT_FOUND, "no secret at this path")
    entry = store[path]
    key = params.get("key")
    if key is not None:
        if not isinstance(entry, dict) or key not in entry:
            raise Failure(NOT_FOUND, "no such key at this path")
        entry = entry[key]
    return path, entry


def version_of(entry):
    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(VERSION_KEY, canonical, hashlib.sha256).hexdigest()[:16]


def resolve(params):
    _, entry = lookup(params)
    version = version_of(entry)
    if isinstance(entry, dict):
        return {"values": {k: v if isinstance(v, str) else json.dumps(v) for k, v in entry.items()},
                "version": version}
    if isinstance(entry, str):
        return {"value": entry, "version": version}
    return {"value": json.dumps(entry), "version": version}


def version(params):
    _, entry = lookup(params)
    return {"version": version_of(entry)}


def test_knobs(params):
    """Returns True when the request must not be answered."""
    path = params.get("path") if isinstance(params, dict) else None
    if path is not None and path == os.environ.get("DSO_EXAMPLE_CRASH_ON"):
        log("crashing as asked (DSO_EXAMPLE_CRASH_ON)")
        sys.exit(3)
    if path is not None and path == os.environ.get("DSO_EXAMPLE_GARBAGE_ON"):
        sys.stdout.write("Traceback (most recent call last): oops\n")
        sys.stdout.flush()
        return True
    if path is not None and path == os.environ.get("DSO_EXAMPLE_HANG_ON"):
        log("not answering, as asked (DSO_EXAMPLE_HANG_ON)")
        return True
    delay = os.environ.get("DSO_EXAMPLE_DELAY_MS")
    if delay:
        time.sleep(int(delay) / 1000.0)
    return False


def main():
    log("started, pid %d" % os.getpid())
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError:
            send({"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "parse error"}})
            continue
        rid = req.get("id")
        method = req.get("method")
        params = req.get("params")
        if method == "initialize":
            log("initialize for provider %r" % (params or {}).get("provider"))
            answer(rid, {"protocol": 1, "capabilities": {"version": True}})
        elif method == "shutdown":
            answer(rid, None)
            log("shutdown")
            return
        elif method in ("resolve", "version"):
            if test_knobs(params):
                continue
            try:
                answer(rid, resolve(params) if method == "resolve" else version(params))
            except Failure as f:
                error(rid, f.code, f.message)
        elif rid is not None:
            error(rid, METHOD_NOT_FOUND, "unknown method %r" % method)
    log("stdin closed, exiting")


if __name__ == "__main__":
    main()
