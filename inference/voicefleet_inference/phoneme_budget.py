"""Bounded work per engine call: over-long sentences split at a phoneme budget.

A VITS decoder's memory and time grow with the length of what one forward pass speaks,
and text without sentence punctuation would otherwise be one pass: a few hundred phonemes
raised a pod's peak memory enough, on top of the loaded voice, to get a 512Mi pod
OOM-killed with every request on it. Cutting at
:data:`MAX_PHONEMES_PER_CALL` bounds that peak whatever the punctuation; cuts fall at
clause boundaries (``,`` ``;`` ``:``) first, so prosody is kept where the text allows,
and at word boundaries only inside a clause longer than the budget. Measured figures
are in ``docs/server.md`` (Memory).

Pure and engine-independent, so any engine's text front end can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = [
    "MAX_PHONEMES_PER_CALL",
    "MAX_PHONEMES_PER_CHAR",
    "NO_WORD",
    "over_request_budget",
    "split_at_phoneme_budget",
    "split_tagged_at_phoneme_budget",
]

MAX_PHONEMES_PER_CALL: Final = 100
"""Phoneme characters per forward pass: about 6 s of speech for the sample voice;
ordinary sentences stay whole (one pass, as Piper runs them)."""
MAX_PHONEMES_PER_CHAR: Final = 4.0
"""How far a request's text may expand when spoken. Prose is about 1.2 phonemes per
character, text dense with numbers and symbols up to about 3.4 (measured: dates, prices,
phone numbers); ``WWW`` is 7.7 and a long digit string 5.3. Refusing more keeps the
per-character cost estimate within a small factor of the truth and makes
``maxInputChars`` mean what it says: how much speech one request can ask for."""
NO_WORD: Final = -1
"""Tag of a phoneme character that speaks no input word (a space, punctuation, a pause)."""
_FLOOR: Final = 200
"""Phonemes always allowed, so a short number ("1999.") is never refused."""


def split_at_phoneme_budget(
    clauses: Sequence[str], budget: int = MAX_PHONEMES_PER_CALL
) -> list[str]:
    """Join a sentence's ``clauses`` (phoneme strings) with spaces into units of at most
    ``budget`` characters, greedily; a clause longer than ``budget`` is cut between words,
    and a single word longer than ``budget`` is cut between characters (it cannot be
    spoken whole within the bound, and an unbounded pass is what this prevents).
    """
    tagged = [(clause, (NO_WORD,) * len(clause)) for clause in clauses]
    return [unit for unit, _ in split_tagged_at_phoneme_budget(tagged, budget)]


def split_tagged_at_phoneme_budget(
    clauses: Sequence[tuple[str, Sequence[int]]], budget: int = MAX_PHONEMES_PER_CALL
) -> list[tuple[str, tuple[int, ...]]]:
    """:func:`split_at_phoneme_budget` carrying a tag per phoneme character along.

    The tag is the index of the input word that character speaks (:data:`NO_WORD` for
    spaces and punctuation), so word timestamps stay right whatever the cuts; the
    spaces this function inserts are tagged :data:`NO_WORD`.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    words: list[tuple[str, tuple[int, ...]]] = []
    for clause, tags in clauses:
        if len(tags) != len(clause):
            raise ValueError("one tag per phoneme character is required")
        if len(clause) <= budget:
            words.append((clause, tuple(tags)))
            continue
        start = 0
        for word in clause.split(" "):
            word_tags = tuple(tags[start : start + len(word)])
            start += len(word) + 1
            words.extend(
                (word[i : i + budget], word_tags[i : i + budget])
                for i in range(0, len(word), budget)
            )
    units: list[tuple[str, tuple[int, ...]]] = []
    current = ""
    current_tags: tuple[int, ...] = ()
    for word, word_tags in words:
        if not word:
            continue
        if current and len(current) + 1 + len(word) > budget:
            units.append((current, current_tags))
            current, current_tags = word, word_tags
        elif current:
            current, current_tags = f"{current} {word}", (*current_tags, NO_WORD, *word_tags)
        else:
            current, current_tags = word, word_tags
    if current:
        units.append((current, current_tags))
    return units


def over_request_budget(units: Sequence[str], characters: int) -> str | None:
    """Why ``units`` (one request's phoneme strings, from ``characters`` of text) are more
    speech than that text may ask for, or None."""
    total = sum(len(u) for u in units)
    limit = max(_FLOOR, int(MAX_PHONEMES_PER_CHAR * characters))
    if total <= limit:
        return None
    return (
        f"text of {characters} characters expands to {total} phonemes when spoken; at most "
        f"{MAX_PHONEMES_PER_CHAR:g} per character ({limit}) are synthesized: spell out or "
        "shorten long runs of letters, digits or symbols"
    )
