"""The domain and IP matchers of routing rules, and the geo lists that feed them.

A rule's ``domain`` list compiles into a :class:`DomainMatcher`, its ``ip``/``source`` lists
into an :class:`IPMatcher`. Each is a few compiled parts: the rule's own patterns, plus one
shared part per ``geosite:``/``geoip:``/``ext:`` list it names. A part answers in time that
does not grow with its size (docs/protocols.md 4.11):

* ``full`` and ``domain`` entries are two sets; a name is looked up whole and then once per
  label suffix (``a.b.c``: ``a.b.c``, ``b.c``, ``c``), so O(labels), whatever the list size;
* keywords (V2Ray's ``Plain``, substrings) are folded into one regular expression shaped as
  a trie of the keywords (``go(?:ogle|v)``): one pass of ``re``'s C loop over the name,
  where a loop of ``in`` tests grows with the number of keywords (measured with 400
  keywords: 4 us against 37 us a name);
* regular expressions are one compiled alternation;
* CIDRs become merged, sorted ``[first, last]`` ranges per address family, searched with
  ``bisect`` (O(log n)).

The geo lists come from V2Ray's ``geosite.dat``/``geoip.dat`` (:mod:`raybridge.protocols.geodata`
reads them), found as :func:`asset_dirs` says. A :class:`GeoAssets` maps each file once
and reads only the lists asked for; built lists are shared (weakly cached) by every matcher
that names them, in the routing rules or elsewhere (``dns.hosts``), while any is alive.
"""

from __future__ import annotations

import ipaddress
import mmap
import os
import re
import weakref
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

from raybridge.address import IPAddress
from raybridge.errors import ConfigError
from raybridge.protocols import geodata
from raybridge.protocols.geodata import DOMAIN, FULL, PLAIN, REGEX, Buffer, GeoDataError

# Private, loopback, link-local, CGNAT, multicast and other reserved ranges: what V2Ray's
# geoip.dat lists under "private".
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/3",
        "::/127",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)

#: System directories searched after the first one, in V2Ray 4.34's order
#: (``common/platform/others.go``).
SYSTEM_ASSET_DIRS = ("/usr/local/share/v2ray", "/usr/share/v2ray")
#: The environment variables naming the first directory (V2Ray reads both spellings).
ASSET_ENV = ("v2ray.location.asset", "V2RAY_LOCATION_ASSET")

Where = Callable[[str], ConfigError]
T = TypeVar("T")


def is_private(ip: IPAddress) -> bool:
    """In one of the ``geoip:private`` ranges (loopback, RFC 1918, link-local, ...)."""
    return any(ip in net for net in PRIVATE_NETWORKS if net.version == ip.version)


# ---------------------------------------------------------------------------- domains


_Trie = dict[str, "_Trie"]


def _trie_regexp(keywords: Iterable[str]) -> str:
    """A regular expression matching any of ``keywords``, shaped as their trie."""
    root: _Trie = {}
    for keyword in keywords:
        node = root
        for char in keyword:
            node = node.setdefault(char, {})
        node[""] = {}  # end of a keyword

    def pattern(node: _Trie) -> str:
        if "" in node:
            return ""  # a keyword ends here: for a search, its extensions add nothing
        branches = [re.escape(char) + pattern(child) for char, child in sorted(node.items())]
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return pattern(root)


class DomainSet:
    """One compiled list of domain entries (a rule's own patterns, or one geosite list).

    Matching is case-sensitive, as in V2Ray (``app/router/condition.go``, ``common/strmatcher``).
    """

    __slots__ = ("__weakref__", "full", "keyword", "regexp", "size", "suffixes")

    def __init__(self, entries: Iterable[tuple[int, str]]) -> None:
        """``entries``: ``(type, value)`` with geodata's PLAIN/REGEX/DOMAIN/FULL types.
        Raises ValueError naming a bad regular expression or an unknown type."""
        self.full: set[str] = set()
        self.suffixes: set[str] = set()
        keywords: set[str] = set()
        regexps: list[str] = []
        size = 0
        for kind, value in entries:
            size += 1
            if kind == DOMAIN:
                self.suffixes.add(value)
            elif kind == FULL:
                self.full.add(value)
            elif kind == PLAIN:
                keywords.add(value)
            elif kind == REGEX:
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ValueError(f"invalid regexp {value!r}: {exc}") from None
                regexps.append(value)
            else:
                raise ValueError(f"unknown domain type {kind} (value {value!r})")
        self.size = size
        self.keyword = re.compile(_trie_regexp(keywords)) if keywords else None
        self.regexp = re.compile("|".join(f"(?:{r})" for r in regexps)) if regexps else None

    def __call__(self, domain: str) -> bool:
        if domain in self.full:
            return True
        suffixes = self.suffixes
        if suffixes:
            if domain in suffixes:
                return True
            dot = domain.find(".")
            while dot != -1:
                if domain[dot + 1 :] in suffixes:
                    return True
                dot = domain.find(".", dot + 1)
        if self.keyword is not None and self.keyword.search(domain) is not None:
            return True
        return self.regexp is not None and self.regexp.search(domain) is not None


