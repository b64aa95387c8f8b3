"""Reading config files and merging several of them the way V2Ray 4.34 does.

``v2ray -config a.json -config b.json`` (``main/jsonem/jsonem.go``): the first file is
taken whole; every later file is applied with ``Config.Override`` (``infra/conf/v2ray.go``):

* ``log``, ``routing``, ``dns``, ``transport``, ``policy``, ``api``, ``stats``, ``reverse``
  (and raybridge's own sections): a later file's section replaces the earlier one whole;
* legacy ``inbound`` / ``outbound`` / ``inboundDetour`` / ``outboundDetour``: replaced whole
  (an empty ``inboundDetour: []`` does clear it);
* ``inbounds``: if the later file has exactly one entry and the list so far is not empty,
  an entry with the same ``tag`` is replaced in place, otherwise the entry is appended;
  with several entries the later list replaces the earlier one; an empty list does nothing;
* ``outbounds``: the same, except that a single new entry is **prepended** (it becomes the
  default outbound) unless the file name, lower-cased, contains ``tail``;
* the legacy top-level ``port`` is only read from the first file.

The final lists are ``inbound`` + ``inboundDetour`` + ``inbounds`` (the same for
outbounds); ``port`` fills in the first inbound's port if that has none.

Unlike V2Ray, which only fully validates what survives the merge, every file is validated
on its own first, so an error in a section that a later file overrides is still reported
(with the file that holds it).

:func:`load_config` stops at the first error. :func:`inspect_config` (``raybridge test``)
loads the same way and, after a failure, loads again *leniently*: every inbound, outbound,
rule or section that fails is left out and its error recorded, so that all the errors are
reported at once and the checks (:mod:`raybridge.config.checks`) still see the rest.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from raybridge.config.build import FileConfig, PendingInbound, build_file
from raybridge.config.fields import Ctx, Skipped
from raybridge.config.jsonc import Document, JValue, parse_document
from raybridge.config.model import (
    Config,
    ConfigWarning,
    InboundConfig,
    LogConfig,
    OutboundConfig,
    PolicyConfig,
    ReverseConfig,
    RoutingConfig,
    RuleConfig,
)
from raybridge.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "STDIN_NAMES",
    "Inspection",
    "inspect_config",
    "list_conf_dir",
    "load_config",
    "load_config_text",
    "merge_files",
    "parse_files",
]

#: Arguments that mean "read standard input" (V2Ray: ``stdin:``; we also take ``-``).
STDIN_NAMES = ("-", "stdin:")


def _read(path: str) -> tuple[str, str]:
    """Return ``(display name, text)`` for one ``-config`` argument."""
    if path in STDIN_NAMES:
        data = sys.stdin.buffer.read()
        name = "<stdin>"
    elif path.startswith(("http://", "https://")):
        raise ConfigError("loading a config from a URL is not supported by raybridge", file=path)
    else:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read config file: {e.strerror or e}", file=path) from e
        name = path
    # Invalid UTF-8 becomes U+FFFD, as Go's decoder does inside strings.
    return name, data.decode("utf-8", errors="replace")


def _build(
    name: str, doc: Document, environ: Mapping[str, str], skipped: list[Skipped] | None = None
) -> tuple[FileConfig, list[ConfigWarning]]:
    ctx = Ctx(file=name, environ=environ, skipped=skipped)
    if doc.trailing is not None:
        line, col = doc.trailing
        ctx.warnings.append(
            ConfigWarning(
                file=name,
                line=line,
                path="",
                message=f"text after the top-level value (from char {col}) is ignored, "
                "as V2Ray ignores it",
            )
        )
    return build_file(ctx, doc.value), ctx.warnings


def load_config_text(
    text: str, name: str = "<config>", *, environ: Mapping[str, str] | None = None
) -> Config:
    """Load one config given as text; ``name`` is used in messages."""
    env = os.environ if environ is None else environ
    fc, warnings = _build(name, parse_document(text, name), env)
    return merge_files([fc], warnings)


def load_config(paths: Sequence[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Load and merge ``-config`` files in order (``-`` or ``stdin:`` reads stdin).

    All files are read and parsed before any is validated, as V2Ray does, so a syntax
    error in any file is reported first.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ConfigError("no config file given")
    env = os.environ if environ is None else environ
    texts = [_read(p) for p in paths]
    docs = [(name, parse_document(text, name)) for name, text in texts]
    return _load_documents(docs, env)


def _load_documents(
    docs: Sequence[tuple[str, Document]],
    environ: Mapping[str, str],
    skipped: list[Skipped] | None = None,
) -> Config:
    files: list[FileConfig] = []
    warnings: list[ConfigWarning] = []
    for name, doc in docs:
        fc, file_warnings = _build(name, doc, environ, skipped)
        files.append(fc)
        warnings.extend(file_warnings)
    return merge_files(files, warnings, skipped)


@dataclass(slots=True)
class Inspection:
    """What :func:`inspect_config` found.

    ``errors`` is empty when the files load (strictly, as :func:`load_config` loads them);
    then ``config`` is the config. Otherwise ``errors[0]`` is the error
    :func:`load_config` raises, the others come from the lenient reload, and ``config``
    is what that reload built without the ``skipped`` entries (``None`` if nothing
    could be built: a syntax error, an unreadable file). ``documents`` are the parsed
    files by name, so that messages can point at the line of any value.
    """

    config: Config | None
    errors: list[ConfigError] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    documents: dict[str, JValue] = field(default_factory=dict)


def inspect_config(paths: Sequence[str], *, environ: Mapping[str, str] | None = None) -> Inspection:
    """Load like :func:`load_config`, but report instead of raise, with every error
    lenient loading can find (``raybridge test``). Each file is read once (stdin too)."""
    if isinstance(paths, str):
        paths = [paths]
    env = os.environ if environ is None else environ
    try:
        if not paths:
            raise ConfigError("no config file given")
        texts = [_read(p) for p in paths]
        docs = [(name, parse_document(text, name)) for name, text in texts]
    except ConfigError as exc:
        return Inspection(None, [exc])
    documents = {name: doc.value for name, doc in docs}
    try:
        return Inspection(_load_documents(docs, env), documents=documents)
    except ConfigError as exc:
        first = exc
    skipped: list[Skipped] = []
    try:
        config = _load_documents(docs, env, skipped)
    except ConfigError:
        return Inspection(None, [first], documents=documents)
    errors = [first]
    errors += [s.error for s in skipped if str(s.error) != str(first)]
    return Inspection(config, errors, skipped, documents)


def parse_files(names: Sequence[str]) -> dict[str, JValue]:
    """The parsed trees of files already loaded (to point at the line of a value); files
    that cannot be read or parsed now, and standard input, are left out."""
    documents: dict[str, JValue] = {}
    for name in names:
        if name in STDIN_NAMES or name.startswith("<"):
            continue
        try:
            _, text = _read(name)
            documents[name] = parse_document(text, name).value
        except ConfigError:
            continue
    return documents


def list_conf_dir(directory: str) -> list[str]:
    """V2Ray's ``-confdir``: the ``*.json`` files of ``directory`` sorted by name (they
    come after the ``-config`` files)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise ConfigError(f"cannot read config directory: {e.strerror or e}", file=directory) from e
    return [
        os.path.join(directory, n)
        for n in names
        if n.endswith(".json") and os.path.isfile(os.path.join(directory, n))
    ]


