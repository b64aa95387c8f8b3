"""The DNS client's policy (``protocols/dnspolicy.py``), scenario by scenario.

No event loop and no sockets: time is the ``now`` each call passes, query ids come from a
counter, and the servers' answers are dnspython messages the test builds.
"""

from __future__ import annotations

import ipaddress
import itertools
import re

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge.protocols import dnspolicy
from raybridge.protocols.dnspolicy import (
    MAX_TTL,
    QUERY_TIMEOUT,
    DomainIndex,
    Event,
    Failed,
    HostEntry,
    Resolved,
    Resolver,
    SendQuery,
    ServerSpec,
    StaticHosts,
    SystemLookup,
    Want,
)

T0 = 1000.0
ip = ipaddress.ip_address
NO_HOSTS = StaticHosts([])


def counter(start: int = 1) -> itertools.count[int]:
    return itertools.count(start)


def resolver(*servers: ServerSpec, hosts: StaticHosts = NO_HOSTS) -> Resolver:
    ids = counter()
    return Resolver(list(servers), hosts, new_id=lambda: next(ids))


def udp(name: str = "a", **kwargs: object) -> ServerSpec:
    return ServerSpec(name=name, **kwargs)  # type: ignore[arg-type]


def drain(r: Resolver) -> list[Event]:
    out: list[Event] = []
    while (event := r.next_event()) is not None:
        out.append(event)
    return out


def answer(
    query: bytes,
    *addresses: str,
    ttl: int = 60,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    cname: str | None = None,
) -> bytes:
    """The server's reply to ``query``: the addresses of its type (of the name, or of
    ``cname`` after a CNAME record)."""
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    question = q.question[0]
    owner = question.name
    if cname is not None:
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", "CNAME", cname))
        owner = dns.name.from_text(cname)
    kind = dns.rdatatype.to_text(question.rdtype)
    wanted = [a for a in addresses if (ip(a).version == 4) == (kind == "A")]
    if wanted:
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", kind, *wanted))
    return r.to_wire()


def queries(events: list[Event]) -> list[SendQuery]:
    return [e for e in events if isinstance(e, SendQuery)]


def qtype(event: SendQuery) -> str:
    return dns.rdatatype.to_text(dns.message.from_wire(event.data).question[0].rdtype)


# -- matching order --------------------------------------------------------------------------


def test_index_order_full_then_deepest_suffix_then_others_in_order() -> None:
    index = DomainIndex()
    index.add("keyword", "b", 1)
    index.add("domain", "c", 2)
    index.add("domain", "b.c", 3)
    index.add("full", "a.b.c", 4)
    index.add("regexp", r"^a\.", 5)
    index.add("domain", "a.b.c", 6)
    assert index.match("a.b.c") == [4, 6, 3, 2, 1, 5]
    assert index.match("xb.c") == [2, 1]  # "b.c" is a suffix of the text, not of a label
    assert index.match("") == []


def test_index_is_case_sensitive_as_in_v2ray() -> None:
    index = DomainIndex()
    index.add("full", "a.test", 1)
    assert index.match("A.test") == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["full", "domain", "keyword", "regexp"]),
            st.sampled_from(["a", "b", "a.b", "b.c", "a.b.c", "c", "x"]),
        ),
        max_size=8,
    ),
    st.sampled_from(["a", "a.b", "a.b.c", "x.a.b.c", "b.c", "ab.c", ""]),
)
def test_index_matches_what_a_linear_scan_matches(
    patterns: list[tuple[str, str]], name: str
) -> None:
    index = DomainIndex()
    for i, (kind, value) in enumerate(patterns):
        pattern = re.escape(value) if kind == "regexp" else value
        index.add(kind, pattern, i)  # type: ignore[arg-type]

    def hit(kind: str, value: str) -> bool:
        if kind == "full":
            return name == value
        if kind == "domain":
            return name == value or name.endswith("." + value)
        return value in name

    expected = {i for i, (kind, value) in enumerate(patterns) if hit(kind, value)}
    got = index.match(name)
    assert sorted(got) == sorted(expected)
    full = [i for i in got if patterns[i][0] == "full"]
    assert got[: len(full)] == full  # exact names come first


# -- static hosts ---------------------------------------------------------------------------


def hosts(*entries: tuple[str, str, str]) -> StaticHosts:
    out = []
    for kind, pattern, value in entries:
        try:
            out.append(HostEntry(kind, pattern, ips=tuple(ip(v) for v in value.split(","))))  # type: ignore[arg-type]
        except ValueError:
            out.append(HostEntry(kind, pattern, alias=value))  # type: ignore[arg-type]
    return StaticHosts(out)


