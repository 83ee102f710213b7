"""Figure 4: a backfill of N sample recordings through Dagster, as a user launches it from the UI (the
webserver's `launchPartitionBackfill` mutation, both assets, every partition) on `dagster dev` with the
project's instance config (queued runs, the provider pool), embedding with the openai embedder against a
zero-latency loopback server (1536 dims). Compared with the sum of the stage floors on the same data: every
transcript read in one query, chunking in memory, the chunk rows in one COPY into a table like `chunks` (its
full-text column and index), the bare client's requests, one binary COPY of the vectors into an identically
indexed table.
The per-run overhead of Dagster is reported from the runs' own records."""

from __future__ import annotations

import base64
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from embed_assets.lib.chunking import ChunkParams, chunk_segments
from embed_assets.lib.db.migrations import migrate
from embed_assets.lib.models import resolve_model
from embed_assets.lib.models.registry import ensure_models, find
from embed_assets.lib.sample import sample_transcripts
from embed_assets.lib.settings import RECORDINGS_PER_RUN
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.store import CHUNK_COLUMNS, chunk_row
from embed_assets.lib.tokenizers import token_counter
from embed_assets_tests.bench.report import Figure, Report, environment
from embed_assets_tests.support.dagster_dev import DagsterDev, fresh_database, make_home
from embed_assets_tests.support.openai_server import FakeOpenAI

MODEL = "text-embedding-3-small"
LAUNCH = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""


def backfill_env(url: str, dagster_url: str, home: str, server: FakeOpenAI) -> dict[str, str]:
    """The environment of a `dagster dev` whose runs embed through the loopback ``server``."""
    return {
        "EMBED_DATABASE_URL": url,
        "EMBED_DAGSTER_DATABASE_URL": dagster_url,
        "EMBED_HOME": home,
        "EMBED_PROVIDER": "openai",
        "EMBED_MODEL": MODEL,
        "OPENAI_API_KEY": server.api_key,
        "OPENAI_BASE_URL": server.base_url,
        "EMBED_SENSOR_MAX_RUNS": "0",  # the sensor registers partitions only: this measures the backfill
        "EMBED_RETRY_CRON": "0 3 1 1 *",
    }


def launch_backfill(dev, keys: list[str]) -> str:
    """A backfill of both assets over ``keys``, launched as the UI's button does; its id."""
    data = dev.graphql(
        LAUNCH,
        {
            "p": {
                "assetSelection": [{"path": ["transcript_chunks"]}, {"path": ["chunk_embeddings"]}],
                "partitionNames": keys,
            }
        },
    )["launchPartitionBackfill"]
    if data["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill not launched: {data}")
    return data["backfillId"]


