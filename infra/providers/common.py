"""What every callplane dynamic provider shares: a diff that ignores provider code, and errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pulumi.dynamic import DiffResult

__all__ = ["ProvisioningError", "diff_props"]

PROVIDER_KEY = "__provider"


class ProvisioningError(Exception):
    """A provider operation failed; the message names the config entry and the fix."""


def diff_props(
    olds: Mapping[str, Any],
    news: Mapping[str, Any],
    *,
    updatable: Iterable[str],
    replacing: Iterable[str],
) -> DiffResult:
    """Compare only the declared inputs, never ``__provider`` or computed outputs.

    Without this, Pulumi diffs the pickled provider too, so any change to provider code would
    show as an update of every resource. An input absent on one side and ``None`` on the other
    is no change (Pulumi drops ``None`` inputs).
    """
    replaces = [k for k in replacing if olds.get(k) != news.get(k)]
    changed = [k for k in updatable if olds.get(k) != news.get(k)]
    return DiffResult(
        changes=bool(replaces or changed),
        replaces=replaces,
        stables=[k for k in replacing if k not in replaces],
        delete_before_replace=False,
    )
