"""Text to IPA phonemes with espeak-ng, through its public C API (``libespeak-ng.so.1``).

Why the C library and not the ``espeak-ng`` program: measured on the 2-core CI machine,
spawning ``espeak-ng -q -x --ipa`` costs several milliseconds per call before any work,
while one call into the already-initialised library costs well under a millisecond for a
sentence (see ``docs/engines.md``). The library also reports where each clause ends, which
is how punctuation is kept: the program's ``--ipa`` output drops it, but Piper voices were
trained with punctuation phonemes (``,`` ``.`` ``?`` ``!`` …) that shape the prosody.

Why one global lock: libespeak-ng keeps its state (current voice, translator, the clause
reader) in process-wide globals and is not thread-safe. Several worker threads each own an
engine, so every call into the library — initialisation, voice selection and
``espeak_TextToPhonemes`` — happens under :data:`_LOCK`. A sentence takes well under a
millisecond there, against tens of milliseconds of model time, so the lock costs nothing
measurable. The library is used only through its public interface (GPL: we link nothing,
we load the system's shared library at run time).

Nothing happens at import time: the library is loaded on the first :class:`Phonemizer`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import difflib
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from voicefleet_inference.phoneme_budget import (
    MAX_PHONEMES_PER_CALL,
    NO_WORD,
    split_tagged_at_phoneme_budget,
)

__all__ = [
    "MAX_SENTENCE_PHONEMES",
    "AlignedText",
    "Clause",
    "Phonemizer",
    "PhonemizerError",
    "SpokenUnit",
    "display_word",
    "normalize_text",
]

_LIBRARY_NAMES = ("libespeak-ng.so.1", "libespeak-ng.so")
_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_PHONEMES_IPA = 0x02
_EE_OK = 0

_SENTENCE_TERMINATORS = frozenset(".!?")
"""Clause terminators that end a sentence (one synthesis unit, one streamed chunk)."""
_CLAUSE_TERMINATORS = frozenset(".!?,;:")
_TRAILING_CLOSERS = "\"')]}\u00bb\u201d\u2019 \t\r\n"
_LANGUAGE_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)*\)")
"""espeak marks a switch of language inside a clause as ``(fr)`` … ``(en)``; not phonemes."""
_WHITESPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"\S+")

MAX_SENTENCE_PHONEMES = MAX_PHONEMES_PER_CALL
"""Longest synthesis unit, in phoneme characters (see :mod:`..phoneme_budget`)."""

_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_CURRENT_VOICE: str | None = None


class PhonemizerError(RuntimeError):
    """espeak-ng is missing, failed to initialise, or does not know the voice."""


@dataclass(frozen=True, slots=True)
class Clause:
    """One espeak clause: its IPA phonemes and the punctuation that ended it ('' if none).

    ``text_start``/``text_end`` are the UTF-8 byte offsets, in the normalized text, of
    what espeak read for it (its read-ahead character excluded).
    """

    phonemes: str
    terminator: str
    text_start: int = 0
    text_end: int = 0


@dataclass(frozen=True, slots=True)
class SpokenUnit:
    """One synthesis unit's phonemes and, per phoneme character, the index (into
    :attr:`AlignedText.words`) of the input word it speaks; :data:`NO_WORD` for spaces,
    punctuation and pauses."""

    phonemes: str
    word_of: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AlignedText:
    """A text's synthesis units with their phonemes traced back to the text's words."""

    words: tuple[str, ...]
    """Every whitespace-separated token of the normalized text, as :func:`display_word`
    shows it ('' for a token of punctuation only, which nothing speaks)."""
    units: tuple[SpokenUnit, ...]


def display_word(token: str) -> str:
    """A token without the punctuation around it (``"Hello,"`` -> ``Hello``)."""
    start, end = 0, len(token)
    while start < end and unicodedata.category(token[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(token[end - 1]).startswith("P"):
        end -= 1
    return token[start:end]


def align_clause(reference: Sequence[tuple[int, str]], target: str) -> tuple[int, ...]:
    """Which word each character of ``target`` (a clause's phonemes) speaks.

    ``reference`` is each word of the clause phonemized alone, in order. espeak speaks
    words in context (it may join unstressed words or change a vowel), so the clause is
    not always the words' phonemes joined by spaces; a character alignment
    (``difflib``) tags what matches, an unmatched character takes its phoneme word's
    tag, and the tags are forced to run forwards, as speech does.
    """
    ref_chars: list[str] = []
    ref_tags: list[int] = []
    for index, phonemes in reference:
        if ref_chars:
            ref_chars.append(" ")
            ref_tags.append(NO_WORD)
        ref_chars.extend(phonemes)
        ref_tags.extend(NO_WORD if ch == " " else index for ch in phonemes)
    tags = [NO_WORD] * len(target)
    matcher = difflib.SequenceMatcher(None, "".join(ref_chars), target, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            if target[b + k] != " ":
                tags[b + k] = ref_tags[a + k]
    # Fill each phoneme word's unmatched characters from the matched ones in that word.
    # A word with no match at all (espeak reads "a" alone as a diphthong, in context as
    # a schwa) speaks the first word its neighbours skipped, if any; else the word before
    # it (or after, at the start).
    spans = [(m.start(), m.end()) for m in _TOKEN.finditer(target)]
    known_of = [[t for t in tags[lo:hi] if t != NO_WORD] for lo, hi in spans]
    result = list(tags)
    previous = NO_WORD
    for n, (lo, hi) in enumerate(spans):
        known = known_of[n]
        if known:
            fill = known[0]
            for i in range(lo, hi):
                fill = tags[i] if tags[i] != NO_WORD else fill
                result[i] = fill
            previous = max(previous, known[-1])
            continue
        following = next((k[0] for k in known_of[n + 1 :] if k), None)
        if previous == NO_WORD:
            guess = following if following is not None else NO_WORD
        elif following is not None and following - previous > 1:
            guess = previous + 1
        else:
            guess = previous
        for i in range(lo, hi):
            result[i] = guess
        previous = max(previous, guess)
    running = NO_WORD
    for lo, hi in spans:  # speech runs forwards: no word is spoken after a later one
        for i in range(lo, hi):
            running = max(running, result[i])
            result[i] = running
    return tuple(result)


def normalize_text(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends.

    Line breaks inside a paragraph are layout, not speech; espeak would also treat a
    bare newline differently from a space on some inputs, so the engine normalises first.
    """
    return _WHITESPACE.sub(" ", text).strip()


def _load_library() -> ctypes.CDLL:
    """Load and initialise libespeak-ng once per process (caller holds :data:`_LOCK`)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    candidates = [*_LIBRARY_NAMES]
    found = ctypes.util.find_library("espeak-ng")
    if found:
        candidates.append(found)
    lib: ctypes.CDLL | None = None
    errors: list[str] = []
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    if lib is None:
        raise PhonemizerError(
            "espeak-ng shared library not found (install the Debian package 'espeak-ng'): "
            + "; ".join(errors)
        )
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    # DONT_EXIT: on a missing data directory the library would otherwise call exit().
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _ESPEAK_INITIALIZE_DONT_EXIT)
    if rate < 0:
        raise PhonemizerError(f"espeak_Initialize failed (code {rate}); is espeak-ng-data there?")
    _LIB = lib
    return lib


def _select_voice(lib: ctypes.CDLL, voice: str) -> None:
    """Switch espeak's global voice if another engine left a different one (lock held)."""
    global _CURRENT_VOICE
    if voice == _CURRENT_VOICE:
        return
    if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
        _CURRENT_VOICE = None
        raise PhonemizerError(f"espeak-ng does not know the voice {voice!r}")
    _CURRENT_VOICE = voice


def _terminator_of(consumed: bytes, *, lookahead: bool) -> str:
    """The clause punctuation at the end of the text espeak consumed for one clause.

    espeak's reader stops one character *after* the clause boundary (it reads ahead to
    decide that the clause ended), so unless the text ended that character is dropped.
    """
    tail = consumed.decode("utf-8", errors="ignore")
    if lookahead:
        tail = tail[:-1]
    tail = tail.rstrip(_TRAILING_CLOSERS)
    if tail and tail[-1] in _CLAUSE_TERMINATORS:
        return tail[-1]
    if tail.endswith("…"):
        return "."
    return ""


class Phonemizer:
    """IPA phonemes for one espeak voice, split into sentences with punctuation kept.

    Cheap to create; many instances (one per engine) share the one library under the lock.
    """

    def __init__(self, voice: str) -> None:
        self._voice = voice
        with _LOCK:
            lib = _load_library()
            _select_voice(lib, voice)

    @property
    def voice(self) -> str:
        """The espeak voice name, e.g. ``en-us``."""
        return self._voice

    def clauses(self, text: str) -> list[Clause]:
        """Phonemize ``text`` clause by clause, as espeak splits it.

        espeak's reader advances a pointer past each clause; the bytes it skipped tell
        which punctuation ended the clause (the phoneme string itself has none).
        """
        data = normalize_text(text).encode("utf-8")
        if not data:
            return []
        buffer = ctypes.create_string_buffer(data)
        base = ctypes.addressof(buffer)
        end = base + len(data)
        pointer = ctypes.c_void_p(base)
        result: list[Clause] = []
        with _LOCK:
            lib = _load_library()
            _select_voice(lib, self._voice)
            while pointer.value is not None and pointer.value < end:
                start = pointer.value
                raw = lib.espeak_TextToPhonemes(
                    ctypes.byref(pointer), _ESPEAK_CHARS_UTF8, _ESPEAK_PHONEMES_IPA
                )
                stop = end if pointer.value is None else min(pointer.value, end)
                if stop <= start and pointer.value is not None:
                    break  # no progress: never loop forever on odd input
                consumed = data[start - base : stop - base]
                phonemes = (raw or b"").decode("utf-8", errors="replace")
                phonemes = _LANGUAGE_SWITCH.sub("", phonemes)
                phonemes = unicodedata.normalize("NFD", normalize_text(phonemes))
                lookahead = pointer.value is not None
                terminator = _terminator_of(consumed, lookahead=lookahead)
                text_end = stop - base
                if lookahead and consumed:
                    last_char = consumed.decode("utf-8", errors="ignore")[-1:]
                    text_end -= len(last_char.encode("utf-8"))
                result.append(Clause(phonemes, terminator, start - base, text_end))
        return result

    def sentences(self, text: str, max_phonemes: int = MAX_SENTENCE_PHONEMES) -> list[str]:
        """Group clauses into sentences: each ends at ``.``, ``!`` or ``?`` (or the text's end).

        Within a sentence, clauses are joined as Piper voices saw them in training: the
        clause's phonemes, its punctuation, then a space before the next clause. A sentence
        longer than ``max_phonemes`` is cut at clause, then word, boundaries: one forward
        pass over minutes of unpunctuated text would hold gigabytes of decoder activations
        and delay a stream's first audio until all of it was done.
        """
        clauses = self.clauses(text)
        tagged = [(c, (NO_WORD,) * len(c.phonemes)) for c in clauses]
        return [u.phonemes for u in _group(tagged, max_phonemes)]

    def aligned(self, text: str, max_phonemes: int = MAX_SENTENCE_PHONEMES) -> AlignedText:
        """:meth:`sentences` (the very same units) with each phoneme traced to its word.

        Each word of a clause is phonemized once more on its own, to align against the
        clause (see :func:`align_clause`); that costs about as much again as
        phonemizing, so only requests that ask for word timestamps pay it.
        """
        normalized = normalize_text(text)
        clauses = self.clauses(normalized)
        tokens = list(_TOKEN.finditer(normalized))
        words = tuple(display_word(t.group()) for t in tokens)
        starts = [len(normalized[: t.start()].encode("utf-8")) for t in tokens]
        # A token belongs to the last clause that began at or before it; a clause begins
        # where the previous one's text ended (espeak's read-ahead character is not its).
        begins = [0, *(c.text_end for c in clauses[:-1])]
        members: list[list[int]] = [[] for _ in clauses]
        for index, at in enumerate(starts):
            if not words[index] or not clauses:
                continue
            owner = max((j for j, b in enumerate(begins) if b <= at), default=0)
            members[owner].append(index)
        tagged: list[tuple[Clause, tuple[int, ...]]] = []
        for clause, indices in zip(clauses, members, strict=True):
            reference = [(i, self._alone(tokens[i].group())) for i in indices]
            tagged.append((clause, align_clause(reference, clause.phonemes)))
        return AlignedText(words=words, units=tuple(_group(tagged, max_phonemes)))

    def _alone(self, token: str) -> str:
        """One token's phonemes when espeak reads it by itself."""
        return " ".join(c.phonemes for c in self.clauses(token) if c.phonemes)


def _group(
    clauses: Sequence[tuple[Clause, tuple[int, ...]]], max_phonemes: int
) -> list[SpokenUnit]:
    """Clauses (with their tags) grouped into sentences and cut at the phoneme budget."""
    units: list[SpokenUnit] = []
    parts: list[tuple[str, tuple[int, ...]]] = []

    def flush() -> None:
        for phonemes, tags in split_tagged_at_phoneme_budget(parts, max_phonemes):
            units.append(SpokenUnit(phonemes, tags))
        parts.clear()

    for clause, tags in clauses:
        if clause.phonemes or clause.terminator:
            parts.append(
                (
                    clause.phonemes + clause.terminator,
                    (*tags, *(NO_WORD,) * len(clause.terminator)),
                )
            )
        if clause.terminator in _SENTENCE_TERMINATORS and parts:
            flush()
    if parts:
        flush()
    # A "sentence" of bare punctuation ("...") has nothing to say.
    return [u for u in units if any(ch.isalpha() for ch in u.phonemes)]
