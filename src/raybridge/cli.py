"""The ``raybridge`` command line, shaped like V2Ray's.

raybridge run -c a.json [-c b.json ...]   run a node (several files merge as in V2Ray 4.34);
                                          SIGHUP reloads the files, SIGTERM/Ctrl-C drains
raybridge reload --pid-file FILE          make the node with that pid file reload (SIGHUP)
raybridge test -c a.json                  validate only; non-zero exit with a clear message
raybridge init --portal-address HOST ...  write matched bridge/portal/client configs
raybridge link -c c.json                  print a client config's vmess:// link and QR code
raybridge uuid                            print a fresh UUID for a VMess user
raybridge version                         print the version
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from raybridge import __version__
from raybridge import log as logs
from raybridge.errors import ConfigError
from raybridge.runtime import (
    HeapTrimmer,
    loop_name,
    raise_fd_limit,
    trim_heap,
    tune_allocator,
)

#: V2Ray exits with 23 when its configuration cannot be loaded; scripts may rely on it.
EXIT_CONFIG = 23

logger = logging.getLogger("raybridge")


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed, else on asyncio's default loop."""
    tune_allocator()
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        "-config",
        dest="config",
        action="append",
        metavar="FILE",
        help="config file (JSON with comments); repeat to merge several; '-' reads stdin",
    )
    parser.add_argument("configs", nargs="*", metavar="FILE", help=argparse.SUPPRESS)


def _config_paths(args: argparse.Namespace) -> list[str]:
    paths = list(args.config or []) + list(args.configs or [])
    if not paths:
        raise SystemExit("raybridge: no config file given (use -c FILE)")
    return paths


