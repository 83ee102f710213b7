"""Issue 35: a crashed run never blocks the next. Real `embed-assets embed` processes killed with SIGKILL
mid-step while they hold the embedding_provider pool's slots (the loopback provider holds their requests),
the repository's dagster.yaml, the real embedded server; `embed-assets dev` with its daemon for the case
with run monitoring."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef

from embed_assets.dead_runs import POOL, WORKER_TAG, dead_holders
from embed_assets.lib.db.connection import stop_embedded_server, vector_database_url
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.conftest import REPO
from embed_assets_tests.support.dagster_dev import DagsterDev, descendants, make_home
from embed_assets_tests.support.openai_server import FakeOpenAI

BIN = Path(sys.executable).parent


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 120) -> float:
    """Poll for a condition (coordination only); returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(REPO))) as inst:
        yield inst


def recordings(conn: psycopg.Connection, instance: DagsterInstance, prefix: str, n: int) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(n)]
    for rid in ids:
        upsert_transcript(conn, Transcript(rid, tuple(Segment("A", f"{rid} turn {j} renewal " * 20) for j in range(8))))
    known = instance.get_dynamic_partitions("recordings")
    for key in set(known) - set(ids):  # earlier tests' recordings, gone from the emptied store
        instance.delete_dynamic_partition("recordings", key)
    instance.add_dynamic_partitions("recordings", [r for r in ids if r not in known])
    return ids


def embed(log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "embed-assets"), "embed", "--per-run", "1"],
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": str(REPO), **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def holding(instance: DagsterInstance) -> list[str]:
    """Run ids holding a slot of the provider pool."""
    return [s.run_id for s in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots]


def exactly_once(conn: psycopg.Connection, ids: list[str]) -> None:
    for rid in ids:
        chunks, vectors, dupes = conn.execute(
            """SELECT (SELECT count(*) FROM embed_assets.chunks WHERE recording_id = %(r)s),
                      (SELECT count(*) FROM embed_assets.transcript_chunks
                       WHERE recording_id = %(r)s AND embedding IS NOT NULL),
                      (SELECT count(*) FROM (SELECT chunk_index FROM embed_assets.chunk_vectors
                                             WHERE recording_id = %(r)s GROUP BY chunk_index HAVING count(*) > 1) d)""",
            {"r": rid},
        ).fetchone()
        assert chunks > 0 and (vectors, dupes) == (chunks, 0), (rid, chunks, vectors, dupes)


