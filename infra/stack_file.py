"""A stack's config read straight from ``Pulumi.<stack>.yaml``, without Pulumi or its secrets.

``python -m infra settings`` and ``python -m infra edge-bundle`` use it to show what a stack will
deploy before the team has accounts: secrets that are not set yet (or are encrypted, which only
Pulumi can read) get placeholders of the right shape, and are reported, so the rest of the
config is validated exactly as ``pulumi preview`` validates it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.config import NAMESPACE, SECRET_KEYS, ConfigError, StackConfig, load

__all__ = ["PLACEHOLDERS", "StackFile", "read_stack_file"]

PLACEHOLDERS: Mapping[str, str] = {
    "twilioAuthToken": "placeholder-twilio-auth-token",
    "streamSecret": "placeholder-stream-secret-0000",
    "mediaApiKey": "placeholder-media-api-key",
    "openaiApiKey": "placeholder-openai-api-key",
    "livekitApiSecret": "placeholder-livekit-api-secret",
    "databaseUrl": "postgresql://placeholder@database.invalid:5432/callplane",
    "redisUrl": "rediss://placeholder@redis.invalid:6379/0",
}
"""Stand-ins for the secrets a stack needs to build its settings (well-formed, never valid)."""


@dataclass(frozen=True)
class StackFile:
    """One stack's validated config, with which secrets were filled in and how."""

    name: str
    config: StackConfig
    #: Secret keys not set in the file: placeholders stand in for them.
    missing: tuple[str, ...] = ()
    #: Secret keys set but encrypted (``secure:``): placeholders stand in for them too.
    encrypted: tuple[str, ...] = ()
    #: Every secret value in ``config`` by key (placeholders included), for redaction.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)


def _needed(raw: Mapping[str, Any]) -> list[str]:
    """The secrets the media settings and the edge config are built from on this stack."""
    needed = ["twilioAuthToken", "streamSecret", "mediaApiKey"]
    if raw.get("kind") == "cloud":
        needed += ["openaiApiKey", "databaseUrl", "redisUrl"]
    if raw.get("livekit") is not None:
        needed.append("livekitApiSecret")
    return needed


def read_stack_file(name: str, project_dir: Path = Path(".")) -> StackFile:
    """``Pulumi.<name>.yaml`` in ``project_dir``, validated; absent or encrypted secrets are
    replaced by :data:`PLACEHOLDERS`. Raises FileNotFoundError naming the file and the stacks
    that exist, or :class:`~infra.config.ConfigError` listing every problem."""
    path = project_dir / f"Pulumi.{name}.yaml"
    if not path.is_file():
        found = sorted(
            p.name.removeprefix("Pulumi.").removesuffix(".yaml")
            for p in project_dir.glob("Pulumi.*.yaml")
        )
        raise FileNotFoundError(
            f"no stack file {path}: the stacks here are {found}. Fix: pass one of them with "
            "--stack, or run from the project's directory (--project-dir)"
        )
    document = yaml.safe_load(path.read_text()) or {}
    entries = document.get("config") or {}
    if not isinstance(entries, Mapping):
        raise ConfigError([f"{path}: 'config' is not a mapping of keys to values"])
    raw: dict[str, Any] = {}
    encrypted: list[str] = []
    for full_key, value in entries.items():
        namespace, _, key = str(full_key).partition(":")
        if namespace != NAMESPACE or not key:
            continue
        if isinstance(value, Mapping) and set(value) == {"secure"}:
            encrypted.append(key)
            continue
        raw[key] = value
    missing = [k for k in _needed(raw) if k not in raw and k not in encrypted]
    for key in (*encrypted, *missing):
        if key in PLACEHOLDERS:
            raw[key] = PLACEHOLDERS[key]
    secret_keys = {*encrypted, *missing}
    config = load(raw, secret_keys=secret_keys)
    secrets = {k: str(raw[k]) for k in SECRET_KEYS if isinstance(raw.get(k), str)}
    return StackFile(name, config, tuple(missing), tuple(encrypted), secrets)
