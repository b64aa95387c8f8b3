"""Talking to a node's status server in tests (test_status, test_reload_status): HTTP GET,
Prometheus samples, and a page of headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def get(port: int, path: str) -> bytes:
    def fetch() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return bytes(r.read())

    return await asyncio.to_thread(fetch)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@contextlib.asynccontextmanager
async def headless_page() -> AsyncIterator[Any]:
    """A page of headless Chromium (Debian's, driven by playwright), closed at the end."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield await browser.new_page()
        finally:
            await browser.close()
