"""The CLI's progress line: one line on stderr, redrawn in place with `\\r`.

`render_progress` is pure (state, stage, step/total, a bar, elapsed time, or a
queued job's place in line) so it can be tested; `ProgressLine` draws it,
redrawing in place on a terminal and writing one line per change of state,
stage or place otherwise (so logs and pipes stay readable).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, TextIO

BAR_WIDTH = 24


def format_elapsed(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{rest:02d}s"


def render_bar(step: int, total: int, width: int = BAR_WIDTH) -> str:
    """`[#####-----]`; empty when the total is unknown."""
    if total <= 0:
        return "[" + " " * width + "]"
    filled = round(width * min(max(step, 0), total) / total)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def format_wait(seconds: float) -> str:
    """A rough time to wait: `~12 s`, `~4 min`."""
    seconds = max(0, round(seconds))
    return f"~{seconds} s" if seconds < 90 else f"~{round(seconds / 60)} min"


def render_queue(queue: dict[str, Any], now: datetime) -> str:
    """A queued job's place, e.g. `#3 in line, ~12 s`: `position` counts the
    jobs expected to start before it, so the place is one more; a dispatched
    job waits only for a free worker. The wait is left out while unknown."""
    if queue.get("dispatched"):
        text = "next, for the first free worker"
    else:
        text = f"#{int(queue.get('position') or 0) + 1} in line"
    start = _instant(queue.get("estimated_start_at"))
    if start is not None:
        text += ", " + format_wait((start - now).total_seconds())
    return text


def _instant(text: Any) -> datetime | None:
    """An RFC 3339 time (UTC when it names no offset), or None."""
    try:
        instant = datetime.fromisoformat(str(text)) if text else None
    except ValueError:
        return None
    return instant.replace(tzinfo=instant.tzinfo or UTC) if instant else None


def render_progress(
    state: str,
    step: int,
    total: int,
    elapsed: float,
    width: int = BAR_WIDTH,
    *,
    stage: str | None = None,
    place: str | None = None,
) -> str:
    """One progress line: `running    denoising       7/15 [#####------]  46%  3.2s`
    (the stage, when the job reports one, says what a full bar is waiting
    for), or for a queued job its place in line: `queued     #3 in line, ~12 s  0.4s`."""
    if place:
        return f"{state:<10} {place}  {format_elapsed(elapsed)}"
    if total > 0:
        step = min(max(step, 0), total)
        counts = f"{step:>{len(str(total))}}/{total}"
        percent = f"{100 * step // total:>3d}%"
    else:
        counts, percent = "-/-", "   -"
    label = f"{state:<10} {stage:<15}" if stage else f"{state:<10}"
    return f"{label} {counts} {render_bar(step, total, width)} {percent}  {format_elapsed(elapsed)}"


class ProgressLine:
    """Draws the progress of one job on `stream` (stderr)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        clock=time.monotonic,
        wall=lambda: datetime.now(UTC),
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.wall = wall
        self.started = clock()
        self.state = "submitted"
        self.stage: str | None = None
        self.queue: dict[str, Any] | None = None
        self.step = 0
        self.total = 0
        self._width = 0
        self._last_status: tuple = ()

    def update(
        self,
        state: str | None = None,
        step: int | None = None,
        total: int | None = None,
        *,
        stage: str | None = None,
        queue: dict[str, Any] | None = None,
    ) -> None:
        """Take what an event or a poll said. A new state forgets the stage
        and the place in line of the one before."""
        if state and state != self.state:
            self.state, self.stage, self.queue = state, None, None
        if step is not None:
            self.step = step
        if total is not None:
            self.total = total
        if stage:
            self.stage = stage
        if queue is not None:
            self.queue = queue
        self.draw()

    def _place(self) -> str | None:
        if self.state != "queued" or not self.queue:
            return None
        return render_queue(self.queue, self.wall())

    def draw(self) -> None:
        place = self._place()
        # The stage says what a running job does (a finished one reads "done").
        stage = self.stage if self.state == "running" else None
        line = render_progress(
            self.state,
            self.step,
            self.total,
            self.clock() - self.started,
            stage=stage,
            place=place,
        )
        # Off a terminal, a line per change of state, stage or place (not of
        # the step, nor of the estimated wait), so logs and pipes stay short.
        line_up = (self.queue.get("position"), self.queue.get("dispatched")) if place else None
        status = (self.state, stage, line_up)
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        elif status != self._last_status:
            self.stream.write(line + "\n")
        self._last_status = status
        self.stream.flush()

    def finish(self) -> None:
        """End the line so later output starts on a fresh one."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0