def test_hosts_full_domain_keyword_and_order() -> None:
    h = hosts(
        ("domain", "example.test", "10.0.0.2"),
        ("full", "www.example.test", "10.0.0.1"),
        ("keyword", "ads", "0.0.0.0"),
    )
    assert h.lookup("www.example.test", Want.BOTH) == [ip("10.0.0.1"), ip("10.0.0.2")]
    assert h.lookup("example.test", Want.BOTH) == [ip("10.0.0.2")]
    assert h.lookup("ads.other.test", Want.BOTH) == [ip("0.0.0.0")]
    assert h.lookup("other.test", Want.BOTH) is None


def test_hosts_family_filter_and_localhost_gets_v6() -> None:
    h = hosts(("full", "v4.test", "10.0.0.1"), ("full", "lo.test", "127.0.0.1"))
    assert h.lookup("v4.test", Want.IPV6) == []  # mapped, but to no IPv6 address
    assert h.lookup("lo.test", Want.BOTH) == [ip("127.0.0.1"), ip("::1")]
    assert h.lookup("lo.test", Want.IPV6) == [ip("::1")]


def test_hosts_alias_is_followed_five_levels() -> None:
    chain = [("full", f"n{i}.test", f"n{i + 1}.test") for i in range(7)]
    h = hosts(*chain, ("full", "n6.test", "10.0.0.6"))
    h2 = hosts(*chain[:3], ("full", "n3.test", "10.0.0.3"))
    assert h2.lookup("n0.test", Want.BOTH) == [ip("10.0.0.3")]
    # n0 -> n1 ... -> n5 (five levels): n5 is an alias again, so n5's target is asked for.
    assert isinstance(h.lookup("n0.test", Want.BOTH), str)
    assert hosts(("full", "a.test", "b.test")).lookup("a.test", Want.BOTH) == "b.test"


def test_resolver_answers_from_hosts_without_a_query() -> None:
    r = resolver(udp(), hosts=hosts(("full", "example.test", "127.0.0.1")))
    lid = r.lookup("example.test.", Want.IPV4, T0)  # a trailing dot is dropped
    assert drain(r) == [Resolved(lid, (ip("127.0.0.1"),))]
    lid = r.lookup("example.test", Want.IPV6, T0)
    assert drain(r) == [Resolved(lid, (ip("::1"),))]
    r = resolver(udp(), hosts=hosts(("full", "x.test", "10.0.0.1")))
    lid = r.lookup("x.test", Want.IPV6, T0)
    (failed,) = drain(r)
    assert isinstance(failed, Failed) and failed.lookup == lid  # no fallback to the servers


def test_alias_is_asked_of_the_servers() -> None:
    r = resolver(udp(), hosts=hosts(("domain", "old.test", "new.test")))
    r.lookup("www.old.test", Want.IPV4, T0)
    (query,) = queries(drain(r))
    assert str(dns.message.from_wire(query.data).question[0].name) == "new.test."


# -- queries and answers ------------------------------------------------------------------------


def test_a_and_aaaa_then_both_answers_resolve() -> None:
    r = resolver(udp())
    lid = r.lookup("www.test", Want.BOTH, T0)
    sent = queries(drain(r))
    assert [qtype(q) for q in sent] == ["A", "AAAA"]
    assert [dns.message.from_wire(q.data).id for q in sent] == [1, 2]  # the injected ids
    assert all(dns.message.from_wire(q.data).flags & dns.flags.RD for q in sent)
    r.datagram_received(0, answer(sent[0].data, "10.0.0.1", "10.0.0.2"), T0 + 0.1)
    assert drain(r) == []  # waits for the AAAA answer
    r.datagram_received(0, answer(sent[1].data, "2001:db8::1"), T0 + 0.2)
    (resolved,) = drain(r)
    assert isinstance(resolved, Resolved) and resolved.lookup == lid
    assert set(resolved.ips[:2]) == {ip("10.0.0.1"), ip("10.0.0.2")}  # A first, then AAAA
    assert resolved.ips[2] == ip("2001:db8::1")


def test_cname_chain_addresses_count() -> None:
    r = resolver(udp())
    lid = r.lookup("alias.test", Want.IPV4, T0)
    (query,) = queries(drain(r))
    r.datagram_received(0, answer(query.data, "10.0.0.7", cname="real.test."), T0)
    assert drain(r) == [Resolved(lid, (ip("10.0.0.7"),))]


