"""Word timestamps from a VITS model's own phoneme durations (pure; no model here).

A Piper VITS voice predicts, for every input id, how many latent frames it lasts; the
decoder turns each frame into ``hop`` samples. With the ids traced back to the words
they speak (:meth:`voicefleet_inference.phonemize.Phonemizer.aligned`), a word starts
where its first id's frames start and ends where its last id's frames end. Pauses
(spaces, commas, the sentence's end) belong to no word, so they fall *between* words,
which is what subtitles and karaoke need. Speed is already inside the durations (the
length scale multiplies them before they are rounded up), so nothing rescales here.
"""

from __future__ import annotations

from collections.abc import Sequence

from voicefleet_inference.engines.base import WordTiming
from voicefleet_inference.phoneme_budget import NO_WORD

__all__ = ["word_timings"]


def word_timings(
    words: Sequence[str],
    id_words: Sequence[int],
    durations: Sequence[float],
    seconds_per_frame: float,
) -> tuple[WordTiming, ...]:
    """Each word's ``[start, end)`` in seconds from the start of the unit's audio.

    ``id_words[i]`` is the word index that id *i* speaks (:data:`NO_WORD` for none);
    ``durations[i]`` its frames. A word whose ids are not contiguous (espeak rarely
    splits one) spans from its first id's start to its last id's end.
    """
    if len(id_words) != len(durations):
        raise ValueError(f"{len(id_words)} id tags but {len(durations)} durations")
    spans: dict[int, list[float]] = {}
    at = 0.0
    for word, frames in zip(id_words, durations, strict=True):
        end = at + float(frames)
        if word != NO_WORD and frames > 0:
            span = spans.setdefault(word, [at, end])
            span[1] = end
        at = end
    return tuple(
        WordTiming(
            index=index,
            word=words[index],
            start=round(start * seconds_per_frame, 4),
            end=round(end * seconds_per_frame, 4),
        )
        for index, (start, end) in sorted(spans.items(), key=lambda kv: kv[1][0])
    )
