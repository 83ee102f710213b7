"""The `embed-assets` command. Errors exit non-zero with one clear line."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from embed_assets.console.text import UserConsole, styled
from embed_assets.lib.errors import EmbedAssetsError
from embed_assets.lib.settings import CLI_WRITERS, RECORDINGS_PER_RUN

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Keep call-transcript embeddings in pgvector.")
# User data (ids, speakers, transcripts, paths) is printed as text, never markup (console/text.py).
out = UserConsole(soft_wrap=True)  # long paths and URLs stay on one line in logs
err = UserConsole(stderr=True, soft_wrap=True)
PARTITIONS = "recordings"


def _die(message: str, code: int = 1) -> None:
    err.print(styled(("error:", "red"), " ", message), soft_wrap=True)
    raise typer.Exit(code)


def _spec():
    from embed_assets.lib.models import resolve_model
    from embed_assets.lib.settings import load_settings

    s = load_settings()
    return resolve_model(s.provider, s.model, s.dimensions)


def _connect_migrated():
    """A connection to the vector store, its schema migrated and its models registered (the configured model on a
    fresh install). The schema itself is created here only on the embedded default; elsewhere `migrate` does."""
    from embed_assets.lib.db.connection import connect, vector_database_url
    from embed_assets.lib.db.migrations import may_create_schema, migrate
    from embed_assets.lib.models.registry import ensure_models

    conn = connect(vector_database_url())
    spec = _spec()
    try:
        migrate(conn, spec.dimension, create_schema=may_create_schema())
    except BaseException:
        conn.close()
        raise
    ensure_models(conn, spec)
    return conn


def _active(conn):
    from embed_assets.lib.models.registry import active

    reg = active(conn)
    if reg is None:
        _die("no model is active; run `embed-assets model activate MODEL` (`embed-assets status` lists them)")
    return reg


def _instance():
    """The Dagster instance of DAGSTER_HOME (the current folder when unset and it holds dagster.yaml). A home
    without dagster.yaml gets the project's, saying so; one on other storage is used, with a warning."""
    from dagster import DagsterInstance

    from embed_assets.dagster_home import ensure_instance_config

    home = os.environ.get("DAGSTER_HOME", "").strip()
    if not home:
        if not Path("dagster.yaml").is_file():
            _die(
                "DAGSTER_HOME is not set; set it to a folder for Dagster's instance files (the project's "
                "dagster.yaml is written there if it has none), e.g. export DAGSTER_HOME=~/dagster_home"
            )
        home = str(Path.cwd())
    path = Path(home).expanduser().resolve()  # Dagster wants an absolute path, and so do the processes it starts
    os.environ["DAGSTER_HOME"] = str(path)
    note = ensure_instance_config(path)
    if note:
        err.print(note, highlight=False, markup=False, soft_wrap=True)
    return DagsterInstance.get()


def register_partitions(ids: list[str], instance=None) -> int:
    """Add dynamic partitions for recordings the instance does not know yet. Returns how many were added."""
    instance = instance or _instance()
    known = set(instance.get_dynamic_partitions(PARTITIONS))
    new = [i for i in dict.fromkeys(ids) if i not in known]
    for lo in range(0, len(new), 1000):
        instance.add_dynamic_partitions(PARTITIONS, new[lo : lo + 1000])
    return len(new)


REGISTER_EVERY = 200  # recordings stored between partition registrations during a load


def _load(transcripts, problems, register: bool) -> Counter:
    import psycopg

    from embed_assets.console.events import first_line
    from embed_assets.lib.sources.tables import upsert_transcript
    from embed_assets.lib.transcripts import InputProblem, reject_duplicates

    if source := os.environ.get("EMBED_SOURCE", "").strip():
        _die(
            f"EMBED_SOURCE={source} is set: transcripts are read from the tables it names, and the project's own "
            "tables, which load and sample write, are not read; unset EMBED_SOURCE to load files"
        )
    transcripts, dup_problems = reject_duplicates(transcripts)
    problems = [*problems, *dup_problems]
    counts: Counter = Counter()
    stored: list[str] = []  # stored and not yet registered as partitions
    registered = 0
    instance = _instance() if register and transcripts else None  # a broken DAGSTER_HOME fails before any write

    def flush() -> None:  # register what is stored: a recording is never left stored but unregistered
        nonlocal registered
        if register and stored:
            registered += register_partitions(stored, instance)
        stored.clear()

    current: str | None = None  # the recording being written (stored or not, if an interrupt lands now)
    try:
        with _connect_migrated() as conn, _progress(len(transcripts) > 20) as bar:
            task = bar.add_task("loading", total=len(transcripts))
            for t in transcripts:
                try:
                    current = t.recording_id
                    counts[upsert_transcript(conn, t)] += 1
                    stored.append(t.recording_id)
                    current = None
                except psycopg.DataError as e:  # a value the database refuses costs only its own record
                    problems.append(InputProblem(t.source, f"the database refused it: {first_line(str(e))}"))
                if len(stored) >= REGISTER_EVERY:
                    flush()
                bar.advance(task)
    except KeyboardInterrupt:
        # The interrupt may land after a recording's commit and before it was counted as stored: look it up.
        if current is not None:
            stored.extend(_stored_ids([current]))
        flush()
        _report_load(problems, counts, register, registered)
        _die("interrupted: the recordings counted above are stored and registered; run the load again to finish", 130)
    finally:
        flush()
    _report_load(problems, counts, register, registered)
    return counts


