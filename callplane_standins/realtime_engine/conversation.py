"""The conversation of one Realtime session: ordered items, their audio, and what was heard.

Items are stored in their GA wire shape without audio (that is what ``conversation.item.added``
and ``response.done`` carry); audio bytes and recognition results sit beside them.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from callplane.audio import AudioFormat
from callplane_standins.realtime_engine.protocol import RealtimeError
from callplane_standins.realtime_engine.script import Heard


@dataclass(slots=True)
class Item:
    """One conversation item and what the engine knows about it."""

    data: dict[str, Any]
    audio: bytearray = field(default_factory=bytearray)
    audio_format: AudioFormat | None = None
    # For user turns: the recognition of the turn, filled when it completes.
    heard: asyncio.Future[Heard] | None = None

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def audio_ms(self) -> float:
        return self.audio_format.duration_ms(len(self.audio)) if self.audio_format else 0.0

    def wire(self, *, with_audio: bool = False) -> dict[str, Any]:
        """The GA item; audio is only included for ``conversation.item.retrieved``."""
        data = copy.deepcopy(self.data)
        if with_audio and self.audio and data.get("content"):
            data["content"][0]["audio"] = base64.b64encode(bytes(self.audio)).decode("ascii")
        return data


class ConversationItems:
    """The session's conversation as the protocol sees it: ordered items with lookup by id.

    Not to be confused with :class:`callplane.conversation.Conversation` (a call's dialogue
    logic in production): this is only the engine's list of items.
    """

    def __init__(self) -> None:
        self._items: list[Item] = []
        self._by_id: dict[str, Item] = {}

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def last_id(self) -> str | None:
        return self._items[-1].id if self._items else None

    def find(self, item_id: str) -> Item | None:
        return self._by_id.get(item_id)

    def get(self, item_id: str, param: str = "item_id") -> Item:
        item = self._by_id.get(item_id)
        if item is None:
            raise RealtimeError(
                f"Item with item_id not found: {item_id}", code="item_not_found", param=param
            )
        return item

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert after ``previous_item_id`` ("root" = first; None = append); return the
        id of the item it now follows."""
        if item.id in self._by_id:
            raise RealtimeError(
                f"Item with id {item.id!r} already exists.",
                code="duplicate_item_id",
                param="item.id",
            )
        if previous_item_id is None:
            prev = self.last_id()
            self._items.append(item)
        elif previous_item_id == "root":
            prev = None
            self._items.insert(0, item)
        else:
            anchor = self.get(previous_item_id, param="previous_item_id")
            prev = anchor.id
            self._items.insert(self._items.index(anchor) + 1, item)
        self._by_id[item.id] = item
        return prev

    def delete(self, item_id: str) -> None:
        item = self.get(item_id)
        self._items.remove(item)
        del self._by_id[item_id]

    def items(self) -> list[Item]:
        return list(self._items)
