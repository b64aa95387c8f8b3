#!/usr/bin/env python3
"""Fuzz the DNS client's answer handling (``protocols/dnspolicy.py`` on dnspython).

One lookup of ``fuzz.test`` (A or AAAA, the fuzzer's choice) is in flight at one server with
the query id the fuzzer picks; the payload is the datagram that server sends back. Then the
lookup's time runs out.

Allowed: nothing. A malformed or foreign datagram is dropped; the lookup must end exactly
once (Resolved or Failed). Anything else is a finding.

    python fuzz/fuzz_dns.py [libFuzzer args]
"""

from __future__ import annotations

import sys

from _harness import Chooser, FuzzedDataProvider, instrumented, seed_input

with instrumented(__name__):
    import dns.message
    import dns.rcode
    import dns.rrset

    from raybridge.protocols.dnspolicy import (
        QUERY_TIMEOUT,
        Failed,
        Resolved,
        Resolver,
        SendQuery,
        ServerSpec,
        StaticHosts,
        Want,
    )

NAME = "dns"


def parse(ch: Chooser) -> tuple[Want, int, bytes]:
    want = Want.IPV6 if ch.flag("aaaa") else Want.IPV4
    return want, ch.int("id", 0, 0xFFFF), ch.rest()


def run(data: bytes) -> list[str]:
    """Feed one datagram; return the names of the lookup's events (one Resolved/Failed)."""
    want, qid, payload = parse(Chooser(FuzzedDataProvider(data)))
    resolver = Resolver([ServerSpec("fuzz")], StaticHosts([]), new_id=lambda: qid)
    lookup = resolver.lookup("fuzz.test", want, 0.0)
    outcome: list[str] = []

    def drain() -> None:
        while (event := resolver.next_event()) is not None:
            if isinstance(event, SendQuery):
                continue
            if not isinstance(event, Resolved | Failed) or event.lookup != lookup:
                raise AssertionError(f"unexpected event {event!r}")
            outcome.append(type(event).__name__)

    drain()
    resolver.datagram_received(0, payload, 1.0)
    drain()
    resolver.handle_timer(QUERY_TIMEOUT + 1.0)
    drain()
    if len(outcome) != 1:
        raise AssertionError(f"the lookup ended {len(outcome)} times: {outcome}")
    return outcome


def TestOneInput(data: bytes) -> None:
    run(data)


def _answer(qid: int, kind: str, *rdatas: str, rcode: int = 0, cname: bool = False) -> bytes:
    query = dns.message.make_query("fuzz.test.", kind)
    query.id = qid
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.Rcode(rcode))
    owner = "fuzz.test."
    if cname:
        reply.answer.append(dns.rrset.from_text(owner, 30, "IN", "CNAME", "real.test."))
        owner = "real.test."
    if rdatas:
        reply.answer.append(dns.rrset.from_text(owner, 60, "IN", kind, *rdatas))
    return reply.to_wire()


def seeds() -> dict[str, bytes]:
    return {
        "a": seed_input(parse, {"id": 7}, _answer(7, "A", "10.0.0.1")),  # one: sets are unordered
        "aaaa": seed_input(parse, {"aaaa": 1, "id": 300}, _answer(300, "AAAA", "2001:db8::1")),
        "cname": seed_input(parse, {"id": 9}, _answer(9, "A", "10.0.0.3", cname=True)),
        "nxdomain": seed_input(parse, {"id": 65535}, _answer(65535, "A", rcode=3)),
        "empty": seed_input(parse, {"id": 1}, _answer(1, "A")),
        "junk": seed_input(parse, {"id": 2}, b"\x00\x02\x81\x80junk"),
    }


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
