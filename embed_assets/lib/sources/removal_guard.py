"""The removal guard: a pass over the source that would forget more than a bounded share of the recordings it
knows refuses, records the hold (`held_removals`, read by `status` and the health verdict) and waits for a person
to confirm THIS removal. A source table reloaded by TRUNCATE + INSERT, or a join to a table being rebuilt, reads
as empty for one tick; without the guard every recording, chunk and vector would go (and be bought again).

The confirmation is a token naming the removal: its size and a digest of the ids and of when the hold began
(`EMBED_SOURCE_CONFIRM_REMOVALS=9000@3f2a9c1b7d4e`). A removal of other recordings, or the same ones held again
later, has another token, so a setting left in place never confirms a future removal. The hold lifts by itself
when the rows come back (the next pass is within the bound)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from embed_assets.lib.db.names import q

CONFIRM_VAR = "EMBED_SOURCE_CONFIRM_REMOVALS"


@dataclass(frozen=True)
class RemovalBound:
    max_share: float  # EMBED_SOURCE_MAX_REMOVE_SHARE: share of the known recordings one pass may remove
    floor: int  # EMBED_SOURCE_MAX_REMOVE_FLOOR: removals always allowed, whatever the share (small corpora)
    confirm: str | None = None  # EMBED_SOURCE_CONFIRM_REMOVALS: the token of a held removal, confirmed

    def limit(self, known: int) -> int:
        return max(self.floor, int(self.max_share * known))


@dataclass(frozen=True)
class HeldRemoval:
    scope: str  # what would lose the recordings: the source's name, or "partitions"
    count: int
    known: int  # recordings the pass knew
    limit: int
    token: str
    since: datetime
    examples: tuple[str, ...]

    def reason(self) -> str:
        return (
            f"{self.scope}: removing {self.count} of {self.known} recording(s) (over the bound of {self.limit}) is "
            f"held since {self.since:%Y-%m-%d %H:%M} UTC, e.g. {', '.join(self.examples[:3])}: if the source really "
            f"lost them, set {CONFIRM_VAR}={self.token}; if they come back, the hold lifts by itself"
        )


def guard(
    conn: psycopg.Connection, scope: str, ids: Sequence[str], known: int, bound: RemovalBound
) -> HeldRemoval | None:
    """None: remove ``ids`` (within the bound, or this very removal confirmed; any hold of ``scope`` is cleared).
    Otherwise the hold, recorded in held_removals (kept with its start while the same ids are held)."""
    ids = sorted(ids)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    limit = bound.limit(known)
    if len(ids) <= limit:
        clear(conn, scope)
        return None
    since = conn.execute(
        q(
            conn,
            """INSERT INTO {s}.held_removals AS h (scope, ids_digest, removals, known, bound, examples)
               VALUES (%(scope)s, %(d)s, %(n)s, %(known)s, %(limit)s, %(ex)s)
               ON CONFLICT (scope) DO UPDATE
               SET held_since = CASE WHEN h.ids_digest = EXCLUDED.ids_digest THEN h.held_since ELSE now() END,
                   ids_digest = EXCLUDED.ids_digest, removals = EXCLUDED.removals, known = EXCLUDED.known,
                   bound = EXCLUDED.bound, examples = EXCLUDED.examples, checked_at = now()
               RETURNING held_since""",
        ),
        {"scope": scope, "d": digest, "n": len(ids), "known": known, "limit": limit, "ex": ids[:5]},
    ).fetchone()[0]
    hold = HeldRemoval(scope, len(ids), known, limit, _token(len(ids), digest, since), since, tuple(ids[:5]))
    if bound.confirm is not None and bound.confirm.strip() == hold.token:
        clear(conn, scope)
        return None
    return hold


def _token(count: int, digest: str, since: datetime) -> str:
    return f"{count}@{hashlib.sha256(f'{digest}@{since.isoformat()}'.encode()).hexdigest()[:12]}"


def clear(conn: psycopg.Connection, scope: str) -> None:
    conn.execute(q(conn, "DELETE FROM {s}.held_removals WHERE scope = %s"), (scope,))


def held_removals(conn: psycopg.Connection) -> list[HeldRemoval]:
    """Every removal held now (for `status` and the health verdict)."""
    rows = conn.execute(
        q(
            conn,
            """SELECT scope, removals, known, bound, ids_digest, held_since, examples
               FROM {s}.held_removals ORDER BY held_since""",
        )
    ).fetchall()
    return [HeldRemoval(r[0], r[1], r[2], r[3], _token(r[1], r[4], r[5]), r[5], tuple(r[6])) for r in rows]