def _literal_domains(patterns: Iterable[str]) -> Iterator[tuple[int, str]]:
    """The ``(type, value)`` entries of a rule's own domain patterns (not geo lists)."""
    for pattern in patterns:
        kind, sep, value = pattern.partition(":")
        if not sep:
            yield PLAIN, pattern
        elif kind == "full":
            yield FULL, value
        elif kind == "domain":
            yield DOMAIN, value
        elif kind == "keyword":
            yield PLAIN, value
        elif kind == "regexp":
            yield REGEX, value
        elif kind == "dotless":
            # dotless: a name without dots; dotless:x a name without dots containing x.
            yield REGEX, r"^[^.]*" + re.escape(value) + r"[^.]*$"
        else:
            # V2Ray treats an unknown prefix like a plain keyword of the whole string.
            yield PLAIN, pattern


def _geo_reference(pattern: str, kinds: tuple[str, ...], default: str) -> tuple[str, str] | None:
    """``(file, list)`` for ``geosite:LIST`` / ``geoip:LIST`` (``default`` file) or
    ``ext:FILE:LIST`` and the qualified ``ext-domain:``/``ext-ip:`` (``infra/conf/router.go``);
    None for any other pattern. Raises ValueError for a malformed reference."""
    kind, sep, rest = pattern.partition(":")
    if not sep or kind not in kinds:
        return None
    if kind in ("geosite", "geoip"):
        if not rest:
            raise ValueError("empty list name")
        return default, rest
    parts = rest.split(":")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"an external list is written {kind}:FILE:LIST")
    return parts[0], parts[1]


