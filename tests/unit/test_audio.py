"""Encoders, checked by decoding with libsndfile, PyAV (ffmpeg) and the stdlib."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from voicefleet_inference import audio

RATE = 22050


def tone(seconds: float = 1.0, hz: float = 440.0, rate: int = RATE) -> npt.NDArray[np.float32]:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def stream(fmt: str, samples: npt.NDArray[np.float32], piece: int = 5000) -> list[bytes]:
    encoder = audio.stream_encoder(fmt, RATE)
    parts = [encoder.start()]
    parts += [encoder.encode(samples[i : i + piece]) for i in range(0, len(samples), piece)]
    parts.append(encoder.finish())
    return parts


def test_float_to_int16_clips_and_scales() -> None:
    out = audio.float_to_int16(np.array([2.0, -2.0, 0.5, 0.0, -1.0], dtype=np.float32))
    assert out.dtype == np.dtype("<i2")
    assert out.tolist() == [32767, -32767, 16384, 0, -32767]


def test_whole_wav_parses_with_stdlib_and_libsndfile() -> None:
    data = audio.encode(tone(1.0), RATE, "wav")
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        assert w.getnframes() == RATE
    decoded, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE
    np.testing.assert_allclose(decoded, tone(1.0), atol=1 / 32767)


def test_encode_accepts_chunks() -> None:
    chunks = [tone(0.5), tone(0.25)]
    assert audio.encode(chunks, RATE, "pcm") == audio.encode(np.concatenate(chunks), RATE, "pcm")


def test_pcm_is_raw_little_endian_int16() -> None:
    data = audio.encode(np.array([0.5, -0.5], dtype=np.float32), RATE, "pcm")
    assert struct.unpack("<2h", data) == (16384, -16384)
    assert b"".join(stream("pcm", tone(0.3))) == audio.encode(tone(0.3), RATE, "pcm")


def test_streamed_wav_has_open_ended_sizes_and_decodes() -> None:
    parts = stream("wav", tone(1.0))
    header = parts[0]
    assert header[:4] == b"RIFF"
    assert header[4:8] == b"\xff\xff\xff\xff"
    assert header[40:44] == b"\xff\xff\xff\xff"
    decoded, rate = soundfile.read(io.BytesIO(b"".join(parts)), dtype="float32")
    assert rate == RATE
    np.testing.assert_allclose(decoded, tone(1.0), atol=1 / 32767)


def test_flac_round_trips_losslessly() -> None:
    data = audio.encode(tone(1.0), RATE, "flac")
    assert data[:4] == b"fLaC"
    decoded, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == RATE
    np.testing.assert_array_equal(decoded, audio.float_to_int16(tone(1.0)))


@pytest.mark.parametrize("fmt", ["mp3", "opus"])
def test_compressed_whole_and_streamed_decode_to_the_right_length(fmt: str) -> None:
    samples = tone(2.0)
    out_rate = audio.output_sample_rate(fmt, RATE)
    for data in (audio.encode(samples, RATE, fmt), b"".join(stream(fmt, samples))):
        decoded, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        assert rate == out_rate
        # MP3 streamed without the LAME tag keeps the encoder delay (~50 ms).
        assert decoded.shape[0] / rate == pytest.approx(2.0, abs=0.1)
        assert float(np.sqrt(np.mean(decoded**2))) == pytest.approx(0.5 / np.sqrt(2), rel=0.2)


def test_streamed_compressed_formats_start_before_the_end() -> None:
    """Bytes come out while encoding, not all at finish() (what makes streaming worth it)."""
    for fmt in ("mp3", "opus"):
        parts = stream(fmt, tone(3.0))
        assert sum(len(p) for p in parts[:-1]) > 0.5 * sum(len(p) for p in parts), fmt


def test_opus_is_resampled_to_an_opus_rate() -> None:
    assert audio.output_sample_rate("opus", 22050) == 24000
    assert audio.output_sample_rate("opus", 48000) == 48000
    assert audio.output_sample_rate("wav", 22050) == 22050
    assert audio.encode(tone(0.5), RATE, "opus")[:4] == b"OggS"


def test_unknown_formats_are_unsupported_with_the_list() -> None:
    for fmt in ("ogg", "vorbis"):
        with pytest.raises(audio.UnsupportedFormat, match="wav, pcm, flac, mp3, opus, aac") as info:
            audio.encode(tone(0.1), RATE, fmt)
        assert info.value.format == fmt
        with pytest.raises(audio.UnsupportedFormat):
            audio.stream_encoder(fmt, RATE)
        with pytest.raises(audio.UnsupportedFormat):
            audio.is_streamable(fmt)
    assert issubclass(audio.UnsupportedFormat, ValueError)


def test_content_types_and_streaming_capability() -> None:
    assert audio.content_type("wav") == "audio/wav"
    assert audio.content_type("mp3") == "audio/mpeg"
    assert audio.content_type("opus").startswith("audio/ogg")
    assert [f for f in audio.SUPPORTED_FORMATS if audio.is_streamable(f)] == [
        "wav",
        "pcm",
        "mp3",
        "opus",
        "aac",
    ]
    assert not audio.is_streamable("flac")
    assert audio.stream_encoder("opus", RATE).content_type == audio.content_type("opus")


def test_encoder_misuse_is_an_error() -> None:
    encoder = audio.stream_encoder("wav", RATE)
    with pytest.raises(RuntimeError):
        encoder.encode(tone(0.1))
    encoder.start()
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.finish()


def decode_av(data: bytes) -> tuple[npt.NDArray[np.float32], int]:
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    pcm = np.concatenate(frames)
    if pcm.dtype != np.float32:
        pcm = pcm.astype(np.float32) / 32768.0
    return pcm, rate


@pytest.mark.parametrize("fmt", ["aac", "opus"])
def test_pyav_formats_whole_and_streamed_keep_duration_and_level(fmt: str) -> None:
    """PyAV encodes (and for Opus resamples to 24 kHz); ffmpeg decodes it back."""
    samples = tone(2.0)
    for data in (audio.encode(samples, RATE, fmt), b"".join(stream(fmt, samples, piece=1237))):
        decoded, rate = decode_av(data)
        # AAC adds priming and padding (about 2 frames of 1024 samples); Opus is read at 48k.
        assert decoded.shape[0] / rate == pytest.approx(2.0, abs=0.15), fmt
        level = float(np.sqrt(np.mean(decoded[rate // 4 : -rate // 4] ** 2)))
        assert level == pytest.approx(0.5 / np.sqrt(2), rel=0.15), fmt


def test_aac_is_adts_and_streams_before_the_end() -> None:
    parts = stream("aac", tone(3.0))
    data = b"".join(parts)
    assert data[0] == 0xFF
    assert data[1] & 0xF6 == 0xF0
    assert sum(len(p) for p in parts[:-1]) > 0.5 * len(data)
    assert audio.content_type("aac") == "audio/aac"


def test_resampled_opus_keeps_the_tone_frequency() -> None:
    decoded, rate = decode_av(audio.encode(tone(1.0, 440.0), RATE, "opus"))
    spectrum = np.abs(np.fft.rfft(decoded[rate // 8 : -rate // 8]))
    peak_hz = np.argmax(spectrum) * rate / len(decoded[rate // 8 : -rate // 8])
    assert peak_hz == pytest.approx(440.0, abs=5.0)
