"""`embed_search`: the one search path, in SQL, for the CLI and for applications (a Supabase RPC, a web app).

``embed_search(query_embedding, query_text, k, recording_id DEFAULT NULL)`` over the active model (its id is
written into the function, which `embed-assets model activate` re-creates in the same transaction as the switch):
- both arguments given: **hybrid**, reciprocal rank fusion of the vector ranking and a full-text ranking;
- ``query_text`` NULL or blank: **vector** only, score = cosine similarity;
- ``query_embedding`` NULL: **text** only, score = ts_rank.
The vector side goes through the ANN index in place (lib/indexes.py), so the function is re-created whenever
the index strategy changes. It runs as the caller (SECURITY INVOKER): it can read only what the caller can,
and EXECUTE is revoked from PUBLIC (lib/db/migrations.py ``lock_down``; ``embed-assets grant ROLE`` gives it).
Full text: a stored tsvector of each chunk's content (speaker names included, so "what did Dana say about
pricing" can use the name), matched as an OR of the query's words (AND semantics finds nothing for most
questions) and ranked by ts_rank. Distinct passages come first: a chunk that shares turns with a better-scored one
is ranked after them. Constants chosen by measurement on the development set (README "Search"); ``make eval``
re-measures them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from embed_assets.lib.db.names import names, q
from embed_assets.lib.indexes import IndexStrategy

if TYPE_CHECKING:
    from embed_assets.lib.models.registry import Registered

# Chosen on the tune half of the development set only (README "Search"; `make eval` re-measures):
TEXT_CONFIG = "english"  # stemming: "pricing" finds "price"
RRF_K = 10  # reciprocal rank fusion constant: the top of each ranking counts (the textbook 60 measured lower)
VECTOR_WEIGHT = 1.0
TEXT_WEIGHT = 0.5  # words help, meaning leads
CANDIDATES = 30  # per side, before fusion
TEXT_RANK_NORMALIZATION = 1  # ts_rank divided by 1 + log(length): long chunks do not win on length alone
# Over every recording, a word in more than this share of all chunks (the planner's own statistics of the
# tsvector column, kept by ANALYZE) is left out of the text side: it matches too much to rank quickly
# (100,000 chunks: ~0.5 s) and tells little; rare words, names and codes stay. Within one recording (a few
# hundred chunks) every word counts, as tuned.
COMMON_SHARE = 0.02
# ... once the store is large enough for it to matter (the planner's row estimate of `chunks`): on a small one
# every word is in more than 2% of the chunks, dropping them would leave nothing to search, and scanning is cheap.
COMMON_MIN_CHUNKS = 10_000
RERANK_CANDIDATES = 200  # coarse candidates of a quantized index, re-ranked by exact cosine

# A named row type, not RETURNS TABLE: its columns would be OUT parameters, and `recording_id` is both an
# argument and a result column in DESIGN.md's contract.
HIT_TYPE = """
CREATE TYPE {s}.search_hit AS (recording_id text, chunk_index integer, content text, first_seq integer,
                               last_seq integer, start_s double precision, end_s double precision,
                               speakers text[], score double precision)"""

_FUNCTION = """
CREATE OR REPLACE FUNCTION {s}.{fn}(
    query_embedding {v}.vector, query_text text, k integer, recording_id text DEFAULT NULL)
RETURNS SETOF {s}.search_hit
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = '' AS $fn$
#variable_conflict use_column
DECLARE
    m    text := {model};
    rid  text := {fn}.recording_id;
    tsq  tsquery;
    n    integer := greatest(CANDIDATES, k);
    nc   integer;