def floors(
    url: str, transcripts, server: FakeOpenAI, dim: int, batch: int, streams: int = 1
) -> tuple[dict[str, float], int]:
    """Seconds of each stage's floor over the same recordings; returns (floors, chunk count).

    With ``streams`` > 1, the recordings are cut into that many contiguous shares (as a backfill's runs take
    them), each share's stages run in a process of its own, and the streams start each stage together (the
    runs of a backfill do the same stages at the same time), writing into the same tables (one index, as the
    runs share one). A stage's floor is then the sum over the streams of their times: what the same work costs
    when it shares the machine as the runs share it, to compare with the time inside steps summed over runs."""
    spec = resolve_model("openai", MODEL, None)
    with psycopg.connect(url, autocommit=True) as conn:
        # the chunk rows go into a table like `chunks` (full-text column and GIN index included), the vectors
        # into one like the model's partition (its dimension check and ANN index), not the partitioned parent
        partition = find(conn, spec.model_id).partition
        conn.execute("DROP TABLE IF EXISTS floor_chunks, floor_vectors")
        conn.execute("CREATE TABLE floor_chunks (LIKE embed_assets.chunks INCLUDING ALL)")
        conn.execute(
            f"CREATE TABLE floor_vectors (LIKE embed_assets.{partition} INCLUDING INDEXES INCLUDING DEFAULTS "
            "INCLUDING CONSTRAINTS)"
        )
    try:
        args = (url, server.base_url, server.api_key, batch)
        if streams == 1:
            return _stages(*args, transcripts, None)
        n = len(transcripts)  # contiguous shares in partition order, as a backfill's runs take them
        shares = [transcripts[i * n // streams : (i + 1) * n // streams] for i in range(streams)]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager, ProcessPoolExecutor(streams, mp_context=ctx) as pool:
            barrier = manager.Barrier(streams)  # a proxy: a pool's arguments are pickled
            done = [pool.submit(_stages, *args, share, barrier) for share in shares]
            results = [f.result() for f in done]
        return {k: sum(r[0][k] for r in results) for k in results[0][0]}, sum(r[1] for r in results)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS floor_chunks, floor_vectors")


def _stages(url: str, base_url: str, api_key: str, batch: int, transcripts, barrier) -> tuple[dict[str, float], int]:
    """One stream's stage times over ``transcripts`` (floors' docstring); ``barrier`` starts each stage together
    with the other streams'."""
    import openai

    def together() -> float:
        if barrier is not None:
            barrier.wait()
        return time.perf_counter()

    spec = resolve_model("openai", MODEL, None)
    counter, params = token_counter(spec.tokenizer), ChunkParams(200, 30)
    counter.count("warm")  # loaded before the clock starts, as the single stream's was by the bench's own use
    with psycopg.connect(url, autocommit=True) as conn:
        started = together()  # every transcript in one query: the least a chunker must read
        rows = conn.execute(
            "SELECT recording_id, seq, speaker, text, start_s, end_s FROM embed_assets.transcript_segments "
            "WHERE recording_id = ANY(%s) ORDER BY recording_id, seq",
            ([t.recording_id for t in transcripts],),
        ).fetchall()
        read = time.perf_counter() - started
    if len(rows) != sum(len(t.segments) for t in transcripts):
        raise RuntimeError(f"{len(rows)} segments read, {sum(len(t.segments) for t in transcripts)} loaded")
    started = together()
    chunks = [(t.recording_id, c) for t in transcripts for c in chunk_segments(t.segments, params, counter)]
    chunking = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        started = together()
        with conn.cursor().copy(f"COPY floor_chunks ({', '.join(CHUNK_COLUMNS)}) FROM STDIN") as copy:
            for rid, c in chunks:
                copy.write_row(chunk_row(rid, spec.model_id, c))
        chunk_rows = time.perf_counter() - started
    texts = [c.content for _, c in chunks]
    client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0)
    started = together()
    vectors = []
    for lo in range(0, len(texts), batch):
        resp = client.embeddings.create(model=MODEL, input=texts[lo : lo + batch], encoding_format="base64")
        vectors += [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in resp.data]
    provider = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        started = together()
        with conn.cursor().copy(
            "COPY floor_vectors (recording_id, model, chunk_index, content_hash, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "text", "int4", "text", "vector"])
            for (rid, c), v in zip(chunks, vectors, strict=True):
                copy.write_row((rid, spec.model_id, c.chunk_index, c.content_hash, v))
        write = time.perf_counter() - started
    return {"read": read, "chunking": chunking, "chunk_rows": chunk_rows, "provider": provider, "write": write}, len(
        chunks
    )


def backfill(url: str, n: int, report: Report, progress) -> None:
    import dagster as dg

    dim, batch = 1536, 256
    transcripts = sample_transcripts(n, seed=11, long_call=n >= 50)  # the 3-hour call too, at full size
    keys = [t.recording_id for t in transcripts]
    _fresh_store(url, transcripts, dim)
    dagster_url = fresh_database(url, "embed_bench_dagster")
    with FakeOpenAI(default_dim=dim) as server, tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        floor, n_chunks = floors(url, transcripts, server, dim, batch)
        progress(
            f"floors over {n} recordings, {n_chunks:,} chunks: " + ", ".join(f"{k} {v:.2f}s" for k, v in floor.items())
        )
        env = backfill_env(url, dagster_url, tmp, server)
        with environment(**env):
            home = make_home(Path(tmp) / "dagster_home")
            instance = dg.DagsterInstance.from_config(str(home))
            instance.add_dynamic_partitions("recordings", keys)
            sampler = ConnectionSampler(url, ("embed_bench", "embed_bench_dagster"))
            with DagsterDev(home, env, Path(tmp) / "dagster-dev.log", progress) as dev, sampler:
                requests_before = server.seen.ok
                launched = time.time()
                backfill_id = launch_backfill(dev, keys)
                _wait(instance, backfill_id, progress)
                backfill_requests = server.seen.ok - requests_before  # before the floors below send theirs
            # The floors again (they create tables of their own): a floor is the least a stage takes, and this
            # machine's speed drifts over minutes (the first measurement, right after the store was rebuilt, has
            # run up to 1.6x slower than the second). Each stage's floor is the lesser of the two.
            again, _ = floors(url, transcripts, server, dim, batch)
            progress("floors again: " + ", ".join(f"{k} {v:.2f}s" for k, v in again.items()))
            floor = {k: min(v, again[k]) for k, v in floor.items()}
            _report(instance, backfill_id, launched, n, n_chunks, floor, url, dim, report)
            _report_at_once(instance, backfill_id, url, transcripts, server, dim, batch, report, progress)
            runs = len(instance.get_run_ids())
            report.add(
                Figure(
                    "e2e_backfill_peak_connections",
                    sampler.peak,
                    "connections",
                    note=f"server connections at peak (sampled every 50 ms) of the webserver, daemon, code server "
                    f"and {runs} runs, at most 4 at once; bound {connection_bound()} with EMBED_DB_POOL_SIZE="
                    f"{os.environ.get('EMBED_DB_POOL_SIZE', '2')} (README 'Deploy on Supabase')",
                )
            )
            report.add(_requests_figure("e2e_backfill_provider_requests", backfill_requests, n))
            instance.dispose()
            progress("the same recordings through `embed-assets embed` (runs in one process, no daemon)")
            _fresh_store(url, transcripts, dim)
            os.environ["EMBED_DAGSTER_DATABASE_URL"] = fresh_database(url, "embed_bench_dagster")
            instance = dg.DagsterInstance.from_config(str(home))
            instance.add_dynamic_partitions("recordings", keys)
            instance.dispose()
            cli = Path(sys.executable).parent / "embed-assets"
            requests_before = server.seen.ok
            started = time.perf_counter()
            subprocess.run(
                [str(cli), "embed"],
                env={**os.environ, "DAGSTER_HOME": str(home)},
                check=True,
                stdout=subprocess.DEVNULL,
            )
            wall = time.perf_counter() - started
            _check_stored(url, n_chunks)
            report.add(_requests_figure("e2e_cli_provider_requests", server.seen.ok - requests_before, n))
            cli_runs = _in_steps_since(home, 0.0)
            rerun_from = time.time()
            started = time.perf_counter()  # again, nothing changed: Dagster's bookkeeping + our diff checks
            subprocess.run(
                [str(cli), "embed", "--all"],
                env={**os.environ, "DAGSTER_HOME": str(home)},
                check=True,
                stdout=subprocess.DEVNULL,
            )
            noop = time.perf_counter() - started
            noop_steps = _in_steps_since(home, rerun_from)
            report.add(
                Figure(
                    "e2e_cli_embed_wall",
                    wall,
                    "s",
                    sum(floor.values()),
                    "sum of stage floors",
                    False,
                    f"`embed-assets embed`: {RECORDINGS_PER_RUN} recordings per run, in one process",
                )
            )
            report.add(
                Figure(
                    "e2e_cli_in_steps_total",
                    cli_runs["total"],
                    "s",
                    sum(floor.values()),
                    "sum of stage floors",
                    False,
                    "time inside steps of `embed-assets embed`'s runs: " + _by_kind(cli_runs),
                )
            )
            report.add(
                Figure(
                    "e2e_rerun_unchanged_ours_per_recording",
                    noop_steps["total"] / n * 1000,
                    "ms",
                    note="time inside steps (our code, and Dagster's event writes during them) per unchanged "
                    "recording: " + _by_kind(noop_steps),
                )
            )
            report.add(
                Figure(
                    "e2e_rerun_unchanged_dagster_per_recording",
                    (noop - noop_steps["total"]) / n * 1000,
                    "ms",
                    note="the rest of the re-run's wall time per recording: Dagster's run and step bookkeeping "
                    "outside steps, and the CLI's start (imports, instance)",
                )
            )
            report.add(
                Figure(
                    "e2e_cli_rerun_unchanged_wall",
                    noop,
                    "s",
                    note=f"the same {n} recordings again, all unchanged: 0 requests, 0 vector writes; per-run and "
                    "per-partition cost of Dagster (events, process, checks) plus the diff queries",
                )
            )
        sensor_catchup(url, transcripts, server, dim, n_chunks, Path(tmp), report, progress)


def sensor_catchup(
    url: str, transcripts, server: FakeOpenAI, dim: int, n_chunks: int, tmp: Path, report: Report, progress
):
    """The same recordings caught up by `new_recordings_sensor` alone (no backfill), as after a bulk load or a
    first pass over a source: from `dagster dev` up to every recording embedded."""
    import dagster as dg

    n = len(transcripts)
    _fresh_store(url, transcripts, dim)
    env = {
        **backfill_env(url, fresh_database(url, "embed_bench_dagster"), str(tmp), server),
        "EMBED_SENSOR_MAX_RUNS": "50",  # the default
        "EMBED_SENSOR_SETTLE_S": "0",
    }
    progress(f"the same {n} recordings caught up by the new-recordings sensor alone")
    with environment(**env):
        home = make_home(tmp / "dagster_home_sensor")
        requests_before = server.seen.ok
        with DagsterDev(home, env, tmp / "dagster-dev-sensor.log", progress):
            started, deadline, last = time.perf_counter(), time.monotonic() + 1800, 0.0
            while True:
                with psycopg.connect(url) as conn:
                    done = conn.execute("SELECT count(*) FROM embed_assets.embedded_recordings").fetchone()[0]
                if done >= n:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the sensor caught up {done} of {n} recordings in 30 minutes")
                if time.monotonic() - last > 10:
                    progress(f"sensor: {done}/{n} recordings embedded")
                    last = time.monotonic()
                time.sleep(0.5)
            wall = time.perf_counter() - started
        instance = dg.DagsterInstance.from_config(str(home))
        runs = len(instance.get_run_ids())
        instance.dispose()
    _check_stored(url, n_chunks)
    report.add(
        Figure(
            "e2e_sensor_catchup_wall",
            wall,
            "s",
            note=f"{n} new recordings embedded by the sensor's runs alone, from `dagster dev` up; {runs} runs "
            "(consecutive partitions share a run of up to 100, as a backfill's do)",
        )
    )
    report.add(_requests_figure("e2e_sensor_catchup_provider_requests", server.seen.ok - requests_before, n))


class ConnectionSampler:
    """The peak number of server connections to the given databases while the block runs (a thread
    sampling pg_stat_activity every 50 ms, on a connection of its own, which is not counted)."""

    def __init__(self, url: str, databases: tuple[str, ...]) -> None:
        self.url, self.databases, self.peak = url, list(databases), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                n = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
                    (self.databases,),
                ).fetchone()[0]
                self.peak = max(self.peak, n)
                self._stop.wait(0.05)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def connection_bound(runs_at_once: int = 4) -> int:
    """What the project's pools allow at most: per Dagster process two pooled storage engines (run and
    event log) of EMBED_DB_POOL_SIZE plus as many in overflow, one schedule-storage connection at a time,
    and in a run worker the vector store's connection and one more for a check; processes: webserver,
    daemon, code server and the runs the queue allows at once (dagster.yaml: 4)."""
    from embed_assets.instance import pool_size

    per_process = 2 * 2 * pool_size() + 1
    return (3 + runs_at_once) * per_process + runs_at_once * 2


def _requests_figure(name: str, requests: int, n: int) -> Figure:
    return Figure(
        name,
        requests,
        "requests",
        note=f"to embed {n} recordings: the pending chunks of several recordings share a request "
        "(a request per recording before)",
    )


def _fresh_store(url: str, transcripts, dim: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS embed_assets CASCADE")
        migrate(conn, dim)
        ensure_models(conn, resolve_model("openai", MODEL, dim))  # as the first run would: the floor copies its table
        for t in transcripts:
            upsert_transcript(conn, t)


def _check_stored(url: str, n_chunks: int) -> None:
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT count(*) FROM embed_assets.chunk_vectors").fetchone()[0]
    if stored != n_chunks:
        raise RuntimeError(f"{stored} vectors stored, {n_chunks} chunks expected")


def _step_kind(step_key: str) -> str:
    return (
        "checks" if step_key.endswith(("_embedding_config_valid", "_chunk_integrity", "_completion_rate")) else step_key
    )


def _by_kind(totals: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in sorted(totals.items()) if k != "total")


def _in_steps(instance, run_ids) -> dict[str, float]:
    """Seconds inside steps over the given runs, in total and per kind (each asset, the checks together)."""
    totals: dict[str, float] = {"total": 0.0}
    for run_id in run_ids:
        for st in instance.get_run_step_stats(run_id):
            seconds = (st.end_time or 0) - (st.start_time or 0)
            kind = _step_kind(st.step_key)
            totals[kind] = totals.get(kind, 0.0) + seconds
            totals["total"] += seconds
    return totals


def _in_steps_since(home: Path, since: float) -> dict[str, float]:
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        runs = [r for r in instance.get_run_records() if r.create_timestamp.timestamp() >= since]
        return _in_steps(instance, [r.dagster_run.run_id for r in runs])
    finally:
        instance.dispose()


def _covered(intervals: list[tuple[float | None, float | None]]) -> float:
    """Seconds covered by the union of the intervals (time during which at least one step ran)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted((a, b) for a, b in intervals if a is not None and b is not None):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _report_at_once(instance, backfill_id, url, transcripts, server, dim, batch, report: Report, progress) -> None:
    """The time inside steps against the same stages run as the backfill ran them: as many streams at once as
    its runs, each over its share (floors()). On a machine with fewer cores than the runs keep busy, two runs at
    once each take longer than one alone, and that is the machine's, not the steps' overhead: this figure shows
    what is left once the floors share the machine the same way. Each stage the lesser of two measurements."""
    runs = _runs(instance, backfill_id)
    origin = min(r.create_timestamp.timestamp() for r in runs)
    for i, r in enumerate(sorted(runs, key=lambda r: r.start_time), 1):
        steps = sorted(instance.get_run_step_stats(r.dagster_run.run_id), key=lambda st: st.start_time or 0)
        progress(
            f"run {i}: created +{r.create_timestamp.timestamp() - origin:.1f}s, started +{r.start_time - origin:.1f}s, "
            + ", ".join(
                f"{st.step_key} {st.start_time - origin:.1f}-{st.end_time - origin:.1f}s"
                for st in steps
                if st.start_time and st.end_time
            )
            + f", ended +{r.end_time - origin:.1f}s"
        )
    streams = min(len(runs), 4)  # at most 4 runs at once (dagster.yaml)
    if streams < 2:
        return
    first, _ = floors(url, transcripts, server, dim, batch, streams)
    second, _ = floors(url, transcripts, server, dim, batch, streams)
    at_once = {k: min(v, second[k]) for k, v in first.items()}
    progress(f"floors as {streams} streams at once: " + ", ".join(f"{k} {v:.2f}s" for k, v in at_once.items()))
    in_steps = _in_steps(instance, [r.dagster_run.run_id for r in runs])["total"]
    report.add(
        Figure(
            "e2e_floor_at_once",
            sum(at_once.values()),
            "s",
            note=f"the same stages as {streams} streams at once, each over its share, as the backfill's {len(runs)} "
            "runs ran; summed over the streams: " + " + ".join(f"{k} {v:.2f}" for k, v in at_once.items()),
        )
    )
    report.add(
        Figure(
            "e2e_in_steps_total_vs_at_once",
            in_steps,
            "s",
            sum(at_once.values()),
            f"the stage floors run {streams} at once",
            False,
            "time inside steps summed over runs, against the floors sharing the machine as the runs did",
        )
    )


def _runs(instance, backfill_id: str):
    import dagster as dg

    return instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))


def _wait(instance, backfill_id: str, progress, timeout_s: float = 3600) -> None:
    from dagster._core.execution.backfill import BulkActionStatus

    deadline, last = time.monotonic() + timeout_s, 0.0
    while time.monotonic() < deadline:
        status = instance.get_backfill(backfill_id).status
        if status not in (BulkActionStatus.REQUESTED,):
            return
        if time.monotonic() - last > 10:
            runs = _runs(instance, backfill_id)
            done = sum(1 for r in runs if r.dagster_run.is_finished)
            progress(f"backfill {status.value}: {len(runs)} run(s) launched, {done} finished")
            last = time.monotonic()
        time.sleep(1)
    raise TimeoutError(f"backfill {backfill_id} not finished after {timeout_s:.0f}s")


def _report(instance, backfill_id, launched, n, n_chunks, floor, url, dim, report: Report) -> None:
    runs = _runs(instance, backfill_id)
    failed = [r for r in runs if r.dagster_run.status.value != "SUCCESS"]
    if failed:
        raise RuntimeError(f"{len(failed)} backfill run(s) did not succeed: {[r.dagster_run.run_id for r in failed]}")
    _check_stored(url, n_chunks)
    wall = max(r.end_time for r in runs) - launched
    after_pickup = max(r.end_time for r in runs) - min(r.create_timestamp.timestamp() for r in runs)
    floor_sum = sum(floor.values())
    overheads, queued = [], []
    for r in runs:
        in_steps = _in_steps(instance, [r.dagster_run.run_id])["total"]
        overheads.append((r.end_time - r.start_time) - in_steps)
        queued.append(r.start_time - r.create_timestamp.timestamp())
    kinds = _in_steps(instance, [r.dagster_run.run_id for r in runs])
    in_steps_total = kinds["total"]
    covered = _covered(
        [(st.start_time, st.end_time) for r in runs for st in instance.get_run_step_stats(r.dagster_run.run_id)]
    )
    first_run = min(r.create_timestamp.timestamp() for r in runs) - launched
    for stage, seconds in floor.items():
        report.add(Figure(f"e2e_floor_{stage}", seconds, "s", note="the lesser of two measurements"))
    report.add(
        Figure(
            "e2e_backfill_wall",
            wall,
            "s",
            floor_sum,
            "sum of stage floors",
            False,
            f"{n} recordings, {n_chunks:,} chunks x {dim} dims",
        )
    )
    report.add(
        Figure("e2e_backfill_throughput", n_chunks / wall, "chunks/s", n_chunks / floor_sum, "stage floors", True)
    )
    report.add(
        Figure(
            "e2e_backfill_wall_after_pickup",
            after_pickup,
            "s",
            floor_sum,
            "sum of stage floors",
            False,
            "first run created -> last run ended",
        )
    )
    report.add(
        Figure(
            "e2e_in_steps_total",
            in_steps_total,
            "s",
            floor_sum,
            "sum of stage floors",
            False,
            "time inside steps, summed over runs: " + _by_kind(kinds),
        )
    )
    report.add(
        Figure(
            "e2e_backfill_wall_in_steps",
            covered,
            "s",
            floor_sum,
            "sum of stage floors",
            False,
            "wall time during which at least one step of the backfill was running (ours)",
        )
    )
    report.add(
        Figure(
            "e2e_backfill_dagster_share",
            wall - covered,
            "s",
            note="the rest of the wall time, no step running: the backfill daemon's pickup, the run queue, run "
            "launches (a process each) and Dagster's bookkeeping between steps",
        )
    )
    report.add(Figure("e2e_runs", len(runs), "runs", note=f"for {n} recordings (BackfillPolicy.multi_run)"))
    report.add(Figure("e2e_first_run_after", first_run, "s", note="backfill launched -> first run created"))
    report.add(Figure("e2e_run_queued_mean", float(np.mean(queued)), "s", note="run created -> started"))
    report.add(
        Figure("e2e_run_overhead_mean", float(np.mean(overheads)), "s", note="run start->end minus time inside steps")
    )
