"""The runner for ``async def`` tests, and the suite's shared fixtures.

Runner: every ``async def test_*`` runs on a fresh event loop (an ``asyncio.Runner``, as
``asyncio.run`` makes one), under a deadline: ``DEFAULT_TIMEOUT`` seconds, or
``@pytest.mark.timeout(seconds)`` on the test, its class or module (``pytestmark``). The
deadline only turns a hang into a failure that shows where it hung; it is not a timing
assert. Fixtures made with ``@async_fixture`` run their setup and teardown on that same
loop. It is our own small hook rather than pytest-asyncio or anyio's plugin because the
suite needs a per-test deadline, which neither has, and nothing else they offer (shared
loops across tests, other event loops) is wanted here.

Fixtures: ``echo`` (TCP+UDP echo on one port), ``start_node`` (raybridge nodes in this
loop), ``start_v2ray`` (V2Ray 4.34 processes; skips the test without /usr/bin/v2ray),
``start_peer`` (either kind, by name), ``start_chain`` (the reverse chain A-B-C with a
SOCKS entry on C). Each stops everything it started when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any, TypeVar

import pytest

from tests.support import (
    HAVE_V2RAY,
    RB,
    V2,
    EchoServer,
    StartChain,
    StartNode,
    StartPeer,
    StartV2Ray,
    chain,
    node,
    run,
    v2ray,
)

T = TypeVar("T")

#: Seconds an async test (or one fixture step) may take before it fails as hung.
DEFAULT_TIMEOUT = 300.0
#: The fixture holding the loop a test and its async fixtures share.
LOOP = "_loop"
NEEDS_V2RAY = "needs /usr/bin/v2ray (apt-get install v2ray)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "timeout(seconds): deadline for an async test (default 300 s; hangs only)"
    )


async def _bounded(step: Awaitable[T], seconds: float, what: str) -> T:
    try:
        async with asyncio.timeout(seconds) as deadline:
            return await step
    except TimeoutError:
        if deadline.expired():
            pytest.fail(f"{what} did not finish within {seconds:g} s (hung?)")
        raise


def _deadline(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    return float(marker.args[0]) if marker is not None else DEFAULT_TIMEOUT


@pytest.fixture(name=LOOP)
def _loop() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    # A hypothesis test (``@given``) is a plain function around the async one: each example
    # then runs on a loop of its own, as ``asyncio.run`` in the example would.
    holder = getattr(pyfuncitem.obj, "hypothesis", None)
    owner, attr = (holder, "inner_test") if holder is not None else (pyfuncitem, "obj")
    test = getattr(owner, attr)
    if not inspect.iscoroutinefunction(test):
        return (yield)
    seconds = _deadline(pyfuncitem)
    shared: asyncio.Runner | None = pyfuncitem.funcargs.get(LOOP)  # type: ignore[assignment]

    def run_on_loop(*args: Any, **kwargs: Any) -> None:
        coro = _bounded(test(*args, **kwargs), seconds, pyfuncitem.name)
        if shared is not None:
            shared.run(coro)
        else:
            with asyncio.Runner() as runner:
                runner.run(coro)

    setattr(owner, attr, run_on_loop)  # pytest's own hook (or hypothesis) calls it
    try:
        return (yield)
    finally:
        setattr(owner, attr, test)


def async_fixture(func: Callable[..., AsyncIterator[T]]) -> Any:
    """``@pytest.fixture`` for an async generator function: the part before its one
    ``yield`` runs on the test's loop before the test, the part after it once the test is
    done (failed or not)."""
    signature = inspect.signature(func)

    def fixture(**kwargs: Any) -> Iterator[T]:
        runner: asyncio.Runner = kwargs.pop(LOOP)
        steps = func(**kwargs)
        what = f"fixture {func.__name__}"
        yield runner.run(_bounded(anext(steps), DEFAULT_TIMEOUT, what))
        runner.run(_bounded(_finish(steps, what), DEFAULT_TIMEOUT, what))

    # pytest reads the arguments from the signature; the loop is one more of them.
    loop = inspect.Parameter(LOOP, inspect.Parameter.KEYWORD_ONLY)
    fixture.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), loop]
    )
    fixture.__name__, fixture.__qualname__ = func.__name__, func.__qualname__
    fixture.__doc__, fixture.__module__ = func.__doc__, func.__module__
    return pytest.fixture(fixture)


async def _finish(steps: AsyncIterator[object], what: str) -> None:
    try:
        await anext(steps)
    except StopAsyncIteration:
        return
    raise RuntimeError(f"{what} yields more than once")


# -- the shared fixtures -------------------------------------------------------------------


@async_fixture
async def echo() -> AsyncIterator[EchoServer]:
    """TCP and UDP echo on one port of 127.0.0.1."""
    async with EchoServer() as server:
        yield server


@async_fixture
async def start_node() -> AsyncIterator[StartNode]:
    """``await start_node(config)``: a raybridge node running in the test's loop."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(config: dict[str, Any] | str, name: str = "<test>") -> Any:
            return await stack.enter_async_context(node(config, name))

        yield start


@pytest.fixture
def start_v2ray() -> Iterator[StartV2Ray]:
    """``start_v2ray(config, wait=[port])``: V2Ray 4.34 running with ``config``, once each
    port in ``wait`` accepts connections."""
    if not HAVE_V2RAY:
        pytest.skip(NEEDS_V2RAY)
    with contextlib.ExitStack() as stack:

        def start(config: dict[str, Any], wait: list[int] | None = None) -> subprocess.Popen[bytes]:
            return stack.enter_context(v2ray(config, wait))

        yield start


@async_fixture
async def start_peer() -> AsyncIterator[StartPeer]:
    """``await start_peer(kind, config, port)``: a raybridge node (kind ``RB``) or a V2Ray
    process (``V2``, skipping the test without /usr/bin/v2ray; waits for ``port``)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(kind: str, config: dict[str, Any], port: int | None = None) -> None:
            if kind == V2 and not HAVE_V2RAY:
                pytest.skip(NEEDS_V2RAY)
            await stack.enter_async_context(run(kind, config, port))

        yield start


@async_fixture
async def start_chain() -> AsyncIterator[StartChain]:
    """``s_port, echo = await start_chain(a, b, c)``: bridge A, portal B and client C (each
    ``RB`` or ``V2``), an echo server behind A, and C's SOCKS port, once a connection
    through the chain echoes."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            a: str = RB,
            b: str = RB,
            c: str = RB,
            *,
            alter_id: int = 0,
            single_inbound: bool = False,
        ) -> tuple[int, EchoServer]:
            if V2 in (a, b, c) and not HAVE_V2RAY:
                pytest.skip(NEEDS_V2RAY)
            made = chain(a, b, c, alter_id=alter_id, single_inbound=single_inbound)
            return await stack.enter_async_context(made)

        yield start