BEGIN
    IF query_embedding IS NULL AND coalesce(btrim(query_text), '') = '' THEN
        RAISE EXCEPTION 'embed_search needs a query_embedding, a query_text, or both';
    END IF;
    IF coalesce(btrim(query_text), '') <> '' AND rid IS NOT NULL THEN
        tsq := nullif(replace(plainto_tsquery('TEXT_CONFIG', query_text)::text, ' & ', ' | '), '')::tsquery;
    ELSIF coalesce(btrim(query_text), '') <> '' THEN
        tsq := (SELECT string_agg(quote_literal(l.lex), ' | ')::tsquery
                FROM unnest(tsvector_to_array(to_tsvector('TEXT_CONFIG', query_text))) AS l(lex)
                WHERE (SELECT c.reltuples FROM pg_catalog.pg_class c WHERE c.relname = 'chunks'
                       AND c.relnamespace = {schema_literal}::regnamespace) < COMMON_MIN_CHUNKS
                   OR coalesce((SELECT u.f FROM pg_catalog.pg_stats st,
                                       unnest(st.most_common_elems::text::text[], st.most_common_elem_freqs) AS u(e, f)
                                WHERE st.schemaname = {schema_literal} AND st.tablename = 'chunks'
                                  AND st.attname = 'fts' AND u.e = l.lex), 0) <= COMMON_SHARE);
    END IF;
    nc := CASE WHEN RERANK THEN greatest(RERANK_CANDIDATES, 4 * n) ELSE n END;
    PERFORM set_config('hnsw.ef_search', least(1000, greatest(40, nc))::text, true);
    PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    RETURN QUERY
    WITH vec AS (
        SELECT v.recording_id, v.chunk_index, v.content_hash,
               1 - (v.embedding OPERATOR({v}.<=>) query_embedding) AS sim,
               row_number() OVER (ORDER BY v.embedding OPERATOR({v}.<=>) query_embedding) AS rnk
        FROM (SELECT cv.recording_id, cv.chunk_index, cv.content_hash, cv.embedding
              FROM {s}.chunk_vectors cv
              WHERE query_embedding IS NOT NULL AND cv.model = {model} AND (rid IS NULL OR cv.recording_id = rid)
              ORDER BY COARSE
              LIMIT nc) v
        ORDER BY v.embedding OPERATOR({v}.<=>) query_embedding
        LIMIT n),
    txt AS (
        SELECT c.recording_id, c.chunk_index, ts_rank(c.fts, tsq, NORM) AS tr,
               row_number() OVER (ORDER BY ts_rank(c.fts, tsq, NORM) DESC, c.recording_id, c.chunk_index) AS rnk
        FROM {s}.chunks c
        WHERE tsq IS NOT NULL AND c.model = m AND (rid IS NULL OR c.recording_id = rid) AND c.fts @@ tsq
        ORDER BY ts_rank(c.fts, tsq, NORM) DESC, c.recording_id, c.chunk_index
        LIMIT n),
    fused AS (
        SELECT coalesce(vec.recording_id, txt.recording_id) AS f_rid,
               coalesce(vec.chunk_index, txt.chunk_index) AS f_idx,
               vec.content_hash AS f_hash,
               CASE WHEN tsq IS NULL THEN vec.sim
                    WHEN query_embedding IS NULL THEN txt.tr::double precision
                    ELSE coalesce(VECTOR_WEIGHT / (RRF_K + vec.rnk), 0) + coalesce(TEXT_WEIGHT / (RRF_K + txt.rnk), 0)
               END AS f_score
        FROM vec FULL OUTER JOIN txt ON txt.recording_id = vec.recording_id AND txt.chunk_index = vec.chunk_index),
    hits AS (
        SELECT c.recording_id, c.chunk_index, c.content, c.first_seq, c.last_seq, c.start_s, c.end_s, c.speakers,
               f.f_score::double precision AS score
        FROM fused f
        JOIN {s}.chunks c ON c.recording_id = f.f_rid AND c.model = m AND c.chunk_index = f.f_idx
                          AND (f.f_hash IS NULL OR c.content_hash = f.f_hash))
    -- Distinct passages first: a chunk that shares turns with a better one (the overlap of neighbouring
    -- chunks) says little new, so it goes after every distinct passage (never dropped: k rows still come back).
    SELECT h.* FROM hits h
    ORDER BY EXISTS (
        SELECT 1 FROM hits b
        WHERE b.recording_id = h.recording_id AND b.first_seq <= h.last_seq AND h.first_seq <= b.last_seq
          AND (b.score > h.score OR (b.score = h.score AND b.chunk_index < h.chunk_index))),
      h.score DESC, h.recording_id, h.chunk_index
    LIMIT k;
END $fn$"""


def search_function_ddl(
    conn: psycopg.Connection, model: Registered | None, index: IndexStrategy | None, name: str = "embed_search"
) -> sql.Composed:
    """CREATE OR REPLACE of embed_search (or a function ``name`` of the same body) over ``model``'s vectors and
    ``index`` (None: exact). The model is a literal, not a lookup: the planner then reads only that model's
    partition of chunk_vectors, through its own index, also in plpgsql's cached generic plans."""
    if model is None:  # nothing registered yet: a function that finds nothing
        coarse = "embedding OPERATOR({v}.<=>) %(q)s"
    else:
        coarse = index.order_by(model.spec.dimension) if index else "embedding OPERATOR({v}.<=>) %(q)s"
    coarse = coarse.replace("%(q)s", "QVEC").replace("embedding", "cv.embedding").replace("QVEC", "query_embedding")
    body = (
        _FUNCTION.replace("COARSE", coarse)
        .replace("TEXT_CONFIG", TEXT_CONFIG)
        .replace("RERANK_CANDIDATES", str(RERANK_CANDIDATES))
        .replace("RERANK", "true" if index and index.rerank else "false")
        .replace("CANDIDATES", str(CANDIDATES))
        .replace("VECTOR_WEIGHT", repr(float(VECTOR_WEIGHT)))
        .replace("TEXT_WEIGHT", repr(float(TEXT_WEIGHT)))
        .replace("RRF_K", str(int(RRF_K)))
        .replace("NORM", str(int(TEXT_RANK_NORMALIZATION)))
        .replace("COMMON_SHARE", repr(float(COMMON_SHARE)))
        .replace("COMMON_MIN_CHUNKS", str(int(COMMON_MIN_CHUNKS)))
    )
    return q(
        conn,
        body,
        schema_literal=sql.Literal(names(conn).schema),
        fn=sql.Identifier(name),
        model=sql.SQL("{}::text").format(sql.Literal(model.model_id if model else None)),
    )


def refresh_search_function(conn: psycopg.Connection) -> None:
    """Re-create embed_search for the active model and its index, keeping its privileges (CREATE OR REPLACE
    does). Called whenever either changes, in the same transaction as the change."""
    from embed_assets.lib.models.registry import active, index_strategy  # the registry builds on this module

    model = active(conn)
    conn.execute(search_function_ddl(conn, model, index_strategy(conn, model) if model else None))