def test_cache_for_the_smallest_ttl_then_asked_again() -> None:
    r = resolver(udp())
    r.lookup("c.test", Want.IPV4, T0)
    (query,) = queries(drain(r))
    r.datagram_received(0, answer(query.data, "10.0.0.1", ttl=30), T0)
    drain(r)
    lid = r.lookup("c.test", Want.IPV4, T0 + 29)
    assert drain(r) == [Resolved(lid, (ip("10.0.0.1"),))]  # from the cache, no query
    r.lookup("c.test", Want.IPV4, T0 + 30.5)
    assert [qtype(q) for q in queries(drain(r))] == ["A"]


def test_ttl_zero_and_long_ttls_are_cached_600_s() -> None:
    for ttl in (0, 86400):
        r = resolver(udp())
        r.lookup("z.test", Want.IPV4, T0)
        (query,) = queries(drain(r))
        r.datagram_received(0, answer(query.data, "10.0.0.1", ttl=ttl), T0)
        drain(r)
        r.lookup("z.test", Want.IPV4, T0 + MAX_TTL - 1)
        assert queries(drain(r)) == []
        r.lookup("z.test", Want.IPV4, T0 + MAX_TTL + 1)
        assert len(queries(drain(r))) == 1


def test_concurrent_lookups_share_one_query() -> None:
    r = resolver(udp())
    first = r.lookup("s.test", Want.IPV4, T0)
    second = r.lookup("s.test", Want.IPV4, T0)
    sent = queries(drain(r))
    assert len(sent) == 1
    r.datagram_received(0, answer(sent[0].data, "10.0.0.1"), T0)
    assert {e.lookup for e in drain(r) if isinstance(e, Resolved)} == {first, second}


def test_nxdomain_ends_the_lookup_without_fallback() -> None:
    r = resolver(udp("a"), udp("b"))
    lid = r.lookup("nx.test", Want.IPV4, T0)
    (query,) = queries(drain(r))
    assert query.server == 0
    r.datagram_received(0, answer(query.data, rcode=dns.rcode.NXDOMAIN), T0)
    (failed,) = drain(r)
    assert isinstance(failed, Failed) and failed.lookup == lid and "NXDOMAIN" in failed.reason


def test_timeout_falls_back_to_the_next_server() -> None:
    r = resolver(udp("a"), udp("b"))
    lid = r.lookup("t.test", Want.IPV4, T0)
    assert [q.server for q in queries(drain(r))] == [0]
    assert r.get_timer() == T0 + QUERY_TIMEOUT
    r.handle_timer(T0 + QUERY_TIMEOUT)
    (query,) = queries(drain(r))
    assert query.server == 1
    r.datagram_received(1, answer(query.data, "10.0.0.9"), T0 + 5)
    assert drain(r) == [Resolved(lid, (ip("10.0.0.9"),))]


def test_timeout_with_one_answer_uses_it() -> None:
    r = resolver(udp("a"), udp("b"))
    lid = r.lookup("half.test", Want.BOTH, T0)
    a, _aaaa = queries(drain(r))
    r.datagram_received(0, answer(a.data, "10.0.0.1"), T0 + 1)
    assert drain(r) == []
    r.handle_timer(T0 + QUERY_TIMEOUT)
    assert drain(r) == [Resolved(lid, (ip("10.0.0.1"),))]


def test_all_servers_time_out() -> None:
    r = resolver(udp("a"), udp("b"))
    lid = r.lookup("t.test", Want.IPV4, T0)
    drain(r)
    r.handle_timer(T0 + QUERY_TIMEOUT)
    drain(r)
    r.handle_timer(T0 + 2 * QUERY_TIMEOUT)
    (failed,) = drain(r)
    assert isinstance(failed, Failed) and failed.lookup == lid
    assert "a: timed out" in failed.reason and "b: timed out" in failed.reason


def test_late_answer_is_still_cached() -> None:
    r = resolver(udp("a"), udp("b"))
    r.lookup("late.test", Want.IPV4, T0)
    (first,) = queries(drain(r))
    r.handle_timer(T0 + QUERY_TIMEOUT)
    drain(r)
    r.datagram_received(0, answer(first.data, "10.0.0.5"), T0 + 6)  # within 8 s of sending
    drain(r)
    lid = r.lookup("late.test", Want.IPV4, T0 + 7)
    assert drain(r) == [Resolved(lid, (ip("10.0.0.5"),))]


