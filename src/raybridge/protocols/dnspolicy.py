"""The built-in DNS client's decisions, sans-IO (V2Ray 4.34's ``app/dns``).

What is decided here (docs/protocols.md 4.12):

* **static hosts** (``app/dns/hosts.go``): a name matched by ``hosts`` gets the mapped IPs (all
  matching entries, in match order), or an alias that is looked up in its turn (at most 5
  levels); a name that is mapped but has no IP of the asked family fails at once;
* **which servers, in which order** (``app/dns/dns.go`` ``sortClients``): the servers whose
  ``domains`` match the name first, in match order, then every other server in config order;
  a ``localhost`` server (the system resolver) also claims the local names (dotless names and
  ``local``, ``localdomain``, ``localhost``, ``lan``, ``home.arpa``, ``example``, ``invalid``,
  ``test``), as 4.34 does;
* **one server's answer** (``app/dns/nameserver_udp.go``, ``dnscommon.go``): an A and/or AAAA
  query, each with its own id, with EDNS client subnet (/24, /96) when a ``clientIp`` is set;
  the answer is cached per server for its smallest TTL (600 s when the TTL is 0, at most
  600 s), failures too; ``expectIPs`` keeps only matching addresses;
* **fallback** (``lookupIPInternal``, ``Client.QueryIP``): the next server is asked only when
  this one did not answer within :data:`QUERY_TIMEOUT` (4 s) or none of its addresses passed
  ``expectIPs``; an answer with an error code or without addresses ends the lookup.

:class:`Resolver` is fed ``now``, datagrams and the system resolver's answers, and hands out
events (datagrams to send, system lookups to make, finished lookups) and one timer, in the
style of :mod:`raybridge.protocols.reverse_policy`. Query ids come from an injected function.
The wire format is dnspython's.
"""

from __future__ import annotations

import heapq
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Literal

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: How long one server has to answer before the next is asked (``Client.QueryIP``).
QUERY_TIMEOUT = 4.0
#: How long a sent query waits for a late answer, which is still cached (``addPendingRequest``).
PENDING_LIFETIME = 8.0
#: Longest time an answer is cached; also the time for a TTL of 0 and for failures.
MAX_TTL = 600.0
#: Alias levels followed in ``hosts`` (``StaticHosts.Lookup``).
ALIAS_DEPTH = 5
#: Answers one server's cache holds (names x types); past it, expired ones go, then the
#: oldest (4.34's cache has no bound: a client naming random subdomains would grow it).
MAX_CACHE = 16384
#: EDNS0 UDP payload size announced with a client subnet (``genEDNS0Options``).
EDNS_PAYLOAD = 1350

MatchKind = Literal["full", "domain", "keyword", "regexp"]


class Want(IntFlag):
    """Which address families a lookup asks for (V2Ray's ``IPOption``)."""

    IPV4 = 1
    IPV6 = 2
    BOTH = 3


# --------------------------------------------------------------------------- matching


class DomainIndex:
    """Patterns with payloads, matched in V2Ray's ``strmatcher.MatcherGroup`` order: exact
    names first, then ``domain:`` suffixes from the longest (the deepest subdomain) to the
    shortest, then keywords and regexps in the order they were added."""

    def __init__(self) -> None:
        self._full: dict[str, list[int]] = {}
        self._suffix: dict[str, list[int]] = {}
        self._other: list[tuple[Callable[[str], bool], int]] = []

    def add(self, kind: MatchKind, pattern: str, payload: int) -> None:
        """``ValueError`` for a regexp that does not compile."""
        if kind == "full":
            self._full.setdefault(pattern, []).append(payload)
        elif kind == "domain":
            self._suffix.setdefault(pattern, []).append(payload)
        elif kind == "keyword":
            self._other.append((_keyword(pattern), payload))
        else:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regexp {pattern!r}: {exc}") from None
            self._other.append((_search(compiled), payload))

    def add_test(self, test: Callable[[str], bool], payload: int) -> None:
        """A compiled list of patterns (a geosite list): matched with the keywords."""
        self._other.append((test, payload))

    def match(self, name: str) -> list[int]:
        out = list(self._full.get(name, ()))
        if self._suffix and name:
            start = 0
            while True:
                out.extend(self._suffix.get(name[start:], ()))
                dot = name.find(".", start)
                if dot == -1:
                    break
                start = dot + 1
        out.extend(payload for test, payload in self._other if test(name))
        return out


def _keyword(text: str) -> Callable[[str], bool]:
    return lambda name: text in name


