"""DAGSTER_HOME as Dagster users keep it: a folder of its own for the instance (dagster.yaml and the files
Dagster keeps there), not the code. The project's dagster.yaml is written there when it has none; the code's
workspace.yaml is found where the project keeps it, or generated under EMBED_HOME for an installed package."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PROJECT_STORAGE = "embed_assets.instance"
STORAGE_KEYS = ("run_storage", "event_log_storage", "schedule_storage")
WORKSPACE = """load_from:
  - python_module:
      module_name: embed_assets.definitions
      location_name: embed_assets
"""
# The repository's dagster.yaml, for an installed package (no checkout to copy it from).
# embed_assets_tests/test_dagster_home.py fails when the two differ.
PACKAGED_DAGSTER_YAML = """\
# Dagster instance for embed_assets: DAGSTER_HOME is the folder that holds this file (the repository root,
# or a folder of its own: `embed-assets` writes this file into an empty one).
# Storage: database `dagster` on the embedded server under EMBED_HOME by default; schema `dagster` of the
# EMBED_DATABASE_URL database in production (or EMBED_DAGSTER_DATABASE_URL: a session-mode or direct URL,
# never a transaction pooler). See embed_assets/instance.py and lib/db/connection.py for how it is resolved.
run_storage:
  module: embed_assets.instance
  class: EmbedRunStorage
event_log_storage:
  module: embed_assets.instance
  class: EmbedEventLogStorage
schedule_storage:
  module: embed_assets.instance
  class: EmbedScheduleStorage
local_artifact_storage:
  module: embed_assets.instance
  class: EmbedArtifactStorage
compute_logs:
  module: embed_assets.instance
  class: EmbedComputeLogManager

run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    # The daemon looks at the queue every second (default 5 s: a run waited up to 5 s for a free slot) and
    # launches dequeued runs on threads, so one slow process start does not hold up the next (`make bench`, e2e).
    dequeue_interval_seconds: 1
    dequeue_use_threads: true

run_launcher:
  # Dagster's default launcher plus a worker health check, so run monitoring can tell a run whose worker
  # died (SIGKILL, out of memory) from one still working (embed_assets/instance.py, dead_runs.py).
  module: embed_assets.instance
  class: EmbedRunLauncher

run_monitoring:
  # The daemon (`embed-assets dev`) checks STARTED runs every poll_interval_seconds: a run whose worker died
  # is marked FAILED at the next check, and its pool slots freed free_slots_after_run_end_seconds after that,
  # at the check after: within 1 minute in all (embed_assets_tests/test_dead_runs.py). Without a daemon,
  # `embed-assets embed` reclaims such runs before its first run.
  enabled: true
  poll_interval_seconds: 20
  start_timeout_seconds: 300  # queued -> started takes seconds here; 5 min means the launch is broken
  cancel_timeout_seconds: 120
  max_resume_run_attempts: 0  # a failed run is retried by retry_failed_recordings, not resumed
  free_slots_after_run_end_seconds: 5

concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    # chunk_embeddings declares pool "embedding_provider": at most this many steps call the provider at
    # once across all runs (each with up to max_concurrency requests in flight).
    default_limit: 2
    granularity: op

telemetry:
  enabled: false
nux:
  enabled: false
"""


def checkout_root() -> Path | None:
    """The source checkout this package runs from (embed-assets' pyproject.toml beside it), or None."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "embed-assets"' in pyproject.read_text(encoding="utf-8"):
        return root
    return None


def project_instance_config() -> tuple[str, str]:
    """The project's dagster.yaml and where it comes from: the checkout's, else the copy in this module."""
    root = checkout_root()
    if root is not None and (root / "dagster.yaml").is_file():
        path = root / "dagster.yaml"
        return path.read_text(encoding="utf-8"), str(path)
    return PACKAGED_DAGSTER_YAML, "the copy inside the embed_assets package"


def storage_warning(config: Mapping[str, Any] | None) -> str | None:
    """Where an instance config keeps Dagster's runs if not on the project's storage classes, else None."""
    config = config or {}
    if "storage" in config:
        return f"the storage its `storage:` section names ({', '.join(map(str, config['storage'] or {})) or 'none'})"
    for key in STORAGE_KEYS:
        section = config.get(key)
        if not section:
            return f"Dagster's default {key} (SQLite files under DAGSTER_HOME)"
        if not isinstance(section, Mapping):
            return f"{key}: {section!r}"
        if section.get("module") != PROJECT_STORAGE:
            return f"{key}: {section.get('module')}.{section.get('class')}"
    return None


def ensure_instance_config(home: Path) -> str | None:
    """Make ``home`` a usable DAGSTER_HOME. Returns one line for the user, or None when there is nothing to
    say: dagster.yaml created from the project's, or a warning that the one there keeps Dagster's storage
    elsewhere (it is used as it is)."""
    path = home / "dagster.yaml"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        text, source = project_instance_config()
        path.write_text(f"# Written by embed-assets from {source}; edit freely, it is never overwritten.\n{text}")
        return (
            f"DAGSTER_HOME had no dagster.yaml: wrote {path} from {source} (Dagster storage on the project's database)"
        )
    try:
        where = storage_warning(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as e:
        return f"warning: {path} is not valid YAML ({str(e).splitlines()[0]}); Dagster will refuse it"
    if where is None:
        return None
    return f"warning: {path} does not use the project's storage ({PROJECT_STORAGE}); Dagster keeps its runs in {where}"


def workspace_file(home: Path, embed_home: Path) -> Path:
    """DAGSTER_HOME's own workspace.yaml when it has one, else the checkout's, else one written under EMBED_HOME
    that loads embed_assets.definitions (an installed package has no checkout)."""
    root = checkout_root()
    for candidate in (home / "workspace.yaml", root / "workspace.yaml" if root else None):
        if candidate is not None and candidate.is_file():
            return candidate
    path = embed_home / "workspace.yaml"
    if not path.is_file() or path.read_text(encoding="utf-8") != WORKSPACE:
        embed_home.mkdir(parents=True, exist_ok=True)
        path.write_text(WORKSPACE, encoding="utf-8")
    return path
