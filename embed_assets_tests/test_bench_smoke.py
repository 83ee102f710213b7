"""The benchmark at toy sizes, so it never rots. It measures nothing: the figures come from `make bench`."""

from __future__ import annotations

import json
from pathlib import Path


def test_bench_runs_and_reports_every_figure(db_url: str, tmp_path: Path) -> None:
    from embed_assets_tests.bench.__main__ import main

    out = tmp_path / "bench.json"
    report = main(["--quick", "--out", str(out)])
    names = {f.name for f in report.figures}
    for expected in (
        "write_1000x1536_into_2000_hnsw_product",
        "index_bit_hnsw_rerank_insert_1000",
        "search_bit_hnsw_rerank_recall_at_10_120",
        "provider_openai_embedder_c4",
        "local_embedder",
        "sensor_tick_1000",
        "status_1000",
        "e2e_backfill_wall",
        "e2e_run_overhead_mean",
        "e2e_cli_embed_wall",
        "e2e_cli_rerun_unchanged_wall",
        "e2e_cli_provider_requests",
        "e2e_rerun_unchanged_ours_per_recording",
        "e2e_sensor_catchup_wall",
        "seed_6_backfill_wall",
        "seed_full_extrapolated_wall",
        "ui_graphql_partition_status_500",
        "ui_partitions_page_500",
        "search_hybrid_p95_2000",
        "write_1000_chunks_into_2000_with_fulltext",
        "source_first_pass_60",
        "source_full_reconcile_60",
        "models_shadow_backfill_write_ratio_2000",
        "models_active_rows_inserted_during_shadow_only",
    ):
        assert expected in names
    data = json.loads(out.read_text())
    assert len(data) == len(report.figures) and all(f["value"] >= 0 for f in data)
    recall = next(f for f in data if f["name"] == "search_vector_hnsw_recall_at_10_120")["value"]
    assert 0.5 <= recall <= 1.0  # real embeddings: HNSW finds most true neighbours even at toy size
    requests = next(f for f in data if f["name"] == "e2e_cli_provider_requests")["value"]
    assert 1 <= requests < 4  # the 4 recordings of the quick run share requests
    shadow_rows = next(f for f in data if f["name"] == "models_active_rows_inserted_during_shadow_only")["value"]
    assert shadow_rows == 0  # a shadow model's writes never touch the active model's partition


def test_floors_as_streams_at_once_cover_the_same_work(db_url: str) -> None:
    """The e2e floors split over two processes (as a backfill's two runs share the machine) chunk and write
    the same rows as one stream does."""
    from embed_assets.lib.sample import sample_transcripts
    from embed_assets_tests.bench.__main__ import bench_url
    from embed_assets_tests.bench.e2e import _fresh_store, floors
    from embed_assets_tests.support.openai_server import FakeOpenAI

    url, transcripts = bench_url(), sample_transcripts(4, seed=5)
    _fresh_store(url, transcripts, 1536)
    with FakeOpenAI(default_dim=1536) as server:
        one, n_one = floors(url, transcripts, server, 1536, 256)
        requests = server.seen.requests
        two, n_two = floors(url, transcripts, server, 1536, 256, streams=2)
        assert server.seen.requests - requests >= max(requests, 2)  # each stream sent its own share
    assert n_one == n_two > 0 and set(one) == set(two) and all(v > 0 for v in two.values())
