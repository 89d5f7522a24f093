"""Helpers for tests that run servers on 127.0.0.1 or kill processes mid-run."""

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

SERVER = Path(__file__).parent / "fake_openai_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def kill_when(cmd: list[str], ready: Callable[[], bool], seconds: float, env: dict | None = None,
              settle_s: float = 3.0) -> None:
    """Start `cmd` and SIGKILL it as soon as `ready()` holds; fail if it ends on its own first. Then
    wait a moment: workers write their own output, and Ray stops a dead driver's workers shortly
    after it dies, so what is on disk settles only then."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + seconds
    while not ready():
        assert proc.poll() is None, f"{' '.join(cmd[:2])} finished before it could be killed"
        assert time.time() < deadline, f"gave up waiting to kill {' '.join(cmd[:2])}"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    time.sleep(settle_s)
