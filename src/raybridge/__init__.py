"""raybridge: a V2Ray 4.34 wire-compatible proxy with reverse (bridge/portal) tunnels."""

__version__ = "0.1.0"
