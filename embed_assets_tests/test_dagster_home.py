"""DAGSTER_HOME kept as Dagster users keep it: a folder of its own, possibly empty. `embed-assets` writes the
project's dagster.yaml there (or warns about a foreign one) and finds the code's workspace.yaml elsewhere;
`embed-assets dev` serves the code location from such a home."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
import yaml

from embed_assets import dagster_home
from embed_assets.dagster_home import ensure_instance_config, storage_warning, workspace_file
from embed_assets_tests.conftest import REPO
from embed_assets_tests.support.dagster_dev import free_port

BIN = Path(sys.executable).parent


def test_the_packaged_copy_is_the_repository_dagster_yaml() -> None:
    assert dagster_home.PACKAGED_DAGSTER_YAML == (REPO / "dagster.yaml").read_text(encoding="utf-8")


def test_an_empty_home_gets_the_project_dagster_yaml_once(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    note = ensure_instance_config(home)
    written = home / "dagster.yaml"
    assert note == (
        f"DAGSTER_HOME had no dagster.yaml: wrote {written} from {REPO / 'dagster.yaml'} "
        "(Dagster storage on the project's database)"
    )
    config = yaml.safe_load(written.read_text())
    assert config == yaml.safe_load((REPO / "dagster.yaml").read_text()) and storage_warning(config) is None
    written.write_text(written.read_text() + "# the user's edit\n")
    assert ensure_instance_config(home) is None  # nothing to say, and the user's file is kept
    assert written.read_text().endswith("# the user's edit\n")


def test_an_installed_package_writes_its_packaged_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dagster_home, "checkout_root", lambda: None)
    note = ensure_instance_config(tmp_path)
    assert note is not None and "from the copy inside the embed_assets package" in note
    assert yaml.safe_load((tmp_path / "dagster.yaml").read_text()) == yaml.safe_load(dagster_home.PACKAGED_DAGSTER_YAML)


def test_a_foreign_dagster_yaml_is_used_with_one_warning(tmp_path: Path) -> None:
    shutil.copy(REPO / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    before = (tmp_path / "dagster.yaml").read_text()
    note = ensure_instance_config(tmp_path)
    assert note == (
        f"warning: {tmp_path / 'dagster.yaml'} does not use the project's storage (embed_assets.instance); "
        "Dagster keeps its runs in the storage its `storage:` section names (postgres)"
    )
    assert (tmp_path / "dagster.yaml").read_text() == before
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert "Dagster's default run_storage (SQLite files under DAGSTER_HOME)" in (ensure_instance_config(tmp_path) or "")


def test_workspace_is_the_homes_the_checkouts_or_a_generated_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, embed_home = tmp_path / "home", tmp_path / "embed_home"
    home.mkdir()
    assert workspace_file(home, embed_home) == REPO / "workspace.yaml"
    (home / "workspace.yaml").write_text((REPO / "workspace.yaml").read_text())
    assert workspace_file(home, embed_home) == home / "workspace.yaml"
    (home / "workspace.yaml").unlink()
    monkeypatch.setattr(dagster_home, "checkout_root", lambda: None)
    generated = workspace_file(home, embed_home)
    assert generated == embed_home / "workspace.yaml"
    assert yaml.safe_load(generated.read_text()) == yaml.safe_load((REPO / "workspace.yaml").read_text())


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the whole process group (`dagster dev` shuts its webserver, daemon and code server down),
    SIGKILL whatever is left after ``grace_s``; raises if any process of the group survives."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_alive(pgid):
                return
            time.sleep(0.2)
    raise AssertionError(f"processes of `embed-assets dev` still alive: {_group_alive(pgid)}")


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", json.dumps({"query": query}).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback URL we built)
        return json.loads(response.read())["data"]


LOCATIONS = (
    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
    "locationOrLoadError { __typename ... on RepositoryLocation { repositories { jobs { name } } } "
    "... on PythonError { message } } } } } }"
)


def test_dev_serves_the_code_location_from_an_empty_dagster_home(
    tmp_path: Path, conn: psycopg.Connection, dagster_db: str
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "dev.log"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "EMBED_DAGSTER_DATABASE_URL": dagster_db,
        "EMBED_RETRY_CRON": "0 3 1 1 *",  # no retry tick during the test
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "embed-assets"), "dev", "--port", str(port)],
            cwd=tmp_path,  # not the repository: the workspace must be found, not picked up from the cwd
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline, last, location = time.monotonic() + 240, "", None
            while time.monotonic() < deadline and location is None:
                assert proc.poll() is None, f"embed-assets dev exited with {proc.returncode}: {log_path.read_text()}"
                try:
                    entries = _graphql(url, LOCATIONS)["workspaceOrError"]["locationEntries"]
                    found = {e["name"]: e for e in entries}.get("embed_assets")
                    if found and found["loadStatus"] == "LOADED":
                        location = found["locationOrLoadError"]
                    last = f"location: {found}"
                except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                    last = f"webserver not answering yet ({e})"
                if location is None:
                    time.sleep(1)
            assert location is not None, f"not served within 240 s ({last}); log: {log_path.read_text()[-3000:]}"
            assert location["__typename"] == "RepositoryLocation", location
            jobs = {j["name"] for r in location["repositories"] for j in r["jobs"]}
            assert "embed_recordings" in jobs
            config = yaml.safe_load((home / "dagster.yaml").read_text())
            assert storage_warning(config) is None
            startup = log_path.read_text()
            assert f"wrote {home / 'dagster.yaml'}" in startup
            assert f"workspace {REPO / 'workspace.yaml'}" in startup
        finally:
            _stop_group(proc)
