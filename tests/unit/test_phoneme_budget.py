"""The per-call phoneme budget and the per-request expansion limit (pure functions)."""

from __future__ import annotations

import pytest

from voicefleet_inference.phoneme_budget import (
    MAX_PHONEMES_PER_CALL,
    over_request_budget,
    split_at_phoneme_budget,
)


def test_short_clauses_are_joined_up_to_the_budget() -> None:
    assert split_at_phoneme_budget(["ab,", "cd,", "ef."], budget=7) == ["ab, cd,", "ef."]
    assert split_at_phoneme_budget(["ab,", "cd."], budget=100) == ["ab, cd."]


def test_cuts_fall_at_clause_boundaries_before_word_boundaries() -> None:
    clauses = ["aaa bbb,", "ccc ddd."]  # each clause fits; the two together do not
    assert split_at_phoneme_budget(clauses, budget=10) == ["aaa bbb,", "ccc ddd."]


def test_a_clause_over_the_budget_is_cut_between_words() -> None:
    words = " ".join(["abcd"] * 30)  # 149 characters, no punctuation
    units = split_at_phoneme_budget([words], budget=20)
    assert all(len(u) <= 20 for u in units)
    assert " ".join(units) == words  # nothing lost, nothing reordered
    assert all(not u.startswith(" ") and not u.endswith(" ") for u in units)


def test_a_word_over_the_budget_is_cut_so_no_unit_exceeds_it() -> None:
    units = split_at_phoneme_budget(["x" * 25], budget=10)
    assert units == ["x" * 10, "x" * 10, "x" * 5]


@pytest.mark.parametrize("text_len", [1, 99, 100, 101, 5000])
def test_every_unit_is_within_the_default_budget(text_len: int) -> None:
    text = ("ab cde fghij, " * 1000)[:text_len]
    units = split_at_phoneme_budget([text])
    assert all(0 < len(u) <= MAX_PHONEMES_PER_CALL for u in units)
    assert "".join(units).replace(" ", "") == text.replace(" ", "")


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="budget"):
        split_at_phoneme_budget(["a"], budget=0)


def test_request_expansion_limit() -> None:
    assert over_request_budget(["a" * 120], characters=100) is None  # prose-like
    assert over_request_budget(["a" * 200], characters=10) is None  # the floor: "1999."
    why = over_request_budget(["a" * 770], characters=100)  # "WWW " x 25
    assert why is not None
    assert "100 characters expands to 770 phonemes" in why
