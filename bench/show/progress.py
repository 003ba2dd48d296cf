"""Progress of a run on stderr: on a terminal a status line at once (what is being loaded or
measured, erased by what comes next) and then a tqdm bar with elapsed time, ETA and the case in
words, redrawn every second while a case runs; elsewhere (logs, CI) one line per finished case."""

from __future__ import annotations

import os
import sys
import threading
import time

from tqdm import tqdm

from bench.show import units

_status_shown = False


def status(text: str, stream=None):
    """On a terminal, say what is happening now on a line that the next output replaces (so a
    usage error found meanwhile is still the only line). Off a terminal, nothing."""
    global _status_shown
    stream = stream or sys.stderr
    if stream.isatty():
        stream.write(f"\r\033[K{text} ...")
        stream.flush()
        _status_shown = True


def clear_status(stream=None):
    global _status_shown
    if _status_shown:
        stream = stream or sys.stderr
        stream.write("\r\033[K")
        stream.flush()
        _status_shown = False


def describe(case) -> str:
    """The case in words: what runs, at which size, how."""
    parts = [f"{case.arch} {case.preset}", f"prompt {units.sig(case.seq_len)} + {case.gen_len} decode steps"]
    if case.batch != 1:
        parts.append(f"batch {case.batch}")
    if case.window is not None:
        parts.append(f"window {case.window}")
    if case.bitnet != "none":
        parts.append(f"BitNet {case.bitnet}")
    mode = getattr(case, "decode_mode", "eager")
    parts.append(f"{case.dtype}, {case.backend}{'' if mode == 'eager' else f', decode {mode}'}")
    return ", ".join(parts)


class Progress:
    """`show(case)` when a case starts, `done(case, status, seconds)` when it ends, `close()`;
    `note` says more (which of a case's processes)."""

    def __init__(self, total: int, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.count = total, 0
        self.start = time.monotonic()
        self.tty = self.stream.isatty()
        self.bar = None
        self._stop = threading.Event()
        clear_status(self.stream)
        if self.tty and total:
            try:  # a terminal that reports no size (0 x 0) would get an empty, hidden bar
                size = os.get_terminal_size(self.stream.fileno())
                sized = size.columns > 0 and size.lines > 0
            except (OSError, ValueError):
                sized = False
            self.bar = tqdm(total=total, file=self.stream, unit="case", dynamic_ncols=sized,
                            ncols=None if sized else 110, nrows=None if sized else 24, leave=True,
                            bar_format="{n_fmt}/{total_fmt} |{bar:16}| {elapsed} elapsed, ETA {remaining} | {desc}")
            # tqdm redraws only when told: keep the elapsed time moving during a long case
            threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self):
        while not self._stop.wait(1.0):
            try:
                self.bar.refresh()
            except Exception:  # closed meanwhile
                return

    def show(self, case, note: str = ""):
        if self.bar is not None:
            self.bar.set_description_str(describe(case) + (f" ({note})" if note else ""))

    def eta(self) -> str:
        if not self.count:
            return "?"
        left = (time.monotonic() - self.start) / self.count * (self.total - self.count)
        return tqdm.format_interval(left)

    def done(self, case, status: str, seconds: float, note: str = ""):
        self.count += 1
        note = f" ({note})" if note else ""
        if self.bar is not None:
            if status != "ok":
                self.bar.write(f"{case.case_id}{note}: {status}", file=self.stream)
            self.bar.update(1)
            return
        elapsed = tqdm.format_interval(time.monotonic() - self.start)
        print(f"[{self.count}/{self.total}] {elapsed} elapsed, ETA {self.eta()} | {describe(case)}{note}: {status} "
              f"in {seconds:.1f} s ({case.case_id})", file=self.stream, flush=True)

    def close(self):
        self._stop.set()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
