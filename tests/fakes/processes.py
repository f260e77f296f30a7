"""Child processes the tests start: stopped the way a service manager stops them."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen, timeout: float = 30) -> str:
    """SIGTERM, wait for the exit (SIGKILL after `timeout` s); returns its output."""
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate(timeout=10)
    return output
