"""The issue's incident, end to end with real receivers on loopback: 100 recordings, EMBED_PROVIDER=openai and
no key where runs execute. Exactly one error alert per channel (Slack webhook, generic webhook, email), not
one per failed partition, also while the retry schedule keeps failing; then, once the key is set and the
failed partitions are re-launched, exactly one recovery message per channel. The heartbeat is pinged after
healthy evaluations only, and the key appears in no received message.

What runs for real: a Dagster instance, the 100 runs the `new_recordings_sensor` requests (each failing in
its blocking config check), the `retry_failed_recordings` schedule's runs, `evaluate_health`'s health runs,
the re-launch as runs of 25 partitions (what the UI's backfill of failed partitions and `embed-assets embed`
do), the embedded Postgres, the real openai client against the loopback server, an HTTP server and an SMTP
server (aiosmtpd). Not the daemon process itself: its ticks are these same sensor and schedule functions
called on the instance with `build_sensor_context` / `build_schedule_context` (a cron ticks once a minute at
best, so a daemon-driven incident would take minutes; the daemon's own loop is Dagster's, tested there).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest

from embed_assets.definitions import defs
from embed_assets.defs.alerts import health_alerts
from embed_assets.defs.monitoring import evaluate_health
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.schedules import retry_failed_recordings
from embed_assets.defs.sensors import new_recordings_sensor
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets_tests.support.openai_server import FakeOpenAI
from embed_assets_tests.support.receivers import HttpReceiver, SmtpReceiver
from embed_assets_tests.test_assets import short

CANARY = "sk-alert-canary-5d2e9b07c4a1f8e3"
RESOURCES = {"store": VectorStoreResource(), "embedder": EmbedderResource()}
N = 100


@pytest.fixture
def receivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HttpReceiver, SmtpReceiver]]:
    with HttpReceiver() as http, SmtpReceiver() as smtp:
        for k, v in {
            "EMBED_ALERT_SLACK_WEBHOOK_URL": http.url("/services/T0001/B0002/slacktoken0123456789"),
            "EMBED_ALERT_WEBHOOK_URL": http.url("/api/webhooks/42/discordtoken9876543210"),
            "EMBED_ALERT_SMTP_HOST": "127.0.0.1",
            "EMBED_ALERT_SMTP_PORT": str(smtp.port),
            "EMBED_ALERT_SMTP_TLS": "none",
            "EMBED_ALERT_SMTP_FROM": "embed-assets@example.com",
            "EMBED_ALERT_SMTP_TO": "oncall@example.com, data@example.com",
            "EMBED_HEARTBEAT_URL": http.url("/ping/0f3c8e1a-heartbeat"),
            "EMBED_ALERT_DIGEST_MINUTES": "15",
        }.items():
            monkeypatch.setenv(k, v)
        yield http, smtp


class Deployment:
    """One Dagster instance and the project's automation, ticked by hand; every run really executes."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursors: dict[str, str | None] = {}

    def sensor(self, sensor: dg.SensorDefinition, resources: dict | None = None):
        ctx = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursors.get(sensor.name), resources=resources or {}
        )
        result = sensor(ctx)
        if isinstance(result, dg.SensorResult) and result.cursor is not None:
            self.cursors[sensor.name] = result.cursor
        return result

    def execute(self, request: dg.RunRequest, job: str = "embed_recordings") -> bool:
        return (
            defs.resolve_job_def(job)
            .execute_in_process(
                instance=self.instance,
                partition_key=request.partition_key,
                run_config=request.run_config or {},
                tags=request.tags,
                raise_on_error=False,
            )
            .success
        )

    def evaluate_health(self) -> dict:
        ctx = dg.build_schedule_context(instance=self.instance, scheduled_execution_time=datetime.now(UTC))
        assert self.execute(evaluate_health(ctx), job="health_check")
        (record,) = self.instance.fetch_materializations(dg.AssetKey("pipeline_health"), limit=1).records
        return {k: v.value for k, v in record.asset_materialization.metadata.items()}

    def alert_tick(self) -> str:
        result = self.sensor(health_alerts)
        return result.skip_message if isinstance(result, dg.SkipReason) else str(result.skip_reason)


def without_vectors(conn: psycopg.Connection) -> int:
    return conn.execute(
        """SELECT count(*) FROM embed_assets.recordings r
           LEFT JOIN embed_assets.embedded_recordings e ON e.recording_id = r.recording_id
                AND e.model = 'text-embedding-3-small@384' AND e.source_hash = r.content_hash
           WHERE e.recording_id IS NULL"""
    ).fetchone()[0]


