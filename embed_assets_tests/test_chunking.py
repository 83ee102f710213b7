"""Chunking properties: coverage, order, overlap, exact token bounds, speakers, determinism."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from embed_assets.lib.chunking import ChunkParams, chunk_segments
from embed_assets.lib.sample import make_transcript
from embed_assets.lib.tokenizers import token_counter
from embed_assets.lib.transcripts import Segment

TOKENIZERS = ["minilm", "cl100k_base"]


def transcript(seed: int, minutes: float = 20) -> tuple[Segment, ...]:
    return make_transcript(random.Random(seed), f"r{seed}", minutes).segments


@pytest.mark.parametrize("tok", TOKENIZERS)
@pytest.mark.parametrize(("max_tokens", "overlap"), [(200, 30), (64, 0), (32, 16), (254, 50)])
def test_bounds_are_exact_and_never_exceeded(tok: str, max_tokens: int, overlap: int) -> None:
    counter = token_counter(tok)
    chunks = chunk_segments(transcript(1), ChunkParams(max_tokens, overlap), counter)
    assert chunks
    for c in chunks:
        assert c.token_count == counter.count(c.content)  # exact, by the model's tokenizer
        assert 0 < c.token_count <= max_tokens


@pytest.mark.parametrize("tok", TOKENIZERS)
def test_every_word_of_every_segment_is_covered_in_order(tok: str) -> None:
    segments = transcript(2)
    chunks = chunk_segments(segments, ChunkParams(80, 20), token_counter(tok))
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    covered = set()
    for c in chunks:
        assert c.first_seq <= c.last_seq
        covered.update(range(c.first_seq, c.last_seq + 1))
    assert covered == set(range(len(segments)))
    # first_seq never goes backwards, and the chunks' words, minus overlaps, spell the transcript
    assert all(a.first_seq <= b.first_seq for a, b in zip(chunks, chunks[1:], strict=False))
    source_words = [w for s in segments for w in s.text.split()]
    words = [w for line in chunks[0].content.splitlines() for w in line.split(": ", 1)[1].split()]
    assert source_words[: len(words)] == words


def _words(content: str) -> list[str]:
    return [w for line in content.splitlines() for w in line.split(": ", 1)[1].split()]


def test_overlap_repeats_the_tail_of_the_previous_chunk() -> None:
    counter = token_counter("minilm")
    segs = tuple(Segment(f"S{i % 3}", " ".join(f"w{i}x{j}" for j in range(15))) for i in range(40))
    chunks = chunk_segments(segs, ChunkParams(100, 25), counter)
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:], strict=False):
        wa, wb = _words(a.content), _words(b.content)
        shared = next((n for n in range(min(len(wa), len(wb)), 0, -1) if wa[-n:] == wb[:n]), 0)
        assert shared > 0  # every chunk starts with the tail of the previous one (unique words: exact)
        assert counter.count(" " + " ".join(wb[:shared])) <= 25
        assert wb[shared] == _words_after(segs, wa[-1])


def _words_after(segs: tuple[Segment, ...], word: str) -> str:
    words = [w for s in segs for w in s.text.split()]
    return words[words.index(word) + 1]


def test_no_overlap_means_disjoint_words() -> None:
    segments = transcript(4)
    chunks = chunk_segments(segments, ChunkParams(100, 0), token_counter("minilm"))
    assert sum(len(_words(c.content)) for c in chunks) == sum(len(s.text.split()) for s in segments)


def test_speaker_aware_content_and_short_turns_merged() -> None:
    segs = (
        Segment("Dana", "Hi.", 0, 1),
        Segment("Lee", "Hello.", 1, 2),
        Segment("Lee", "How are you?", 2, 3),
        Segment("Dana", "Fine.", 3, 4),
    )
    (c,) = chunk_segments(segs, ChunkParams(100, 10), token_counter("minilm"))
    assert c.content == "Dana: Hi.\nLee: Hello. How are you?\nDana: Fine."
    assert c.speakers == ("Dana", "Lee") and (c.first_seq, c.last_seq, c.start_s, c.end_s) == (0, 3, 0, 4)


@pytest.mark.parametrize(("max_tokens", "overlap"), [(80, 20), (40, 0)])
def test_first_and_last_seq_are_source_positions_where_turns_were_skipped(max_tokens: int, overlap: int) -> None:
    plain = transcript(2, minutes=10)
    seqs = [3 * i + 1 for i in range(len(plain))]  # turns 0, 2, 3, 5, 6, ... were skipped at import
    gapped = tuple(replace(s, seq=q) for s, q in zip(plain, seqs, strict=True))
    params, counter = ChunkParams(max_tokens, overlap), token_counter("minilm")
    by_position, by_seq = chunk_segments(plain, params, counter), chunk_segments(gapped, params, counter)
    assert len(by_seq) > 5
    # Same chunks; only the citations differ, and they name the segments' own seqs.
    assert [replace(c, first_seq=seqs[c.first_seq], last_seq=seqs[c.last_seq]) for c in by_position] == by_seq
    assert {c.first_seq for c in by_seq} | {c.last_seq for c in by_seq} <= set(seqs)


def test_a_chunk_cites_the_source_turns_it_holds() -> None:
    segs = (
        Segment("Dana", "Hi.", 0, 1, seq=1),
        Segment("Lee", "Hello.", 3, 4, seq=4),
        Segment("Dana", "Bye.", 5, 6, seq=9),
    )
    (c,) = chunk_segments(segs, ChunkParams(100, 10), token_counter("minilm"))
    assert c.content == "Dana: Hi.\nLee: Hello.\nDana: Bye."
    assert (c.first_seq, c.last_seq, c.start_s, c.end_s) == (1, 9, 0, 6)


def test_a_turn_longer_than_a_chunk_is_split_between_words() -> None:
    words = [f"w{i}" for i in range(2000)]
    segs = (Segment("Dana", "Intro.", 0, 1), Segment("Lee", " ".join(words), 1, 600))
    chunks = chunk_segments(segs, ChunkParams(64, 8), token_counter("minilm"))
    assert len(chunks) > 10
    for c in chunks:
        assert c.token_count <= 64
        assert all(w in set(words) | {"Intro."} for w in _words(c.content))  # never a broken word
    assert all(c.first_seq == c.last_seq == 1 for c in chunks[2:])


def test_a_monster_word_is_cut_so_no_chunk_exceeds_its_bound() -> None:
    segs = (Segment("A", "start " + "xy" * 10_000 + " end"),)
    for tok in TOKENIZERS:
        chunks = chunk_segments(segs, ChunkParams(50, 0), token_counter(tok))
        assert all(c.token_count <= 50 for c in chunks)
        assert sum(c.content.count("xy") for c in chunks) == 10_000  # nothing lost, nothing repeated


def test_deterministic() -> None:
    a = chunk_segments(transcript(5), ChunkParams(120, 20), token_counter("minilm"))
    b = chunk_segments(transcript(5), ChunkParams(120, 20), token_counter("minilm"))
    assert a == b and [c.content_hash for c in a] == [c.content_hash for c in b]


@pytest.mark.parametrize(("max_tokens", "overlap"), [(8, 0), (100, 51), (100, -1)])
def test_bad_params_are_named(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="chunk_"):
        ChunkParams(max_tokens, overlap)


COUNTER_CHECK = """
import sys
{setup}
from embed_assets.lib.sample import make_transcript
from embed_assets.lib.tokenizers import token_counter
import random
counter = token_counter("cl100k_base")
package_ran = "bpe_openai" in sys.modules
texts = [s.text for seed in range(5) for s in make_transcript(random.Random(seed), "r", 30).segments]
texts += [w for t in texts[:200] for w in t.split()]
texts += ["", " ", "héllo wörld 日本語 🙂", "a\\ud800b", "x" * 5000, " two  spaces\\n\\ttab", "<|endoftext|> as text"]
counts = [counter.count(t) for t in texts]
import bpe_openai  # the public API, after (and beside) the counter's own load of the extension
enc = bpe_openai.get_encoding("cl100k_base")
wrong = [t for t, n in zip(texts, counts) if n != len(enc.encode_ordinary(t))]
print(type(counter._tok).__name__, package_ran, len(texts), len(wrong))
"""


@pytest.mark.parametrize(
    ("setup", "backend"),
    [
        ("", "PyTokenizer"),  # the extension, loaded without the package's 0.55 s __init__
        # the package's folder not found (a changed layout): the public API
        (
            "import importlib.util as u; f = u.find_spec; u.find_spec = lambda n: None if n == 'bpe_openai' else f(n)",
            "_PublicCl100k",
        ),
    ],
)
def test_cl100k_counts_are_bpe_openais_own(setup: str, backend: str) -> None:
    """The counter loads bpe-openai's Rust tokenizer directly (not the package, whose import parses three
    vocabularies in Python), and counts exactly as its public ``encode_ordinary`` does, lone surrogates and
    special-token text included; where the extension is not found, it uses the public API."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", COUNTER_CHECK.format(setup=setup)], capture_output=True, text=True, check=True
    ).stdout.split()
    name, package_ran, n, wrong = out[-4:]
    assert name == backend and int(n) > 1000 and wrong == "0"
    assert package_ran == str(backend == "_PublicCl100k")
