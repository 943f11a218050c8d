"""A Server-Sent Events parser for the CLI, fed with text as it arrives.

Follows the event-stream rules of the HTML standard: lines end with CRLF, LF
or CR; a blank line dispatches the event; `:` starts a comment; `data:` lines
join with newlines; `id:` is remembered across events (it is what
`Last-Event-ID` resumes from); one space after the colon is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The data as JSON, or {} when it is empty or not JSON."""
        try:
            return json.loads(self.data) if self.data else {}
        except ValueError:
            return {}


class SseParser:
    """Incremental: `feed()` any chunk, get back the events it completed."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pending_cr = False
        self._event = ""
        self._data: list[str] = []
        self._retry: int | None = None
        self.last_event_id: str | None = None

    def feed(self, chunk: str) -> list[SseEvent]:
        if self._pending_cr and chunk.startswith("\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        text = self._buffer + chunk
        events: list[SseEvent] = []
        start = 0
        i = 0
        while i < len(text):
            ch = text[i]
            if ch in "\r\n":
                line = text[start:i]
                if ch == "\r":
                    if i + 1 < len(text):
                        if text[i + 1] == "\n":
                            i += 1
                    else:
                        self._pending_cr = True
                start = i + 1
                event = self._line(line)
                if event is not None:
                    events.append(event)
            i += 1
        self._buffer = text[start:]
        return events

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._data and not self._event:
            self._retry = None
            return None
        event = SseEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self.last_event_id,
            retry=self._retry,
        )
        self._event, self._data, self._retry = "", [], None
        return event