def _stored_ids(ids: list[str]) -> list[str]:
    """Which of ``ids`` are stored, on a connection of its own (the load's may be mid-statement)."""
    from embed_assets.lib.db.connection import connect, vector_database_url
    from embed_assets.lib.db.names import q

    with connect(vector_database_url()) as conn:
        rows = conn.execute(
            q(conn, "SELECT recording_id FROM {s}.recordings WHERE recording_id = ANY(%s)"), (ids,)
        ).fetchall()
    return [r[0] for r in rows]


def _report_load(problems: list, counts: Counter, register: bool, registered: int) -> None:
    for p in problems:
        (err if p.fatal else out).print(
            f"{'rejected' if p.fatal else 'warning'}: {p}", highlight=False, markup=False, soft_wrap=True
        )
    counts["rejected"] = sum(1 for p in problems if p.fatal)
    counts["partitions_added"] = registered
    out.print(
        f"loaded {counts['loaded']}, unchanged {counts['unchanged']}, changed {counts['changed']}, "
        f"rejected {counts['rejected']}" + (f"; {registered} new partition(s) registered" if register else ""),
        highlight=False,
        markup=False,
    )


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled or not err.is_terminal and not os.environ.get("EMBED_PROGRESS"),
    )


@app.command()
def load(
    paths: Annotated[list[Path], typer.Argument(help="Files (.json, .jsonl, .vtt, .srt) or folders of them.")],
    register: Annotated[bool, typer.Option(help="Register new recordings as Dagster partitions.")] = True,
) -> None:
    """Import transcripts. Each recording loads atomically; bad records are named and skipped."""
    from embed_assets.lib.transcripts import expand_paths, parse_file

    missing = [p for p in paths if not p.exists()]
    if missing:
        _die(f"no such file or folder: {missing[0]}")
    files = list(expand_paths(paths))
    transcripts, problems = [], []
    with _progress(len(files) > 20) as bar:
        task = bar.add_task("parsing", total=len(files))
        for f in files:
            parsed = parse_file(f)
            transcripts += parsed.transcripts
            problems += parsed.problems
            bar.advance(task)
    counts = _load(transcripts, problems, register)
    if counts["rejected"]:
        raise typer.Exit(1)


@app.command()
def sample(
    n: Annotated[int, typer.Argument(help="How many recordings to generate (at most 100,000).", min=1, max=100_000)],
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same transcripts.")] = 7,
    long_call: Annotated[bool, typer.Option(help="Include one dense 3-hour call (1,000+ chunks).")] = True,
    register: Annotated[bool, typer.Option(help="Register the recordings as Dagster partitions.")] = True,
) -> None:
    """Generate N synthetic call transcripts and load them through the normal import path."""
    from embed_assets.lib.sample import sample_transcripts

    _load(sample_transcripts(n, seed, long_call), [], register)


@app.command()
def migrate() -> None:
    """Create or update the project's schema (run once as the schema's owner; workers then need no DDL rights)."""
    from embed_assets.lib.db.connection import connect, redact_url, vector_database_url
    from embed_assets.lib.db.migrations import migrate as apply
    from embed_assets.lib.db.migrations import schema_version
    from embed_assets.lib.db.names import names
    from embed_assets.lib.models.registry import ensure_models

    url = vector_database_url()
    spec = _spec()
    with connect(url) as conn:
        applied = apply(conn, spec.dimension)
        models = ensure_models(conn, spec)
        n = names(conn)
        out.print(
            f"schema {n.schema} on {redact_url(url)} at version {schema_version(conn)}"
            + (f" (applied {', '.join(map(str, applied))})" if applied else " (up to date)")
            + f"; pgvector in schema {n.vector}; models: "
            + ", ".join(f"{m.model_id} ({m.state})" for m in models),
            highlight=False,
        )


