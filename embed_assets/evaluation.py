"""`embed-assets eval` / `make eval`: load labelled transcripts through the normal import path into a fresh
database, chunk and embed them with the product's own code and settings, then measure retrieval
(lib/search/evaluate.py). Without transcripts to load, it measures the configured store as it is (read-only),
which is how a user checks the product on their own labelled questions."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from embed_assets.lib.errors import InputError
from embed_assets.lib.search.evaluate import Report, evaluate, load_queries

EVAL_DB = "embed_eval"


def _fresh_database() -> str:
    """EMBED_EVAL_DATABASE_URL (emptied of the project's schema), else database embed_eval on the embedded
    server, dropped and created anew."""
    import psycopg

    from embed_assets.lib.db.connection import embedded_server_url, libpq_url
    from embed_assets.lib.db.names import schema_name
    from embed_assets.lib.settings import load_settings

    url = os.environ.get("EMBED_EVAL_DATABASE_URL", "").strip()
    if url:
        url = libpq_url(url)
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(schema_name())))
        return url
    home = load_settings().home
    admin = embedded_server_url(home, "postgres")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {EVAL_DB} WITH (FORCE)")
    return embedded_server_url(home, EVAL_DB)


def run_eval(queries_path: Path, load: Path | None, progress: Callable[[str], None]) -> Report:
    from embed_assets.console.run import QUIET_ENV
    from embed_assets.defs.config import ChunkConfig
    from embed_assets.defs.resources import EmbedderResource
    from embed_assets.lib.db.connection import connect, vector_database_url
    from embed_assets.lib.db.migrations import migrate
    from embed_assets.lib.embedders.base import texts_function
    from embed_assets.lib.models.registry import ensure_models
    from embed_assets.lib.pipeline import RecordingEmbedder, chunk_recording
    from embed_assets.lib.sources.tables import upsert_transcript
    from embed_assets.lib.tokenizers import token_counter
    from embed_assets.lib.transcripts import expand_paths, parse_file, reject_duplicates

    for k, v in QUIET_ENV.items():  # progress is ours (per 5 recordings); the model's bars are noise
        os.environ.setdefault(k, v)
    if not queries_path.is_file():
        raise InputError(f"no such file: {queries_path} (labelled questions, one JSON object per line)")
    queries = load_queries(queries_path)
    resource = EmbedderResource()
    spec = resource.spec()
    url = _fresh_database() if load is not None else vector_database_url()
    with connect(url, setting="EMBED_EVAL_DATABASE_URL" if load else "EMBED_DATABASE_URL") as conn:
        migrate(conn, spec.dimension)
        spec = ensure_models(conn, spec)[0].spec  # an existing store is evaluated with its active model
    embedder = resource.build(
        batch_size=64, max_concurrency=2, request_timeout_s=60, max_attempts=6, backoff_base_s=1, spec=spec
    )
    counter = token_counter(spec.tokenizer)
    embed = texts_function(embedder)
    try:
        with connect(url, setting="EMBED_EVAL_DATABASE_URL" if load else "EMBED_DATABASE_URL") as conn:
            if load is not None:
                started = time.perf_counter()
                transcripts, problems = [], []
                for f in expand_paths([load]):
                    parsed = parse_file(f)
                    transcripts += parsed.transcripts
                    problems += parsed.problems
                transcripts, dups = reject_duplicates(transcripts)
                for p in [*problems, *dups]:
                    progress(f"{'rejected' if p.fatal else 'warning'}: {p}")
                params = ChunkConfig().params(spec)
                keys = [t.recording_id for t in transcripts]
                for t in transcripts:
                    upsert_transcript(conn, t)
                    chunk_recording(conn, t.recording_id, spec, params)
                progress(f"loaded and chunked {len(keys)} recordings in {time.perf_counter() - started:.1f}s")
                started = time.perf_counter()
                run = RecordingEmbedder(
                    lambda: conn, embedder, keys, window_inputs=512, insert_batch_size=100, statement_timeout_ms=300_000
                )
                for n, key in enumerate(keys, 1):
                    run(key)
                    if n % 5 == 0 or n == len(keys):
                        progress(f"embedded {n}/{len(keys)} recordings ({time.perf_counter() - started:.0f}s)")
            report = evaluate(conn, queries, embed, progress)
            report.facts["model"] = spec.model_id
            report.facts["chunker"] = ChunkConfig().params(spec).describe(counter.name)
            return report
    finally:
        embedder.close()