def hold_the_pool(instance: DagsterInstance, fake_openai: FakeOpenAI, tmp_path: Path, n: int = 2) -> list:
    """``n`` `embed` processes, each stopped inside chunk_embeddings (its request held by the provider) with a
    slot of the pool; returns them once every slot is theirs."""
    fake_openai.gate.clear()
    procs = [embed(tmp_path / f"holder-{i}.log") for i in range(n)]
    try:

        def held() -> bool:
            ended = [p for p in procs if p.poll() is not None]
            assert not ended, (tmp_path / f"holder-{procs.index(ended[0])}.log").read_text()[-3000:]
            return len(holding(instance)) == n

        wait_for(held, f"{n} embed runs to hold the pool's slots", 240)
    except BaseException:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        raise
    return procs


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_two_embed_runs_killed_holding_the_pool_then_embed_reclaims_them_and_completes(
    conn: psycopg.Connection, instance: DagsterInstance, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    ids = recordings(conn, instance, "killed-holder", 3)
    procs = hold_the_pool(instance, fake_openai, tmp_path)
    dead = set(holding(instance))
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    fake_openai.gate.set()
    assert {r.status for r in instance.get_runs(RunsFilter(run_ids=list(dead)))} == {DagsterRunStatus.STARTED}
    status = subprocess.run(
        [str(BIN / "embed-assets"), "status", "--json"],
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    stuck = json.loads(status.stdout)["dead_slot_holders"]  # slots nobody will give back
    assert len(stuck) == 2 and all(r[:8] in " ".join(stuck) for r in dead), status.stderr[-2000:]

    log = tmp_path / "after.log"
    proc = embed(log)
    try:
        rc = proc.wait(timeout=300)  # before issue 35: blocked on the dead runs' slots forever
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert rc == 0, out[-3000:]
    assert out.count("is gone: marked failed, its pool slots freed") == 2, out[-3000:]
    runs = instance.get_runs(RunsFilter(run_ids=list(dead)))
    assert {r.status for r in runs} == {DagsterRunStatus.FAILURE}
    assert all(r.tags.get(WORKER_TAG) for r in runs)
    assert not set(holding(instance)) & dead and dead_holders(instance) == []
    exactly_once(conn, ids)


def test_a_step_waiting_for_a_held_slot_says_who_holds_it_sleeps_and_fails_after_the_limit(
    conn: psycopg.Connection, instance: DagsterInstance, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    recordings(conn, instance, "waiter", 3)
    procs = hold_the_pool(instance, fake_openai, tmp_path)
    held = set(holding(instance))
    log = tmp_path / "waiter.log"
    waiter = embed(log, EMBED_POOL_WAIT_LIMIT_S="12")
    try:
        wait_for(lambda: "waiting" in log.read_text() and "for a slot of pool embedding_provider" in log.read_text(),
                 "the waiting step to say so", 180)  # fmt: skip
        cpu, wall = cpu_seconds(waiter.pid), time.monotonic()
        most = []  # the pool's guarantee: never more steps holding the provider than its limit (2)

        def reported_twice() -> bool:
            most.append(len(holding(instance)))
            return log.read_text().count("for a slot of pool embedding_provider; held by") >= 2

        wait_for(reported_twice, "a second report")
        busy = (cpu_seconds(waiter.pid) - cpu) / (time.monotonic() - wall)
        rc = waiter.wait(timeout=120)
        assert set(holding(instance)) == held  # the waiter never got a slot
    finally:
        if waiter.poll() is None:
            os.killpg(waiter.pid, signal.SIGKILL)
        fake_openai.gate.set()  # the holders finish their work and give their slots back
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    out = log.read_text()
    print(f"waiting process: {busy:.1%} of a core; most slots held at once: {max(most)}")
    assert max(most) == 2
    assert busy < 0.25, f"the waiting process used {busy:.0%} of a core"  # before: a core (Dagster's claim loop)
    assert all(run_id[:8] in out for run_id in held)  # the holders are named, with their step and state
    assert "run STARTED, worker pid" in out and "alive" in out
    assert rc == 1, out[-3000:]
    line = next(x for x in out.splitlines() if "EMBED_POOL_WAIT_LIMIT_S" in x)
    assert "pool embedding_provider" in line and "dagster instance concurrency set embedding_provider" in line, line
    assert all(run_id[:8] in line for run_id in held), line


def worker_pid(instance: DagsterInstance, run_id: str) -> int:
    """The run worker's pid, as Dagster records it on the run's start event."""
    (start,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_START).records
    return start.event_log_entry.dagster_event.pid


RECLAIM_WITHIN_S = 60  # dagster.yaml run_monitoring: FAILED at the next check (20 s), slots freed one check later


def test_under_dagster_dev_a_killed_run_worker_is_failed_its_slot_freed_and_the_sensors_next_run_completes(
    conn: psycopg.Connection, fake_openai: FakeOpenAI, tmp_path: Path, dagster_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("EMBED_DAGSTER_DATABASE_URL", dagster_db)
    monkeypatch.setenv("EMBED_SENSOR_SETTLE_S", "0")
    monkeypatch.setenv("EMBED_RETRY_CRON", "0 3 1 1 *")  # nothing relaunches the killed run's recording
    with DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.set_concurrency_slots(POOL, 1)  # one dead holder blocks everything
        fake_openai.gate.clear()
        upsert_transcript(conn, Transcript("dev-first", (Segment("A", "renewal pricing " * 40),)))
        with DagsterDev(home, {}, tmp_path / "dagster-dev.log", progress=lambda _: None) as dev:
            wait_for(lambda: len(holding(instance)) == 1, "the sensor's run to hold the pool's slot", 240)
            (dead,) = holding(instance)
            pid = worker_pid(instance, dead)
            assert pid in descendants(dev.proc.pid)
            os.kill(pid, signal.SIGKILL)
            fake_openai.gate.set()

            def reclaimed() -> bool:
                run = instance.get_run_by_id(dead)
                return run.status == DagsterRunStatus.FAILURE and dead not in holding(instance)

            took = wait_for(reclaimed, "the daemon to fail the dead run and free its slot", RECLAIM_WITHIN_S + 30)
            print(f"dagster dev: the killed run FAILED and its slot freed {took:.0f}s after the kill")
            assert took <= RECLAIM_WITHIN_S, f"reclaimed after {took:.0f}s"  # the figure dagster.yaml states

            upsert_transcript(conn, Transcript("dev-second", (Segment("B", "contract terms " * 40),)))
            wait_for(lambda: "dev-second" in embedded(conn), "the sensor's next run to embed dev-second", 180)
        exactly_once(conn, ["dev-second"])


def embedded(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT recording_id FROM embed_assets.chunk_vectors")}


def test_a_database_restart_mid_run_leaves_the_run_failed_not_started_once_the_database_is_back(
    conn: psycopg.Connection,
    instance: DagsterInstance,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    embed_home: Path,
    db_url: str,
) -> None:
    ids = recordings(conn, instance, "db-restart", 2)
    (proc,) = hold_the_pool(instance, fake_openai, tmp_path, 1)
    (run_id,) = holding(instance)
    assert stop_embedded_server(embed_home)  # every connection of the run dies with it
    fake_openai.gate.set()  # the step gets its vectors and finds no database to write them to
    try:
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    first = (tmp_path / "holder-0.log").read_text()
    assert vector_database_url() == db_url  # the database is back, where it was
    log = tmp_path / "after.log"
    again = embed(log)
    assert again.wait(timeout=300) == 0, log.read_text()[-3000:]
    run = instance.get_run_by_id(run_id)
    assert run.status == DagsterRunStatus.FAILURE, (rc, first[-2000:], log.read_text()[-2000:])
    with psycopg.connect(db_url, autocommit=True) as fresh:
        exactly_once(fresh, ids)
    print(f"db restart: first embed exit {rc}; {first.strip().splitlines()[-1][:300]}")


def test_run_monitoring_is_on_with_a_worker_health_check_and_slots_freed_after_a_run_ends(
    instance: DagsterInstance,
) -> None:
    import yaml

    from embed_assets.instance import EmbedRunLauncher

    assert instance.run_monitoring_enabled and isinstance(instance.run_launcher, EmbedRunLauncher)
    assert instance.run_launcher.supports_check_run_worker_health  # Dagster's default launcher has none
    settings = instance.run_monitoring_settings
    assert settings["poll_interval_seconds"] + settings["free_slots_after_run_end_seconds"] < RECLAIM_WITHIN_S
    deploy = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())["run_monitoring"]
    assert deploy["enabled"] and deploy["free_slots_after_run_end_seconds"] > 0 and deploy["cancel_timeout_seconds"]
