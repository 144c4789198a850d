"""The web playground's static files: path checks, content types and loading the built folder.

The core serves files only from a read-only mapping of relative name to bytes that the adapter
hands it, so a request path can only ever select one of the names in that mapping: there is no
file system access at request time and nothing to traverse. :func:`load_playground` builds the
mapping from ``web/dist/`` at start-up (the ASGI adapter does; on Cloudflare, static assets are
better served by the platform and the mapping may be empty). Standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from urllib.parse import unquote

__all__ = ["CONTENT_TYPES", "INDEX", "content_type", "file_name", "load_playground"]

INDEX = "index.html"
CONTENT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".mjs": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".json": "application/json",
        ".map": "application/json",
        ".svg": "image/svg+xml",
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".gif": "image/gif",
        ".webp": "image/webp",
        ".ico": "image/x-icon",
        ".txt": "text/plain; charset=utf-8",
        ".wasm": "application/wasm",
        ".woff": "font/woff",
        ".woff2": "font/woff2",
        ".wav": "audio/wav",
        ".mp3": "audio/mpeg",
        ".ogg": "audio/ogg",
    }
)
_FALLBACK_TYPE = "application/octet-stream"


def content_type(name: str) -> str:
    """The ``Content-Type`` for a file name, by extension (``application/octet-stream`` when
    unknown, which browsers will not execute)."""
    return CONTENT_TYPES.get(os.path.splitext(name)[1].lower(), _FALLBACK_TYPE)


def file_name(raw: str) -> str | None:
    """The mapping key for the part of a request path after ``/playground/``, or None when it is
    not a plain relative name (``..`` or ``.`` segments, empty segments, backslashes, NUL, or
    percent-encoded slashes). An empty path means ``index.html``."""
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        return None  # an encoded separator or NUL is never part of a real asset name
    name = unquote(raw)
    if name == "":
        return INDEX
    segments = name.split("/")
    if name.endswith("/"):
        segments = [*segments[:-1], INDEX]
    if any(s in ("", ".", "..") or "\\" in s or "\0" in s for s in segments):
        return None
    return "/".join(segments)


def load_playground(folder: Path) -> Mapping[str, bytes]:
    """Every regular file under ``folder`` as ``{"relative/posix/name": bytes}``, read once.
    Symbolic links are not followed, so nothing outside ``folder`` can be served. A missing
    folder gives an empty mapping (the playground routes then answer 404 saying so)."""
    files: dict[str, bytes] = {}
    if not folder.is_dir():
        return MappingProxyType(files)
    for directory, subdirs, names in os.walk(folder, followlinks=False):
        subdirs[:] = [d for d in subdirs if not os.path.islink(os.path.join(directory, d))]
        for name in names:
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file():
                continue
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return MappingProxyType(files)
