"""Alerts in layers: when to send (the pure state machine, with explicit clocks), what a message says and
never says, settings errors, delivery to real receivers on loopback (retries bounded, failures never
raised), the `health_alerts` sensor on a real instance with real failed runs (one digest, never one per
partition; an undelivered message retried on the next tick, not duplicated), and the preflight's
"alert channels reachable"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from embed_assets.defs.alerts import health_alerts
from embed_assets.defs.checks import configuration_report
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.health.alert_settings import alert_settings
from embed_assets.lib.health.alerting import AlertState, FailedRun, decide
from embed_assets.lib.health.channels import Retry, deliver, ping_heartbeat, webhook_payload
from embed_assets.lib.health.messages import FailureWindow, Message, Observation, redact, state_change
from embed_assets_tests.support.dagster_dev import free_port
from embed_assets_tests.support.receivers import HttpReceiver, SmtpReceiver
from embed_assets_tests.test_assets import load, short
from embed_assets_tests.test_cli import cli

T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
INTERVAL = timedelta(minutes=15)
FAST = Retry(attempts=3, backoff_s=0.01, timeout_s=2)
SLACK, HOOK, PING = "/services/T1/B2/slack-token-abcdef123456", "/hooks/generic-token-987654", "/ping/hb-0123456789"


def obs(n: int, verdict: str, at: datetime = T0, problems: tuple[str, ...] = (), affected: int = 0) -> Observation:
    return Observation(n, at, verdict, ("completion 50.0% < 99%",) if verdict != "healthy" else (), problems, 10,
                       affected, affected, 0)  # fmt: skip


def fail(at: datetime, cause: str = "ProviderError: input rejected") -> FailedRun:
    return FailedRun(f"run-{at:%H%M%S}", at, 1, cause)


# --- when to send -------------------------------------------------------------------------------------------


def test_one_message_per_change_of_verdict_and_a_heartbeat_per_evaluation_that_is_not_critical() -> None:
    state, kinds, beats = AlertState(), [], []
    verdicts = ["healthy", "critical", "critical", "critical", "warning", "warning", "healthy", "healthy"]
    for i, v in enumerate(verdicts, start=1):
        d = decide(state, obs(i, v, T0 + timedelta(minutes=5 * i)), [], T0 + timedelta(minutes=5 * i), INTERVAL)
        kinds += [m.kind for m in d.messages]
        beats.append(d.heartbeat)
    assert kinds == ["error", "warn", "recovered"]
    assert beats == [True, False, False, False, True, True, True, True]  # a warning keeps the dead man's switch
    again = decide(state, obs(8, "healthy"), [], T0 + timedelta(hours=1), INTERVAL)
    assert again.messages == [] and not again.heartbeat  # the same evaluation seen twice: no second ping


def test_failures_make_at_most_one_digest_per_interval() -> None:
    state = AlertState(evaluation_id=1)
    sent: list[tuple[datetime, Message]] = []
    for minute in range(0, 61):  # a failing run every minute for an hour, ticks every minute, verdict unchanged
        now = T0 + timedelta(minutes=minute)
        d = decide(state, None, [fail(now)], now, INTERVAL)
        sent += [(now, m) for m in d.messages]
    assert [m.kind for _, m in sent] == ["digest"] * 3  # minutes 15, 31, 47: one per 15-minute window
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:], strict=False)]
    assert all(g >= INTERVAL for g in gaps)
    reported = sum(m.fields["failed_runs"] for _, m in sent)
    assert reported + state.window.runs == 61  # every failure reported once, the last 13 in the next digest
    assert "16 run(s) over 16 recording(s)" in sent[0][1].text


def test_a_change_of_verdict_carries_the_failures_instead_of_a_digest() -> None:
    state = AlertState(evaluation_id=1)
    decide(state, None, [fail(T0 + timedelta(seconds=s)) for s in range(50)], T0 + timedelta(minutes=1), INTERVAL)
    problem = "OPENAI_API_KEY is not set in the run worker's environment; set it where runs start"
    d = decide(state, obs(2, "critical", T0 + timedelta(minutes=5), (problem,), 10), [], T0 + timedelta(minutes=5),
               INTERVAL)  # fmt: skip
    (m,) = d.messages
    assert m.kind == "error" and "50 run(s) over 50 recording(s)" in m.text
    assert "since 2026-11-25 02:00 UTC" in m.text  # the first failure, not the evaluation that saw it
    assert m.title == "[embed_assets] ERROR: OPENAI_API_KEY is not set in the run worker's environment"
    assert "set it where runs start, then re-launch the failed partitions" in m.text
    later = decide(state, None, [], T0 + timedelta(hours=2), INTERVAL)
    assert later.messages == []  # nothing left for a digest


def test_the_cursor_survives_a_round_trip() -> None:
    state = AlertState(evaluation_id=1)
    decide(state, None, [fail(T0), fail(T0 + timedelta(seconds=1), "timeout")], T0, INTERVAL)
    decide(state, obs(2, "critical"), [], T0, INTERVAL)
    decide(state, None, [fail(T0 + timedelta(minutes=1))], T0 + timedelta(minutes=1), INTERVAL)
    assert AlertState.from_json(state.to_json()) == state


# --- what a message says --------------------------------------------------------------------------------------


def test_redaction_removes_secrets_and_their_fragments() -> None:
    key, url = "sk-proj-Zx81bQ0Yt7nW2mK5", "https://hooks.slack.com/services/T01ABC/B02DEF/xyzSECRETtoken42"
    text = f"401: Incorrect API key provided: sk-proj-Zx81****; posted to {url}; token xyzSECRETtoken42; key {key}"
    clean = redact(text, [key, url])
    for leaked in (key, "sk-proj-Zx81", url, "xyzSECRETtoken42"):
        assert leaked not in clean
    assert clean.startswith("401: Incorrect API key provided:") and "[redacted]" in clean


def test_a_dead_letter_warning_says_what_to_do() -> None:
    o = Observation(1, T0, "warning", ("25 dead-lettered recordings > 20",), (), 400, 25, 0, 25)
    m = state_change("healthy", o, T0, FailureWindow(T0, T0))
    assert m.kind == "warn" and "25 of 400 recording(s) have no current vectors" in m.text
    assert "dead-lettered (no more automatic retries)" in m.text and "small-batch preset" in m.text


def test_the_generic_webhook_is_discord_sized_and_teams_readable() -> None:
    m = Message("digest", "title", "x" * 5000, {"failed_runs": 3})
    payload = webhook_payload(m)
    assert len(payload["content"]) <= 2000 and payload["text"].startswith("title\nxxx")
    assert payload["kind"] == "digest" and payload["failed_runs"] == 3


# --- settings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"EMBED_ALERT_SLACK_WEBHOOK_URL": "hooks.slack.com/services/T/B/tok3n"},
            "EMBED_ALERT_SLACK_WEBHOOK_URL is not",
        ),
        ({"EMBED_HEARTBEAT_URL": "ftp://hc-ping.com/uuid"}, "EMBED_HEARTBEAT_URL is not an http(s) URL"),
        ({"EMBED_ALERT_SMTP_HOST": "smtp.example.com"}, "EMBED_ALERT_SMTP_TO is not"),
        ({"EMBED_ALERT_SMTP_HOST": "h", "EMBED_ALERT_SMTP_TO": "a@b", "EMBED_ALERT_SMTP_TLS": "yes"}, "use starttls"),
        ({"EMBED_ALERT_SMTP_HOST": "h", "EMBED_ALERT_SMTP_TO": "a@b", "EMBED_ALERT_SMTP_PORT": "x"}, "SMTP_PORT='x'"),
        ({"EMBED_ALERT_DIGEST_MINUTES": "-1"}, "EMBED_ALERT_DIGEST_MINUTES='-1' is not a number >= 0"),
    ],
)
def test_bad_settings_name_the_setting_and_never_echo_a_url(monkeypatch, env: dict[str, str], expected: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        alert_settings()
    assert expected in str(e.value) and "\n" not in str(e.value) and "tok3n" not in str(e.value)


def test_the_sensor_interval_is_configurable_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from embed_assets.defs.alerts import alert_interval_s

    assert alert_interval_s() == 60
    monkeypatch.setenv("EMBED_ALERT_INTERVAL_S", "5")
    assert alert_interval_s() == 5
    monkeypatch.setenv("EMBED_ALERT_INTERVAL_S", "0.5")
    with pytest.raises(ConfigError, match="EMBED_ALERT_INTERVAL_S='0.5' is not a whole number of seconds >= 1"):
        alert_interval_s()


def test_everything_is_off_by_default() -> None:
    s = alert_settings()
    assert s.channels == [] and s.heartbeat_url is None and not s.anything


# --- delivery to real receivers -------------------------------------------------------------------------------


@pytest.fixture
def receivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HttpReceiver, SmtpReceiver]]:
    with HttpReceiver() as http, SmtpReceiver() as smtp:
        for k, v in {
            "EMBED_ALERT_SLACK_WEBHOOK_URL": http.url(SLACK),
            "EMBED_ALERT_WEBHOOK_URL": http.url(HOOK),
            "EMBED_ALERT_SMTP_HOST": "127.0.0.1",
            "EMBED_ALERT_SMTP_PORT": str(smtp.port),
            "EMBED_ALERT_SMTP_TLS": "none",
            "EMBED_ALERT_SMTP_TO": "oncall@example.com",
            "EMBED_HEARTBEAT_URL": http.url(PING),
        }.items():
            monkeypatch.setenv(k, v)
        yield http, smtp


def test_each_channel_receives_its_format(receivers) -> None:
    http, smtp = receivers
    m = Message("error", "[embed_assets] ERROR: x", "what is wrong\nwhat to do", {"affected_recordings": 7})
    results = deliver(alert_settings(), [(c, m) for c in ("slack", "webhook", "email")], FAST)
    assert all(d.ok and d.attempts == 1 for _, _, d in results)
    assert http.received(SLACK)[0].json() == {"text": "*[embed_assets] ERROR: x*\nwhat is wrong\nwhat to do"}
    hook = http.received(HOOK)[0].json()
    assert hook["content"].startswith("**[embed_assets] ERROR: x**") and hook["affected_recordings"] == 7
    (mail,) = smtp.messages
    assert mail["Subject"] == "[embed_assets] ERROR: x" and mail["To"] == "oncall@example.com"
    assert "what to do" in mail.get_payload(decode=True).decode()


def test_sending_failures_are_retried_a_bounded_number_of_times_and_never_raised(receivers, monkeypatch) -> None:
    http, _ = receivers
    m = Message("digest", "t", "body", {})
    http.fail(SLACK, 2)
    ((_, _, d),) = deliver(alert_settings(), [("slack", m)], FAST)
    assert d.ok and d.attempts == 3 and http.failed == 2
    http.fail(SLACK, 10)
    ((_, _, d),) = deliver(alert_settings(), [("slack", m)], FAST)
    assert not d.ok and d.attempts == 3 and d.error == "HTTP 503 Service Unavailable"
    http.fail(SLACK, 0)
    monkeypatch.setenv("EMBED_ALERT_SLACK_WEBHOOK_URL", http.url("/gone/T1/B2/revoked-token-55555"))
    ((_, _, d),) = deliver(alert_settings(), [("slack", m)], FAST)
    assert not d.ok and d.attempts == 1 and "404" in d.error  # a revoked webhook: retrying cannot help
    monkeypatch.setenv("EMBED_ALERT_SLACK_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/services/T/B/closed-99999")
    monkeypatch.setenv("EMBED_HEARTBEAT_URL", f"http://127.0.0.1:{free_port()}/ping/closed-88888")
    settings = alert_settings()
    ((_, _, d),) = deliver(settings, [("slack", m)], FAST)
    beat = ping_heartbeat(settings, FAST)
    assert not d.ok and not beat.ok and "cannot connect" in d.error
    assert "closed-99999" not in d.error and "closed-88888" not in beat.error


# --- the sensor on a real instance with real failed runs ------------------------------------------------------


def tick(instance: dg.DagsterInstance, cursor: str | None) -> tuple[str, str | None]:
    result = health_alerts(dg.build_sensor_context(instance=instance, cursor=cursor))
    if isinstance(result, dg.SkipReason):
        return result.skip_message, cursor
    return result.skip_reason.skip_message, result.cursor


def failing_runs(instance: dg.DagsterInstance, conn: psycopg.Connection, ids: list[str]) -> None:
    from embed_assets.definitions import defs

    job = defs.resolve_job_def("embed_recordings")
    for key in load(conn, instance, [short(i) for i in ids]):
        assert not job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False).success


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_PROVIDER", "openai")
    monkeypatch.setenv("EMBED_MODEL", "text-embedding-3-small")
    monkeypatch.setenv("EMBED_DIMENSIONS", "384")


def test_the_sensor_is_silent_without_channels(conn: psycopg.Connection) -> None:
    with dg.instance_for_test() as instance:
        message, cursor = tick(instance, None)
    assert "no alert channel and no heartbeat configured" in message and cursor is None


def test_failed_runs_become_one_digest_not_one_message_per_partition(
    conn: psycopg.Connection, receivers, no_key, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, smtp = receivers
    monkeypatch.setenv("EMBED_ALERT_DIGEST_MINUTES", "0")  # due at once: the interval itself is tested above
    with dg.instance_for_test() as instance:
        failing_runs(instance, conn, [f"d{i}" for i in range(6)])
        _, cursor = tick(instance, None)
        _, cursor = tick(instance, cursor)  # nothing new: nothing sent
        assert (len(http.received(SLACK)), len(http.received(HOOK)), len(smtp.messages)) == (1, 1, 1)
        text = http.received(SLACK)[0].json()["text"]
        assert "6 failed run(s): embedding_config_valid: OPENAI_API_KEY is not set" in text
        assert "6 run(s) over 6 recording(s)" in text and "embed-assets status" in text

        # Slack is down for this whole tick: the others get the next digest once, Slack on the next tick.
        failing_runs(instance, conn, ["d6", "d7"])
        http.fail(SLACK, 3)
        message, cursor = tick(instance, cursor)
        assert "digest -> slack: FAILED (HTTP 503 Service Unavailable; will retry" in message
        assert (len(http.received(SLACK)), len(http.received(HOOK)), len(smtp.messages)) == (1, 2, 2)
        message, cursor = tick(instance, cursor)
        assert message == "digest -> slack: sent"
        assert (len(http.received(SLACK)), len(http.received(HOOK)), len(smtp.messages)) == (2, 2, 2)
        assert "2 run(s) over 2 recording(s)" in http.received(SLACK)[1].json()["text"]
        assert http.received(PING, "GET") == []  # no health evaluation yet: no heartbeat
        assert "slack-token" not in cursor and "generic-token" not in cursor


# --- the preflight: alert channels reachable -------------------------------------------------------------------


def test_the_preflight_reports_alert_channels_without_sending(conn: psycopg.Connection, receivers) -> None:
    http, smtp = receivers
    report = configuration_report(VectorStoreResource(), EmbedderResource(), probe=False, alerts=True)
    assert report.ok and report.warnings == []
    assert report.facts["alert_slack"] == report.facts["alert_webhook"] == "reachable (HTTP 200 to HEAD)"
    assert report.facts["alert_email"] == "reachable (SMTP NOOP 250)"
    assert report.facts["alert_heartbeat"] == "reachable (TCP connect)"
    assert [r.method for r in http.requests] == ["HEAD", "HEAD"] and smtp.messages == []  # nothing sent, no ping

    closed = f"http://127.0.0.1:{free_port()}/ping/closed"
    proc = cli("check", "--json", env={"EMBED_HEARTBEAT_URL": closed, "EMBED_ALERT_SMTP_PORT": "x"})
    assert proc.returncode == 1 and "EMBED_ALERT_SMTP_PORT='x'" in json.loads(proc.stdout)["problems"][0]
    proc = cli("check", "--json", env={"EMBED_HEARTBEAT_URL": closed})
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["ok"]  # an unreachable channel is a warning: runs can still work
    assert out["facts"]["alert_heartbeat"].startswith("not reachable") and "closed" not in proc.stdout
    assert out["warnings"] == [f"alert channel heartbeat is {out['facts']['alert_heartbeat']}; alerts will be "
                               "retried and logged, not delivered, until it is"]  # fmt: skip
    assert smtp.messages == [] and all(r.method == "HEAD" for r in http.requests)


def test_unconfigured_alerts_are_not_a_problem(conn: psycopg.Connection) -> None:
    report = configuration_report(VectorStoreResource(), EmbedderResource(), probe=False, alerts=True)
    assert report.ok and report.facts["alert_channels"] == "none configured (alerts off)"