def test_expect_ips_filter_and_fall_back() -> None:
    ten = ipaddress.ip_network("10.0.0.0/8")
    r = resolver(udp("a", expect=lambda a: a in ten), udp("b"))
    lid = r.lookup("e.test", Want.IPV4, T0)
    (query,) = queries(drain(r))
    r.datagram_received(0, answer(query.data, "192.0.2.1", "10.1.1.1"), T0)
    assert drain(r) == [Resolved(lid, (ip("10.1.1.1"),))]  # only the matching one
    lid = r.lookup("f.test", Want.IPV4, T0)
    (query,) = queries(drain(r))
    r.datagram_received(0, answer(query.data, "192.0.2.1"), T0)
    (query,) = queries(drain(r))  # none matched: the next server is asked
    assert query.server == 1
    r.datagram_received(1, answer(query.data, "192.0.2.2"), T0)
    assert drain(r) == [Resolved(lid, (ip("192.0.2.2"),))]


def test_domains_choose_the_first_server() -> None:
    r = resolver(udp("a"), udp("b", domains=(("domain", "b.test"),)), udp("c"))
    assert r.order("x.b.test") == [1, 0, 2]
    assert r.order("x.c.test") == [0, 1, 2]
    r.lookup("www.b.test", Want.IPV4, T0)
    assert [q.server for q in queries(drain(r))] == [1]


def test_localhost_claims_local_names() -> None:
    r = resolver(udp("a"), ServerSpec("localhost", system=True))
    assert r.order("printer") == [1, 0]
    assert r.order("box.lan") == [1, 0]
    assert r.order("example.test") == [1, 0]
    assert r.order("example.com") == [0, 1]


def test_system_server_lookup_and_answer() -> None:
    r = resolver(ServerSpec("localhost", system=True), udp("b"))
    lid = r.lookup("host.example.com", Want.IPV4, T0)
    (event,) = drain(r)
    assert event == SystemLookup(lid, 0, "host.example.com", Want.IPV4)
    r.system_answer(lid, 0, [ip("10.0.0.1"), ip("::1")], T0)
    assert drain(r) == [Resolved(lid, (ip("10.0.0.1"),))]
    lid = r.lookup("gone.example.com", Want.IPV4, T0)
    drain(r)
    r.system_answer(lid, 0, [], T0)
    (failed,) = drain(r)
    assert isinstance(failed, Failed)  # the system said no: no fallback, as in 4.34


def test_no_servers_means_the_system_resolver() -> None:
    r = resolver()
    lid = r.lookup("x.example.com", Want.BOTH, T0)
    assert drain(r) == [SystemLookup(lid, 0, "x.example.com", Want.BOTH)]


def test_client_ip_adds_an_ecs_option() -> None:
    r = resolver(udp(client_ip=ip("203.0.113.77")), udp(client_ip=ip("2001:db8:1:2:3::9")))
    r.lookup("ecs.test", Want.IPV4, T0)
    (query,) = queries(drain(r))
    message = dns.message.from_wire(query.data)
    (option,) = message.options
    assert isinstance(option, dns.edns.ECSOption)
    assert (option.address, option.srclen, message.payload) == ("203.0.113.0", 24, 1350)
    plain = resolver(udp())
    plain.lookup("ecs.test", Want.IPV4, T0)
    (query,) = queries(drain(plain))
    assert dns.message.from_wire(query.data).edns < 0  # no EDNS without a clientIp


def test_foreign_and_mismatched_answers_are_dropped() -> None:
    r = resolver(udp())
    lid = r.lookup("m.test", Want.IPV4, T0)
    (query,) = queries(drain(r))
    q = dns.message.from_wire(query.data)
    wrong_id = dns.message.make_response(q)
    wrong_id.id = (q.id + 1) & 0xFFFF
    other = dns.message.make_query("other.test", "A")
    other.id = q.id
    other.flags |= dns.flags.QR
    not_a_response = dns.message.make_query("m.test", "A")
    not_a_response.id = q.id
    for data in (wrong_id.to_wire(), other.to_wire(), not_a_response.to_wire(), b"", b"\x00"):
        r.datagram_received(0, data, T0)
    assert drain(r) == []
    r.datagram_received(0, answer(query.data, "10.0.0.1"), T0)
    assert drain(r) == [Resolved(lid, (ip("10.0.0.1"),))]


def test_bad_names_fail_at_once() -> None:
    r = resolver(udp())
    for name in ("", ".", "a" * 64 + ".test", "x" * 300):
        lid = r.lookup(name, Want.IPV4, T0)
        (failed,) = drain(r)
        assert isinstance(failed, Failed) and failed.lookup == lid


def test_cancel_forgets_the_lookup() -> None:
    r = resolver(udp())
    lid = r.lookup("c.test", Want.IPV4, T0)
    drain(r)
    r.cancel(lid)
    r.handle_timer(T0 + QUERY_TIMEOUT)
    assert drain(r) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_datagrams_never_raise(data: bytes) -> None:
    r = resolver(udp())
    r.lookup("fuzz.test", Want.BOTH, T0)
    drain(r)
    r.datagram_received(0, data, T0)
    for event in drain(r):
        assert isinstance(event, Resolved | Failed)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=65535), st.binary(min_size=12, max_size=200))
