"""A recognisable fake key must appear nowhere: event log, run config, run tags, asset and check metadata,
the CLI's output, Dagster's files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from embed_assets.definitions import defs
from embed_assets_tests.conftest import REPO
from embed_assets_tests.support.openai_server import FakeOpenAI
from embed_assets_tests.test_assets import load, short

CANARY = "sk-canary-KEY-7c1f93d2a8b44e0f9d6e"
WRONG = "sk-wrong-CANARY-4b8e2f61d0a9c3e7"


def leaks(text: str) -> list[str]:
    return [s for s in (CANARY, CANARY[-12:], WRONG, WRONG[-12:], "7c1f93d2", "4b8e2f61") if s in text]


@pytest.fixture
def canary_server(monkeypatch: pytest.MonkeyPatch):
    with FakeOpenAI(api_key=CANARY) as server:
        for k, v in {
            "EMBED_PROVIDER": "openai",
            "EMBED_MODEL": "text-embedding-3-small",
            "EMBED_DIMENSIONS": "384",
            "OPENAI_API_KEY": CANARY,
            "OPENAI_BASE_URL": server.base_url,
            "EMBED_PROBE": "1",
        }.items():
            monkeypatch.setenv(k, v)
        yield server


def test_the_key_appears_nowhere(conn, canary_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        (ok, bad) = load(conn, instance, [short("ok"), short("bad", extra="x")])
        job = defs.resolve_job_def("embed_recordings")
        assert job.execute_in_process(instance=instance, partition_key=ok, raise_on_error=False).success
        monkeypatch.setenv("OPENAI_API_KEY", WRONG)
        failed = job.execute_in_process(instance=instance, partition_key=bad, raise_on_error=False)
        assert not failed.success
        monkeypatch.setenv("EMBED_PROBE", "0")
        failed = job.execute_in_process(instance=instance, partition_key=bad, raise_on_error=False)
        assert not failed.success and canary_server.seen.auth_headers >= {f"Bearer {CANARY}", f"Bearer {WRONG}"}

        found: dict[str, list[str]] = {}
        for run in instance.get_runs():
            for what, text in {
                "run config": serialize_value(run.run_config),
                "run tags": serialize_value(run.tags),
                "event log": "\n".join(serialize_value(e) for e in instance.all_logs(run.run_id)),
            }.items():
                if hits := leaks(text):
                    found[f"{run.run_id} {what}"] = hits
        for path in (tmp_path / "dagster").rglob("*"):
            if path.is_file() and (hits := leaks(path.read_text(errors="replace"))):
                found[str(path)] = hits
    monkeypatch.setenv("OPENAI_API_KEY", WRONG)
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "embed-assets"), "search", "renewal"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": str(REPO)},
    )
    assert cli.returncode != 0 and "OPENAI_API_KEY" in cli.stderr
    if hits := leaks(cli.stdout + cli.stderr):
        found["cli output"] = hits
    assert found == {}
