"""`dagster dev` (webserver + daemon + code server) as a subprocess on a Dagster home of its own, for the
browser test and the end-to-end bench: started, waited for, queried over GraphQL, and stopped by pid.

The home holds copies of the project's dagster.yaml and workspace.yaml, so the instance is the production
one (dagster-postgres storage, queued runs, pools); `EMBED_DAGSTER_DATABASE_URL` points its storage at a
database of its own, so nothing mixes with the user's run history.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fresh_database(url: str, name: str) -> str:
    """(Re)create database ``name`` on the server of ``url``; returns its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {name}")
    head, sep, query = url.partition("?")
    return head.rsplit("/", 1)[0] + f"/{name}" + sep + query


def drop_database(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_home(path: Path) -> Path:
    """A DAGSTER_HOME with the project's instance and workspace files."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(REPO / name, path / name)
    return path


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class DagsterDev:
    """``with DagsterDev(home, env) as dev: dev.graphql(...)``; every process it started is gone on exit."""

    def __init__(self, home: Path, env: dict[str, str], log: Path, progress: Callable[[str], None] = print) -> None:
        self.home, self.log_path, self.progress = home, log, progress
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
        self.proc: subprocess.Popen | None = None
        self.pids: set[int] = set()

    def __enter__(self) -> DagsterDev:
        dagster = Path(sys.executable).parent / "dagster"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(dagster), "dev", "-w", str(self.home / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=self.home,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pids.add(self.proc.pid)
        try:
            self.wait_until_loaded()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _remember_children(self) -> None:
        if self.proc is not None:
            self.pids.update(descendants(self.proc.pid))

    def wait_until_loaded(self, timeout_s: float = 180.0) -> None:
        """Until the webserver answers and the code location `embed_assets` is loaded."""
        deadline, last = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            self._remember_children()
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                data = self.graphql(
                    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                    "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
                )
                entries = data["workspaceOrError"]["locationEntries"]
                status = {e["name"]: (e["loadStatus"], e["locationOrLoadError"]) for e in entries}
                state = status.get("embed_assets")
                if state and state[0] == "LOADED":
                    if state[1] and state[1]["__typename"] == "PythonError":
                        raise RuntimeError(f"code location failed to load: {state[1]['message']}")
                    self.progress(f"dagster dev up on {self.url} (pid {self.proc.pid})")
                    return
                last = f"location state {state}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                last = f"webserver not answering yet ({e})"
            time.sleep(1)
        raise TimeoutError(f"dagster dev not ready after {timeout_s:.0f}s: {last}; log: {self.log_path}")

    def graphql(self, query: str, variables: dict | None = None, timeout_s: float = 120.0) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (loopback URL we built)
            payload = json.loads(resp.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM `dagster dev` (it shuts its webserver, daemon and code server down), then SIGKILL by pid
        whatever of them is still alive; raises if any process it started survives."""
        if self.proc is None:
            return
        self._remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        self._remember_children() if self.proc.poll() is None else None
        for pid in sorted(self.pids):
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in self.pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._log.close()
        survivors = [p for p in self.pids if alive(p)]
        self.proc = None
        if survivors:
            raise RuntimeError(f"processes started by dagster dev still alive: {survivors}")
