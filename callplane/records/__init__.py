"""Call records: what happened on each call, stored while the call goes.

:class:`CallRecord` is what a conversation fills (transcript, tool calls, interruptions, keypad
digits, usage, cost); :class:`RecordStore` writes it to SQLite (one process) or PostgreSQL
(several containers) as it changes, and reads it back, live calls included.
"""

from callplane.records.model import CallRecord, RecordListener, Usage
from callplane.records.schema import LOST_REASON
from callplane.records.store import RecordStore

__all__ = ["LOST_REASON", "CallRecord", "RecordListener", "RecordStore", "Usage"]
