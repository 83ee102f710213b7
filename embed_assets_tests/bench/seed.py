"""The seed's scale, end to end: recordings with the seed corpus's length distribution, embedded through
the UI's backfill path (`launchPartitionBackfill` on `dagster dev`, the project's instance config) against
the loopback provider behaving like a real one: a few hundred ms per request, and a requests-per-minute and
tokens-per-minute budget answered with 429 + Retry-After when exceeded. The floor is the provider's budget:
total tokens / TPM. At seed scale the provider, not this project, must be the limit (ratio >= 0.8).

The full seed (~7,000 recordings, ~500,000 chunks, ~90 M tokens) takes ~90 minutes at the default budget and
does not fit one bench run here, so it is measured at two sizes and extrapolated: wall = a + b x tokens
fitted through the two points (a: the fixed part, the backfill daemon's pickup and the last run's tail; b:
seconds per token, 1/TPM when provider-bound), evaluated at the full corpus's tokens (mean tokens per
recording at the larger size x 7,000)."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import dagster as dg

from embed_assets.lib.sample import make_transcript
from embed_assets.lib.transcripts import Transcript
from embed_assets_tests.bench.e2e import (
    _by_kind,
    _fresh_store,
    _in_steps,
    _runs,
    _wait,
    backfill_env,
    launch_backfill,
)
from embed_assets_tests.bench.report import Figure, Report, environment
from embed_assets_tests.support.dagster_dev import DagsterDev, fresh_database, make_home
from embed_assets_tests.support.openai_server import Budget, FakeOpenAI

SEED_RECORDINGS = 7_000
# OpenAI's budget for text-embedding-3-small on usage tier 1 (1,000,000 TPM, 3,000 RPM): the smallest a
# paying account gets, so the bar holds for everyone above it too as long as this project's own rate (the
# e2e group: ~1,000 chunks/s of stage floors here, ~180 tokens each) stays well above 1 M / 60 = 16,700
# tokens/s (~95 chunks/s).
TPM, RPM, LATENCY_S = 1_000_000, 3_000, 0.3


def seed_transcripts(n: int, seed: int = 23) -> list[Transcript]:
    """The seed's length distribution: 88% of calls 30-60 minutes, a tail of 12% 2-3 hour calls (~73 chunks
    of 200 tokens per recording on average, ~510,000 for 7,000 recordings)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        minutes = rng.uniform(120, 180) if rng.random() < 0.12 else rng.uniform(30, 60)
        out.append(make_transcript(rng, f"seed-{i:05d}", minutes))
    return out


def backfill_at_budget(url: str, sizes: list[int], report: Report, progress) -> None:
    dim = 1536
    points: list[tuple[int, int, float]] = []  # (recordings, tokens, wall)
    for n in sizes:
        transcripts = seed_transcripts(n)
        keys = [t.recording_id for t in transcripts]
        _fresh_store(url, transcripts, dim)
        dagster_url = fresh_database(url, "embed_bench_dagster")
        budget = Budget(rpm=RPM, tpm=TPM, latency_s=LATENCY_S)
        with FakeOpenAI(default_dim=dim, budget=budget) as server, tempfile.TemporaryDirectory(prefix="seed-") as tmp:
            env = backfill_env(url, dagster_url, tmp, server)
            with environment(**env):
                home = make_home(Path(tmp) / "dagster_home")
                instance = dg.DagsterInstance.from_config(str(home))
                instance.add_dynamic_partitions("recordings", keys)
                with DagsterDev(home, env, Path(tmp) / "dagster-dev.log", progress) as dev:
                    launched = time.time()
                    backfill_id = launch_backfill(dev, keys)
                    _wait(instance, backfill_id, progress, timeout_s=7200)
                runs = _runs(instance, backfill_id)
                failed = [r.dagster_run.run_id for r in runs if r.dagster_run.status.value != "SUCCESS"]
                if failed:
                    raise RuntimeError(f"{len(failed)} seed backfill run(s) did not succeed: {failed}")
                kinds = _in_steps(instance, [r.dagster_run.run_id for r in runs])
                instance.dispose()
            end = max(r.end_time for r in runs)
            wall = end - launched
            after_pickup = end - min(r.create_timestamp.timestamp() for r in runs)
            seen = server.seen
        floor = seen.tokens / TPM * 60
        points.append((n, seen.tokens, wall))
        tag = f"seed_{n}"
        note = (
            f"{n} recordings, {seen.inputs:,} chunks, {seen.tokens:,} tokens, {len(runs)} runs; provider "
            f"{TPM:,} TPM / {RPM:,} RPM, {LATENCY_S * 1000:.0f} ms per request, 429 + Retry-After over budget"
        )
        report.add(Figure(f"{tag}_backfill_wall", wall, "s", floor, "provider budget (tokens / TPM)", False, note))
        report.add(
            Figure(
                f"{tag}_backfill_wall_after_pickup",
                after_pickup,
                "s",
                floor,
                "provider budget (tokens / TPM)",
                False,
                "first run created -> last run ended (without the backfill daemon's fixed 30 s loop: Dagster's)",
            )
        )
        report.add(
            Figure(
                f"{tag}_provider_requests",
                seen.requests,
                "requests",
                note=f"{seen.ok} answered, {seen.rate_limited} answered 429 (over the budget)",
            )
        )
        report.add(Figure(f"{tag}_provider_429s", seen.rate_limited, "429s"))
        report.add(Figure(f"{tag}_in_steps_total", kinds["total"], "s", note=_by_kind(kinds)))
        progress(f"seed {n}: {wall:.0f}s for {seen.tokens:,} tokens (floor {floor:.0f}s), {seen.rate_limited} 429s")
    if len(points) >= 2:
        (n1, t1, w1), (n2, t2, w2) = points[0], points[-1]
        # No backfill can go faster per token than the provider's budget: at toy sizes (--quick) the daemon's
        # 30 s loop dominates both walls and its phase alone can make the fitted slope negative.
        b = max((w2 - w1) / (t2 - t1), 60 / TPM)
        a = w1 - b * t1
        full_tokens = t2 / n2 * SEED_RECORDINGS
        full_wall = a + b * full_tokens
        full_floor = full_tokens / TPM * 60
        report.add(
            Figure(
                "seed_full_extrapolated_wall",
                full_wall,
                "s",
                full_floor,
                "provider budget (tokens / TPM)",
                False,
                f"{SEED_RECORDINGS:,} recordings, ~{full_tokens:,.0f} tokens: wall = {a:.1f} s + {b * 1e6:.2f} s per "
                f"M tokens, fitted through {n1} and {n2} recordings (the budget alone: {60 / TPM * 1e6:.2f} s per M)",
            )
        )