class _Parts(Generic[T]):
    """A matcher made of parts: it matches what any part matches."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[Callable[[T], bool]] = []

    def add(self, part: Callable[[T], bool]) -> None:
        if part not in self.parts:
            self.parts.append(part)

    def __call__(self, value: T) -> bool:
        # A plain loop: any() over a generator costs more than the usual one or two parts.
        for part in self.parts:  # noqa: SIM110
            if part(value):
                return True
        return False

    def __len__(self) -> int:
        """The number of entries matched against (a list's domains, a rule's patterns)."""
        return sum(getattr(part, "size", 1) for part in self.parts)


class DomainMatcher(_Parts[str]):
    """All domain patterns of one rule (or of one ``dns.hosts`` key), compiled.

    ``full:x`` exact, ``domain:x`` x or a subdomain, ``regexp:re`` an unanchored search,
    ``keyword:x`` and a bare string a substring, ``dotless:``; ``geosite:LIST[@attr...]``
    and ``ext:FILE:LIST[@attr...]`` (``ext-domain:``) the entries of a geosite list.
    """

    __slots__ = ()

    def __init__(
        self,
        patterns: Iterable[str],
        where: Where,
        assets: GeoAssets | None = None,
    ) -> None:
        super().__init__()
        literal: list[str] = []
        for pattern in patterns:
            try:
                reference = _geo_reference(pattern, ("geosite", "ext", "ext-domain"), "geosite.dat")
            except ValueError as exc:
                raise where(f"{pattern!r}: {exc}") from None
            if reference is None:
                literal.append(pattern)
                continue
            file, name = reference
            try:
                self.add((assets or GeoAssets()).geosite(file, name))
            except ConfigError as exc:
                raise where(f"{pattern!r}: {exc.message}") from None
        if literal:
            try:
                self.parts.insert(0, DomainSet(_literal_domains(literal)))
            except ValueError as exc:
                raise where(str(exc)) from None


# ---------------------------------------------------------------------------- IPs


def _merged(ranges: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    ranges.sort()
    starts: list[int] = []
    ends: list[int] = []
    for first, last in ranges:
        if ends and first <= ends[-1] + 1:
            ends[-1] = max(ends[-1], last)
        else:
            starts.append(first)
            ends.append(last)
    return starts, ends


class IPRanges:
    """One compiled list of CIDRs: merged ``[first, last]`` ranges per family, bisected."""

    __slots__ = ("__weakref__", "size", "v4_ends", "v4_starts", "v6_ends", "v6_starts")

    def __init__(self, cidrs: Iterable[tuple[int, int, int]]) -> None:
        """``cidrs``: ``(version, network address as int, prefix length)``, prefix in range."""
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        size = 0
        for version, address, prefix in cidrs:
            size += 1
            bits = 32 if version == 4 else 128
            span = (1 << (bits - prefix)) - 1
            first = address & ~span & ((1 << bits) - 1)
            (v4 if version == 4 else v6).append((first, first | span))
        self.size = size
        starts, ends = _merged(v4)
        # IPv4 bounds fit machine words: an array holds 10,000 in 80 KB, a list of ints 400 KB.
        self.v4_starts = array("L", starts)
        self.v4_ends = array("L", ends)
        self.v6_starts, self.v6_ends = _merged(v6)

    def __call__(self, ip: IPAddress) -> bool:
        value = int(ip)
        if ip.version == 4:
            i = bisect_right(self.v4_starts, value) - 1
            return i >= 0 and value <= self.v4_ends[i]
        i = bisect_right(self.v6_starts, value) - 1
        return i >= 0 and value <= self.v6_ends[i]


class IPMatcher(_Parts[IPAddress]):
    """The IP patterns of one rule: CIDRs, bare IPs, ``geoip:private`` (built in),
    ``geoip:CC`` and ``ext:FILE:CC`` (``ext-ip:``) lists of a geoip file."""

    __slots__ = ()

    def __init__(
        self, patterns: Iterable[str], where: Where, assets: GeoAssets | None = None
    ) -> None:
        super().__init__()
        literal: list[tuple[int, int, int]] = []
        for pattern in patterns:
            if pattern.lower() == "geoip:private":
                literal.extend(
                    (n.version, int(n.network_address), n.prefixlen) for n in PRIVATE_NETWORKS
                )
                continue
            try:
                reference = _geo_reference(pattern, ("geoip", "ext", "ext-ip"), "geoip.dat")
            except ValueError as exc:
                raise where(f"{pattern!r}: {exc}") from None
            if reference is not None:
                file, code = reference
                if code.startswith("!"):
                    raise where(
                        f"{pattern!r}: V2Ray 4.34 has no negated geoip lists (a later "
                        "V2Ray's geoip:!CC); route the other addresses with a rule after it"
                    )
                try:
                    self.add((assets or GeoAssets()).geoip(file, code))
                except ConfigError as exc:
                    raise where(f"{pattern!r}: {exc.message}") from None
                continue
            try:
                net = ipaddress.ip_network(pattern, strict=False)
            except ValueError:
                raise where(f"invalid IP or CIDR {pattern!r}") from None
            literal.append((net.version, int(net.network_address), net.prefixlen))
        if literal:
            self.parts.insert(0, IPRanges(literal))


# ---------------------------------------------------------------------------- geo files


def asset_dirs(
    config_file: str | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Where ``.dat`` files are looked for, in order (docs/protocols.md 4.11).

    First the directory named by ``v2ray.location.asset`` or ``V2RAY_LOCATION_ASSET`` (the
    first one set, even if empty, as V2Ray reads it), else the directory of the config
    file (the working directory for a config with no file), where V2Ray would look next
    to its executable; then /usr/local/share/v2ray and /usr/share/v2ray.
    """
    env = os.environ if environ is None else environ
    first: str | None = None
    for name in ASSET_ENV:
        if name in env:
            first = env[name]
            break
    if first is None:
        if config_file and os.path.isfile(config_file):
            first = os.path.dirname(os.path.abspath(config_file))
        else:
            first = os.getcwd()
    return [first, *SYSTEM_ASSET_DIRS]


def _join(directory: str, file: str) -> str:
    # As Go's filepath.Join: the file name is always under the directory, even "/x.dat".
    return os.path.normpath(os.path.join(directory or ".", file.lstrip("/")))


