"""What keeping bought vectors costs the write path (issue 33 item 4): for a 1,000-chunk recording (1536 dims),
the cache write committed before the indexed write (lib/vector_cache.keep_bought) and the cache rows' removal
inside the write (consume), against the indexed write itself (lib/store.write_vectors, default HNSW, a table
already holding vectors). Prints each repetition and the median ratio.

    EMBED_HOME=/tmp/some-dir python -m embed_assets_tests.bench.paid_once [--base 5000] [--reps 3]

It drops and rebuilds the `embed_assets` schema of the server under EMBED_HOME: never point it at real data."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import psycopg

from embed_assets.lib.db.connection import vector_database_url
from embed_assets.lib.store import plan_embeddings, write_vectors
from embed_assets.lib.vector_cache import Billed, consume, keep_bought
from embed_assets_tests.bench.write_path import MODEL, PER_RECORDING, _recording, prepare, unit_vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=5000, help="vectors already in the table")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(33)
    url = vector_database_url()
    prepare(url, args.base, rng, print)
    ratios = []
    with psycopg.connect(url, autocommit=True) as conn:
        for rep in range(args.reps):
            rid = f"paid-once-{rep}"
            _recording(conn, rid, PER_RECORDING)
            plan = plan_embeddings(conn, rid, MODEL)
            vecs = unit_vectors(rng, PER_RECORDING)
            hashes = [c.content_hash for c in plan.to_embed]
            rows = {c.chunk_index: (c.content_hash, vecs[i]) for i, c in enumerate(plan.to_embed)}
            began = time.perf_counter()
            keep_bought(conn, MODEL, hashes, vecs, Billed(1, PER_RECORDING, 5 * PER_RECORDING))
            keep_s = time.perf_counter() - began
            with conn.transaction(force_rollback=True):  # the delete write_vectors does after its commit, alone
                began = time.perf_counter()
                consume(conn, MODEL, hashes)
                consume_s = time.perf_counter() - began
            began = time.perf_counter()
            write_vectors(conn, plan, rows, insert_batch_size=100, statement_timeout_ms=600_000)
            indexed_s = time.perf_counter() - began - consume_s
            left = conn.execute("SELECT count(*) FROM embed_assets.vector_cache").fetchone()[0]
            ratios.append((keep_s + consume_s) / indexed_s)
            print(
                f"rep {rep + 1}: cache write {keep_s:.3f}s + cache delete {consume_s:.3f}s vs indexed write "
                f"{indexed_s:.3f}s: extra = {ratios[-1]:.1%}; cache rows left {left}"
            )
    print(f"median extra cost of paying once: {statistics.median(ratios):.1%} of the indexed write")


if __name__ == "__main__":
    main()
