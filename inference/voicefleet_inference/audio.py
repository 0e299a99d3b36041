"""Audio encoders: float samples from an engine to the bytes of a response format.

Formats (the OpenAI ``response_format`` names):

======  ======================  =========  ===============================================
format  content type            streaming  how
======  ======================  =========  ===============================================
wav     audio/wav               yes        16-bit PCM; streamed with "unknown" sizes
pcm     audio/pcm               yes        raw 16-bit little-endian mono, no header
flac    audio/flac              no         libsndfile (whole file only, see below)
mp3     audio/mpeg              yes        libsndfile (LAME); CBR when streamed
opus    audio/ogg; codecs=opus  yes        libsndfile, Ogg Opus at 24 kHz (resampled)
aac     (none)                  (none)     no encoder here: :class:`UnsupportedFormat`
======  ======================  =========  ===============================================

Why ``soundfile``: its manylinux wheel bundles libsndfile 1.2, which writes FLAC, MP3 and
Ogg Opus with no system codec packages, so no ffmpeg and no extra dependency. It has no
AAC encoder, hence :class:`UnsupportedFormat` (a 400 at the HTTP layer, listing
:data:`SUPPORTED_FORMATS`).

Streaming: a streamed response cannot take bytes back, so the streaming encoder sends
bytes as soon as libsndfile writes them and drops later rewrites of bytes already sent.

* WAV uses our own header whose RIFF and data sizes are ``0xFFFFFFFF`` ("as long as the
  stream lasts"); ffmpeg, browsers, VLC and libsndfile play it (OpenAI streams WAV the
  same way). Python's :mod:`wave` reports a huge frame count but reads what is there.
* MP3: LAME writes an all-zero placeholder frame first and fills in its info tag at close;
  the stream drops that frame and uses constant bitrate, so a decoder derives the duration
  from the size. Without the tag, decoders cannot trim LAME's encoder delay (about 50 ms
  of extra silence).
* Ogg Opus needs no rewrite at all; pages come out roughly once a second of audio.
* FLAC would be sent with "total samples unknown" in STREAMINFO (legal in the format),
  but libsndfile's own reader fails on such a stream, so we do not claim it streams: the
  HTTP layer should refuse ``stream`` for FLAC (or buffer it).

Compressed encoders buffer internally, so their bytes arrive in bursts, not per sentence.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterable
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CONTENT_TYPES",
    "KNOWN_FORMATS",
    "STREAMABLE_FORMATS",
    "SUPPORTED_FORMATS",
    "Resampler",
    "StreamEncoder",
    "UnsupportedFormat",
    "content_type",
    "encode",
    "float_to_int16",
    "is_streamable",
    "output_sample_rate",
    "resample",
    "stream_encoder",
]

KNOWN_FORMATS: Final = ("wav", "pcm", "flac", "mp3", "opus", "aac")
"""Every ``response_format`` the OpenAI API defines."""
SUPPORTED_FORMATS: Final = ("wav", "pcm", "flac", "mp3", "opus")
"""What this build can encode."""
STREAMABLE_FORMATS: Final = frozenset(("wav", "pcm", "mp3", "opus"))
"""Formats whose encoder emits valid bytes incrementally (see the module docstring)."""

CONTENT_TYPES: Final = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
}

_OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)
"""The only rates an Opus encoder accepts; anything else is resampled to one of them."""

_SOUNDFILE_FORMATS: Final = {
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
}


_MP3_STREAM_COMPRESSION: Final = 0.5
"""libsndfile's 0 (best) .. 1 (smallest); 0.5 gives about 80 kbit/s CBR at 22.05 kHz mono."""