@app.command()
def grant(
    role: Annotated[str, typer.Argument(help="An existing database role.")],
    access: Annotated[
        str, typer.Option(help="runtime: a worker (read/write rows, no DDL); search: an app calling embed_search.")
    ] = "search",
    revoke: Annotated[bool, typer.Option("--revoke", help="Take the role's grants back instead.")] = False,
) -> None:
    """Let ROLE reach the project's schema (nobody else can): GRANTs plus row-level-security policies."""
    from embed_assets.lib.db import roles

    if access not in ("runtime", "search"):
        _die(f"--access {access!r} is not known; use runtime or search")
    with _connect_migrated() as conn:
        if revoke:
            roles.revoke(conn, role)
            out.print(f"revoked every grant of {role}", highlight=False)
            return
        for st in roles.grant(conn, role, access):  # type: ignore[arg-type]
            out.print(st + ";", highlight=False, markup=False)
        out.print(f"granted {access} access to {role}", highlight=False)


@app.command()
def adopt(
    table: Annotated[str, typer.Option(help="The table holding text and vectors, e.g. public.transcript_chunks.")],
    model: Annotated[str, typer.Option(help="The model those vectors were made with, e.g. text-embedding-3-small.")],
    dimensions: Annotated[int | None, typer.Option(help="Their dimension, when the model's was shortened.")] = None,
    text_column: Annotated[str, typer.Option(help="The column holding each vector's text.")] = "content",
    embedding_column: Annotated[str, typer.Option(help="The pgvector column.")] = "embedding",
    url_env: Annotated[
        str | None,
        typer.Option(
            help="Name of an env var holding the URL of the table's database (default: EMBED_SOURCE's "
            "database, else the vector store's)."
        ),  # fmt: skip
    ] = None,
    sample: Annotated[int, typer.Option(help="Rows re-embedded to verify the vectors are the model's.")] = 8,
) -> None:
    """Adopt vectors already paid for: chunks whose exact text is in TABLE are never sent to the provider. The
    vectors are verified first (dimension, and a re-embedded random sample); nothing is written to TABLE."""
    from embed_assets.adoption import run_adopt

    with _progress(True) as bar:
        task = bar.add_task("adopting", total=None)
        report, spec, where = run_adopt(
            table, model, dimensions, text_column, embedding_column, url_env, sample, lambda n: bar.advance(task, n)
        )
    cos = ", ".join(f"{c:.4f}" for c in report.sample_cosines) or "not verified"
    out.print(
        f"{report.table} @ {where}: {report.rows} rows, {report.distinct_texts} distinct texts; sample of "
        f"{len(report.sample_cosines)} re-embedded with {spec.model_id}: cosine {cos}\n"
        f"adopted {report.adopted} vectors ({report.already_cached} already in the cache)\n"
        f"matched {report.matched_chunks} chunks without a vector ({report.matched_tokens} tokens, "
        f"${report.saved_usd(spec):.4f} not paid again); {report.unchunked_recordings} recordings not chunked "
        "yet: their matches show as cache_hits in chunk_embeddings' metadata",
        highlight=False,
        markup=False,
    )


@app.command("db-url")
def db_url(
    dagster: Annotated[bool, typer.Option(help="Print the Dagster storage URL instead.")] = False,
) -> None:
    """Print the database URL in use (starting the embedded server if needed)."""
    from embed_assets.lib.db.connection import dagster_database_url, libpq_url, vector_database_url

    print(libpq_url(dagster_database_url()) if dagster else vector_database_url())