# --------------------------------------------------------------------------- merging


def _tag_index(tags: Sequence[str], tag: str) -> int:
    """V2Ray's ``findInboundTag``: the first entry with exactly this tag ("" included)."""
    for i, t in enumerate(tags):
        if t == tag:
            return i
    return -1


def merge_files(
    files: Sequence[FileConfig],
    warnings: list[ConfigWarning],
    skipped: list[Skipped] | None = None,
) -> Config:
    """Merge per-file sections in order (``Override``) and finish the config.
    ``skipped``: lenient loading (an inbound without a port is left out and recorded)."""
    sections: dict[str, object] = {}
    inbounds: list[PendingInbound] = []
    outbounds: list[OutboundConfig] = []
    for fc in files:
        sections.update(fc.sections)
        inbounds = _merge_entries(inbounds, fc.inbounds, lambda p: p.config.tag, at_end=True)
        # A single outbound goes first (it becomes the default) unless the file's name
        # says "tail".
        at_end = "tail" in fc.file.lower()
        outbounds = _merge_entries(outbounds, fc.outbounds, lambda o: o.tag, at_end=at_end)
    inbound = _last(fc.inbound for fc in files)
    outbound = _last(fc.outbound for fc in files)
    all_in = [*_present(inbound), *(_last(fc.inbound_detours for fc in files) or ()), *inbounds]
    all_out = [
        *_present(outbound),
        *(_last(fc.outbound_detours for fc in files) or ()),
        *outbounds,
    ]
    config = Config(
        log=_last(fc.log for fc in files) or LogConfig(),
        inbounds=_finish_inbounds(all_in, files[0].port, warnings, skipped),
        outbounds=_finish_outbounds(all_out, warnings),
        routing=_last(fc.routing for fc in files) or RoutingConfig(),
        reverse=_last(fc.reverse for fc in files) or ReverseConfig(),
        policy=_last(fc.policy for fc in files) or PolicyConfig(),
        dns=_last(fc.dns for fc in files),
        stats=bool(_last(fc.stats for fc in files)),
        api=_last(fc.api for fc in files),
        sections=sections,
        warnings=warnings,
        files=[fc.file for fc in files],
    )
    _check_references(config, warnings, skipped or ())
    return config


def _last(values: Iterable[T | None]) -> T | None:
    """The last value that is there: a later file's section replaces an earlier one's."""
    found: T | None = None
    for value in values:
        if value is not None:
            found = value
    return found


def _present(value: T | None) -> list[T]:
    return [] if value is None else [value]


