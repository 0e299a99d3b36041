"""espeak-ng phonemization through the C library: sentences, punctuation, thread safety."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from voicefleet_inference.phonemize import Phonemizer, PhonemizerError, normalize_text


@pytest.fixture(scope="module")
def phonemizer() -> Phonemizer:
    return Phonemizer("en-us")


def test_normalize_text_collapses_whitespace() -> None:
    assert normalize_text("  Hello\n\n\tworld  again ") == "Hello world again"
    assert normalize_text(" \n\t ") == ""


def test_sentences_split_at_terminators_and_keep_punctuation(phonemizer: Phonemizer) -> None:
    sentences = phonemizer.sentences("Hello, world! How are you? Fine; thanks.")
    assert len(sentences) == 3
    first, second, third = sentences
    assert first.endswith("!")
    assert "," in first
    assert second.endswith("?")
    assert ";" in third
    assert third.endswith(".")


def test_phonemes_are_ipa(phonemizer: Phonemizer) -> None:
    (sentence,) = phonemizer.sentences("The thing.")
    assert "ð" in sentence
    assert "θ" in sentence
    assert "\u02c8" in sentence  # primary stress mark


def test_text_without_final_punctuation_still_ends_a_sentence(phonemizer: Phonemizer) -> None:
    sentences = phonemizer.sentences("First part. Second part without a stop")
    assert len(sentences) == 2
    assert sentences[0].endswith(".")
    assert not sentences[1].endswith(".")


def test_lowercase_after_a_period_is_espeaks_abbreviation_not_a_sentence_end(
    phonemizer: Phonemizer,
) -> None:
    assert len(phonemizer.sentences("see fig. three for details")) == 1


def test_punctuation_only_has_nothing_to_say(phonemizer: Phonemizer) -> None:
    assert phonemizer.sentences("...") == []
    assert phonemizer.sentences("   ") == []


def test_unknown_voice_is_a_clear_error() -> None:
    with pytest.raises(PhonemizerError, match="no-such-voice"):
        Phonemizer("no-such-voice")


def test_concurrent_threads_get_the_same_phonemes(phonemizer: Phonemizer) -> None:
    texts = [
        "One sentence here. Another one follows!",
        "Questions, commas; and colons: all kept?",
        "Numbers like 42 are read out.",
    ]
    expected = [phonemizer.sentences(t) for t in texts]

    def work(i: int) -> list[str]:
        return Phonemizer("en-us").sentences(texts[i % len(texts)])

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(60)))
    for i, result in enumerate(results):
        assert result == expected[i % len(texts)]


def test_long_unpunctuated_text_is_cut_into_bounded_units(phonemizer: Phonemizer) -> None:
    text = " ".join(f"word number {i}" for i in range(120))
    sentences = phonemizer.sentences(text, max_phonemes=200)
    assert len(sentences) > 3
    assert all(len(s) <= 200 for s in sentences)
    assert " ".join(sentences) == " ".join(phonemizer.sentences(text, max_phonemes=100_000))
