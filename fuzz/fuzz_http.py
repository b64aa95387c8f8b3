#!/usr/bin/env python3
"""Fuzz the HTTP proxy codecs: ``HttpProxyServer`` (request heads, with and without
accounts, transparent or not) and ``ResponseRewriter`` (upstream response heads).

The fuzzer picks the decoder, its settings and a small or the default head limit; bytes are
cut at fuzzer-chosen points, each piece passed as bytes, bytearray or memoryview. After the
response head, ``ResponseRewriter`` must pass bytes through unchanged.

Allowed: HttpProxyError. Anything else is a finding.

    python fuzz/fuzz_http.py [libFuzzer args]
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass

from _harness import (
    Chooser,
    FuzzedDataProvider,
    call_with,
    cut_values,
    instrumented,
    read_buffer_kind,
    read_cuts,
    seed_input,
    split,
)

with instrumented(__name__):
    from raybridge.protocols.http import (
        ConnectRequest,
        ForwardRequest,
        HttpProxyError,
        HttpProxyServer,
        ResponseRewriter,
    )

NAME = "http"
ACCOUNTS = {"user": "pass", "ünï": "cödé"}
HEAD_LIMITS = (65536, 200)


@dataclass
class Plan:
    rewriter: bool
    accounts: bool
    transparent: bool
    max_head: int
    buffer: int
    cuts: list[int]
    payload: bytes


def parse(ch: Chooser) -> Plan:
    return Plan(
        rewriter=ch.flag("rewriter"),
        accounts=ch.flag("accounts"),
        transparent=ch.flag("transparent"),
        max_head=HEAD_LIMITS[ch.int("small_head", 0, 1)],
        buffer=read_buffer_kind(ch),
        cuts=read_cuts(ch),
        payload=ch.rest(),
    )


def _server(plan: Plan, pieces: list[bytes]) -> list[str]:
    server = HttpProxyServer(
        accounts=ACCOUNTS if plan.accounts else None,
        allow_transparent=plan.transparent,
        max_head=plan.max_head,
    )
    try:
        for piece in pieces:
            request = call_with(plan.buffer, piece, server.receive_data)
            if request is None:
                continue
            if not isinstance(request, ConnectRequest | ForwardRequest):
                raise TypeError(f"unexpected request {request!r}")
            return [type(request).__name__]
    finally:
        server.data_to_send()
    return []


def _rewriter(plan: Plan, pieces: list[bytes]) -> list[str]:
    rewriter = ResponseRewriter(max_head=plan.max_head)
    outcome: list[str] = []
    for piece in pieces:
        passing = rewriter.head_done
        out = call_with(plan.buffer, piece, rewriter.feed)
        if not isinstance(out, bytes):
            raise TypeError(f"unexpected output {out!r}")
        if passing and out != piece:
            raise AssertionError("ResponseRewriter changed body bytes after the head")
        if rewriter.head_done and not passing:
            outcome.append("head")
    return outcome


def run(data: bytes) -> list[str]:
    """Feed one input; return what happened (then "error" if it failed)."""
    plan = parse(Chooser(FuzzedDataProvider(data)))
    pieces = split(plan.payload, plan.cuts)
    try:
        return _rewriter(plan, pieces) if plan.rewriter else _server(plan, pieces)
    except HttpProxyError:
        return ["error"]


def TestOneInput(data: bytes) -> None:
    run(data)


def seeds() -> dict[str, bytes]:
    auth = b"Proxy-Authorization: Basic " + base64.b64encode(b"user:pass") + b"\r\n"
    requests = {
        "connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nTLS",
        "connect-v6-auth": b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n" + auth + b"\r\n",
        "get": (
            b"GET http://example.com/a%20b?q=1 HTTP/1.1\r\nHost: example.com\r\n"
            b"User-Agent: fuzz\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n"
            b"Proxy-Connection: keep-alive\r\n\r\n"
        ),
        "post-chunked-auth": (
            b"POST http://10.0.0.1:8080/upload HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n"
            + auth
            + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
        "transparent": b"GET /index.html HTTP/1.0\r\nHost: example.org\r\n\r\n",
    }
    responses = {
        "response": (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
            b"Keep-Alive: timeout=5\r\n\r\nhello"
        ),
        "response-continue-chunked": (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 9\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
        ),
        "response-1.0": b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\n",
    }
    out: dict[str, bytes] = {}
    for label, wire in requests.items():
        values = {
            "accounts": int(b"Proxy-Authorization" in wire),
            "transparent": int(label == "transparent"),
            **cut_values(4, 30),
        }
        out[label] = seed_input(parse, values, wire)
    for label, wire in responses.items():
        out[label] = seed_input(parse, {"rewriter": 1, **cut_values(10, 40)}, wire)
    return out


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