def test_arbitrary_payload_with_the_right_id_never_raises(qid: int, rest: bytes) -> None:
    r = Resolver([udp()], NO_HOSTS, new_id=lambda: qid)
    r.lookup("fuzz.test", Want.IPV4, T0)
    drain(r)
    data = qid.to_bytes(2, "big") + bytes([0x81, 0x80]) + rest[4:]
    r.datagram_received(0, data, T0)
    drain(r)


# -- every lookup ends exactly once ------------------------------------------------------------

Step = tuple[str, int]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["lookup", "answer", "nxdomain", "empty", "garbage", "wait", "sys"]),
            st.integers(min_value=0, max_value=7),
        ),
        max_size=40,
    ),
    st.booleans(),
)
def test_every_lookup_ends_once(steps: list[Step], with_system: bool) -> None:
    """Whatever the servers answer (or not) and however time moves, each lookup ends in
    exactly one Resolved or Failed, and a timer is set while any is open."""
    ten = ipaddress.ip_network("10.0.0.0/8")
    servers = [udp("a", expect=lambda a: a in ten), udp("b", domains=(("domain", "n1.test"),))]
    if with_system:
        servers.append(ServerSpec("localhost", system=True))
    r = resolver(*servers, hosts=hosts(("full", "n0.test", "10.0.0.1")))
    now = T0
    started: set[int] = set()
    ended: list[int] = []
    sent: list[SendQuery] = []
    systems: list[SystemLookup] = []

    def collect() -> None:
        for event in drain(r):
            if isinstance(event, SendQuery):
                sent.append(event)
            elif isinstance(event, SystemLookup):
                systems.append(event)
            else:
                ended.append(event.lookup)

    for action, n in steps:
        if action == "lookup":
            started.add(r.lookup(f"n{n}.test", Want(n % 3 + 1), now))
        elif action in ("answer", "nxdomain", "empty", "garbage") and sent:
            query = sent.pop(n % len(sent))
            if action == "answer":
                data = answer(query.data, f"10.0.0.{n}", f"192.0.2.{n}", "2001:db8::1")
            elif action == "nxdomain":
                data = answer(query.data, rcode=dns.rcode.NXDOMAIN)
            elif action == "empty":
                data = answer(query.data)
            else:
                data = query.data[: n + 2]
            r.datagram_received(query.server, data, now)
        elif action == "sys" and systems:
            event = systems.pop(n % len(systems))
            r.system_answer(event.lookup, event.server, [ip(f"10.0.1.{n}")] if n % 2 else [], now)
        elif action == "wait":
            now += n
            timer = r.get_timer()
            if timer is not None and timer <= now:
                r.handle_timer(now)
        collect()
    for _ in range(1000):  # let every time-out pass
        timer = r.get_timer()
        if timer is None:
            break
        now = max(now, timer)
        r.handle_timer(now)
        collect()
    assert sorted(ended) == sorted(started)
    assert r._lookups == {} and r._waiting == {}  # nothing left behind


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dnspolicy, "MAX_CACHE", 3)
    r = resolver(udp())
    for n in range(5):
        r.lookup(f"n{n}.test", Want.IPV4, T0)
        (query,) = queries(drain(r))
        r.datagram_received(0, answer(query.data, f"10.0.0.{n}"), T0)
        drain(r)
    assert len(r.servers[0].cache) == 3
    r.lookup("n4.test", Want.IPV4, T0)
    assert queries(drain(r)) == []  # the newest are kept
    r.lookup("n0.test", Want.IPV4, T0)
    assert len(queries(drain(r))) == 1  # the oldest went


def test_records_of_another_class_are_not_addresses() -> None:
    """Found by fuzz/fuzz_dns.py: an A record of an unknown class is dnspython's
    GenericRdata (no ``address``); it must be skipped, not raise."""
    r = resolver(udp())
    lid = r.lookup("k.test", Want.IPV4, T0)
    (query,) = queries(drain(r))
    reply = dns.message.make_response(dns.message.from_wire(query.data))
    reply.answer.append(dns.rrset.from_text("k.test.", 60, "CLASS5", "A", r"\# 4 0a000001"))
    reply.answer.append(dns.rrset.from_text("k.test.", 60, "IN", "A", "10.0.0.2"))
    r.datagram_received(0, reply.to_wire(), T0)
    assert drain(r) == [Resolved(lid, (ip("10.0.0.2"),))]
