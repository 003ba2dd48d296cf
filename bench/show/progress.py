"""Progress of a run on stderr."""

from __future__ import annotations

import sys


class Progress:
    """A one-line bar on a terminal, one line per case otherwise (logs, CI)."""

    def __init__(self, total: int, width: int = 24):
        self.total, self.width, self.count = total, width, 0
        self.tty = sys.stderr.isatty()

    def _bar(self) -> str:
        filled = self.width * self.count // max(1, self.total)
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {self.count}/{self.total}"

    def show(self, case_id: str):
        if self.tty:
            print(f"\r{self._bar()} {case_id[:70]:<70}", end="", file=sys.stderr, flush=True)

    def done(self, case_id: str, status: str, seconds: float):
        self.count += 1
        if self.tty:
            print(f"\r{self._bar()} {case_id[:60]:<60} {status}", end="\n" if self.count == self.total else "",
                  file=sys.stderr, flush=True)
        else:
            print(f"{self._bar()} {case_id} {status} {seconds:.1f}s", file=sys.stderr, flush=True)
