"""The Dagster UI in a real browser: `dagster dev` (webserver + daemon) on the project's instance config,
with three embedded recordings and one whose run failed, driven by headless Chromium through Playwright.

Asserts what a user sees: the lineage graph with both assets, the partitions view with every recording key
and the failed one marked (and filterable), the three checks with their last result, the sensor ticking
and the schedule, and the health trend plot of `pipeline_health`. Screenshots go to test-artifacts/browser/.
Skipped, with the reason printed, only where Debian's chromium is not installed (`make test` installs it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from embed_assets.lib.sample import sample_transcripts
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets_tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from embed_assets_tests.support.dagster_dev import REPO, DagsterDev, alive, make_home
from embed_assets_tests.support.receivers import HttpReceiver

ARTIFACTS = REPO / "test-artifacts" / "browser"
# A write that times out whatever the batch (1 ms), with adaptive batches off so it is the normal batch's
# statement that fails, deterministically: what the retry schedule exists for.
TIGHT = {
    "ops": {
        "chunk_embeddings": {
            "config": {"statement_timeout_s": 0.001, "insert_batch_size": 1000, "adaptive_batches": False}
        }
    }
}
WAIT_MS = 90_000  # generous: the first GraphQL queries of a fresh webserver are slow on 2 cores


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's `chromium` package; it could not here")
    from playwright.sync_api import sync_playwright  # a dev dependency: missing is a failure, not a skip

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def alert_ticks(dev: DagsterDev) -> list[dict]:
    data = dev.graphql(
        """{ sensorOrError(sensorSelector: {repositoryLocationName: "embed_assets", repositoryName: "__repository__",
             sensorName: "health_alerts"}) { ... on Sensor { sensorState { ticks(limit: 10) { status } } } } }"""
    )
    return data["sensorOrError"]["sensorState"]["ticks"]


def wait_for(predicate, what: str, timeout_s: float = WAIT_MS / 1000) -> None:
    """Poll (coordination only: nothing is asserted about how long it took)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def populate(home: Path, conn: psycopg.Connection) -> list[str]:
    """Four sample recordings: the last one's run fails (statement timeout), then the others embed; health is
    evaluated before, between and after (three points on the trend plot)."""
    from embed_assets.definitions import defs

    transcripts = sample_transcripts(4, seed=3, long_call=False)
    for t in transcripts:
        upsert_transcript(conn, t)
    keys = [t.recording_id for t in transcripts]
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("recordings", keys)
    job, health = defs.resolve_job_def("embed_recordings"), defs.resolve_job_def("health_check")
    assert health.execute_in_process(instance=instance).success  # the trend's first point: nothing embedded
    assert not job.execute_in_process(
        instance=instance, partition_key=keys[3], run_config=TIGHT, raise_on_error=False
    ).success
    assert health.execute_in_process(instance=instance).success
    range_tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[2]}
    assert job.execute_in_process(instance=instance, tags=range_tags, raise_on_error=False).success
    assert health.execute_in_process(instance=instance).success  # 3 of 4 embedded
    instance.dispose()
    return keys


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as r:
        yield r


