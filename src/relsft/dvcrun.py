"""Run a DVC command for an orchestrator: output streamed line by line, a failure that names its stage.

Used by the Prefect flows in flows/; plain subprocess, so it works under any orchestrator.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

FAILED_STAGE = re.compile(r"failed to reproduce '([^']+)'")


class StageFailed(RuntimeError):
    def __init__(self, stage: str, returncode: int, tail: str):
        self.stage = stage
        super().__init__(f"stage {stage!r} failed (exit {returncode}):\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run_dvc(args: list[str], project_dir: str | Path, log: Callable[[str], None], stage: str | None = None,
            timeout: float | None = None) -> str:
    """Run `dvc <args>` in `project_dir`, passing each output line to `log`; return the whole output.

    On failure, or after `timeout` seconds, raise StageFailed naming `stage` (or the stage DVC
    reports as failed). The timeout is enforced here, not by the orchestrator: a task blocked on a
    silent subprocess cannot be interrupted from outside in a worker thread.
    """
    # The stages are `relsft <stage>`: they must run in the Python environment that runs the flow.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    lines: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=40)
    proc = subprocess.Popen(["dvc", *args], cwd=project_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        _stop(proc)

    watchdog = threading.Timer(timeout, expire) if timeout else None
    if watchdog:
        watchdog.daemon = True
        watchdog.start()
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            tail.append(line)
            log(line)
        returncode = proc.wait()
    finally:
        # A cancellation interrupts us here: do not leave DVC (and training) running.
        if watchdog:
            watchdog.cancel()
        _stop(proc)
    output = "\n".join(lines)
    if timed_out.is_set():
        raise StageFailed(stage or " ".join(args), returncode, f"timed out after {timeout:g} s\n" + "\n".join(tail))
    if returncode != 0:
        reported = FAILED_STAGE.findall(output)
        raise StageFailed(reported[-1] if reported else stage or " ".join(args), returncode, "\n".join(tail))
    return output
