#!/usr/bin/env python3
"""Example pincer plugin (protocol version 1), Python standard library only.

The gateway starts this program with the plugin directory as working directory and talks
JSON-RPC 2.0 over stdin/stdout, one JSON object per line. Anything written to stderr goes to
the gateway log, tagged with the plugin id. See docs/plugins.md.

Methods registered:
  echo-methods.ping     (scope read)   -> {"greeting", "generation", "pid", "echo": params}
                                          and emits the event "echo-methods.pinged"
  echo-methods.reverse  (scope write)  -> {"text": params.text reversed}
"""

import json
import os
import sys

PLUGIN_ID = "echo-methods"
state = {"config": {}, "generation": 0, "pings": 0}


def send(obj):
    """Write one JSON-RPC message as one line (json.dumps never emits a raw newline)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def log(message):
    print(f"{PLUGIN_ID}[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class InvalidParams(Exception):
    """Maps to JSON-RPC -32602, which the gateway turns into INVALID_REQUEST."""


def initialize(params):
    if params.get("protocolVersion") != 1:
        raise RuntimeError(f"unsupported protocol version {params.get('protocolVersion')}")
    state["config"] = params.get("config") or {}
    state["generation"] = params.get("generation", 0)
    log(f"initialized (generation {state['generation']}, gateway {params['gateway']['version']})")
    return {
        "methods": [
            {"name": "echo-methods.ping", "scope": "read"},
            {"name": "echo-methods.reverse"},  # default scope: write
        ],
        "events": ["echo-methods.pinged"],
    }


def ping(params, client):
    state["pings"] += 1
    # A notification (no id): broadcast an event frame to clients allowed to read.
    send({"jsonrpc": "2.0", "method": "gateway.emit",
          "params": {"event": "echo-methods.pinged",
                     "payload": {"count": state["pings"], "by": client.get("connId")}}})
    return {
        "greeting": state["config"].get("greeting", "pong"),
        "generation": state["generation"],
        "pid": os.getpid(),
        "echo": params,
    }


def reverse(params, client):
    text = params.get("text") if isinstance(params, dict) else None
    if not isinstance(text, str):
        raise InvalidParams("params.text must be a string")
    return {"text": text[::-1]}


METHODS = {"echo-methods.ping": ping, "echo-methods.reverse": reverse}


def handle(msg):
    method, params, rid = msg.get("method"), msg.get("params"), msg.get("id")
    if method is None:
        return  # a response to a request of ours; this plugin sends none
    try:
        if method == "initialize":
            result = initialize(params)
        elif method == "invoke":
            fn = METHODS.get(params.get("method"))
            if fn is None:
                raise InvalidParams(f"unknown method {params.get('method')}")
            result = fn(params.get("params") or {}, params.get("client") or {})
        elif method == "shutdown":
            send({"jsonrpc": "2.0", "id": rid, "result": None})
            log("shutting down")
            sys.exit(0)
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"method not found: {method}"}})
            return
        send({"jsonrpc": "2.0", "id": rid, "result": result})
    except InvalidParams as e:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": str(e)}})
    except SystemExit:
        raise
    except Exception as e:  # any other failure: UNAVAILABLE for the caller
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32000, "message": str(e)}})


def main():
    # Stdin closing means the gateway is gone: exit.
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            log(f"ignoring a malformed line: {line[:80]!r}")
            continue
        handle(msg)


if __name__ == "__main__":
    main()
