"""Run the explorer's Streamlit server, warmed before its first visitor.

    code = serve(["--workspace", "demo-workspace"], port=8501, on_ready=print)

Streamlit runs app/explorer.py only when a session starts, so on a plain
`streamlit run` the first visitor waits for the imports (torch, the catalog layer),
the models, the index and the saved maps. Here the server starts with Streamlit's
script health check enabled and, as soon as it answers, one request to that check runs
the page once in a session of its own. What the page caches for every session
(st.cache_resource: the Recommender, the tables, the first-page map) is then loaded,
and a visitor's first page only lays it out.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

SCRIPT = Path(__file__).resolve().with_name("explorer.py")
HEALTH = "/_stcore/health"
SCRIPT_HEALTH = "/_stcore/script-health-check"  # runs the script once (server.scriptHealthCheckEnabled)
WARM_TIMEOUT_S = 300.0  # Streamlit itself gives up on the check after 60 s; the page then goes on loading


def streamlit_command(explorer_args: Sequence[str], port: int, address: str | None = None) -> list[str]:
    """`python -m streamlit run app/explorer.py` headless on `port`, with the script health check on."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(SCRIPT), "--server.port", str(port)]
    if address is not None:
        cmd += ["--server.address", address]
    cmd += [
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.scriptHealthCheckEnabled", "true",
        "--", *explorer_args,
    ]  # fmt: skip
    return cmd


def wait_until_up(port: int, proc: subprocess.Popen, timeout: float = 120.0, host: str = "127.0.0.1") -> None:
    """Return once the server answers its health endpoint; RuntimeError when it exits or stays silent."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode} before it answered on port {port}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{HEALTH}", timeout=2) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last = str(e)  # not listening yet
        time.sleep(0.2)
    raise RuntimeError(f"streamlit did not answer on port {port} within {timeout:.0f} s ({last})")


def warm(port: int, timeout: float = WARM_TIMEOUT_S, host: str = "127.0.0.1") -> str:
    """Run the page once on the server: "ok", "error" (the page raised; visitors will see why) or "timeout"."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{SCRIPT_HEALTH}", timeout=timeout) as r:
            return r.read().decode(errors="replace").strip() or "ok"
    except urllib.error.HTTPError as e:  # 503: the script raised, or Streamlit's own 60 s passed
        return e.read().decode(errors="replace").strip() or f"HTTP {e.code}"
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return "timeout"


def serve(
    explorer_args: Sequence[str],
    port: int,
    env: Mapping[str, str] | None = None,
    on_ready: Callable[[str], None] | None = None,
    address: str | None = None,
) -> int:
    """Start the explorer's server, warm it, tell `on_ready` (with warm's status), then serve until it
    exits or Ctrl-C; returns its exit code."""
    proc = subprocess.Popen(streamlit_command(explorer_args, port, address), env=dict(env) if env else None)
    host = (
        address if address not in (None, "", "0.0.0.0") else "127.0.0.1"
    )  # a bind-all address is reached locally
    try:
        try:
            wait_until_up(port, proc, host=host)
        except RuntimeError:
            if proc.poll() is not None:
                return proc.returncode  # streamlit has said why
            raise
        status = warm(port, host=host)
        if on_ready is not None:
            on_ready(status)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