def test_one_error_alert_per_channel_then_one_recovery(
    conn: psycopg.Connection, receivers: tuple[HttpReceiver, SmtpReceiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, smtp = receivers
    slack, hook = "/services/T0001/B0002/slacktoken0123456789", "/api/webhooks/42/discordtoken9876543210"
    ping = "/ping/0f3c8e1a-heartbeat"
    with FakeOpenAI(api_key=CANARY, default_dim=384) as provider, dg.instance_for_test() as instance:
        for k, v in {
            "EMBED_PROVIDER": "openai",
            "EMBED_MODEL": "text-embedding-3-small",
            "EMBED_DIMENSIONS": "384",
            "OPENAI_BASE_URL": provider.base_url,
            "EMBED_SENSOR_SETTLE_S": "0",
            "EMBED_SENSOR_MAX_RUNS": str(N),
            "EMBED_RETRIES_PER_TICK": "5",
        }.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the incident: no key where runs execute
        d = Deployment(instance)
        assert "verdict healthy" in d.alert_tick()  # the daemon was already running: nothing to say yet

        # 100 recordings arrive; the sensor requests one run over them (consecutive partitions, as a backfill's
        # runs take them); it fails in its config check, and with it every recording it covers.
        for i in range(N):
            upsert_transcript(conn, short(f"call-{i:03d}"))
        found = d.sensor(new_recordings_sensor, RESOURCES)
        for req in found.dynamic_partitions_requests:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        assert len(found.run_requests) == 1
        assert not any(d.execute(r) for r in found.run_requests)
        assert provider.seen.requests == 0  # nothing was sent, nothing paid
        assert "1 awaiting the digest" in d.alert_tick()  # failures are collected, not sent one by one

        health = d.evaluate_health()
        assert health["verdict"] == "critical" and health["pending"] == without_vectors(conn) == N
        d.alert_tick()
        assert (len(http.received(slack)), len(http.received(hook)), len(smtp.messages)) == (1, 1, 1)
        assert http.received(ping, "GET") == []  # not healthy: no heartbeat

        # The daemon keeps going: the retry schedule re-launches failed recordings, which fail again; health is
        # evaluated again and again. Still one message per channel.
        now = datetime.now(UTC)
        retries = retry_failed_recordings(
            dg.build_schedule_context(instance=instance, scheduled_execution_time=now, resources=RESOURCES)
        )
        assert len(retries) == 5 and not any(d.execute(r) for r in retries)
        for _ in range(3):
            d.evaluate_health()
            d.alert_tick()
        assert (len(http.received(slack)), len(http.received(hook)), len(smtp.messages)) == (1, 1, 1)
        assert http.received(ping, "GET") == []

        # What each channel received: the cause with its fix, since when, how many recordings, what to do.
        error_slack = http.received(slack)[0].json()["text"]
        error_hook = http.received(hook)[0].json()
        (error_mail,) = smtp.texts()
        for text in (error_slack, error_hook["content"], error_hook["text"], error_mail):
            assert "ERROR" in text and "OPENAI_API_KEY is not set" in text
            assert f"{N} of {N} recording(s) have no current vectors" in text
            assert "since 20" in text and "set it where the Dagster code location" in text
            assert "then re-launch the failed partitions" in text
            assert f"1 run(s) over {N} recording(s)" in text  # the failed run, summarized in one line
        assert error_hook["kind"] == "error" and error_hook["affected_recordings"] == N
        assert error_hook["verdict"] == "critical" and len(error_hook["content"]) <= 2000
        assert smtp.messages[0]["X-Envelope-To"] == "oncall@example.com, data@example.com"

        # The operator sets the key where runs execute and re-launches the failed partitions (runs of 25).
        monkeypatch.setenv("OPENAI_API_KEY", CANARY)
        keys = instance.get_dynamic_partitions("recordings")
        for start in range(0, N, 25):
            tags = {
                "dagster/asset_partition_range_start": keys[start],
                "dagster/asset_partition_range_end": keys[start + 24],
            }
            assert d.execute(dg.RunRequest(tags=tags))
        assert without_vectors(conn) == 0 and provider.seen.requests > 0

        assert d.evaluate_health()["verdict"] == "healthy"
        d.alert_tick()
        assert (len(http.received(slack)), len(http.received(hook)), len(smtp.messages)) == (2, 2, 2)
        assert len(http.received(ping, "GET")) == 1  # pinged after the healthy evaluation
        d.alert_tick()  # no new evaluation: no new ping (a stopped schedule stops the heartbeat)
        assert len(http.received(ping, "GET")) == 1
        d.evaluate_health()
        d.alert_tick()
        assert len(http.received(ping, "GET")) == 2  # every healthy evaluation pings
        assert (len(http.received(slack)), len(http.received(hook)), len(smtp.messages)) == (2, 2, 2)

        recovered = [http.received(slack)[1].json()["text"], http.received(hook)[1].json()["content"], smtp.texts()[1]]
        for text in recovered:
            assert "RECOVERED" in text and f"0 of {N} recording(s) have no current vectors" in text
            assert "5 run(s) over 5 recording(s)" in text  # the retries that failed during the incident

        everything = [r.body.decode() for r in http.requests] + smtp.texts() + list(d.cursors.values())
        for secret in (CANARY, CANARY[-12:], "slacktoken0123456789", "discordtoken9876543210"):
            assert not any(secret in (text or "") for text in everything), secret
