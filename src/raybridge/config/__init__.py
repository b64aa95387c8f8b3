"""V2Ray 4.34 JSON configuration: reading, validating and merging.

Use :func:`load_config` (``-config`` files) or :func:`load_config_text`; both return a
:class:`~raybridge.config.model.Config` or raise :class:`~raybridge.errors.ConfigError`
whose ``str()`` names file, line and field, e.g.
``b.json:11: inbounds[0]: "protocol" is missing``.

Modules: :mod:`.jsonc` (comment-tolerant JSON with positions), :mod:`.model` (the
dataclasses), :mod:`.fields` (Go-like typed field access), :mod:`.settings` (protocol
settings, streamSettings), :mod:`.rules` (routing), :mod:`.build` (one file),
:mod:`.loader` (files, multi-file merge).
"""

from __future__ import annotations

from raybridge.config import model
from raybridge.config.build import register_section
from raybridge.config.loader import list_conf_dir, load_config, load_config_text
from raybridge.config.model import *  # noqa: F403 - the model's names are the package's
from raybridge.errors import ConfigError

__all__ = [
    *model.__all__,
    "ConfigError",
    "list_conf_dir",
    "load_config",
    "load_config_text",
    "register_section",
]