def test_the_ui_shows_assets_partitions_checks_and_automation(
    tmp_path: Path,
    conn: psycopg.Connection,
    dagster_db: str,
    browser,
    monkeypatch: pytest.MonkeyPatch,
    receiver: HttpReceiver,
) -> None:
    from playwright.sync_api import expect

    home = make_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("EMBED_DAGSTER_DATABASE_URL", dagster_db)
    # No retry tick may relaunch the failed recording while the test looks at it: once a year.
    monkeypatch.setenv("EMBED_RETRY_CRON", "0 3 1 1 *")
    # The rows were written a moment ago: without this the first tick rightly waits for them to settle.
    monkeypatch.setenv("EMBED_SENSOR_SETTLE_S", "0")
    keys = populate(home, conn)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()

    # The daemon's health_alerts sensor, every 5 s, posting to a loopback webhook (test_alerts.py covers the rest).
    hook = receiver.url("/hooks/ui-test-token-31415")
    dev = DagsterDev(
        home, {"EMBED_ALERT_WEBHOOK_URL": hook, "EMBED_ALERT_INTERVAL_S": "5"}, ARTIFACTS / "dagster-dev.log"
    )
    with dev:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)

        def shot(name: str) -> None:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

        # Lineage: both assets, the checks summary and the failed partition on the graph's nodes.
        page.goto(f"{dev.url}/asset-groups")
        expect(page.get_by_text("75% filled (1 failed)")).to_be_visible()
        expect(page.get_by_text("100% filled")).to_be_visible()
        for asset in ("transcript_chunks", "chunk_embeddings"):
            expect(page.get_by_text(asset, exact=True).first).to_be_visible()
        shot("1-lineage")

        # Partitions: every recording key, the failed one counted and alone under the Failed filter.
        page.goto(f"{dev.url}/assets/chunk_embeddings?view=partitions")
        expect(page.get_by_text("Failed (1)")).to_be_visible()
        expect(page.get_by_text("Materialized (3)")).to_be_visible()

        def listed(key: str):
            return page.locator("span").filter(has_text=re.compile(rf"^{re.escape(key)}$"))

        for key in keys:
            expect(listed(key)).to_be_visible()
        shot("2-partitions")
        page.get_by_text("Materialized (3)").click()
        expect(listed(keys[3])).to_be_visible()
        for key in keys[:3]:
            expect(listed(key)).to_have_count(0)
        shot("3-partitions-failed-only")

        # Checks: the blocking config check passed; integrity passed; completion 3/4 is below 99%: failed.
        page.goto(f"{dev.url}/assets/transcript_chunks?view=checks")
        body = page.locator("body")

        def check_result(name: str, result: str):
            return expect(body).to_contain_text(re.compile(rf"{name}(\s*{name})?\s*{result}"))

        check_result("embedding_config_valid", "Succeeded")
        expect(page.get_by_text("This is a blocking asset check.")).to_be_visible()
        shot("4-checks-transcript-chunks")
        page.goto(f"{dev.url}/assets/chunk_embeddings?view=checks")
        expect(page.get_by_text("Checks (2)")).to_be_visible()
        check_result("chunk_integrity", "Succeeded")
        check_result("completion_rate", "Failed")  # 3 of 4 embedded: below the 99% bar
        shot("5-checks-chunk-embeddings")

        # Automation: the sensor (ticking under the daemon) and the schedule, both running.
        page.goto(f"{dev.url}/automation")
        expect(page.get_by_text("new_recordings_sensor")).to_be_visible()
        expect(page.get_by_text("retry_failed_recordings")).to_be_visible()
        shot("6-automation")
        page.get_by_text("new_recordings_sensor").click()
        # The daemon evaluated it: all four recordings seen, nothing to request (3 done, 1 left to the retry).
        expect(page.get_by_role("row", name=re.compile(r"Latest tick .* 0 runs requested"))).to_be_visible()
        expect(page.get_by_text("rec-003-0003").first).to_be_visible()  # the cursor reached the last row
        shot("7-sensor-ticks")

        # The health trend: pipeline_health's numbers over its three evaluations (Overview -> Metadata -> Plots).
        page.goto(f"{dev.url}/assets/pipeline_health")
        page.get_by_role("button", name="Plots").click()
        for label in ("completion_pct", "pending", "failed", "dead_lettered", "estimated_cost_usd_per_day"):
            expect(page.get_by_text(label, exact=True).first).to_be_visible()
        expect(page.locator("canvas").first).to_be_visible()
        page.get_by_text("completion_pct", exact=True).first.scroll_into_view_if_needed()
        shot("8-health-trend")

        # Under the real daemon: the warning (3 of 4 embedded) went out once, and not again on later ticks.
        wait_for(lambda: len(alert_ticks(dev)) >= 3 and receiver.received("/hooks/ui-test-token-31415"), "alert ticks")
        (warn,) = receiver.received("/hooks/ui-test-token-31415")
        assert warn.json()["kind"] == "warn" and "1 of 4 recording(s) have no current vectors" in warn.json()["text"]
        pids = set(dev.pids)
    assert pids and not any(alive(p) for p in pids)
