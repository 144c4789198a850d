"""What one deploy of the media plane's Modal app is for, in one place for both of its sides.

The stack (which scaling entry of ``functions/app.py``), the Modal app name, and the two
settings that multiply Modal's price (a pinned region, non-preemptible containers) reach
``functions/app.py`` as environment variables: ``pulumi up`` sets them from the stack config
(``callplane:modal``), a hand-run ``modal deploy`` takes them from the shell, and the image
carries them, so that a container importing the app sees the values it was deployed with.

:func:`web_labels` is the one place the web functions' labels are made: the Modal app declares
its functions with them, and the Pulumi program builds the edge's media URLs from them.

This module imports nothing but the standard library, so the Pulumi program can use it
without loading the Modal app.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANY_REGION",
    "APP_NAME_VAR",
    "DEFAULT_APP_NAME",
    "DEFAULT_NONPREEMPTIBLE",
    "DEFAULT_REGION",
    "DEPLOY_VARS",
    "NONPREEMPTIBLE_VAR",
    "REGION_VAR",
    "STACKS",
    "STACK_VAR",
    "DeploySettings",
    "DeploySettingsError",
    "WebLabels",
    "check_app_name",
    "check_region",
    "check_stack",
    "web_labels",
]

STACK_VAR = "CALLPLANE_STACK"
APP_NAME_VAR = "CALLPLANE_MODAL_APP_NAME"
REGION_VAR = "CALLPLANE_MODAL_REGION"
NONPREEMPTIBLE_VAR = "CALLPLANE_MODAL_NONPREEMPTIBLE"
#: Every variable a deploy reads, in the order :meth:`DeploySettings.to_env` writes them.
DEPLOY_VARS = (STACK_VAR, APP_NAME_VAR, REGION_VAR, NONPREEMPTIBLE_VAR)

#: The scaling entries ``functions/app.py`` defines (``callplane:modal.scaling``).
STACKS = ("dev", "staging", "prod")
DEFAULT_APP_NAME = "callplane-media"
#: Twilio's default media region (US1) is in Virginia, and so are Modal's servers that every
#: input passes through: calls keep their latency low there. Costs a region multiplier.
DEFAULT_REGION = "us-east"
#: Leave placement to Modal: no region multiplier, but containers may run far from Twilio.
ANY_REGION = "any"
#: A preempted container drops every call on it. Costs Modal's non-preemptible multiplier.
DEFAULT_NONPREEMPTIBLE = True

_APP_NAME = re.compile(r"^[a-z0-9](?:-?[a-z0-9])*$")
_APP_NAME_MAX = 40
_REGION = re.compile(r"^[a-z]{2,}(?:-[a-z0-9]+)*$")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


class DeploySettingsError(ValueError):
    """A deploy setting is missing or invalid; the message names it, its value and the fix."""


@dataclass(frozen=True)
class WebLabels:
    """The labels of the app's two web functions; each is served at
    ``https://<workspace>[-<environment suffix>]--<label>.modal.run``."""

    media: str  # the FastAPI app: HTTP routes (callbacks, dispatch, records)
    streams: str  # the picows stream server: Twilio's media streams


def web_labels(app_name: str, stack: str) -> WebLabels:
    """``<app>-<stack>`` and ``<app>-<stack>-streams``: the one definition both the Modal app
    and the Pulumi program use, so the edge is pointed where the functions are served."""
    return WebLabels(media=f"{app_name}-{stack}", streams=f"{app_name}-{stack}-streams")


def check_stack(value: str) -> str:
    """``value`` if it names a scaling entry, else ValueError with the fix."""
    if value not in STACKS:
        raise ValueError(f"not a stack of the media app. Fix: use one of {', '.join(STACKS)}")
    return value