#: Commands whose arguments are defined here; the others (init, link: raybridge.init's,
#: which imports the config templates, share links and QR codes; api) are loaded for them.
OWN_COMMANDS = frozenset({"run", "reload", "test", "demo", "uuid", "version"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; for one of :data:`OWN_COMMANDS` (``command``) without the init, link
    and api subcommands, which only their own command lines need."""
    parser = argparse.ArgumentParser(
        prog="raybridge",
        description="A V2Ray 4.34 compatible proxy with reverse (bridge/portal) tunnels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run a node from config files")
    _add_config_args(run)
    run.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )
    run.add_argument(
        "--status",
        metavar="ADDR:PORT",
        help="serve /metrics, /api/status and a dashboard here (default host 127.0.0.1)",
    )
    run.add_argument(
        "--pid-file",
        metavar="FILE",
        help="write the process id here while running (for raybridge reload)",
    )
    reload = sub.add_parser(
        "reload", help="make a running node re-read its config files (sends it SIGHUP)"
    )
    reload.add_argument("--pid-file", metavar="FILE", required=True, help="the node's --pid-file")
    test = sub.add_parser("test", help="validate config files and exit")
    _add_config_args(test)
    demo = sub.add_parser(
        "demo", help="run a bridge, a portal and a client on loopback and fetch a page"
    )
    demo.add_argument(
        "--check", action="store_true", help="fetch once through the chain and exit 0 or 1"
    )
    demo.add_argument("--dir", help="write the three configs here (default: a temp folder)")
    if command not in OWN_COMMANDS:
        from raybridge.init import add_parsers

        add_parsers(sub)  # init, link
        from raybridge.api.cli import add_parser as add_api_parser

        add_api_parser(sub)
    sub.add_parser("uuid", help="print a new random UUID")
    sub.add_parser("version", help="print the version")
    return parser


def load(paths: Sequence[str]) -> Any:
    from raybridge.config.loader import load_config

    return load_config(paths)


def findings(config: Any, *, documents: Any = None, skipped: Sequence[Any] = ()) -> list[Any]:
    """The loader's warnings and what the checks find (raybridge.config.checks), in file
    and line order. ``documents``: the parsed files (re-read from ``config.files`` if not
    given), so that findings point at the line of the value itself."""
    from raybridge.config.checks import findings as all_findings
    from raybridge.config.loader import parse_files

    if documents is None:
        documents = parse_files(config.files)
    return all_findings(config, documents=documents, skipped=skipped)


def unloaded(function: Callable[..., list[Any]], *args: Any) -> list[str]:
    """``function(*args)`` as strings, with the raybridge modules it imported taken out of
    ``sys.modules`` again: a running node checks its config once at start
    (``raybridge.config.checks`` and ``simulate``, about 1 MB) and never again. Only
    modules first imported by the call go, and nothing of them is kept but the strings."""
    before = set(sys.modules)
    try:
        return [str(item) for item in function(*args)]
    finally:
        for name in set(sys.modules) - before:
            if name.startswith("raybridge."):
                module = sys.modules.pop(name)
                parent, _, child = name.rpartition(".")
                if getattr(sys.modules.get(parent), child, None) is module:
                    delattr(sys.modules[parent], child)  # the package held it too
        # (their reference cycles go at the node's first collection: see settle())


def _report(label: str, item: Any, fix: str = "") -> None:
    """One error or finding: ``label: file:line: path: message`` and an indented fix."""
    print(f"{label}: {_located(item)}", file=sys.stderr)
    if fix:
        print(f"    fix: {fix}", file=sys.stderr)


def _located(item: Any) -> str:
    from raybridge.config.model import ConfigWarning

    if isinstance(item, ConfigWarning):
        return ConfigWarning.__str__(item)  # without the fix: it gets a line of its own
    return str(item)


def cmd_test(args: argparse.Namespace) -> int:
    """Validate; print every error and finding as ``file:line: field: message`` with a
    ``fix:`` line under it. Exit non-zero on errors only. After an error the config is
    reloaded leniently (the broken entries left out) so that the other errors and the
    routing checks are reported too, as "also:" findings."""
    from raybridge.config.checks import suggest_fix
    from raybridge.config.loader import inspect_config
    from raybridge.node import Node

    paths = _config_paths(args)
    try:
        result = inspect_config(paths)
    except OSError as exc:
        print(f"raybridge: cannot read configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    errors = list(result.errors)
    config = result.config
    if config is not None:
        try:
            # What only the runtime checks (rule patterns, handlers); kept so that the
            # routing checks below reuse its geo lists (raybridge.matchers caches them weakly).
            _validated = Node(config)
        except ConfigError as exc:
            if not any(str(e) == str(exc) for e in errors):
                errors.append(exc)
    found = (
        []
        if config is None
        else findings(config, documents=result.documents, skipped=result.skipped)
    )
    for error in errors:
        _report("error", error, suggest_fix(error, result.skipped))
    label = "also" if errors else "warning"
    for finding in found:
        _report(label, finding, getattr(finding, "fix", ""))
    if errors:
        more = f" (and {len(found)} more finding{'s' if len(found) != 1 else ''})" if found else ""
        count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
        print(f"raybridge: invalid configuration: {count}{more}", file=sys.stderr)
        return EXIT_CONFIG
    print("Configuration OK.")
    return 0


#: Seconds after start when :func:`settle` runs: after the first connections, not before.
SETTLE_DELAY = 1.0


def settle() -> None:
    """Once, shortly after a node has started: collect what start-up left (the unloaded
    config checks, parsing), then freeze what remains (modules, config, the node's own
    objects) out of the garbage collector's full passes, each of which would otherwise
    walk those ~10^5 objects again (tens of ms, in the middle of traffic), and hand the
    freed heap back to the kernel. (What is alive then stays alive: a node's own objects,
    and the few connections of its first second.)"""
    gc.collect()
    gc.freeze()
    trim_heap()


async def serve(
    config: Any,
    *,
    ready: asyncio.Event | None = None,
    status: str | None = None,
    paths: Sequence[str] = (),
    log_format: str = "text",
    pid_file: Path | None = None,
) -> int:
    """Run a node until SIGTERM/SIGINT: the first one drains it (no new clients, bridges
    say DRAIN, live connections get ``drainTimeout`` seconds), a second one stops it at
    once. SIGHUP reloads ``paths`` (:mod:`raybridge.reload`). ``pid_file`` is written once
    the node serves and SIGHUP is handled (so ``raybridge reload`` can use it), and removed
    at the end."""
    from raybridge.node import Node

    node = Node(config, status=status)
    stop = asyncio.Event()  # stop now
    drain = asyncio.Event()  # the first SIGTERM/SIGINT
    loop = asyncio.get_running_loop()

    def on_stop() -> None:
        if drain.is_set():
            logger.warning("second signal: stopping now")
            stop.set()
        drain.set()

    reloading = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def do_reload(requested: float) -> None:
        async with reloading:
            if drain.is_set():
                return
            await reload_files(node, paths, requested=requested, log_format=log_format)

    def on_hup() -> None:
        task = asyncio.ensure_future(do_reload(time.monotonic()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_stop)
    try:
        await node.start()
    except OSError as exc:
        logger.error("failed to start: %s", exc)
        return 1
    if paths:  # (a SIGHUP before this point is the default action's: it ends the process)
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    logger.warning("raybridge %s started (%s)", __version__, loop_name())
    settling = loop.call_later(SETTLE_DELAY, settle)
    trimmer = HeapTrimmer()
    trimmer.start()
    if ready is not None:
        ready.set()
    try:
        await drain.wait()
        if not stop.is_set():
            drained = asyncio.ensure_future(node.drain())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({drained, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if drained.done() and not drained.result():
                logger.warning(
                    "drain timeout (%gs): closing %d connections",
                    node.drain_timeout,
                    node.live_connections,
                )
            drained.cancel()
    finally:
        settling.cancel()
        trimmer.stop()
        for task in list(tasks):
            task.cancel()
        await node.close()
        if pid_file is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()
    return 0


async def reload_files(
    node: Any, paths: Sequence[str], *, requested: float, log_format: str = "text"
) -> Any:
    """Re-read and merge ``paths`` and move ``node`` to them; a file that cannot be read
    or built leaves the node as it is, and the error (``file:line: field: message``) is
    logged and recorded. Returns the :class:`~raybridge.reload.ReloadRecord`."""
    from raybridge.reload import ReloadRecord, keep_record, same

    logger.warning("reload: reading %s", ", ".join(paths))
    try:
        # Read and parsed in a thread: the loop goes on relaying meanwhile (a config with
        # 1,000 users takes ~0.3 s to parse).
        config = await asyncio.to_thread(load, paths)
    except (ConfigError, OSError) as exc:
        logger.error("reload failed, still running the previous config: %s", exc)
        record = ReloadRecord(
            at=time.time(), ok=False, error=str(exc), seconds=time.monotonic() - requested
        )
        keep_record(node, record)
        return record
    old_log = node.config.log
    record = await node.reload(config, requested=requested)
    if record.ok and not same(config.log, old_log):
        lc = config.log
        logs.setup(access=lc.access, error=lc.error, level=lc.level, fmt=log_format)
        logger.warning("reload: log settings applied")
    if record.ok:
        logger.warning("reload: done in %.3fs", record.seconds)
    return record


def cmd_reload(args: argparse.Namespace) -> int:
    """Signal the node whose pid file is given (SIGHUP): it reloads, and logs the result."""
    try:
        pid = int(Path(args.pid_file).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"raybridge: reload: {args.pid_file}: {exc}", file=sys.stderr)
        return 1
    print(f"raybridge: asked process {pid} to reload (its log says how it went)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    paths = _config_paths(args)
    try:
        config = load(paths)
        from raybridge.node import Node

        # Validate fully before binding anything; kept until the end so that the node
        # serve() builds shares its geo lists (raybridge.matchers caches them weakly).
        _validated = Node(config)
        if args.status:
            from raybridge.status import parse_address

            parse_address(args.status)
    except ValueError as exc:
        print(f"raybridge: --status: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"raybridge: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"raybridge: cannot read configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    lc = config.log
    try:
        logs.setup(access=lc.access, error=lc.error, level=lc.level, fmt=args.log_format)
    except OSError as exc:  # checked when loading; this is a change since then
        error = ConfigError(
            f"cannot open a log file: {exc}", file=lc.file, line=lc.line, path="log"
        )
        print(f"raybridge: invalid configuration: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in unloaded(findings, config):
        logger.warning("config: %s", warning)
    pid_file = Path(args.pid_file) if args.pid_file else None
    return run_loop(
        serve(
            config,
            status=args.status,
            paths=paths,
            log_format=args.log_format,
            pid_file=pid_file,
        )
    )


#: The subcommands that are one function (module, name), imported when it runs: a node's
#: RSS does not pay for ``init``'s or the API client's imports.
_COMMANDS = {
    "run": (__name__, "cmd_run"),
    "test": (__name__, "cmd_test"),
    "reload": (__name__, "cmd_reload"),
    "init": ("raybridge.init", "cmd_init"),
    "link": ("raybridge.init", "cmd_link"),
    "api": ("raybridge.api.cli", "cmd_api"),
}


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words[0] if words else None)
    args = parser.parse_args(words)
    command = _COMMANDS.get(args.command)
    if command is not None:
        module, name = command
        run: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
        return run(args)
    if args.command == "demo":
        from raybridge.demo import demo

        logs.setup(level="warning")
        return run_loop(demo(check=args.check, directory=args.dir))
    if args.command == "uuid":
        print(uuid.uuid4())
        return 0
    if args.command == "version":
        print(f"raybridge {__version__} (V2Ray 4.34 compatible, Python {sys.version.split()[0]})")
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