def _merge_entries(
    current: list[T], new: Sequence[T], tag: Callable[[T], str], *, at_end: bool
) -> list[T]:
    """A later file's ``inbounds`` or ``outbounds`` merged into ``current`` as V2Ray does:
    a single entry replaces the one with its tag (or is added, at the end with ``at_end``,
    else first); several replace the whole list."""
    if len(new) == 1 and current:
        entry = new[0]
        index = _tag_index([tag(e) for e in current], tag(entry))
        if index >= 0:
            current[index] = entry
        elif at_end:
            current.append(entry)
        else:
            current.insert(0, entry)
        return current
    return list(new) if new else current


def _finish_inbounds(
    pending: list[PendingInbound],
    port: int | None,
    warnings: list[ConfigWarning],
    skipped: list[Skipped] | None = None,
) -> list[InboundConfig]:
    configs: list[InboundConfig] = []
    for i, p in enumerate(pending):
        cfg = p.config
        if not p.has_port:
            if i == 0 and port is not None:
                cfg = replace(cfg, ports=[port])
            else:
                error = ConfigError(
                    '"port" is missing', file=cfg.file, line=cfg.line, path=cfg.path
                )
                if skipped is None:
                    raise error
                skipped.append(
                    Skipped(
                        error=error,
                        kind="inbound",
                        path=cfg.path,
                        file=cfg.file,
                        line=cfg.line,
                        tag=cfg.tag,
                        node=None,
                    )
                )
                continue
        configs.append(cfg)
    # V2Ray keeps only the last handler for a tag: the earlier ones never start.
    last: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        if cfg.tag:
            last[cfg.tag] = i
    result: list[InboundConfig] = []
    for i, cfg in enumerate(configs):
        if cfg.tag and last[cfg.tag] != i:
            later = configs[last[cfg.tag]]
            warnings.append(
                _warning(
                    cfg,
                    f'tag "{cfg.tag}" is used again at {later.file}:{later.line}; '
                    "this inbound is dropped (V2Ray never starts it either)",
                )
            )
            continue
        result.append(replace(cfg, index=len(result)))
    return result


def _finish_outbounds(
    configs: list[OutboundConfig], warnings: list[ConfigWarning]
) -> list[OutboundConfig]:
    seen: dict[str, OutboundConfig] = {}
    result: list[OutboundConfig] = []
    for i, cfg in enumerate(configs):
        if cfg.tag:
            if cfg.tag in seen:
                earlier = seen[cfg.tag]
                warnings.append(
                    _warning(
                        cfg,
                        f'tag "{cfg.tag}" is already used by {earlier.file}:{earlier.line}; '
                        "routing uses this one",
                    )
                )
            seen[cfg.tag] = cfg
        result.append(replace(cfg, index=i))
    return result


def _check_references(
    config: Config, warnings: list[ConfigWarning], skipped: Sequence[Skipped] = ()
) -> None:
    """Warn about routing targets and inbound tags that name nothing (V2Ray only logs
    these at run time, when traffic falls through to the default outbound). Entries left
    out by lenient loading still count: their error is reported already.

    ``raybridge test`` and ``run`` show the richer versions of these warnings from
    :func:`raybridge.config.checks.reference_checks` instead."""
    outbound_tags = {o.tag for o in config.outbounds if o.tag}
    outbound_tags.update(p.tag for p in config.reverse.portals)
    if config.api is not None:
        outbound_tags.add(config.api.tag)  # the commander's outbound
    outbound_tags.update(s.tag for s in skipped if s.kind == "outbound" and s.tag)
    inbound_tags = {i.tag for i in config.inbounds if i.tag}
    inbound_tags.update(b.tag for b in config.reverse.bridges)
    if config.dns is not None and config.dns.tag:
        inbound_tags.add(config.dns.tag)  # the built-in DNS client's queries
    inbound_tags.update(s.tag for s in skipped if s.kind == "inbound" and s.tag)
    balancers = {b.tag for b in config.routing.balancers}
    for rule in config.routing.rules:
        if rule.outbound_tag is not None and rule.outbound_tag not in outbound_tags:
            message = (
                f'"{rule.outbound_tag}" names no outbound or portal: matching traffic goes '
                "to the default outbound"
            )
            warnings.append(_warning(rule, message, "outboundTag"))
        if rule.balancer_tag is not None and rule.balancer_tag not in balancers:
            message = f'"{rule.balancer_tag}" names no balancer'
            warnings.append(_warning(rule, message, "balancerTag"))
        for tag in rule.inbound_tags or ():
            if tag not in inbound_tags:
                message = f'"{tag}" names no inbound or bridge: this never matches'
                warnings.append(_warning(rule, message, "inboundTag"))


def _warning(
    entry: InboundConfig | OutboundConfig | RuleConfig, message: str, key: str = ""
) -> ConfigWarning:
    """A warning about an inbound, outbound or rule, or about its field ``key`` (on the
    entry's line)."""
    path = f"{entry.path}.{key}" if key else entry.path
    return ConfigWarning(file=entry.file, line=entry.line, path=path, message=message)
