"""Ctrl-C in a terminal: `python -m bench run` on a pseudo-terminal gets SIGINT in its whole
process group (as a terminal sends it) while its first case runs, and prints the resume hint and
nothing else."""

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pty = pytest.importorskip("pty")

# One case of a few seconds (a 4K prompt on the small preset), so that SIGINT lands inside it.
SUITE = """
[suite]
repeats = 5
warmup = 1
threads = 1

[axes]
arch = ["yoco-gret", "transformer"]
preset = ["small"]
seq_len = [4096]
gen_len = [64]
"""
BAR = re.compile(r"^\d+/\d+ \|.*\| [\d:]+ elapsed, ETA ")


def read_until(fd, out: bytearray, done, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if done(out):
            return True
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the other side closed: EIO on Linux
                return done(out)
            if not data:
                return done(out)
            out += data
    return done(out)


def test_ctrl_c_in_a_terminal_prints_the_resume_hint_and_nothing_else(tmp_path):
    suite = tmp_path / "one.toml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    primary, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "bench", "run", "--suite", str(suite), "--device", "cpu",
                                "--out", str(out)], stdin=secondary, stdout=secondary, stderr=secondary, cwd=REPO,
                               start_new_session=True,  # its own process group, as a shell's job
                               # with SIGINT at its default, as a terminal's foreground job has it (a
                               # test run started in the background, `pytest &`, inherits it ignored)
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(secondary)
    text = bytearray()
    try:
        started = read_until(primary, text, lambda t: b"| yoco-gret small, prompt 4,096" in t, 180)
        assert started, f"the first case never started:\n{text.decode(errors='replace')}"
        time.sleep(0.5)
        mark = len(text)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        read_until(primary, text, lambda t: False, 5)
        code = process.wait(timeout=60)
        read_until(primary, text, lambda t: False, 0.5)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        os.close(primary)
    before, after = text[:mark].decode(errors="replace"), text[mark:].decode(errors="replace")
    assert code == 130, after
    # After the signal: the bar's last redraw, then the hint, and nothing else.
    lines = [line.strip() for line in re.split(r"[\r\n]+", after) if line.strip()]
    said = [line for line in lines if not BAR.match(line)]
    assert said == [f"interrupted: finish with `python -m bench run --resume {out}`"], after
    assert "Traceback" not in before + after and "Error" not in before + after
    assert (out / "env.json").is_file()  # resumable
