"""The CLI's progress line: one line on stderr, redrawn in place with `\\r`.

`render_progress` is pure (state, step/total, a bar, elapsed time) so it can be
tested; `ProgressLine` draws it, redrawing in place on a terminal and writing
one line per change of state otherwise (so logs and pipes stay readable).
"""

from __future__ import annotations

import time
from typing import TextIO

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


def render_progress(
    state: str, step: int, total: int, elapsed: float, width: int = BAR_WIDTH
) -> str:
    """One progress line, e.g. `running    7/15 [###########-------------]  47%  3.2s`."""
    if total > 0:
        step = min(max(step, 0), total)
        counts = f"{step:>{len(str(total))}}/{total}"
        percent = f"{100 * step // total:>3d}%"
    else:
        counts, percent = "-/-", "   -"
    return f"{state:<10} {counts} {render_bar(step, total, width)} {percent}  {format_elapsed(elapsed)}"


class ProgressLine:
    """Draws the progress of one job on `stream` (stderr)."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, clock=time.monotonic) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.started = clock()
        self.state = "submitted"
        self.step = 0
        self.total = 0
        self._width = 0
        self._last_state = ""

    def update(
        self, state: str | None = None, step: int | None = None, total: int | None = None
    ) -> None:
        if state:
            self.state = state
        if step is not None:
            self.step = step
        if total is not None:
            self.total = total
        self.draw()

    def draw(self) -> None:
        line = render_progress(self.state, self.step, self.total, self.clock() - self.started)
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        elif self.state != self._last_state:
            self.stream.write(line + "\n")
        self._last_state = self.state
        self.stream.flush()

    def finish(self) -> None:
        """End the line so later output starts on a fresh one."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0
