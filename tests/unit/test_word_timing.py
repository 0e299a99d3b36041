"""Word timings, pure parts: ids to seconds, tags through budget splits, clause alignment."""

from __future__ import annotations

import pytest

from voicefleet_inference.engines.word_timing import word_timings
from voicefleet_inference.phoneme_budget import (
    NO_WORD,
    split_at_phoneme_budget,
    split_tagged_at_phoneme_budget,
)
from voicefleet_inference.phonemize import align_clause, display_word

N = NO_WORD


def test_a_word_spans_its_ids_and_pauses_fall_between_words() -> None:
    words = ("Hi", "there")
    # BOS pad | H i (+pads) | space | t h e r e | comma | EOS
    id_words = [N, N, 0, 0, 0, 0, N, N, 1, 1, 1, 1, N, N, N]
    durations = [2, 1, 3, 1, 2, 1, 4, 1, 3, 1, 3, 1, 6, 1, 2]
    timings = word_timings(words, id_words, durations, seconds_per_frame=0.01)
    assert [(t.word, t.start, t.end) for t in timings] == [
        ("Hi", 0.03, 0.10),
        ("there", 0.15, 0.23),
    ]


def test_zero_frame_words_and_mismatched_lengths() -> None:
    assert word_timings(("a",), [0, 0], [0, 0], 0.01) == ()
    with pytest.raises(ValueError, match="durations"):
        word_timings(("a",), [0], [1, 2], 0.01)


def test_tags_travel_with_their_characters_through_budget_splits() -> None:
    clause = "aaaa bbbb cccc"
    tags = [0] * 4 + [N] + [1] * 4 + [N] + [2] * 4
    units = split_tagged_at_phoneme_budget([(clause, tags), ("dd.", [3, 3, N])], budget=9)
    assert [u for u, _ in units] == split_at_phoneme_budget([clause, "dd."], budget=9)
    for text, unit_tags in units:
        assert len(text) == len(unit_tags)
        for ch, tag in zip(text, unit_tags, strict=True):
            assert (tag == N) == (ch in " ."), (text, unit_tags)
    assert [sorted(set(t) - {N}) for _, t in units] == [[0, 1], [2, 3]]


def test_alignment_splits_words_espeak_joined_and_fills_changed_vowels() -> None:
    # espeak speaks "of the" as one phoneme word, and "a" as a schwa in context.
    reference = [(0, "ʌv"), (1, "ðə"), (2, "eɪ"), (3, "tˈɛst")]  # noqa: RUF001
    tags = align_clause(reference, "ʌvðə ɐ tˈɛst")  # noqa: RUF001
    assert tags == (0, 0, 1, 1, N, 2, N, 3, 3, 3, 3, 3)


def test_display_words_lose_surrounding_punctuation_only() -> None:
    assert display_word("Hello,") == "Hello"
    assert display_word('"don\'t!"') == "don't"
    assert display_word("$5") == "$5"
    assert display_word("...") == ""
