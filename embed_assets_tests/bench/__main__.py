"""`make bench`: every figure against its floor, in one run. `--quick` is the smoke size the tests use.

python -m embed_assets_tests.bench [--quick] [--vectors N] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

from embed_assets.lib.db.connection import vector_database_url
from embed_assets_tests.bench import (
    check_cost,
    e2e,
    models,
    providers,
    retrieval,
    scale,
    search,
    seed,
    sources,
    ui_scale,
    write_path,
)
from embed_assets_tests.bench.report import Report


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def bench_url() -> str:
    """Database `embed_bench` on the project's server (never the vector store itself)."""
    url = vector_database_url()
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'embed_bench'").fetchone():
            conn.execute("CREATE DATABASE embed_bench")
    return url.replace("/embed_assets?", "/embed_bench?") if "?" in url else url.rsplit("/", 1)[0] + "/embed_bench"


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs, measures nothing")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the sensor/status figures")
    parser.add_argument(
        "--only",
        default="providers,write,models,search,retrieval,scale,check,e2e,seed,ui,sources",
        help="comma-separated figure groups",
    )
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument(
        "--model-vectors", type=int, default=20_000, help="active model's vectors in the shadow-model write figures"
    )
    parser.add_argument("--shadow-dim", type=int, default=3072, help="the shadow model's dimension (models group)")
    parser.add_argument("--docs", type=int, default=8_000)
    parser.add_argument("--recordings", type=int, default=200, help="recordings in the end-to-end backfill")
    parser.add_argument("--source-calls", type=int, default=7_000, help="calls in the user-tables source figures")
    parser.add_argument(
        "--seed-sizes",
        default="150,300",
        help="recordings of the two seed backfills the full seed is extrapolated from",
    )
    parser.add_argument("--partitions", default="10000,100000", help="partition counts of the UI scale figures")
    parser.add_argument(
        "--check-partitions",
        default="100000",
        help="partition counts of the completion check's per-run cost (check); 1000000 adds ~1 min of setup",
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("EMBED_HOME", ".embed_assets")) / "bench.json")
    args = parser.parse_args(argv)
    n_vectors, n_docs, n_rec = (2_000, 120, 1_000) if args.quick else (args.vectors, args.docs, 100_000)
    rng = np.random.default_rng(0)
    report = Report()
    url = bench_url()
    started = time.perf_counter()
    only = set(args.only.split(","))
    if "providers" in only:
        providers.provider_path(300 if args.quick else 20_000, 256, report, progress)
        providers.local_model(32 if args.quick else 1_000, 32, report, progress)
    if "write" in only:
        write_path.prepare(url, n_vectors, rng, progress)
        write_path.write_path(url, n_vectors, report, rng, progress)
        write_path.index_strategies(url, n_vectors, report, rng, progress)
    if "models" in only:
        models.shadow_write_cost(
            url,
            2_000 if args.quick else args.model_vectors,
            report,
            rng,
            progress,
            shadow_dim=args.shadow_dim,
            reps=2 if args.quick else 5,
        )
    if "search" in only:
        search.recall_and_latency(url, n_docs, 30 if args.quick else 200, report, progress)
    if "retrieval" in only:
        retrieval.hybrid_at_scale(url, n_vectors, report, rng, progress)
        if not args.quick:  # the development set takes ~4 min to embed: `make eval` alone, or the full bench
            retrieval.dev_set_quality(report, progress)
    if "e2e" in only:
        e2e.backfill(url, 4 if args.quick else args.recordings, report, progress)
    if "seed" in only:
        seed.backfill_at_budget(
            url, [3, 6] if args.quick else [int(x) for x in args.seed_sizes.split(",")], report, progress
        )
    if "ui" in only:
        for n in (500,) if args.quick else [int(x) for x in args.partitions.split(",")]:
            ui_scale.partition_scale(url, n, report, progress)
    if "sources" in only:
        with tempfile.TemporaryDirectory() as work:
            sources.source_sync(url, 60 if args.quick else args.source_calls, report, progress, Path(work))
    if "check" in only:  # 1,000,000 (--check-partitions 100000,1000000) takes ~1 min to set up
        for n in (300,) if args.quick else [int(x) for x in args.check_partitions.split(",")]:
            check_cost.completion_check_cost(url, n, report, progress)
    for n in () if args.skip_scale or "scale" not in only else (n_rec // 10, n_rec):
        scale.sensor_and_status(url, n, report, progress)
    report.write(args.out)
    progress(f"bench done in {time.perf_counter() - started:.0f}s; JSON in {args.out}")
    return report


if __name__ == "__main__":
    main()