class _DatFile:
    """One mapped ``.dat`` file and the index of its lists."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.data: Buffer = b""
        self._map: mmap.mmap | None = None
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size:
                    self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    self.data = self._map
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        self._index: dict[str, geodata.Span] | None = None

    def span(self, name: str, what: str) -> geodata.Span:
        try:
            if self._index is None:
                self._index = geodata.index_entries(self.data)
            index = self._index
        except GeoDataError as exc:
            raise ConfigError(f"{self.path} is not a valid {what} file: {exc}") from None
        span = index.get(name.upper())
        if span is None:
            names = sorted(index)
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ConfigError(
                f"no list {name.upper()!r} in {self.path} ({len(names)} lists: {shown or 'none'})"
            )
        return span

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self.data = b""


_Key = tuple[str, int, int, int, str, str, tuple[str, ...]]
#: Built lists by (path, inode, size, mtime, kind, list, attributes): shared while in use.
_built: weakref.WeakValueDictionary[_Key, DomainSet | IPRanges] = weakref.WeakValueDictionary()


class GeoAssets:
    """Finds ``.dat`` files in ``dirs`` and builds their lists; each file is opened once
    while this object is open (``close()`` or ``with``), and only the lists asked for are
    decoded. The lists built are cached by file identity, so another ``GeoAssets`` asking
    for the same list of the same, unchanged file gets the same object."""

    def __init__(self, dirs: Sequence[str] | None = None) -> None:
        self.dirs = list(asset_dirs() if dirs is None else dirs)
        self._files: dict[str, _DatFile] = {}

    def near(self, config_file: str | None) -> GeoAssets:
        """The same open files, looked for as :func:`asset_dirs` says for ``config_file``."""
        other = GeoAssets(asset_dirs(config_file))
        other._files = self._files
        return other

    def __enter__(self) -> GeoAssets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()

    def find(self, file: str) -> tuple[str, os.stat_result]:
        """The path of ``file`` in the first directory that has it, and its stat."""
        tried: list[str] = []
        for directory in self.dirs:
            path = _join(directory, file)
            try:
                return path, os.stat(path)
            except FileNotFoundError:
                tried.append(path)
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        raise ConfigError(
            f"{file} not found: looked in {', '.join(tried)} (set V2RAY_LOCATION_ASSET "
            "to the directory that holds it)"
        )

    def _file(self, path: str) -> _DatFile:
        dat = self._files.get(path)
        if dat is None:
            dat = self._files[path] = _DatFile(path)
        return dat

    def geosite(self, file: str, name: str) -> DomainSet:
        """The domains of list ``name`` (``LIST@attr@attr``: only the entries that have
        every one of the attributes, compared without case) of geosite file ``file``."""
        base, *attr_parts = name.split("@")
        base = base.strip()
        if not base:
            raise ConfigError("empty list name")
        attrs = tuple(sorted({a.strip().lower() for a in attr_parts} - {""}))
        path, st = self.find(file)
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns, "site", base.upper(), attrs)
        built = _built.get(key)
        if isinstance(built, DomainSet):
            return built
        dat = self._file(path)
        span = dat.span(base, "geosite")
        # Streamed from the file into the sets: no list of 100,000 entries in between.
        domains: Iterable[geodata.Domain] = geodata.read_domains(dat.data, span)
        if attrs:
            wanted = set(attrs)
            domains = (d for d in domains if wanted <= {a.key.lower() for a in d.attributes})
        try:
            site = DomainSet((d.type, d.value) for d in domains)
        except GeoDataError as exc:
            raise ConfigError(f"list {base.upper()!r} in {path} is malformed: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"list {base.upper()!r} in {path}: {exc}") from None
        if attrs and not site.size:
            # V2Ray 4.34 goes on with an empty list (and so drops the condition from the
            # rule, which then matches more); a list that selects nothing is an error here.
            raise ConfigError(
                f"no entry of list {base.upper()!r} in {path} has the attribute(s) "
                + " ".join("@" + a for a in attrs)
            )
        _built[key] = site
        return site

    def geoip(self, file: str, code: str) -> IPRanges:
        """The CIDRs of list ``code`` of geoip file ``file``."""
        path, st = self.find(file)
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns, "ip", code.upper(), ())
        built = _built.get(key)
        if isinstance(built, IPRanges):
            return built
        dat = self._file(path)
        span = dat.span(code, "geoip")
        cidrs: list[tuple[int, int, int]] = []
        try:
            for cidr in geodata.read_cidrs(dat.data, span):
                version = 4 if len(cidr.ip) == 4 else 6 if len(cidr.ip) == 16 else 0
                bits = 32 if version == 4 else 128
                if not version or cidr.prefix > bits:
                    raise GeoDataError(f"bad CIDR {cidr.ip.hex()}/{cidr.prefix}")
                cidrs.append((version, int.from_bytes(cidr.ip, "big"), cidr.prefix))
        except GeoDataError as exc:
            raise ConfigError(f"list {code.upper()!r} in {path} is malformed: {exc}") from None
        ranges = IPRanges(cidrs)
        _built[key] = ranges
        return ranges


def load_geosite(
    name: str,
    attrs: Sequence[str] = (),
    locations: Sequence[str] | None = None,
    *,
    file: str = "geosite.dat",
) -> DomainMatcher:
    """The matcher of geosite list ``name`` (with ``attrs``: only its entries having all of
    them) from ``file`` in ``locations`` (default: :func:`asset_dirs`). Raises ConfigError
    (without a location: the caller adds its own) for a missing file or list."""
    matcher = DomainMatcher((), ConfigError)
    with GeoAssets(locations) as assets:
        matcher.add(assets.geosite(file, "@".join([name, *attrs])))
    return matcher


def load_geoip(
    code: str, locations: Sequence[str] | None = None, *, file: str = "geoip.dat"
) -> IPMatcher:
    """The matcher of geoip list ``code`` from ``file`` in ``locations``."""
    matcher = IPMatcher((), ConfigError)
    with GeoAssets(locations) as assets:
        matcher.add(assets.geoip(file, code))
    return matcher
