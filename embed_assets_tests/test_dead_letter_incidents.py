"""Dead-letter counts attempts per incident and per model: retries of an old, resolved incident, made before the
model that fails now was registered, never dead-letter a recording. Real instance, real runs, the loopback OpenAI
server, a real shadow model."""

from __future__ import annotations

import dagster as dg
import psycopg

from embed_assets.defs.config import SMALL_BATCH
from embed_assets.defs.resources import VectorStoreResource
from embed_assets.lib.models import resolve_model
from embed_assets.lib.models.change import shadow
from embed_assets_tests.support.openai_server import FakeOpenAI, Fault
from embed_assets_tests.test_assets import load, short
from embed_assets_tests.test_schedules import evaluate, execute, instance  # noqa: F401 (fixture)

MODEL = "text-embedding-3-small@384"
REJECTED = Fault(400, body={"error": {"message": "input rejected"}})


def test_a_shadow_model_failing_after_an_old_resolved_incident_is_retried_not_dead_lettered(
    conn: psycopg.Connection,
    instance: dg.DagsterInstance,  # noqa: F811 (the fixture imported above)
    fake_openai: FakeOpenAI,
    monkeypatch,
) -> None:
    from embed_assets.defs.checks import pipeline_health

    monkeypatch.setenv("EMBED_SMALL_BATCH_ATTEMPTS", "2")
    # Months ago: an outage, the retries exhausted, the recording dead-lettered, then relaunched by hand.
    fake_openai.fault = lambda n: REJECTED
    (key,) = load(conn, instance, [short("call")])
    assert not execute(instance, key, {})
    for _ in range(2):
        (req,) = evaluate(instance)
        assert not execute(instance, key, req.run_config, req.tags)
    assert pipeline_health(instance, VectorStoreResource(), MODEL)["dead_lettered"] == [key]
    fake_openai.fault = lambda n: None
    assert execute(instance, key, SMALL_BATCH)
    assert pipeline_health(instance, VectorStoreResource(), MODEL)["dead_lettered"] == []

    # Today: a shadow model is registered, and its first run for the same transcript fails once.
    shadow(conn, resolve_model("openai", "text-embedding-3-large", 384))
    fake_openai.fault = lambda n: REJECTED
    assert not execute(instance, key, {})

    health = pipeline_health(instance, VectorStoreResource(), MODEL)
    assert health["dead_lettered"] == [] and health["failed"] == [key]  # before: dead-lettered, never retried
    assert health["attempts"] == {key: 0}
    requests = evaluate(instance)
    assert isinstance(requests, list), requests
    (req,) = requests
    assert req.partition_key == key and req.run_key.endswith(":1")
    # This incident runs its own course: after its own two attempts it is dead-lettered.
    assert not execute(instance, key, req.run_config, req.tags)
    (req,) = evaluate(instance)
    assert req.run_key.endswith(":2")
    assert not execute(instance, key, req.run_config, req.tags)
    skip = evaluate(instance)
    assert isinstance(skip, dg.SkipReason) and "1 dead-lettered" in skip.skip_message