def check_app_name(value: str) -> str:
    """``value`` if it can name the Modal app and begin its web labels (lower-case DNS-safe,
    short enough that ``<app>-<stack>-streams`` stays a valid host name), else ValueError."""
    if len(value) > _APP_NAME_MAX or not _APP_NAME.match(value):
        raise ValueError(
            f"not a usable Modal app name: it begins the web labels <app>-<stack>-streams. Fix: "
            f"use 1-{_APP_NAME_MAX} lower-case letters, digits and single '-' between them, "
            f"e.g. {DEFAULT_APP_NAME!r}"
        )
    return value


def check_region(value: str) -> str:
    """``value`` if it is written like a Modal region (``us``, ``us-east``, ``eu-west``,
    ``us-east-1``) or is ``any``, else ValueError. Modal itself judges whether the region
    exists, at deploy."""
    if value != ANY_REGION and not _REGION.match(value):
        raise ValueError(
            "not a Modal region. Fix: write a region as Modal names it, e.g. 'us' (broad) or "
            f"'us-east' (narrow), or {ANY_REGION!r} to leave placement to Modal (no region "
            "multiplier)"
        )
    return value


def _check_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("not a boolean. Fix: use true or false")


@dataclass(frozen=True)
class DeploySettings:
    """One deploy of the media app: the stack's scaling entry, the Modal app name, and where
    and how its containers run.

    ``region`` pins every function's containers to one Modal region (``any``: Modal places
    them). ``nonpreemptible`` keeps Modal from preempting a container, which would drop every
    call on it. Both multiply Modal's CPU and memory price (docs/provisioning.md, "What the
    media plane costs on Modal").
    """

    stack: str
    app_name: str = DEFAULT_APP_NAME
    region: str = DEFAULT_REGION
    nonpreemptible: bool = DEFAULT_NONPREEMPTIBLE

    def __post_init__(self) -> None:
        for name, check in (
            ("stack", check_stack),
            ("app_name", check_app_name),
            ("region", check_region),
        ):
            value = getattr(self, name)
            try:
                check(value)
            except ValueError as exc:
                raise DeploySettingsError(f"{name}={value!r}: {exc}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DeploySettings:
        """The settings a deploy (or a container of it) runs with. ``CALLPLANE_STACK`` is
        required: without it the app would have to guess its scaling and web labels."""
        stack = environ.get(STACK_VAR, "")
        if not stack:
            raise DeploySettingsError(
                f"{STACK_VAR} is not set: the media app will not guess which stack it deploys "
                f"(one of {', '.join(STACKS)}; the scaling and the web labels depend on it). "
                f"Fix: deploy with `pulumi up`, which sets it from callplane:modal.scaling, or "
                f"run `{STACK_VAR}=prod modal deploy -m functions.app --env prod`"
            )
        values: dict[str, Any] = {"stack": stack}
        checks: tuple[tuple[str, str, Any], ...] = (
            (STACK_VAR, "stack", check_stack),
            (APP_NAME_VAR, "app_name", check_app_name),
            (REGION_VAR, "region", check_region),
            (NONPREEMPTIBLE_VAR, "nonpreemptible", _check_bool),
        )
        for var, field, check in checks:
            raw = environ.get(var)
            if raw is None:
                continue
            try:
                values[field] = check(raw)
            except ValueError as exc:
                raise DeploySettingsError(f"{var}={raw!r}: {exc}") from None
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment :meth:`from_env` reads back into these settings."""
        return {
            STACK_VAR: self.stack,
            APP_NAME_VAR: self.app_name,
            REGION_VAR: self.region,
            NONPREEMPTIBLE_VAR: "true" if self.nonpreemptible else "false",
        }

    @property
    def labels(self) -> WebLabels:
        return web_labels(self.app_name, self.stack)

    @property
    def modal_region(self) -> str | None:
        """``region`` as Modal's ``@app.function(region=...)`` takes it (None: unpinned)."""
        return None if self.region == ANY_REGION else self.region

    def placement_options(self) -> dict[str, Any]:
        """The ``@app.function`` keywords that decide where containers run and whether Modal
        may preempt them: the two options that multiply the price."""
        return {"region": self.modal_region, "nonpreemptible": self.nonpreemptible}