class UnsupportedFormat(ValueError):
    """The format is unknown or has no encoder in this build; lists what is supported."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self.supported = SUPPORTED_FORMATS
        known = "unknown" if fmt not in KNOWN_FORMATS else "not supported by this server"
        super().__init__(
            f"response format {fmt!r} is {known}; supported: {', '.join(SUPPORTED_FORMATS)}"
        )


def _check(fmt: str) -> str:
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedFormat(fmt)
    return fmt


def content_type(fmt: str) -> str:
    """The HTTP ``Content-Type`` for ``fmt``; raises :class:`UnsupportedFormat`."""
    return CONTENT_TYPES[_check(fmt)]


def is_streamable(fmt: str) -> bool:
    """Whether ``fmt`` can be sent chunk by chunk while synthesis runs.

    Raises :class:`UnsupportedFormat` for formats that cannot be encoded at all, so the
    HTTP layer has one call to decide between "stream", "whole file" and "400".
    """
    return _check(fmt) in STREAMABLE_FORMATS


def output_sample_rate(fmt: str, sample_rate: int) -> int:
    """The rate the encoded audio will have: unchanged, except Opus at a rate it accepts.

    Opus takes 8/12/16/24/48 kHz only; the smallest allowed rate at or above the input
    keeps all the voice's bandwidth (22.05 kHz → 24 kHz).
    """
    _check(fmt)
    if fmt != "opus" or sample_rate in _OPUS_RATES:
        return sample_rate
    return next((r for r in _OPUS_RATES if r >= sample_rate), _OPUS_RATES[-1])


def float_to_int16(samples: npt.NDArray[np.floating]) -> npt.NDArray[np.int16]:
    """[-1, 1] floats to int16, clipping anything outside (VITS output can overshoot)."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return np.round(clipped * 32767.0).astype("<i2")