@app.command("db-stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server under EMBED_HOME (no-op with EMBED_DATABASE_URL)."""
    from embed_assets.lib.db.connection import stop_embedded_server
    from embed_assets.lib.settings import load_settings

    s = load_settings()
    if not s.embedded:
        _die("EMBED_DATABASE_URL is set: there is no embedded server to stop")
    out.print("stopped" if stop_embedded_server(s.home) else "not running")


def _sync_source() -> None:
    """With EMBED_SOURCE, read the source now (as a sensor tick with a full reconcile would): new and changed
    recordings reach the registry and get partitions; the source's removals leave the registry (their chunks and
    vectors go with their rows) and leave their partitions to `_apply_removals`. Without it, stored rows of the
    project's tables that have no partition get one."""
    from embed_assets.defs.resources import VectorStoreResource
    from embed_assets.lib.settings import automation_settings
    from embed_assets.lib.sources.discovery import all_recording_ids
    from embed_assets.lib.sources.sync import sync_source

    source = VectorStoreResource().source()
    if source is None:
        # The project's own tables: rows stored without a partition (`load --no-register`, a load killed between
        # its writes and their registration) are registered, as the sensor registers them.
        with _connect_migrated() as conn:
            ids = all_recording_ids(conn)
        if added := register_partitions(sorted(ids)):
            out.print(f"registered {added} stored recording(s) that had no partition yet", highlight=False)
        return
    settings = automation_settings()
    with source.connect() as source_conn, _connect_migrated() as conn:
        _, report = sync_source(
            source, source_conn, conn, {}, settle_s=0, scan_limit=settings.scan_limit, reconcile_every_s=0
        )
        ids = all_recording_ids(conn)  # the source's and any loaded from files
    register_partitions(sorted(ids))
    out.print(f"{source.describe()}: {report.summary()}", highlight=False, markup=False)


def _apply_removals(instance) -> list[str]:
    """What the sensor applies for deleted recordings, applied before `embed` selects work (there may be no
    daemon): every partition whose recording is gone from the recordings table (a row deleted by hand, whose
    tombstone the sensor reads; a recording removed from EMBED_SOURCE, whose registry row `_sync_source` just
    deleted) is deleted: the rule of the sensor's reconcile (defs/sensors.py, ``known - all_recording_ids``).
    The rows' chunks, vectors and errors went with them (ON DELETE CASCADE). Idempotent with the sensor: each
    deletes only partitions that still exist, of recordings that are gone, so whichever comes second finds
    nothing to do (the sensor's tombstone cursor is left alone). Returns the removed recordings."""
    from embed_assets.lib.sources.discovery import all_recording_ids

    known = instance.get_dynamic_partitions(PARTITIONS)
    with _connect_migrated() as conn:
        present = all_recording_ids(conn)
    gone = [key for key in known if key not in present]
    for key in gone:
        instance.delete_dynamic_partition(PARTITIONS, key)
    if gone:
        shown = ", ".join(gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")
        out.print(
            f"removed {len(gone)} recording(s) no longer in the source tables (their partitions deleted, as the "
            f"sensor does): {shown}",
            highlight=False,
            markup=False,
        )
    return gone


@app.command()
def embed(
    all_: Annotated[bool, typer.Option("--all", help="Run every partition, not only those needing work.")] = False,
    per_run: Annotated[int, typer.Option(help="Recordings per run (partition range).", min=1)] = RECORDINGS_PER_RUN,
    writers: Annotated[
        int,
        typer.Option(
            help="Recordings written at once per run (chunk_embeddings' write_concurrency): the runs go one at a "
            "time, so a second writer uses a database core the first leaves idle.",
            min=1,
        ),
    ] = CLI_WRITERS,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print Dagster's event log lines (always kept in the UI).")
    ] = False,
) -> None:
    """Run embed_recordings in this process over the registered recordings that need work, with progress
    and a summary of what was written (exit 1 if any recording failed). First applies what the sensor would:
    with EMBED_SOURCE the source is read, and recordings deleted from the source tables lose their partitions
    (reported as removed, never as failed)."""
    from embed_assets.console import pending_blocks, run_embed
    from embed_assets.console.summary import print_summary
    from embed_assets.dead_runs import reclaim_dead_runs
    from embed_assets.definitions import defs
    from embed_assets.lib.db.connection import connect, vector_database_url
    from embed_assets.lib.models.registry import registered
    from embed_assets.lib.sources.discovery import embedded_ids

    instance = _instance()
    reclaim_dead_runs(instance, "embed_recordings", lambda line: err.print(line))
    _sync_source()
    removed = _apply_removals(instance)
    ordered = instance.get_dynamic_partitions(PARTITIONS)
    with _connect_migrated() as conn:
        # Every registered model is kept current: a recording needs work when any of them lacks it. The display
        # follows the first model with work left (the active one, else the shadow being built).
        regs = registered(conn)
        lacking = {r.model_id: set(ordered) - embedded_ids(conn, r.model_id) for r in regs}
        pending = set(ordered) if all_ else set().union(*lacking.values())
        spec = next((r for r in regs if lacking[r.model_id]), regs[0]).spec
        if not pending:
            out.print(
                f"nothing to embed: all {len(ordered)} registered recording(s) are embedded for "
                + ", ".join(r.model_id for r in regs)
                if ordered
                else "no recordings registered: add some with `embed-assets load` or `embed-assets sample N`, "
                "or point EMBED_SOURCE at your own tables",
                highlight=False,
            )
            return
        summary = run_embed(
            instance,
            defs.resolve_job_def("embed_recordings"),
            pending_blocks(ordered, pending, per_run),
            conn=conn,
            connect=lambda: connect(vector_database_url()),
            spec=spec,
            verbose=verbose,
            writers=writers,
        )
    summary.removed += len(removed)
    print_summary(summary, out)
    if not summary.ok:
        raise typer.Exit(130 if summary.interrupted else 1)


def _query_embedder(spec):
    """A function embedding query texts with ``spec`` (the active model: queries and chunks alike); the client
    (and a local model) is built only when a query needs it."""
    from embed_assets.model_change import texts_embedder

    embed = texts_embedder(spec)
    return lambda texts: list(embed(texts))


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="What to look for (omit with --batch).")] = None,
    k: Annotated[int, typer.Option("-k", help="How many results.", min=1, max=1000)] = 5,
    recording: Annotated[str | None, typer.Option(help="Only this recording.")] = None,
    mode: Annotated[str, typer.Option(help="hybrid (words and meaning), vector or text.")] = "hybrid",
    batch: Annotated[
        Path | None, typer.Option(help='JSON lines {"query", "recording_id"?, "k"?}; one result line per query.')
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines output.")] = False,
) -> None:
    """Search the embedded chunks of the active model: hybrid full-text + vector fusion by default."""
    from embed_assets.lib.search.query import MODES, query_problem
    from embed_assets.lib.search.query import search as run_search

    if mode not in MODES:
        _die(f"--mode {mode!r} is not known; use one of {', '.join(MODES)}")
    if (query is None) == (batch is None):
        _die("give a QUERY or --batch FILE.jsonl (not both)")
    if batch is not None:
        from embed_assets.lib.search.batch import read_queries, run_batch

        if not batch.is_file():
            _die(f"no such file: {batch}")
        queries = read_queries(batch.read_bytes(), str(batch), k)
        with _connect_migrated() as conn:
            embed = _query_embedder(_active(conn).spec)
            for result in run_batch(conn, queries, embed, mode):  # type: ignore[arg-type]
                print(json.dumps(result, ensure_ascii=False), flush=True)
        return
    if (problem := query_problem(query)) is not None:
        _die(problem)
    with _connect_migrated() as conn:
        embed = _query_embedder(_active(conn).spec)
        vec = embed([query])[0] if mode != "text" else None
        hits = run_search(conn, vec, query, k, recording, mode)  # type: ignore[arg-type]
    if as_json:
        for h in hits:
            print(json.dumps(h.as_dict(), ensure_ascii=False))
        return
    if not hits:
        out.print("no results (nothing embedded yet for this model?)")
    for h in hits:
        when = f"{h.start_s:.0f}s-{h.end_s:.0f}s" if h.start_s is not None and h.end_s is not None else "-"
        out.print(
            styled(
                (f"{h.score:.3f}", "bold"),
                f" {h.recording_id} #{h.chunk_index} seq {h.first_seq}-{h.last_seq} {when} ({', '.join(h.speakers)})",
            )
        )
        out.print("   " + h.content[:300].replace("\n", "\n   "), highlight=False, markup=False)


