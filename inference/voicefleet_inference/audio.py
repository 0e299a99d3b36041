"""Audio encoders: float samples from an engine to the bytes of a response format.

Formats (every OpenAI ``response_format``):

======  ======================  =========  ===============================================
format  content type            streaming  how
======  ======================  =========  ===============================================
wav     audio/wav               yes        16-bit PCM; streamed with "unknown" sizes
pcm     audio/pcm               yes        raw 16-bit little-endian mono, no header
flac    audio/flac              no         libsndfile (whole file only, see below)
mp3     audio/mpeg              yes        libsndfile (LAME); CBR when streamed
opus    audio/ogg; codecs=opus  yes        PyAV (libopus in Ogg), 24 kHz (resampled)
aac     audio/aac               yes        PyAV (ffmpeg's AAC encoder), ADTS, 64 kbit/s
======  ======================  =========  ===============================================

Two libraries, each where it is best: ``soundfile`` bundles libsndfile, whose MP3 and FLAC
paths are proven here (the MP3 info-tag handling below); PyAV (``av``) bundles ffmpeg's
encoders and its resampler (libswresample), which gives AAC (libsndfile has none) and
resamples Opus to a rate the codec takes. Neither needs a system codec package.

Streaming: a streamed response cannot take bytes back, so the streaming encoder sends
bytes as soon as the library writes them and drops later rewrites of bytes already sent.

* WAV uses our own header whose RIFF and data sizes are ``0xFFFFFFFF`` ("as long as the
  stream lasts"); ffmpeg, browsers, VLC and libsndfile play it (OpenAI streams WAV the
  same way). Python's :mod:`wave` reports a huge frame count but reads what is there.
* MP3: LAME writes an all-zero placeholder frame first and fills in its info tag at close;
  the stream drops that frame and uses constant bitrate, so a decoder derives the duration
  from the size. Without the tag, decoders cannot trim LAME's encoder delay (about 50 ms
  of extra silence).
* Ogg Opus and ADTS AAC need no rewrite at all: Ogg pages come out roughly once a second
  of audio, ADTS frames every 1024 samples.
* FLAC would be sent with "total samples unknown" in STREAMINFO (legal in the format),
  but libsndfile's own reader fails on such a stream, so we do not claim it streams: the
  HTTP layer should refuse ``stream`` for FLAC (or buffer it).

Compressed encoders buffer internally, so their bytes arrive in bursts, not per sentence.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

__all__ = [
    "CONTENT_TYPES",
    "KNOWN_FORMATS",
    "STREAMABLE_FORMATS",
    "SUPPORTED_FORMATS",
    "StreamEncoder",
    "UnsupportedFormat",
    "content_type",
    "encode",
    "float_to_int16",
    "is_streamable",
    "output_sample_rate",
    "stream_encoder",
]

KNOWN_FORMATS: Final = ("wav", "pcm", "flac", "mp3", "opus", "aac")
"""Every ``response_format`` the OpenAI API defines."""
SUPPORTED_FORMATS: Final = ("wav", "pcm", "flac", "mp3", "opus", "aac")
"""What this build can encode."""
STREAMABLE_FORMATS: Final = frozenset(("wav", "pcm", "mp3", "opus", "aac"))
"""Formats whose encoder emits valid bytes incrementally (see the module docstring)."""

CONTENT_TYPES: Final = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
    "aac": "audio/aac",
}

_OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)
"""The only rates an Opus encoder accepts; anything else is resampled to one of them."""

_SOUNDFILE_FORMATS: Final = {
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
_AV_FORMATS: Final = {
    "opus": ("ogg", "libopus", 32_000),
    "aac": ("adts", "aac", 64_000),
}
"""format → (ffmpeg container, encoder, bit rate): mono speech, transparent at these rates."""
_AV_MUXER_OPTIONS: Final = {"ogg": {"page_duration": "200000"}}
"""Ogg pages of 0.2 s (ffmpeg's default is 1 s), so a stream's audio arrives in step."""


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


class _AvWriter:
    """One PyAV container and audio stream writing into an :class:`_AppendOnlySink`.

    PyAV resamples (libswresample) and re-frames the input to the encoder's rate and frame
    size inside ``encode``; frames carry int16 so every format clips the same way.
    """

    def __init__(self, fmt: str, input_rate: int, output_rate: int) -> None:
        import av  # deferred: loads ffmpeg's libraries

        container, codec, bit_rate = _AV_FORMATS[fmt]
        self._av = av
        self._input_rate = input_rate
        self.sink = _AppendOnlySink()
        # flush_packets: hand each muxed packet to the sink at once (AVIO buffers 32 KiB).
        self._container = cast(
            Any,
            av.open(
                self.sink,
                mode="w",
                format=container,
                container_options={"flush_packets": "1", **_AV_MUXER_OPTIONS.get(container, {})},
            ),
        )
        stream = self._container.add_stream(codec, rate=output_rate, layout="mono")
        stream.bit_rate = bit_rate
        self._stream: Any = stream

    def write(self, pcm: npt.NDArray[np.float32]) -> bytes:
        if pcm.size:
            frame = self._av.AudioFrame.from_ndarray(
                float_to_int16(pcm).reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = self._input_rate
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self.sink.take()

    def close(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self.sink.take()


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
        self._av: _AvWriter | None = None
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
        if self.format in _AV_FORMATS:
            self._av = _AvWriter(self.format, self.input_rate, self.sample_rate)
            return self._av.sink.take()
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
        if self._av is not None:
            return self._av.write(pcm)
        return self._write(pcm)

    def finish(self) -> bytes:
        """Flush the encoder; the stream is complete after these bytes."""
        if not self._started or self._finished:
            raise RuntimeError("finish() outside start()")
        self._finished = True
        if self._av is not None:
            return self._av.close()
        if self._file is None or self._sink is None:
            return b""
        self._file.close()
        return self._sink.take()

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
    parts = [samples] if isinstance(samples, np.ndarray) else list(samples)
    # Chunk by chunk where the format allows: a long clip's float copies are what would
    # set the server's peak memory, not the int16 bytes it sends.
    if fmt in ("pcm", "wav"):
        data = b"".join(float_to_int16(p).tobytes() for p in parts)
        return data if fmt == "pcm" else _wav_header(sample_rate, len(data)) + data
    if fmt in _AV_FORMATS:  # Ogg and ADTS are the same whole or streamed
        encoder = StreamEncoder(fmt, sample_rate)
        return encoder.start() + b"".join(encoder.encode(p) for p in parts) + encoder.finish()
    whole = (
        np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
        if parts
        else np.zeros(0, dtype=np.float32)
    )
    import soundfile

    container, subtype = _SOUNDFILE_FORMATS[fmt]
    buffer = io.BytesIO()
    # int16 in, so every format quantizes and clips the same way as wav/pcm.
    soundfile.write(
        buffer,
        float_to_int16(whole),
        sample_rate,
        format=container,
        subtype=subtype,
    )
    return buffer.getvalue()