def _wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte RIFF/WAVE header for 16-bit mono PCM; ``None`` = unknown (streaming)."""
    data_size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff_size = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


# -- resampling -----------------------------------------------------------------------------


class Resampler:
    """Streaming polyphase windowed-sinc resampler by a rational factor (numpy only).

    Stateful so that a stream resampled chunk by chunk is identical to the whole signal
    resampled at once: no clicks at sentence boundaries, no drift in the sample count.
    Kaiser-windowed sinc with ``half_width`` zero crossings per side, low-passed at the
    lower of the two Nyquist frequencies.
    """

    def __init__(self, rate_in: int, rate_out: int, half_width: int = 16) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError("sample rates must be positive")
        g = math.gcd(rate_in, rate_out)
        self.up = rate_out // g
        self.down = rate_in // g
        self._half = half_width
        cutoff = min(1.0, self.up / self.down)
        # Tap k of phase p reads input (base - half + 1 + k) for output at base + p/up.
        k = np.arange(2 * half_width, dtype=np.float64)
        p = np.arange(self.up, dtype=np.float64)[:, None] / self.up
        d = k[None, :] - half_width + 1 - p
        window = np.kaiser(2 * half_width * 64 + 1, 8.0)
        pos = np.clip((d / half_width + 1.0) * 0.5 * (len(window) - 1), 0, len(window) - 1)
        taps = cutoff * np.sinc(cutoff * d) * np.interp(pos, np.arange(len(window)), window)
        self._taps = taps.astype(np.float32)
        self._buffer = np.zeros(half_width - 1, dtype=np.float32)
        """Input not yet fully used, starting at global input index ``_offset``."""
        self._offset = -(half_width - 1)
        self._produced = 0
        self._consumed = 0

    def process(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Resample the next piece of the stream; returns what can be computed so far."""
        self._consumed += len(samples)
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, dtype=np.float32)])
        return self._drain(final=False)

    def finish(self) -> npt.NDArray[np.float32]:
        """Flush the tail: the total output is ``ceil(inputs * rate_out / rate_in)``."""
        self._buffer = np.concatenate([self._buffer, np.zeros(self._half, dtype=np.float32)])
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> npt.NDArray[np.float32]:
        last_input = self._offset + len(self._buffer) - 1
        # Output n needs inputs up to floor(n*down/up) + half.
        available = (last_input - self._half) * self.up // self.down + 1 if last_input >= 0 else 0
        if final:
            available = -(-self._consumed * self.up // self.down)
        count = max(0, available - self._produced)
        if count == 0:
            return np.zeros(0, dtype=np.float32)
        # Outputs n, n+up, n+2*up, ... share one filter phase and read inputs spaced by
        # `down`: one strided matrix-vector product per phase, no gathered copies.
        windows = np.lib.stride_tricks.sliding_window_view(self._buffer, 2 * self._half)
        out = np.empty(count, dtype=np.float32)
        for r in range(min(self.up, count)):
            n = self._produced + r
            first = n * self.down // self.up - self._half + 1 - self._offset
            rows = len(range(r, count, self.up))
            block = windows[first : first + (rows - 1) * self.down + 1 : self.down]
            out[r :: self.up] = block @ self._taps[(n * self.down) % self.up]
        self._produced += count
        keep_from = int(self._produced * self.down // self.up) - self._half + 1 - self._offset
        if keep_from > 0:
            self._buffer = self._buffer[keep_from:]
            self._offset += keep_from
        return out


def resample(
    samples: npt.NDArray[np.float32], rate_in: int, rate_out: int
) -> npt.NDArray[np.float32]:
    """Whole-signal resampling (see :class:`Resampler`)."""
    if rate_in == rate_out:
        return np.asarray(samples, dtype=np.float32)
    resampler = Resampler(rate_in, rate_out)
    return np.concatenate([resampler.process(samples), resampler.finish()])


# -- encoders -------------------------------------------------------------------------------


def _is_blank_mpeg_frame(data: bytes) -> bool:
    """An MPEG audio frame header (11-bit sync) followed by nothing but zeros."""
    return len(data) > 4 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and not any(data[4:])


class _AppendOnlySink:
    """A file-like object for libsndfile that hands out bytes once they are final enough.

    libsndfile may seek back to rewrite a header; bytes already handed out are gone, so
    rewrites of them are dropped (see the module docstring for why the result is still
    valid), while rewrites of bytes not yet handed out are applied.
    """

    def __init__(self, *, drop_blank_first_frame: bool = False) -> None:
        self._drop_blank_first_frame = drop_blank_first_frame
        self._pending = bytearray()
        self._emitted = 0
        self._pos = 0
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        chunk = bytes(data)
        length = len(chunk)
        start = self._pos
        if self._drop_blank_first_frame and start == 0 and self._size == 0:
            self._drop_blank_first_frame = False
            if _is_blank_mpeg_frame(chunk):
                # LAME's placeholder for the info tag, filled in at close: a stream
                # cannot wait for that, and an all-zero frame would play as a glitch.
                self._emitted = self._pos = self._size = length
                return length
        self._pos += length
        self._size = max(self._size, self._pos)
        if start < self._emitted:
            chunk = chunk[self._emitted - start :]
            start = self._emitted
        if chunk:
            offset = start - self._emitted
            end = offset + len(chunk)
            if end > len(self._pending):
                self._pending.extend(bytes(end - len(self._pending)))
            self._pending[offset:end] = chunk
        return length

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        # libsndfile does not read back while writing these formats; never pretend to.
        return b""

    def take(self) -> bytes:
        """Bytes written since the last call, in file order."""
        data = bytes(self._pending)
        self._emitted += len(data)
        self._pending.clear()
        return data


class StreamEncoder:
    """Incremental encoder: ``start()``, then ``encode(samples)`` per chunk, then ``finish()``.

    Each call returns the bytes ready so far (possibly empty for compressed formats,
    whose encoders buffer); concatenated they form one valid file of the format.
    """

    def __init__(self, fmt: str, sample_rate: int) -> None:
        self.format = _check(fmt)
        self.input_rate = sample_rate
        self.sample_rate = output_sample_rate(fmt, sample_rate)
        self.content_type = CONTENT_TYPES[fmt]
        self._resampler = (
            Resampler(sample_rate, self.sample_rate) if self.sample_rate != sample_rate else None
        )
        self._sink: _AppendOnlySink | None = None
        self._file: Any = None
        """A ``soundfile.SoundFile`` writing into the sink (compressed formats only)."""
        self._started = False
        self._finished = False

    def start(self) -> bytes:
        """Header bytes (WAV header; libsndfile's container header), or ``b""`` for pcm."""
        if self._started:
            raise RuntimeError("start() called twice")
        self._started = True
        if self.format == "wav":
            return _wav_header(self.sample_rate, None)
        if self.format == "pcm":
            return b""
        import soundfile  # deferred: loads libsndfile

        container, subtype = _SOUNDFILE_FORMATS[self.format]
        self._sink = _AppendOnlySink(drop_blank_first_frame=self.format == "mp3")
        # Constant bitrate for streamed MP3: with no info tag (see _AppendOnlySink) a
        # decoder can only derive the duration from the file size if the rate is constant.
        extra: dict[str, Any] = (
            {"bitrate_mode": "CONSTANT", "compression_level": _MP3_STREAM_COMPRESSION}
            if self.format == "mp3"
            else {}
        )
        self._file = soundfile.SoundFile(
            self._sink,
            mode="w",
            samplerate=self.sample_rate,
            channels=1,
            format=container,
            subtype=subtype,
            **extra,
        )
        return self._sink.take()

    def encode(self, samples: npt.NDArray[np.float32]) -> bytes:
        """Encode the next chunk (float samples at the engine's rate)."""
        if not self._started or self._finished:
            raise RuntimeError("encode() outside start()/finish()")
        pcm = np.asarray(samples, dtype=np.float32)
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        return self._write(pcm)

    def finish(self) -> bytes:
        """Flush the encoder; the stream is complete after these bytes."""
        if not self._started or self._finished:
            raise RuntimeError("finish() outside start()")
        self._finished = True
        tail = b""
        if self._resampler is not None:
            tail = self._write(self._resampler.finish())
        if self._file is None or self._sink is None:
            return tail
        self._file.close()
        return tail + self._sink.take()

    def _write(self, pcm: npt.NDArray[np.float32]) -> bytes:
        if self._file is None or self._sink is None:
            return float_to_int16(pcm).tobytes()
        if pcm.size:
            self._file.write(float_to_int16(pcm))
        return self._sink.take()


def stream_encoder(fmt: str, sample_rate: int) -> StreamEncoder:
    """A fresh :class:`StreamEncoder`; raises :class:`UnsupportedFormat` first."""
    return StreamEncoder(fmt, sample_rate)


def encode(
    samples: npt.NDArray[np.float32] | Iterable[npt.NDArray[np.float32]],
    sample_rate: int,
    fmt: str,
) -> bytes:
    """Encode a whole clip (an array, or the chunks of one request) into one file.

    Unlike streaming, the WAV header carries the real sizes and FLAC/MP3 headers are
    completed by libsndfile, so every player and ``Content-Length`` are happy.
    """
    _check(fmt)
    if isinstance(samples, np.ndarray):
        whole = np.asarray(samples, dtype=np.float32)
    else:
        parts = [np.asarray(s, dtype=np.float32) for s in samples]
        whole = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if fmt == "pcm":
        return float_to_int16(whole).tobytes()
    if fmt == "wav":
        data = float_to_int16(whole).tobytes()
        return _wav_header(sample_rate, len(data)) + data
    import soundfile

    rate = output_sample_rate(fmt, sample_rate)
    if rate != sample_rate:
        whole = resample(whole, sample_rate, rate)
    container, subtype = _SOUNDFILE_FORMATS[fmt]
    buffer = io.BytesIO()
    # int16 in, so every format quantizes and clips the same way as wav/pcm.
    soundfile.write(
        buffer,
        float_to_int16(whole),
        rate,
        format=container,
        subtype=subtype,
    )
    return buffer.getvalue()