@app.command("eval")
def eval_(
    queries: Annotated[Path, typer.Argument(help='Labelled questions: JSON lines {"recording_id", "query", "spans"}.')],
    load: Annotated[
        Path | None,
        typer.Option(help="Transcripts to load into a fresh database first (else: the store as it is, read-only)."),
    ] = None,
    out_json: Annotated[Path | None, typer.Option("--json", help="Also write the report here.")] = None,
) -> None:
    """Retrieval quality: recall@1/3/5/10 and MRR of every search mode beside a plain recipe and random chunks."""
    from embed_assets.evaluation import run_eval

    report = run_eval(queries, load, progress=lambda m: err.print(m, highlight=False))
    if out_json:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report.as_dict(), indent=2))
    header = f"{'method':<18} {'split':<9} {'queries':>7} " + " ".join(f"{'R@' + str(k):>6}" for k in (1, 3, 5, 10))
    out.print(header + f" {'MRR':>6}", highlight=False)
    for method, splits in report.methods.items():
        for split, m in splits.items():
            out.print(
                f"{method:<18} {split:<9} {m['queries']:>7} "
                + " ".join(f"{m[f'recall@{k}']:>6.3f}" for k in (1, 3, 5, 10))
                + f" {m['mrr']:>6.3f}",
                highlight=False,
            )
    for mode, lat in report.latency_ms.items():
        out.print(f"search latency {mode}: p50 {lat['p50']} ms, p95 {lat['p95']} ms", highlight=False)
    out.print(", ".join(f"{k} {v}" for k, v in report.facts.items()), highlight=False)