def _search(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda name: pattern.search(name) is not None


#: What a ``localhost`` server claims besides its own ``domains`` (``localTLDsAndDotlessDomains``).
LOCAL_NAMES: tuple[tuple[MatchKind, str], ...] = (
    ("regexp", r"^[^.]+$"),
    ("domain", "local"),
    ("domain", "localdomain"),
    ("domain", "localhost"),
    ("domain", "lan"),
    ("domain", "home.arpa"),
    ("domain", "example"),
    ("domain", "invalid"),
    ("domain", "test"),
)


# --------------------------------------------------------------------------- static hosts


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One ``hosts`` mapping, compiled: a pattern (or ``matcher``, a compiled list such
    as a geosite list, which then stands in for it) and either addresses or an alias."""

    kind: MatchKind
    pattern: str
    ips: tuple[IPAddress, ...] = ()
    alias: str | None = None
    matcher: Callable[[str], bool] | None = None


class StaticHosts:
    """``dns.hosts`` (``app/dns/hosts.go``)."""

    def __init__(self, entries: Iterable[HostEntry]) -> None:
        self._index = DomainIndex()
        self._values: list[tuple[IPAddress | str, ...]] = []
        for entry in entries:
            values: tuple[IPAddress | str, ...]
            if entry.alias is not None:
                values = (entry.alias,)
            else:
                values = entry.ips
                if values == (ipaddress.IPv4Address("127.0.0.1"),):
                    # 4.34 adds ::1 to a mapping of just 127.0.0.1.
                    values = (*values, ipaddress.IPv6Address("::1"))
            if entry.matcher is not None:
                self._index.add_test(entry.matcher, len(self._values))
            else:
                self._index.add(entry.kind, entry.pattern, len(self._values))
            self._values.append(values)

    def lookup(self, name: str, want: Want) -> list[IPAddress] | str | None:
        """``None``: not mapped; a list: the mapped addresses of the wanted families (empty:
        mapped, but to none of them); a string: an alias to look up instead."""
        return self._lookup(name, want, ALIAS_DEPTH)

    def _lookup(self, name: str, want: Want, depth: int) -> list[IPAddress] | str | None:
        found: list[IPAddress | str] = []
        for i in self._index.match(name):
            found.extend(self._values[i])
        if not found:
            return None
        if len(found) == 1 and isinstance(found[0], str):
            alias = found[0]
            if depth > 0:
                unwrapped = self._lookup(alias, want, depth - 1)
                if unwrapped is not None:
                    return unwrapped
            return alias
        return [ip for ip in found if not isinstance(ip, str) and _wanted(ip, want)]


def _wanted(ip: IPAddress, want: Want) -> bool:
    return bool(want & (Want.IPV4 if ip.version == 4 else Want.IPV6))


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One name server. ``system``: the system resolver (``"localhost"``), else plain UDP
    DNS to ``address`` (an IP or a name) and ``port``. ``domains``: (kind, pattern) it is
    asked first for, and ``domain_sets`` compiled lists of them (geosite lists);
    ``expect``: the addresses it may answer (``None``: any)."""

    name: str
    system: bool = False
    domains: tuple[tuple[MatchKind, str], ...] = ()
    domain_sets: tuple[Callable[[str], bool], ...] = ()
    expect: Callable[[IPAddress], bool] | None = None
    client_ip: IPAddress | None = None


@dataclass(slots=True)
class _Record:
    ips: list[IPAddress]
    rcode: int
    expire: float


@dataclass(slots=True)
class _Pending:
    fqdn: str
    qname: dns.name.Name
    rdtype: int
    expire: float


# Plain ints for the flags: IntFlag's own "&" costs a few microseconds a lookup.
_TYPES = (
    (int(Want.IPV4), dns.rdatatype.RdataType.A),
    (int(Want.IPV6), dns.rdatatype.RdataType.AAAA),
)


class _ServerState:
    """A UDP server's cache and queries in flight (``ClassicNameServer``)."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.cache: dict[tuple[str, int], _Record] = {}
        self.pending: dict[int, _Pending] = {}
        self.inflight: dict[tuple[str, int], int] = {}

    def fresh(self, fqdn: str, rdtype: int, now: float) -> _Record | None:
        record = self.cache.get((fqdn, rdtype))
        if record is None:
            return None
        if record.expire <= now:
            del self.cache[(fqdn, rdtype)]
            return None
        return record

    def store(self, key: tuple[str, int], record: _Record, now: float) -> None:
        """Cache an answer. Expired answers are dropped when read, or here when the cache is
        full (then the oldest too), never by a scan per timer."""
        cache = self.cache
        cache.pop(key, None)  # re-inserted last: the newest
        if len(cache) >= MAX_CACHE:
            for old in [k for k, r in cache.items() if r.expire <= now]:
                del cache[old]
            while len(cache) >= MAX_CACHE:
                del cache[next(iter(cache))]
        cache[key] = record

    def prune(self, now: float) -> None:
        """Forget queries that had their time for a late answer. They expire in the order
        they were sent (``now`` never goes back), which is the dict's order."""
        pending = self.pending
        while pending:
            qid, query = next(iter(pending.items()))
            if query.expire > now:
                break
            del pending[qid]
            if self.inflight.get((query.fqdn, query.rdtype)) == qid:
                del self.inflight[(query.fqdn, query.rdtype)]

    def next_expiry(self) -> float | None:
        for query in self.pending.values():
            return query.expire
        return None


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SendQuery:
    """Send ``data`` (one DNS query) to server ``server``."""

    server: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SystemLookup:
    """Ask the system resolver for ``name`` and report with :meth:`Resolver.system_answer`."""

    lookup: int
    server: int
    name: str
    want: Want


@dataclass(frozen=True, slots=True)
class Resolved:
    lookup: int
    ips: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    lookup: int
    reason: str


Event = SendQuery | SystemLookup | Resolved | Failed


@dataclass(slots=True)
class _Lookup:
    id: int
    name: str
    want: Want
    order: list[int] = field(default_factory=list)
    position: int = -1
    deadline: float | None = None
    errors: list[str] = field(default_factory=list)
    system_ips: list[IPAddress] | None = None
    bits: int = 0  # int(want)

    def __post_init__(self) -> None:
        self.bits = int(self.want)


# --------------------------------------------------------------------------- the resolver


class Resolver:
    """Static hosts, then the servers in the order their ``domains`` give (see the module
    docstring). ``new_id()`` gives query ids (0..65535; one in use is drawn again).

    Use: :meth:`lookup` starts a lookup and returns its id; feed :meth:`datagram_received`,
    :meth:`system_answer` and :meth:`handle_timer` (at :meth:`get_timer`); after each call,
    drain :meth:`next_event`. Every lookup ends in exactly one :class:`Resolved` or
    :class:`Failed` (unless cancelled)."""

    def __init__(
        self,
        servers: Sequence[ServerSpec],
        hosts: StaticHosts,
        *,
        new_id: Callable[[], int],
        timeout: float = QUERY_TIMEOUT,
    ) -> None:
        self.hosts = hosts
        self.servers = [_ServerState(s) for s in servers]
        if not self.servers:
            self.servers.append(_ServerState(ServerSpec("localhost", system=True)))
        self._new_id = new_id
        self._timeout = timeout
        self._index = DomainIndex()
        for i, state in enumerate(self.servers):
            domains = state.spec.domains
            if state.spec.system:
                domains = (*domains, *LOCAL_NAMES)
            for kind, pattern in domains:
                self._index.add(kind, pattern, i)
            for test in state.spec.domain_sets:
                self._index.add_test(test, i)
        self._lookups: dict[int, _Lookup] = {}
        #: Lookups waiting at a UDP server for a name's answers: (server, fqdn) -> ids.
        self._waiting: dict[tuple[int, str], set[int]] = {}
        #: (deadline, lookup, position): a heap; an entry whose lookup moved on is stale.
        self._deadlines: list[tuple[float, int, int]] = []
        self._next_lookup = 0
        self._events: list[Event] = []

    # -- input ---------------------------------------------------------------------------

    def lookup(self, name: str, want: Want, now: float) -> int:
        """Start looking ``name`` up; the id names its :class:`Resolved`/:class:`Failed`."""
        self._next_lookup += 1
        lid = self._next_lookup
        if name.endswith("."):
            name = name[:-1]
        if not name:
            self._events.append(Failed(lid, "empty domain name"))
            return lid
        mapped = self.hosts.lookup(name, want)
        if isinstance(mapped, list):
            if mapped:
                self._events.append(Resolved(lid, tuple(mapped)))
            else:
                self._events.append(Failed(lid, f"{name}: hosts maps it to no such address"))
            return lid
        if isinstance(mapped, str):
            name = mapped  # an alias: the servers are asked for it
        problem = _name_problem(name)
        if problem is not None:
            self._events.append(Failed(lid, f"{name!r} is not a domain name: {problem}"))
            return lid
        state = _Lookup(lid, name, want, order=self.order(name))
        self._lookups[lid] = state
        self._advance(state, now)
        return lid

    def cancel(self, lookup: int) -> None:
        state = self._lookups.pop(lookup, None)
        if state is not None:
            self._unpark(state)

    def order(self, name: str) -> list[int]:
        """Server indexes in the order they are asked for ``name``."""
        out: list[int] = []
        for i in self._index.match(name):
            if i not in out:
                out.append(i)
        out.extend(i for i in range(len(self.servers)) if i not in out)
        return out

    def datagram_received(self, server: int, data: bytes, now: float) -> None:
        """A datagram from server ``server``; anything that is not the answer to a query in
        flight there is dropped."""
        state = self.servers[server]
        try:
            message = dns.message.from_wire(data, ignore_trailing=True)
        except Exception:  # dnspython raises many types on malformed input
            return
        pending = state.pending.get(message.id)
        if pending is None or not message.flags & dns.flags.QR:
            return
        if message.question:
            question = message.question[0]
            if question.rdtype != pending.rdtype or question.name != pending.qname:
                return
        del state.pending[message.id]
        key = (pending.fqdn, pending.rdtype)
        if state.inflight.get(key) == message.id:
            del state.inflight[key]
        ttl = MAX_TTL
        ips: list[IPAddress] = []
        for rrset in message.answer:
            if rrset.ttl > 0:
                ttl = min(ttl, float(rrset.ttl))
            if rrset.rdtype == pending.rdtype and rrset.rdclass == dns.rdataclass.IN:
                for rdata in rrset:
                    address = getattr(rdata, "address", None)  # absent in a malformed record
                    if not isinstance(address, str):
                        continue
                    try:
                        ip = ipaddress.ip_address(address)
                    except ValueError:
                        continue
                    if ip not in ips:
                        ips.append(ip)
        state.store(key, _Record(ips, message.rcode(), now + ttl), now)
        for lid in list(self._waiting.get((server, pending.fqdn), ())):
            lookup = self._lookups.get(lid)
            if lookup is not None:
                self._check(lookup, now, final=False)

    def system_answer(self, lookup: int, server: int, ips: Sequence[IPAddress], now: float) -> None:
        """The system resolver's addresses for a :class:`SystemLookup` (empty: it failed)."""
        state = self._lookups.get(lookup)
        if state is None or state.position < 0 or state.order[state.position] != server:
            return  # late: the lookup timed out there and moved on
        state.system_ips = [ip for ip in ips if _wanted(ip, state.want)]
        self._check(state, now, final=True)

    def handle_timer(self, now: float) -> None:
        for state in self.servers:
            state.prune(now)
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, lid, position = heapq.heappop(heap)
            lookup = self._lookups.get(lid)
            if lookup is not None and lookup.position == position:
                self._check(lookup, now, final=True)

    # -- output --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        heap = self._deadlines
        while heap:
            _, lid, position = heap[0]
            lookup = self._lookups.get(lid)
            if lookup is not None and lookup.position == position:
                break
            heapq.heappop(heap)  # stale: that lookup ended or moved on
        times = [heap[0][0]] if heap else []
        times.extend(t for s in self.servers if (t := s.next_expiry()) is not None)
        return min(times) if times else None

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    # -- the lookup machine --------------------------------------------------------------

    def _park(self, lookup: _Lookup) -> None:
        index = lookup.order[lookup.position]
        if not self.servers[index].spec.system:
            self._waiting.setdefault((index, lookup.name + "."), set()).add(lookup.id)

    def _unpark(self, lookup: _Lookup) -> None:
        if 0 <= lookup.position < len(lookup.order):
            key = (lookup.order[lookup.position], lookup.name + ".")
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.discard(lookup.id)
                if not waiting:
                    del self._waiting[key]

    def _advance(self, lookup: _Lookup, now: float) -> None:
        """Go on with the next server (or fail when none is left)."""
        self._unpark(lookup)
        lookup.position += 1
        lookup.deadline = None
        lookup.system_ips = None
        if lookup.position >= len(lookup.order):
            self._lookups.pop(lookup.id, None)
            reasons = "; ".join(lookup.errors) or "no name server"
            self._events.append(Failed(lookup.id, f"{lookup.name}: {reasons}"))
            return
        index = lookup.order[lookup.position]
        server = self.servers[index]
        lookup.deadline = now + self._timeout
        heapq.heappush(self._deadlines, (lookup.deadline, lookup.id, lookup.position))
        self._park(lookup)
        if server.spec.system:
            self._events.append(SystemLookup(lookup.id, index, lookup.name, lookup.want))
            return
        fqdn = lookup.name + "."
        for flag, rdtype in _TYPES:
            if not lookup.bits & flag or server.fresh(fqdn, rdtype, now) is not None:
                continue
            if (fqdn, rdtype) in server.inflight:
                continue  # someone asked already: wait for that answer
            self._query(index, fqdn, rdtype, now)
        self._check(lookup, now, final=False)

    def _query(self, index: int, fqdn: str, rdtype: dns.rdatatype.RdataType, now: float) -> None:
        server = self.servers[index]
        query = _make_query(fqdn, rdtype, server.spec.client_ip)
        for _ in range(64):
            qid = self._new_id() & 0xFFFF
            if qid not in server.pending:
                break
        else:
            return  # 64 ids in a row in use: give up on this one (the lookup times out)
        query.id = qid
        qname = query.question[0].name
        server.pending[qid] = _Pending(fqdn, qname, rdtype, now + PENDING_LIFETIME)
        server.inflight[(fqdn, rdtype)] = qid
        self._events.append(SendQuery(index, query.to_wire()))

    def _check(self, lookup: _Lookup, now: float, *, final: bool) -> None:
        """Decide at the current server if its answers (or ``final``: the time-out or the
        system resolver's answer) are enough."""
        index = lookup.order[lookup.position]
        server = self.servers[index]
        name = server.spec.name
        if server.spec.system:
            if not final:
                return
            ips = lookup.system_ips
            if ips is None:  # the time-out
                lookup.errors.append(f"{name}: timed out")
                self._advance(lookup, now)
            elif not ips:
                self._fail(lookup, f"{name}: no address")
            else:
                self._found(lookup, server.spec, ips, now)
            return
        fqdn = lookup.name + "."
        ips = []
        missing = False
        rcode: int = dns.rcode.NOERROR
        for flag, rdtype in _TYPES:
            if not lookup.bits & flag:
                continue
            record = server.fresh(fqdn, rdtype, now)
            if record is None:
                missing = True
            elif record.rcode != dns.rcode.NOERROR:
                rcode = record.rcode
            else:
                ips.extend(record.ips)
        if missing and not final:
            return  # wait for the other answer, or the time-out
        if ips:
            self._found(lookup, server.spec, ips, now)
        elif missing:
            lookup.errors.append(f"{name}: timed out")
            self._advance(lookup, now)
        elif rcode != dns.rcode.NOERROR:
            self._fail(lookup, f"{name}: {dns.rcode.to_text(dns.rcode.Rcode(rcode))}")
        else:
            self._fail(lookup, f"{name}: no address")

    def _found(self, lookup: _Lookup, spec: ServerSpec, ips: list[IPAddress], now: float) -> None:
        if spec.expect is not None:
            ips = [ip for ip in ips if spec.expect(ip)]
            if not ips:
                lookup.errors.append(f"{spec.name}: no address passed expectIPs")
                self._advance(lookup, now)
                return
        self._lookups.pop(lookup.id, None)
        self._unpark(lookup)
        self._events.append(Resolved(lookup.id, tuple(ips)))

    def _fail(self, lookup: _Lookup, reason: str) -> None:
        self._lookups.pop(lookup.id, None)
        self._unpark(lookup)
        self._events.append(Failed(lookup.id, f"{lookup.name}: {reason}"))


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be put in a query (``None``: it can). Plain ASCII names are
    checked here; anything else (IDNA, escapes) by dnspython."""
    if name.isascii() and "\\" not in name and len(name) <= 253:
        labels = name.split(".")
        if all(0 < len(label) <= 63 for label in labels):
            return None
    try:
        dns.name.from_text(name + ".")
    except dns.exception.DNSException as exc:
        return str(exc)
    return None


def _make_query(
    fqdn: str, rdtype: dns.rdatatype.RdataType, client_ip: IPAddress | None
) -> dns.message.QueryMessage:
    if client_ip is None:
        return dns.message.make_query(fqdn, rdtype)
    prefix = 24 if client_ip.version == 4 else 96
    option = dns.edns.ECSOption(str(client_ip), prefix)
    return dns.message.make_query(fqdn, rdtype, use_edns=0, payload=EDNS_PAYLOAD, options=[option])
