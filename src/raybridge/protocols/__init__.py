"""Sans-IO protocol codecs.

Nothing in this package performs I/O, reads a clock or a random source: time comes in as a
``now`` argument or an injected clock callable, randomness as an injected ``urandom``.
``tests/test_sans_io.py`` checks that no module here imports asyncio, socket, time, os,
random or secrets.
"""
