"""Synthetic but realistic sales and support call transcripts, deterministic for a seed."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from embed_assets.lib.transcripts import Segment, Transcript

_TOPICS: dict[str, list[str]] = {
    "renewal": [
        "Our contract renews at the end of the quarter and finance wants a multi-year price before then.",
        "If we commit to three years, can you hold the per-seat price flat instead of the usual uplift?",
        "The renewal quote came in twelve percent higher than last year, which is hard to justify internally.",
        "We could offer a discount on the annual plan if you consolidate the two regional accounts.",
        "Procurement needs the signed order form by the twentieth to avoid a lapse in service.",
    ],
    "onboarding": [
        "The onboarding checklist has six steps and most teams finish it within the first week.",
        "Single sign-on is configured from the admin console under identity providers.",
        "We will schedule a training session for your support agents next Tuesday morning.",
        "Importing historical tickets usually takes a few hours for an account of your size.",
        "Your workspace is provisioned, and the invitation emails went out to the admins.",
    ],
    "bug": [
        "Since the last update the export button times out whenever the report has more than ten thousand rows.",
        "I can reproduce it: the dashboard shows a blank chart after switching the time zone.",
        "Engineering traced the crash to a null value in the customer address field.",
        "A hotfix is scheduled for Thursday, and I will update the ticket when it is deployed.",
        "Could you send the browser console log and the exact time the error happened?",
    ],
    "security": [
        "Our security team needs your SOC 2 Type II report and the latest penetration test summary.",
        "Data is encrypted at rest with AES-256 and in transit with TLS 1.3.",
        "We support customer-managed keys on the enterprise plan, rotated every ninety days.",
        "Audit logs are retained for one year and can be streamed to your SIEM.",
        "The data processing agreement covers subprocessors in the United States and the European Union.",
    ],
    "billing": [
        "We were charged twice on the March invoice for the same set of seats.",
        "I have issued a credit note for the duplicate charge; it will appear on the next statement.",
        "Can we switch the payment method from credit card to invoicing with net thirty terms?",
        "The usage overage comes from the API calls above the included monthly quota.",
        "Tax was applied incorrectly because the billing address still shows the old office.",
    ],
    "integration": [
        "The Salesforce integration syncs contacts every fifteen minutes in both directions.",
        "Webhooks retry with exponential backoff for up to twenty-four hours if your endpoint is down.",
        "Rate limits on the REST API are one thousand requests per minute per token.",
        "You can map custom fields in the integration settings before the first sync runs.",
        "Our data warehouse team wants a nightly export to Snowflake instead of the API.",
    ],
}
_FILLERS = [
    "Right, that makes sense.",
    "Okay, got it.",
    "Let me check on my side.",
    "Sure, go ahead.",
    "Thanks, that's helpful.",
    "Can you say more about that?",
    "Understood.",
    "Mm-hmm, yes.",
]
_NAMES = [
    "Dana",
    "Lee",
    "Priya",
    "Marcus",
    "Sofia",
    "Kenji",
    "Amara",
    "Tom",
    "Elena",
    "Omar",
    "Grace",
    "Ravi",
]
_COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries", "Wayne Corp", "Soylent"]


def _segment_text(rng: random.Random, topic: str, dense: bool) -> str:
    if not dense and rng.random() < 0.25:
        return rng.choice(_FILLERS)
    lines = _TOPICS[topic]
    n = rng.randint(3, 6) if dense else rng.randint(1, 3)
    return " ".join(rng.choice(lines) for _ in range(n))


def make_transcript(rng: random.Random, recording_id: str, minutes: float, dense: bool = False) -> Transcript:
    topic = rng.choice(sorted(_TOPICS))
    speakers = rng.sample(_NAMES, rng.randint(2, 4))
    company = rng.choice(_COMPANIES)
    t, segments, end = 0.0, [], minutes * 60
    speaker = speakers[0]
    while t < end:
        if rng.random() < 0.7:
            speaker = rng.choice([s for s in speakers if s != speaker])
        if rng.random() < 0.1:
            topic = rng.choice(sorted(_TOPICS))
        text = _segment_text(rng, topic, dense)
        duration = max(1.0, len(text.split()) / (12.0 if dense else 2.6))
        segments.append(Segment(speaker, text, round(t, 2), round(min(end, t + duration), 2)))
        t += duration + rng.uniform(0.1, 1.5)
    started = datetime(2026, 1, 5, 15, tzinfo=UTC) + timedelta(hours=rng.randint(0, 24 * 300))
    return Transcript(recording_id, tuple(segments), f"{company} {topic} call", started, "sample")


def sample_transcripts(n: int, seed: int = 7, long_call: bool = True) -> list[Transcript]:
    """``n`` recordings of varied length; with ``long_call`` (and n >= 2) one is a dense 3-hour call with
    enough text for 1,000+ chunks at the default chunk size."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rid = f"rec-{seed:03d}-{i:04d}"
        if long_call and n >= 2 and i == 1:
            out.append(make_transcript(rng, rid, 180, dense=True))
        else:
            out.append(make_transcript(rng, rid, rng.choice([3, 5, 8, 12, 20, 30, 45])))
    return out
