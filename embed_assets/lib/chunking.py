"""Token-aware, speaker-aware chunking of a transcript, with overlap. Deterministic; no I/O.

A chunk's content is one line per speaker turn, ``Speaker: words...``, without annotation markers such as
``{vocalsound}`` (consecutive segments of the same speaker share a line). Whole turns are packed while they
fit; a turn that does not fit starts the next chunk unless the current one is under half full, in which case
the turn is split between words. Words are
never split, except a single "word" longer than a fifth of a chunk (a URL, base64 junk), cut into pieces
so that no chunk can exceed its bound. The next chunk starts with the last ``overlap`` tokens (whole words)
of the previous one. Every chunk's ``token_count`` is the exact count of its content by the model's
tokenizer, and never exceeds ``max_tokens``. A chunk's ``first_seq``/``last_seq`` are its segments' own
``seq`` (source positions, which have gaps where turns without speech were skipped).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from embed_assets.lib.tokenizers import TokenCounter
from embed_assets.lib.transcripts import Segment, strip_markers

CHUNKER_VERSION = 2  # 2: annotation markers ({vocalsound}, [Laughter.]) left out of chunk text


@dataclass(frozen=True)
class ChunkParams:
    max_tokens: int
    overlap_tokens: int

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ValueError(f"chunk_tokens={self.max_tokens} is too small; use at least 16")
        if not 0 <= self.overlap_tokens <= self.max_tokens // 2:
            raise ValueError(
                f"chunk_overlap={self.overlap_tokens} must be between 0 and half of chunk_tokens "
                f"({self.max_tokens // 2})"
            )

    def describe(self, tokenizer: str) -> str:
        return f"v{CHUNKER_VERSION} max_tokens={self.max_tokens} overlap={self.overlap_tokens} tokenizer={tokenizer}"


@dataclass(frozen=True)
class Chunk:
    chunk_index: int
    content: str
    first_seq: int
    last_seq: int
    start_s: float | None
    end_s: float | None
    speakers: tuple[str, ...]
    token_count: int

    @property
    def content_hash(self) -> str:
        return content_hash(self.content)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Word:
    pos: int  # index of its segment in the list given to chunk_segments (not the segment's seq)
    text: str
    tokens: int


def _render(words: Sequence[_Word], segments: Sequence[Segment]) -> str:
    lines: list[str] = []
    speaker: str | None = None
    for w in words:
        s = segments[w.pos].speaker
        if s != speaker:
            lines.append(f"{s}: {w.text}")
            speaker = s
        else:
            lines[-1] += f" {w.text}"
    return "\n".join(lines)


def _words(segments: Sequence[Segment], counter: TokenCounter, max_piece: int) -> list[_Word]:
    raw: list[tuple[int, str]] = []
    for pos, seg in enumerate(segments):
        for word in strip_markers(seg.text).split():
            raw.append((pos, word))
    unique = sorted({w for _, w in raw})
    counts = dict(zip(unique, counter.count_many([f" {w}" for w in unique]), strict=True))
    words: list[_Word] = []
    for pos, w in raw:
        n = counts[w]
        if n <= max_piece:
            words.append(_Word(pos, w, n))
            continue
        # A monster "word": cut it into pieces of at most max_piece tokens (by characters, then verified).
        step = max(1, len(w) * max_piece // (n * 2))
        for i in range(0, len(w), step):
            piece = w[i : i + step]
            words.append(_Word(pos, piece, counter.count(f" {piece}")))
    return words


def chunk_segments(segments: Sequence[Segment], params: ChunkParams, counter: TokenCounter) -> list[Chunk]:
    """Chunk a transcript's segments, in order. Returns chunks in order, indexed from 0. A segment without a
    ``seq`` counts as being at its position in ``segments``."""
    seqs = [i if seg.seq is None else seg.seq for i, seg in enumerate(segments)]
    words = _words(segments, counter, max(1, params.max_tokens // 5))
    # Cost of a speaker's "Name:" prefix and the newline before it, per speaker.
    prefix_cost = {
        s: n + 1
        for s, n in zip(
            sorted({seg.speaker for seg in segments}),
            counter.count_many([f"{s}:" for s in sorted({seg.speaker for seg in segments})]),
            strict=True,
        )
    }
    chunks: list[Chunk] = []
    i, n = 0, len(words)
    while i < n:
        j, cost, speaker = i, 0, None
        boundary, boundary_cost = None, 0
        while j < n:
            s = segments[words[j].pos].speaker
            add = words[j].tokens + (prefix_cost[s] if s != speaker else 0)
            if cost + add > params.max_tokens and j > i:
                break
            cost, speaker, j = cost + add, s, j + 1
            if j == n or words[j].pos != words[j - 1].pos:
                boundary, boundary_cost = j, cost
        if j < n and boundary is not None and boundary_cost >= params.max_tokens // 2:
            j = boundary  # close at a turn boundary rather than split the next turn
        content = _render(words[i:j], segments)
        tokens = counter.count(content)
        while tokens > params.max_tokens and j - i > 1:  # estimate was low (merges across words): trim
            j -= 1
            content = _render(words[i:j], segments)
            tokens = counter.count(content)
        first, last = words[i].pos, words[j - 1].pos
        chunks.append(
            Chunk(
                chunk_index=len(chunks),
                content=content,
                first_seq=seqs[first],
                last_seq=seqs[last],
                start_s=segments[first].start_s,
                end_s=segments[last].end_s,
                speakers=tuple(dict.fromkeys(segments[w.pos].speaker for w in words[i:j])),
                token_count=tokens,
            )
        )
        if j >= n:
            break
        k, overlap = j, 0
        while k - 1 > i and overlap + words[k - 1].tokens <= params.overlap_tokens:
            k -= 1
            overlap += words[k].tokens
        i = k
    return chunks
