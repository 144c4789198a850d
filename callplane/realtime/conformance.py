"""Check Realtime events against the official ``openai`` SDK's GA event models.

The SDK never validates what it receives (it builds models with ``construct`` and falls back
to the first union member for unknown types), so a client working against a server proves
little about that server. This module does the check the SDK skips: it looks the model up by
the event's ``type``, validates strictly (no coercion of ``"1"`` to ``1``), and, because the
SDK models accept unknown keys, also walks the frame against the models' declared fields so
that a misspelled field is caught too.

It is used by the test suite on every frame the engine sends and every frame a test sends,
and by the engine itself to answer ``unknown_parameter`` the way OpenAI does.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Union, get_args, get_origin

import pydantic
from openai.types.realtime import realtime_client_event, realtime_server_event


class ConformanceError(ValueError):
    """A frame that does not match the SDK's GA models; ``path`` is the dotted field path."""

    def __init__(self, event_type: str, message: str, path: str = "") -> None:
        self.event_type = event_type
        self.path = path
        where = f" at {path}" if path else ""
        super().__init__(f"{event_type!r}{where}: {message}")


def _union_members(annotation: Any) -> tuple[type[pydantic.BaseModel], ...]:
    """The pydantic models of a (possibly Annotated) union of event models."""
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return tuple(m for m in get_args(annotation) if _is_model(m))


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _literal_type(model: type[pydantic.BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    if field is None:
        return None
    values = get_args(field.annotation)
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


@cache
def server_event_models() -> dict[str, type[pydantic.BaseModel]]:
    """GA server event ``type`` -> SDK model."""
    members = _union_members(realtime_server_event.RealtimeServerEvent)
    return {t: m for m in members if (t := _literal_type(m)) is not None}


@cache
def client_event_models() -> dict[str, type[pydantic.BaseModel]]:
    """GA client event ``type`` -> SDK model."""
    members = _union_members(realtime_client_event.RealtimeClientEvent)
    return {t: m for m in members if (t := _literal_type(m)) is not None}


def validate_server_event(frame: Mapping[str, Any]) -> None:
    """Raise ConformanceError unless ``frame`` is a valid GA server event with no unknown field."""
    _validate(frame, server_event_models())


def validate_client_event(frame: Mapping[str, Any]) -> None:
    """Raise ConformanceError unless ``frame`` is a valid GA client event with no unknown field."""
    _validate(frame, client_event_models())


def _validate(frame: Mapping[str, Any], models: Mapping[str, type[pydantic.BaseModel]]) -> None:
    event_type = frame.get("type")
    if not isinstance(event_type, str):
        raise ConformanceError(repr(event_type), "missing or non-string 'type'", "type")
    model = models.get(event_type)
    if model is None:
        raise ConformanceError(event_type, "unknown event type", "type")
    try:
        model.model_validate(dict(frame), strict=True)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ConformanceError(event_type, first["msg"], path) from None
    unknown = unknown_fields(model, frame)
    if unknown:
        raise ConformanceError(event_type, "unknown field", unknown[0])


def unknown_fields(
    model: type[pydantic.BaseModel], data: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """Dotted paths of keys in ``data`` that ``model`` (recursively) does not declare.

    Unions of models are resolved by their ``type`` literal when the data has one, otherwise
    by which member validates; lists are walked element by element; free-form dicts
    (``dict[str, X]``, JSON-schema ``parameters``) are not inspected.
    """
    found: list[str] = []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    for key, value in data.items():
        path = f"{prefix}{key}"
        field = fields.get(key)
        if field is None:
            found.append(path)
            continue
        found.extend(_unknown_in_value(field.annotation, value, path))
    return found


def _unknown_in_value(annotation: Any, value: Any, path: str) -> list[str]:
    annotation = _strip_annotated(annotation)
    origin = get_origin(annotation)
    if origin in (list, typing.List) and isinstance(value, list):  # noqa: UP006
        (inner,) = get_args(annotation) or (Any,)
        out: list[str] = []
        for i, element in enumerate(value):
            out.extend(_unknown_in_value(inner, element, f"{path}.{i}"))
        return out
    if not isinstance(value, Mapping):
        return []
    candidates = _models_in(annotation)
    if not candidates:
        return []
    model = _pick_member(candidates, value)
    return unknown_fields(model, value, f"{path}.") if model is not None else []


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    if _is_model(annotation):
        return [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        models: list[type[pydantic.BaseModel]] = []
        for arg in get_args(annotation):
            models.extend(_models_in(_strip_annotated(arg)))
        return models
    return []


def _pick_member(
    candidates: list[type[pydantic.BaseModel]], value: Mapping[str, Any]
) -> type[pydantic.BaseModel] | None:
    if len(candidates) == 1:
        return candidates[0]
    tag = value.get("type")
    by_tag = [m for m in candidates if _literal_type(m) == tag] if tag is not None else []
    if len(by_tag) == 1:
        return by_tag[0]
    for model in by_tag or candidates:
        try:
            model.model_validate(dict(value), strict=True)
        except pydantic.ValidationError:
            continue
        return model
    return None
