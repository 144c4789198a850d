"""Tools declared once as typed Python functions.

The JSON schema the model sees is derived from the function's type hints (through pydantic),
and the model's arguments are validated against the same hints before the call, so the
declaration, the schema and the validation cannot drift apart. The same declaration serves
the phone path and the LiveKit path.

A tool's exception never ends a call: it goes back to the model as the tool's output, so the
model can apologise or try again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints, overload

import pydantic


class TransferFailed(Exception):
    """A transfer did not happen: nobody on the line can be moved, the target is not one the
    line may dial, or the carrier refused it. The message is written for the model to pass
    on, so the caller learns that they are still here and why."""


class CallContext:
    """What a tool may do to the call it runs in. Transports provide the implementation; a
    tool asks for it by declaring a parameter annotated ``CallContext`` (the model never sees
    it)."""

    call_sid: str = ""
    context: Mapping[str, Any] = {}

    async def hang_up(self) -> None:
        raise NotImplementedError

    async def transfer(self, to: str) -> str:
        """Move the caller to ``to`` (a department or a number) once what they are hearing
        has played; return the number dialled, after the carrier took the transfer. Raises
        :class:`TransferFailed` when it did not happen."""
        raise NotImplementedError


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    arguments: type[pydantic.BaseModel]
    context_param: str | None

    def spec(self) -> dict[str, Any]:
        """The GA Realtime function tool declaration."""
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": schema,
        }

    async def run(self, arguments_json: str, ctx: CallContext) -> str:
        """Run with the model's arguments; always return the output string for the model."""
        try:
            raw = json.loads(arguments_json or "{}")
            args = self.arguments.model_validate(raw)
        except (json.JSONDecodeError, pydantic.ValidationError) as exc:
            return json.dumps({"error": f"invalid arguments for {self.name}: {exc}"})
        kwargs = {k: getattr(args, k) for k in type(args).model_fields}
        if self.context_param:
            kwargs[self.context_param] = ctx
        try:
            if inspect.iscoroutinefunction(self.fn):
                result = await self.fn(**kwargs)
            else:
                result = await asyncio.to_thread(self.fn, **kwargs)
        except Exception as exc:  # the model hears about it; the call goes on
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        return result if isinstance(result, str) else json.dumps(result, default=str)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a tool: ``@tool`` or ``@tool(name=..., description=...)``; the docstring is the
    description by default."""

    def build(f: Callable[..., Any]) -> Tool:
        hints = get_type_hints(f)
        fields: dict[str, Any] = {}
        context_param = None
        for pname, param in inspect.signature(f).parameters.items():
            annotation = hints.get(pname, Any)
            if annotation is CallContext:
                context_param = pname
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (annotation, default)
        model = pydantic.create_model(f"{f.__name__}_arguments", **fields)
        doc = inspect.getdoc(f) or ""
        return Tool(
            name=name or f.__name__,
            description=description or doc.split("\n\n")[0].replace("\n", " "),
            fn=f,
            arguments=model,
            context_param=context_param,
        )

    return build(fn) if fn is not None else build


@tool
async def end_call(ctx: CallContext, reason: str = "") -> dict[str, Any]:
    """Hang up the call. Say goodbye first; the line is closed once the goodbye has played."""
    await ctx.hang_up()
    return {"ok": True}


@tool
async def transfer_call(ctx: CallContext, to: str) -> dict[str, Any]:
    """Transfer the caller to another number or department (e.g. "billing")."""
    try:
        number = await ctx.transfer(to)
    except TransferFailed as exc:
        # Said plainly, so the model tells the caller they are still on the line.
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "transferred_to": number}


BUILTIN_TOOLS: dict[str, Tool] = {t.name: t for t in (end_call, transfer_call)}


class ToolSet:
    """The tools of one agent profile, looked up by name."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools = {t.name: t for t in tools}

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self._tools.values()]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def without(self, names: Iterable[str]) -> ToolSet:
        """These tools less ``names`` (for a call on which those cannot work)."""
        drop = set(names)
        return ToolSet(t for name, t in self._tools.items() if name not in drop)


ToolFn = Callable[..., Awaitable[Any] | Any]
