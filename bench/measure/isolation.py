"""Each case in a process of its own, forked from a server that imported torch and the models
but never computed anything (forking after OpenMP or CUDA start-up is unsafe).

This module imports no torch, so the CLI can start the server first and let it load torch
while the parent reads the suite. OpenMP threads that spin while they wait collapse when other
processes share the cores (10 to 50x slower steps on a loaded 2-core machine), so the server
starts with OMP_WAIT_POLICY=PASSIVE unless the user chose a policy.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.forkserver
import os
import signal

PRELOAD = ["bench.measure.preload", "bench.measure.runner"]
_context = None


def context():
    """The forkserver context (configured once)."""
    global _context
    if _context is None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def start():
    """Start the server now (it loads torch in the background); cases connect to it later."""
    context()
    multiprocessing.forkserver.ensure_running()


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]


def _die_with_server():
    """A killed run must leave no case computing on (and holding a GPU). The server exits once
    no process holds its "alive" pipe; multiprocessing hands each child a copy so that it could
    start processes of its own, which a case never does: closing it leaves the CLI the only
    holder. Then (Linux) the case asks for SIGKILL when its parent, the server, dies."""
    try:
        server = multiprocessing.forkserver._forkserver
        if server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
            server._forkserver_alive_fd = None
    except (AttributeError, OSError):  # another Python's internals: the case may outlive a kill
        pass
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: an orphan finishes its case, then exits
        pass


def _child(conn, fn, args, threads):
    # Ctrl-C in a terminal reaches the whole process group: the parent prints how to resume and
    # exits, and this case dies with the server (above). Its own KeyboardInterrupt would only
    # print a second story (a traceback, or a BrokenPipeError answering a parent that is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_server()
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        result = ("ok", fn(*args))
    except BaseException as e:  # report anything to the parent, which records it
        result = ("raised", one_line(e))
    try:
        conn.send(result)
        conn.close()
    except (BrokenPipeError, ConnectionResetError):  # the parent is gone: no one to answer
        pass


def run_isolated(fn, *args, threads: int | None = None, timeout_s: float | None = None):
    """fn(*args) in a fresh fork of the server: ("ok", value), ("raised", text), ("died", exit
    code) when the process ended without answering (a signal, the OOM killer), or ("timeout",
    seconds) when it gave no answer within timeout_s and was killed."""
    ctx = context()
    recv, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, fn, args, threads), daemon=True)
    process.start()
    send.close()
    if timeout_s is not None and not recv.poll(timeout_s):  # hung (or just too slow): stop it
        process.kill()
        process.join()
        recv.close()
        return ("timeout", timeout_s)
    try:
        answer = recv.recv()
    except EOFError:
        answer = None
    process.join()
    recv.close()
    return answer if answer is not None else ("died", process.exitcode)
