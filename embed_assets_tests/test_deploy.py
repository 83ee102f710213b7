"""deploy/: the production dagster.yaml loads with Dagster's real config schema and works against a real
Postgres; the Helm values name the same tags, pool and module as the code; the Dockerfile's instructions
run in a plain venv and serve the code location (deploy/verify_dockerfile.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml

from embed_assets.defs.assets import chunk_embeddings
from embed_assets.defs.health import RETRY_TRIGGER, TRIGGER_TAG
from embed_assets_tests.support.dagster_dev import REPO

DEPLOY = REPO / "deploy"


def _home(tmp_path: Path, text: str | None = None) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(text if text is not None else (DEPLOY / "dagster.yaml").read_text())
    return home


def test_production_instance_loads_and_stores(tmp_path: Path, dagster_db: str, monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", dagster_db)
    instance = dg.DagsterInstance.from_config(str(_home(tmp_path)))
    try:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 16
        limits = concurrency.run_queue_config.tag_concurrency_limits
        assert {"key": TRIGGER_TAG, "value": RETRY_TRIGGER, "limit": 4} in limits
        assert concurrency.pool_config.default_pool_limit == 4
        assert instance.run_monitoring_enabled
        # The storage is the real Postgres behind the URL: what one instance writes, another reads.
        instance.add_dynamic_partitions("recordings", ["deploy-check"])
        other = dg.DagsterInstance.from_config(str(_home(tmp_path)))
        assert other.get_dynamic_partitions("recordings") == ["deploy-check"]
        other.dispose()
        with psycopg.connect(dagster_db) as c:
            assert c.execute("SELECT to_regclass('runs') IS NOT NULL").fetchone()[0]
    finally:
        instance.dispose()


def test_production_instance_rejects_a_misspelled_key(tmp_path: Path, dagster_db: str, monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", dagster_db)
    text = (DEPLOY / "dagster.yaml").read_text().replace("max_concurrent_runs:", "max_concurent_runs:")
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurent_runs"):
        dg.DagsterInstance.from_config(str(_home(tmp_path, text)))


def test_production_instance_names_a_missing_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DAGSTER_POSTGRES_URL", raising=False)
    with pytest.raises(Exception, match="DAGSTER_POSTGRES_URL"):
        dg.DagsterInstance.from_config(str(_home(tmp_path)))


def test_helm_values_match_the_code() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("-m") + 1] == "embed_assets.definitions"
    assert args[args.index("--location-name") + 1] == "embed_assets"  # as workspace.yaml names it
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert {"key": TRIGGER_TAG, "value": RETRY_TRIGGER, "limit": 4} in queued["tagConcurrencyLimits"]
    assert chunk_embeddings.op.pool == "embedding_provider"
    assert "embedding_provider" in (DEPLOY / "helm" / "values.yaml").read_text()
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["location_name"] == "embed_assets"


@pytest.mark.slow
def test_dockerfile_instructions_run_in_a_plain_venv() -> None:
    """Minutes: a fresh venv installs the project as the image would, then the CMD serves the location."""
    if shutil.which("git") is None:
        pytest.skip("git missing")
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "verify_dockerfile.py")], capture_output=True, text=True, timeout=1800
    )
    print(result.stdout[-4000:], result.stderr[-4000:])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "the code server serves embed_assets.definitions" in result.stdout
