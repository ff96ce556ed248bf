"""Progress reporting for ``--optimize``: a rich progress bar when rich is installed, else one
plain text line on stderr, rewritten in place on a terminal (one line per step otherwise)."""

from __future__ import annotations

import sys
from typing import Optional, TextIO


def rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401
    except Exception:
        return False
    return True


class Progress:
    """``with Progress(total, "optimize") as p: p.advance("flex-fna 8x8/8x8")``."""

    def __init__(self, total: int, description: str = "optimize", stream: Optional[TextIO] = None,
                 use_rich: Optional[bool] = None, enabled: bool = True):
        self.total = max(0, int(total))
        self.description = description
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.use_rich = rich_available() if use_rich is None else use_rich
        self._rich = None
        self._task = None
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self) -> "Progress":
        if not self.enabled:
            return self
        if self.use_rich:
            from rich.console import Console
            from rich.progress import (
                BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                TimeElapsedColumn,
            )

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[item]}"),
                console=Console(file=self.stream), transient=False,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total, item="")
        else:
            self._plain("starting")
        return self

    def _plain(self, item: str) -> None:
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        msg = f"[{self.description}] [{bar}] {self.done}/{self.total} {item}"
        if self._tty:
            self.stream.write("\r" + msg.ljust(100)[:100])
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()

    def advance(self, item: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=1, item=item)
        else:
            self._plain(item)

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.__exit__(*exc)
        elif self._tty:
            self.stream.write("\n")
            self.stream.flush()