@app.command()
def check(
    probe: Annotated[bool, typer.Option(help="Also send one tiny live request to the provider.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Preflight for deploy pipelines: every setting and secret the configured provider needs, the database
    reachable with pgvector and the right dimension; exit 0 only when runs can work. The same function as
    the blocking `embedding_config_valid` check. Also reports each configured alert channel as reachable or
    not (no message is sent; an unreachable channel is a warning, not a failure)."""

    from embed_assets.defs.checks import configuration_report
    from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
    from embed_assets.lib.db.connection import redact_url

    store = VectorStoreResource()
    report = configuration_report(store, EmbedderResource(), probe, alerts=True)
    facts = {k: str(v) for k, v in report.facts.items()}
    if store._url:
        facts["database_url"] = redact_url(store._url)
    if as_json:
        print(json.dumps({"ok": report.ok, "problems": report.problems, "warnings": report.warnings, "facts": facts}))
    else:
        for k, v in facts.items():
            out.print(f"{k}: {v}", highlight=False, markup=False)
        for w in report.warnings:
            err.print(styled(("warning:", "yellow"), " ", w))
        for p in report.problems:
            err.print(styled(("problem:", "red"), " ", p))
        out.print("ok: runs can work" if report.ok else f"{len(report.problems)} problem(s)", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Partition and queue health: done, failed, dead-lettered, never run, stale; completion rate; the daemon's
    heartbeat and the sensor's last tick (when a daemon is expected); source rows not registered yet; the
    configuration (as `check`); verdict. Exit 0 healthy, 1 warning, 2 critical, 3 when it cannot be evaluated."""
    from embed_assets.lib.health.status import STATUS_UNKNOWN

    try:
        h = _status_report()
    except typer.Exit as e:  # _die already printed why (no active model, no DAGSTER_HOME)
        raise typer.Exit(STATUS_UNKNOWN if e.exit_code else 0) from None
    except Exception as e:  # noqa: BLE001 (any cause: reported with its type and message, exit 3)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = first if isinstance(e, EmbedAssetsError) and first else f"{type(e).__name__}: {first}"
        if as_json:
            print(json.dumps({"verdict": "unknown", "reasons": [f"status cannot be evaluated: {why}"], "exit_code": 3}))
        err.print(styled(("error:", "red"), f" status cannot be evaluated: {why}"))
        raise typer.Exit(STATUS_UNKNOWN) from None
    s = h["db"]
    data = {
        **s.as_dict(),
        "partitions": h["partitions"],
        "failed": len(h["failed"]),
        "dead_lettered": len(h["dead_lettered"]),
        "failed_ids": h["failed"][:50],
        "dead_lettered_ids": h["dead_lettered"][:50],
        "last_errors": h["errors"],
        "verdict": h["verdict"],
        "reasons": h["reasons"],
        "source": h["source"],
        "models": h["models"],
        "unregistered_source_rows": h["unregistered_source_rows"],
        "daemon": h["daemon"],
        "configuration_problems": h["configuration_problems"],
        "exit_code": h["exit_code"],
    }
    from dagster import DagsterInstance

    from embed_assets.dead_runs import dead_holders

    data["dead_slot_holders"] = dead_holders(DagsterInstance.get())  # slots no run will give back (issue 35)
    for line in [] if as_json else data["dead_slot_holders"]:
        err.print(styled(("warning:", "yellow"), f" {line}"))
    if as_json:
        print(json.dumps(data, default=str))
        raise typer.Exit(h["exit_code"])
    colour = {"healthy": "green", "warning": "yellow", "critical": "red"}[h["verdict"]]
    unregistered = h["unregistered_source_rows"]
    out.print(
        f"model {s.model}: {s.recordings} recordings, {s.embedded_current} embedded, {len(h['failed'])} failed, "
        f"{len(h['dead_lettered'])} dead-lettered, {s.never_embedded} never embedded, {s.stale} stale\n"
        f"completion {s.completion_rate:.1%}; {s.chunks} chunks, {s.vectors} vectors "
        f"({s.vectors_last_hour} embedded in the last hour)\n"
        f"source: {h['source']}; {s.unreadable_source_rows} unreadable source row(s); "
        + (f"{unregistered} source row(s) not registered yet" if unregistered is not None else "source not readable")
        + "\n"
        + _daemon_line(h["daemon"]),
        highlight=False,
        markup=False,
    )
    if len(h["models"]) > 1:
        for m, c in h["models"].items():
            out.print(
                f"  {c['state']:<6} {m} ({c['dimension']} dims, {c['index']} index): {c['embedded']} of "
                f"{c['recordings']} recordings ({c['completion_pct']:.1f}%), {c['vectors']} vectors",
                highlight=False,
                markup=False,
            )
    for rid in (h["dead_lettered"] + h["failed"])[:20]:
        e = h["errors"].get(rid, {})
        tag = "dead-lettered" if rid in h["dead_lettered"] else "failed"
        out.print(
            f"  {tag} {rid}: {e.get('error', 'no recorded error (see the run in the UI)')}",
            highlight=False,
            markup=False,
        )
    out.print(styled((h["verdict"], colour), (": " + "; ".join(h["reasons"])) if h["reasons"] else ""))
    raise typer.Exit(h["exit_code"])


def _status_report() -> dict:
    from embed_assets.defs.liveness import status_report
    from embed_assets.defs.resources import VectorStoreResource

    with _connect_migrated() as conn:
        model_id = _active(conn).model_id
    return status_report(_instance(), VectorStoreResource(), model_id)


def _daemon_line(d: dict) -> str:
    """The daemon as `status` shows it: whether one is expected and why, its heartbeats and the sensor's tick."""
    if not d["expected"]:
        return f"daemon: not expected ({d['why']})"
    beats = d["heartbeat_age_s"]
    sensor = beats.get("SENSOR")
    tick = d["tick_age_s"]
    return (
        f"daemon: expected ({d['why']}); "
        + (f"sensor daemon heartbeat {sensor:.0f} s ago" if sensor is not None else "no sensor daemon heartbeat")
        + "; new_recordings_sensor "
        + (f"last ticked {tick:.0f} s ago ({d['tick_status']})" if tick is not None else "never ticked")
        + (f", {d['sensor_status'].lower()}" if d["sensor_status"] else "")
    )


@app.command()
def index(
    strategy: Annotated[
        str | None, typer.Argument(help="bit, halfvec or vector; omit to show the current one.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="The model whose index (default: the active model).")] = None,
) -> None:
    """Show or replace a model's ANN index (see the README's benchmark table before changing it)."""
    from embed_assets.lib.models.change import reindex
    from embed_assets.lib.models.registry import find, index_strategy

    with _connect_migrated() as conn:
        if strategy is None:
            reg = find(conn, model) if model else _active(conn)
            if reg is None:
                _die(f"model {model!r} is not registered (`embed-assets status` lists them)")
            current = index_strategy(conn, reg)
            out.print(f"{reg.model_id}: {current.name if current else 'none (search is exact)'}", highlight=False)
            return
        started = time.perf_counter()
        reg = reindex(conn, model, strategy)
    out.print(f"{reg.model_id}: index rebuilt as {strategy} in {time.perf_counter() - started:.1f}s", highlight=False)


@app.command()
def dev(port: Annotated[int, typer.Option(help="Webserver port.")] = 3000) -> None:
    """Run the Dagster UI and daemon (sensor, schedule, backfills) on the embedded defaults."""
    import signal

    from embed_assets.dagster_home import workspace_file
    from embed_assets.lib.db.connection import dagster_database_url
    from embed_assets.lib.settings import load_settings

    _instance()
    home = Path(os.environ["DAGSTER_HOME"])
    workspace = workspace_file(home, load_settings().home)
    dagster_database_url()  # start the embedded server before Dagster's processes race to do it
    err.print(f"dagster dev: DAGSTER_HOME {home}, workspace {workspace}", highlight=False, markup=False)
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background start must stay stoppable by its pid
    dagster = Path(sys.executable).parent / "dagster"
    os.execv(str(dagster), [str(dagster), "dev", "-w", str(workspace), "-p", str(port)])


model_app = typer.Typer(no_args_is_help=True, help="Change the embedding model without downtime.")
app.add_typer(model_app, name="model")


@model_app.command("shadow")
def model_shadow(
    name: Annotated[str, typer.Argument(help="The new model, e.g. text-embedding-3-small.")],
    dimensions: Annotated[int | None, typer.Option(help="A shortened dimension (text-embedding-3 models).")] = None,
    provider: Annotated[str | None, typer.Option(help="local or openai (default: the one serving NAME).")] = None,
    index_strategy: Annotated[str | None, typer.Option("--index", help="bit, halfvec or vector.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation (scripts).")] = False,
) -> None:
    """Start building a second model's vectors beside the active one's (search keeps the active model). Prints
    the estimated cost first and asks to confirm. The sensor then requests every recording for it; a backfill
    (`embed-assets embed`, or the UI) builds it faster."""
    from embed_assets.lib.models.change import estimate, shadow
    from embed_assets.model_change import named_model

    spec = named_model(name, dimensions, provider)
    with _connect_migrated() as conn:
        with _progress(True) as bar:
            task = bar.add_task("counting tokens", total=None)
            est = estimate(conn, spec, lambda done, total: bar.update(task, completed=done, total=total))
        out.print("estimate: " + est.describe(), highlight=False, markup=False)
        if not yes and not typer.confirm(f"register {spec.model_id} and start building its vectors?"):
            raise typer.Exit(1)
        reg = shadow(conn, spec, index_strategy)
    out.print(
        f"{reg.model_id} registered as a shadow model ({reg.spec.dimension} dims, table {reg.partition}, chunks cut "
        f"by {reg.chunk_tokenizer}). Build it: `embed-assets embed` (or a backfill of embed_recordings in the UI; "
        "the sensor also requests every recording). Follow it with `embed-assets status`; then "
        f"`embed-assets model compare {reg.model_id}` and `embed-assets model activate {reg.model_id}`.",
        highlight=False,
        markup=False,
    )


@model_app.command("compare")
def model_compare(
    model: Annotated[str, typer.Argument(help="A registered shadow model id (as `status` shows it).")],
    queries: Annotated[
        Path | None, typer.Option(help='Labelled questions (JSON lines {"recording_id", "query", "spans"}).')
    ] = None,
    sample: Annotated[int, typer.Option(help="Queries drawn from chunk text when no --queries.")] = 50,
    k: Annotated[int, typer.Option("-k", help="Top-k compared.", min=1, max=100)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The active model beside MODEL on the same queries: top-k overlap, recall@k (with labelled queries) and
    per-query latency of each. Read-only."""
    from embed_assets.model_change import run_compare

    with _connect_migrated() as conn:
        report = run_compare(conn, model, queries, sample, k, lambda m: err.print(m, highlight=False))
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(
        f"{report.queries} {'labelled' if report.labelled else 'drawn'} queries; active {report.active} vs "
        f"{report.candidate}",
        highlight=False,
    )
    for mode, share in report.overlap.items():
        out.print(f"{mode}: top-{report.k} overlap {share:.3f}", highlight=False)
        for m in (report.active, report.candidate):
            lat = report.latency_ms[m][mode]
            recall = report.recall.get(m, {}).get(mode, {}).get("all")
            extra = (
                " ".join(f"R@{x} {recall[f'recall@{x}']:.3f}" for x in (1, 5, 10)) + f" MRR {recall['mrr']:.3f}; "
                if recall
                else ""
            )
            out.print(f"  {m}: {extra}p50 {lat['p50']} ms, p95 {lat['p95']} ms", highlight=False)


@model_app.command("activate")
def model_activate(
    model: Annotated[str, typer.Argument(help="A registered model id.")],
    force: Annotated[bool, typer.Option("--force", help="Switch even while it lacks recordings.")] = False,
) -> None:
    """Switch search (embed_search, `search`, the health verdict) to MODEL, for every reader at once. Refused
    while MODEL lacks vectors of recordings the active model serves, unless --force. Rolling back is activating
    the old model again (it is kept current until dropped)."""
    from embed_assets.lib.models.change import activate

    with _connect_migrated() as conn:
        reg, gap = activate(conn, model, force)
    if gap is None:
        out.print(f"{reg.model_id} is the active model", highlight=False)
        return
    out.print(f"{reg.model_id} is now the active model (was {gap.active_id})", highlight=False)
    if gap.lost:
        err.print(styled(("warning:", "yellow"), f" {gap.describe()} until its backfill completes"))


@model_app.command("drop")
def model_drop(
    model: Annotated[str, typer.Argument(help="A registered model that is not active.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation (scripts).")] = False,
) -> None:
    """Remove a model's vectors and index (a DROP of its table: instant, no index churn) and its chunks. Refuses
    the active model."""
    from embed_assets.lib.models.change import drop

    if not yes and not typer.confirm(f"drop every vector of {model}?"):
        raise typer.Exit(1)
    with _connect_migrated() as conn:
        removed = drop(conn, model)
    out.print(f"dropped {model}: {removed} vectors and its index removed", highlight=False)


def main() -> None:
    # Dagster flags BackfillPolicy and per-op pools as beta/preview on every import: noise for CLI users.
    warnings.filterwarnings("ignore", message=".*(beta|preview)", category=Warning)
    try:
        app()
    except EmbedAssetsError as e:
        err.print(styled(("error:", "red"), " ", str(e)), soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
