"""The audio front-end on generated audio: decoding, resampling, errors, silence, level, chunks, streaming."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from recsys.audio import (
    MAX_GAIN_DB,
    AudioError,
    StreamResampler,
    chunk_samples,
    content_hash,
    frame_harmonicity,
    frame_rms_db,
    iter_mono_blocks,
    iter_voiced_blocks,
    iter_voiced_chunks,
    load_audio,
    n_chunks,
    normalize,
    probe,
    remove_silence,
    to_mono_resampled,
    voiced_audio,
    voiced_chunks,
    voiced_mask,
)
from recsys.audio.frames import keep_frames
from recsys.config import AUDIO_EXTENSIONS, AudioConfig

SR = 16000
CFG = AudioConfig()


def tone(freq: float, seconds: float, sr: int = SR, amp: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def sung(seconds: float, sr: int = SR, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """A voice-like signal: a vibrato fundamental with decaying harmonics and a slow loudness swell."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    f0 = rng.uniform(180, 320) * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t) ** 2
    x = x * env
    return (amp * x / np.abs(x).max()).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int = SR, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, **kwargs)
    return path


def peak_hz(x: torch.Tensor | np.ndarray, sr: int = SR) -> float:
    x = np.asarray(x, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


def rms_db(x: torch.Tensor) -> float:
    return 10 * math.log10(float(x.double().square().mean()))


# ---------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "ext, kwargs, lossless",
    [
        (".wav", {"subtype": "PCM_16"}, True),
        (".flac", {}, True),
        (".ogg", {"format": "OGG", "subtype": "VORBIS"}, False),
        (".mp3", {"format": "MP3"}, False),
    ],
)
def test_every_format_round_trips(tmp_path, ext, kwargs, lossless):
    x = tone(440, 2.0, amp=0.5)
    path = write(tmp_path / f"song{ext}", x, **kwargs)
    info = probe(path)
    assert (info.sample_rate, info.channels, info.frames) == (SR, 1, len(x))
    assert info.duration == pytest.approx(2.0)
    y = load_audio(path, CFG)
    assert y.dtype == torch.float32 and y.shape == (len(x),)
    assert peak_hz(y) == pytest.approx(440, abs=1)
    if lossless:
        assert torch.allclose(y, torch.from_numpy(x), atol=1e-4)
    else:
        assert rms_db(y[SR // 2 : -SR // 2]) == pytest.approx(rms_db(torch.from_numpy(x)), abs=1.0)


@pytest.mark.parametrize("sr", [8000, 44100, 48000])
def test_inputs_come_out_at_16k_with_duration_and_pitch_kept(tmp_path, sr):
    x = tone(1000, 1.5, sr=sr)
    path = write(tmp_path / f"at{sr}.wav", x, sr, subtype="FLOAT")
    y = load_audio(path, CFG)
    assert y.shape == (math.ceil(len(x) * SR / sr),)
    assert y.numel() / SR == pytest.approx(1.5, abs=1e-3)
    assert peak_hz(y) == pytest.approx(1000, abs=2)
    # the level of the tone survives resampling (away from the filter's edge effects)
    assert rms_db(y[800:-800]) == pytest.approx(rms_db(torch.from_numpy(x)), abs=0.1)


def test_stereo_and_six_channels_down_mix_to_the_channel_mean(tmp_path):
    stereo = np.stack([tone(300, 1.0, amp=0.4), tone(700, 1.0, amp=0.2)], axis=1)
    y = load_audio(write(tmp_path / "stereo.wav", stereo, subtype="FLOAT"), CFG)
    assert torch.allclose(y, torch.from_numpy(stereo.mean(axis=1)), atol=1e-6)

    six = np.stack([tone(200 + 100 * k, 1.0, amp=0.1, phase=k) for k in range(6)], axis=1)
    path = write(tmp_path / "surround.wav", six, subtype="FLOAT")
    assert probe(path).channels == 6
    assert torch.allclose(load_audio(path, CFG), torch.from_numpy(six.mean(axis=1)), atol=1e-6)


def test_non_ascii_path(tmp_path):
    x = sung(2.0)
    path = write(tmp_path / "가수 ü" / "노래.wav", x, subtype="FLOAT")
    assert probe(path).path == path
    assert torch.allclose(load_audio(path, CFG), torch.from_numpy(x))
    assert voiced_chunks(path, CFG).shape == (1, chunk_samples(CFG))


def test_content_hash_is_sha256_of_the_bytes(tmp_path):
    path = write(tmp_path / "a.wav", sung(1.0))
    data = path.read_bytes()
    assert content_hash(path, block_size=1000) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-2] + b"\x00\x01")
    assert content_hash(path) != hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- bad files


def _raises(cause: str, fn, *args) -> AudioError:
    with pytest.raises(AudioError) as info:
        fn(*args)
    assert info.value.cause == cause, str(info.value)
    return info.value


def test_empty_file(tmp_path):
    path = tmp_path / "song.wav"
    path.write_bytes(b"")
    err = _raises("empty", probe, path)
    assert str(err) == f"{path}: file is empty (0 bytes)"
    _raises("empty", voiced_chunks, path, CFG)


def test_truncated_wav(tmp_path):
    path = write(tmp_path / "t.wav", sung(3.0), subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: 44 + 2 * 12000])  # 44-byte header, then 12000 16-bit frames
    err = _raises("truncated", probe, path)
    assert "t.wav" in str(err) and "header declares 48000 frames but only 12000" in str(err)
    _raises("truncated", voiced_chunks, path, CFG)


@pytest.mark.parametrize("ext, kwargs", [(".flac", {}), (".mp3", {"format": "MP3"})])
def test_truncated_compressed_file(tmp_path, ext, kwargs):
    path = write(tmp_path / f"t{ext}", sung(3.0), **kwargs)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    err = _raises("truncated", voiced_chunks, path, CFG)
    assert f"t{ext}" in str(err) and "48000 frames" in str(err)


def test_random_bytes_named_mp3(tmp_path):
    path = tmp_path / "x.mp3"
    path.write_bytes(np.random.default_rng(0).bytes(50_000))
    err = _raises("unreadable", probe, path)
    assert str(err).startswith(f"{path}: not a readable audio file (libsndfile:")
    assert isinstance(err.__cause__, RuntimeError)


def test_missing_file_and_unsupported_extension(tmp_path):
    err = _raises("not_found", probe, tmp_path / "nope.wav")
    assert "nope.wav" in str(err)
    _raises("not_found", content_hash, tmp_path / "nope.wav")
    path = write(tmp_path / "song.wav", sung(1.0))
    text = path.with_suffix(".txt")
    path.rename(text)
    err = _raises("unsupported", probe, text)
    assert "song.txt" in str(err) and all(ext in str(err) for ext in AUDIO_EXTENSIONS)


def test_silent_file(tmp_path):
    path = write(tmp_path / "s.wav", np.zeros(SR * 2, dtype=np.float32))
    err = _raises("silent", voiced_chunks, path, CFG)
    assert "s.wav" in str(err) and "no voiced audio" in str(err) and "-60 dBFS" in str(err)
    _raises("silent", voiced_audio, path, CFG)
    # quiet hiss under the absolute floor is silence too, however loud it is relative to itself
    hiss = (np.random.default_rng(1).standard_normal(SR * 2) * 10 ** (-70 / 20)).astype(np.float32)
    _raises("silent", voiced_chunks, write(tmp_path / "hiss.wav", hiss, subtype="FLOAT"), CFG)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = sung(2.0)
    x[SR] = bad
    path = write(tmp_path / "n.wav", x, subtype="FLOAT")
    err = _raises("non_finite", voiced_chunks, path, CFG)
    assert str(err).startswith(f"{path}: contains NaN or infinite samples")
    _raises("non_finite", to_mono_resampled, x, SR, CFG)


def test_too_long(tmp_path):
    path = write(tmp_path / "long.wav", sung(3.0))
    _raises("too_long", load_audio, path, AudioConfig(max_file_seconds=2.0))
    assert load_audio(path, AudioConfig(max_file_seconds=3.0)).numel() == 3 * SR


def test_audio_error_pickles_with_its_cause(tmp_path):
    err = AudioError(tmp_path / "a.wav", "silent", "no voiced audio")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.cause, str(back)) == (err.path, err.cause, str(err))
    with pytest.raises(ValueError, match="valid: empty"):
        AudioError("a.wav", "bogus", "x")


# ---------------------------------------------------------------------------- in-memory audio


def test_to_mono_resampled_matches_the_file_path(tmp_path):
    stereo = np.stack([sung(2.0, sr=44100, seed=1), sung(2.0, sr=44100, seed=2)], axis=1)
    path = write(tmp_path / "up.wav", stereo, 44100, subtype="FLOAT")
    from_array = to_mono_resampled(stereo, 44100, CFG)
    assert torch.allclose(load_audio(path, CFG), from_array, atol=1e-5)
    # int16 arrays are scaled to [-1, 1)
    ints = (stereo * 32767).astype(np.int16)
    assert torch.allclose(to_mono_resampled(ints, 44100, CFG), from_array, atol=1e-3)
    # a (C, N) array is not silently averaged over time
    _raises("unsupported", to_mono_resampled, stereo.T, 44100, CFG)


@pytest.mark.parametrize("orig", [8000, 22050, 44100, 48000, 11025])
def test_stream_resampler_equals_whole_signal_resampling(orig):
    x = torch.from_numpy(sung(3.0, sr=orig)) + 0.01 * torch.randn(
        3 * orig, generator=torch.Generator().manual_seed(0)
    )
    whole = to_mono_resampled(x, orig, CFG)
    resampler = StreamResampler(orig, SR)
    sizes = torch.randint(1, 9000, (1000,), generator=torch.Generator().manual_seed(orig)).tolist()
    pieces, i = [], 0
    for size in sizes:
        if i >= len(x):
            break
        pieces.append(resampler.push(x[i : i + size]))
        i += size
    pieces.append(resampler.flush())
    streamed = torch.cat(pieces)
    assert streamed.shape == whole.shape
    assert torch.allclose(streamed, whole, atol=1e-5)


# ---------------------------------------------------------------------------- silence and level


def test_silence_removal_drops_inserted_gaps():
    frame = round(CFG.frame_seconds * SR)  # 512
    voice = sung(3.0, seed=3)
    gap = np.zeros(frame * 20, dtype=np.float32)  # 0.64 s, frame-aligned
    hiss = (np.random.default_rng(4).standard_normal(frame * 10) * 1e-4).astype(np.float32)  # -80 dBFS
    quiet = sung(frame * 10 / SR, seed=5, amp=0.3 * 10 ** (-45 / 20))  # 45 dB under the voice
    parts = [
        voice[: frame * 40],
        gap,
        voice[frame * 40 : frame * 80],
        hiss,
        quiet,
        voice[frame * 80 : frame * 90],
    ]
    wave = torch.from_numpy(np.concatenate(parts))
    mask = voiced_mask(wave, CFG)
    expected = [True] * 40 + [False] * 20 + [True] * 40 + [False] * 20 + [True] * 10
    assert mask.tolist() == expected
    kept = remove_silence(wave, CFG)
    assert torch.equal(kept, torch.from_numpy(voice[: frame * 90]))
    assert frame_rms_db(wave, CFG)[40:60].max() < -100  # digital silence reads -120 dBFS


def test_frame_rms_db_of_a_tone():
    db = frame_rms_db(torch.from_numpy(tone(1000, 1.0, amp=0.5)), CFG)
    assert db.shape == (math.ceil(SR / 512),)
    assert torch.allclose(db[:-1], torch.tensor(20 * math.log10(0.5 / math.sqrt(2))), atol=0.05)


def test_loudness_normalisation_is_gain_invariant(tmp_path):
    x = sung(9.0, seed=6)
    x[3 * SR : 4 * SR] = 0  # a pause: must not lower the measured level
    x = x / np.abs(x).max()
    chunks = {}
    for gain_db in (-30, -6):
        path = write(tmp_path / f"g{gain_db}.wav", x * 10 ** (gain_db / 20), subtype="PCM_16")
        chunks[gain_db] = voiced_chunks(path, CFG)
    assert chunks[-30].shape == chunks[-6].shape == (3, chunk_samples(CFG))  # 8 s voiced: 0-4, 2-6, 4-8
    assert torch.allclose(chunks[-30], chunks[-6], atol=2e-3)
    audio = voiced_audio(tmp_path / "g-30.wav", CFG)
    assert rms_db(audio) == pytest.approx(CFG.target_rms_db, abs=0.05)


def test_peak_normalisation_and_limits():
    wave = torch.from_numpy(sung(2.0, amp=0.01))
    peak_cfg = AudioConfig(normalization="peak", peak_level=0.8)
    assert float(normalize(wave, peak_cfg).abs().max()) == pytest.approx(0.8, rel=1e-5)
    assert torch.equal(normalize(wave, AudioConfig(normalization="none")), wave)
    # loudness mode never pushes the peak above peak_level (a spiky signal)
    spiky = torch.zeros(SR)
    spiky[::1000] = 0.1
    assert float(normalize(spiky, CFG).abs().max()) == pytest.approx(CFG.peak_level, rel=1e-5)
    # and never amplifies by more than MAX_GAIN_DB (quiet material stays quiet)
    faint = torch.from_numpy(sung(2.0, amp=10 ** (-80 / 20)))
    assert float(normalize(faint, CFG).abs().max() / faint.abs().max()) == pytest.approx(
        10 ** (MAX_GAIN_DB / 20)
    )


# ---------------------------------------------------------------------------- chunks


@pytest.mark.parametrize(
    "seconds, expected",
    [
        (10.0, 4),  # starts 0, 2, 4, 6: the last ends exactly at 10 s
        (10.5, 4),  # 0.5 s tail < min_chunk_seconds: dropped
        (11.0, 5),  # 1 s tail: one more chunk aligned to the end
        (4.0, 1),
        (3.0, 1),  # shorter than a chunk but >= min_chunk: zero-padded
    ],
)
def test_chunk_count_and_content(seconds, expected):
    wave = torch.from_numpy(sung(seconds, seed=7))
    chunks = voiced_chunks(wave, CFG)
    size, hop = chunk_samples(CFG), round(CFG.chunk_hop_seconds * SR)
    assert chunks.shape == (expected, size) and chunks.dtype == torch.float32
    audio = voiced_audio(wave, CFG)
    assert audio.numel() == wave.numel()  # no silence in this signal
    assert n_chunks(audio.numel(), CFG) == expected
    if audio.numel() < size:
        assert torch.equal(chunks[0, : audio.numel()], audio)
        assert not chunks[0, audio.numel() :].any()
        return
    n_grid = (audio.numel() - size) // hop + 1
    for i in range(n_grid):
        assert torch.equal(chunks[i], audio[i * hop : i * hop + size])
    if expected > n_grid:
        assert torch.equal(chunks[-1], audio[-size:])


def test_too_little_voiced_audio_for_a_chunk():
    err = _raises("silent", voiced_chunks, torch.from_numpy(sung(0.5)), CFG)
    assert "0.50 s of voiced audio" in str(err)


def test_chunks_skip_silent_gaps():
    voice = sung(6.0, seed=8)
    cut = 512 * 94  # on a frame boundary (3.008 s), so no frame mixes voice and gap
    wave = torch.from_numpy(np.concatenate([voice[:cut], np.zeros(512 * 160, np.float32), voice[cut:]]))
    assert torch.allclose(voiced_audio(wave, CFG), voiced_audio(torch.from_numpy(voice), CFG))
    assert voiced_chunks(wave, CFG).shape[0] == 2  # 6 s voiced: 0-4, 2-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tensor_paths_run_on_the_tensors_device():
    wave = torch.from_numpy(np.concatenate([sung(5.0, sr=44100), np.zeros(44100, np.float32)]))
    on_cpu = to_mono_resampled(wave, 44100, CFG)
    on_gpu = to_mono_resampled(wave.cuda(), 44100, CFG)
    assert on_gpu.is_cuda and torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-5)
    chunks = voiced_chunks(on_gpu, CFG)
    assert chunks.is_cuda and torch.allclose(chunks.cpu(), voiced_chunks(on_cpu, CFG), atol=1e-5)


# ---------------------------------------------------------------------------- streaming


def test_blockwise_streaming_equals_whole_file_processing(tmp_path):
    x = np.stack([sung(12.0, sr=44100, seed=9), sung(12.0, sr=44100, seed=10)], axis=1)
    x[5 * 44100 : 7 * 44100] = 0
    path = write(tmp_path / "long.flac", x, 44100, subtype="PCM_24")
    small = AudioConfig(block_seconds=0.77)  # many blocks, none aligned with frames or chunks
    blocks = list(iter_mono_blocks(path, small))
    assert len(blocks) > 12
    whole = to_mono_resampled(sf.read(str(path), dtype="float32")[0], 44100, CFG)
    assert torch.allclose(torch.cat(blocks), whole, atol=1e-5)

    reference = voiced_audio(whole, CFG)
    assert reference.numel() < whole.numel() - SR  # the 2 s gap is gone
    assert torch.allclose(torch.cat(list(iter_voiced_blocks(path, small))), reference, atol=1e-5)
    assert torch.allclose(voiced_audio(path, small), reference, atol=1e-5)
    streamed = torch.cat(list(iter_voiced_chunks(path, small, batch_size=2)))
    assert torch.allclose(streamed, voiced_chunks(whole, CFG), atol=1e-5)
    assert torch.allclose(voiced_chunks(path, CFG), streamed, atol=1e-5)


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from recsys.audio import iter_voiced_blocks, iter_voiced_chunks, StreamResampler
    from recsys.config import AudioConfig
    import torch
    cfg = AudioConfig()
    StreamResampler(44100, 16000).push(torch.zeros(1000))  # load lazily imported kernels
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    voiced = sum(block.numel() for block in iter_voiced_blocks(sys.argv[1], cfg))
    chunks = sum(batch.shape[0] for batch in iter_voiced_chunks(sys.argv[1], cfg))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"base_kb": base, "peak_kb": peak, "voiced": voiced, "chunks": chunks}))
    """
)


def test_short_files_are_decoded_once_long_ones_twice(tmp_path, monkeypatch):
    """The clean-up reads a file twice (level and silence plan, then the voiced audio); a file up to
    decode_once_seconds is decoded and resampled once and replayed, a longer one decoded again."""
    import recsys.audio.voiced as voiced_module
    from recsys.audio import voiced_stream

    path = tmp_path / "song.wav"
    x = sung(12.0, sr=44100)
    x[5 * 44100 : 7 * 44100] = 0  # a rest the clean-up cuts
    sf.write(path, np.stack([x, 0.5 * x], axis=1), 44100)
    decodes = []
    real = voiced_module.iter_mono_blocks

    def counting(*args, **kwargs):
        decodes.append(1)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(voiced_module, "iter_mono_blocks", counting)
    streams = {}
    for once in (CFG.decode_once_seconds, 0.0):
        decodes.clear()
        stream = voiced_stream(path, CFG.model_copy(update={"decode_once_seconds": once}))
        streams[once] = torch.cat(list(stream.blocks))
        assert len(decodes) == (1 if once else 2), once
        assert streams[once].numel() == stream.n_samples
    assert 12.0 < CFG.decode_once_seconds
    torch.testing.assert_close(streams[CFG.decode_once_seconds], streams[0.0], rtol=0, atol=0)


def _write_long(path: Path, seconds: int) -> None:
    """Mono 16 kHz PCM_16, written 10 s at a time: 7 s of voice then 3 s of silence, repeated."""
    period = sung(10.0, seed=11)
    period[7 * SR :] = 0
    with sf.SoundFile(str(path), "w", SR, 1, "PCM_16") as f:
        for _ in range(seconds // 10):
            f.write(period)


def _stream_in_subprocess(path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_one_hour_file_streams_in_flat_memory(tmp_path):
    hour, minute = tmp_path / "hour.wav", tmp_path / "minute.wav"
    _write_long(hour, 3600)
    _write_long(minute, 60)
    assert probe(hour).duration == 3600
    decoded_kb = 3600 * SR * 4 // 1024  # the whole signal as float32: 225,000 KB
    short, long = _stream_in_subprocess(minute), _stream_in_subprocess(hour)
    voiced = 0.7 * 3600 * SR
    assert long["voiced"] == pytest.approx(voiced, rel=0.01)
    assert long["chunks"] == n_chunks(long["voiced"], CFG)
    growth_long = long["peak_kb"] - long["base_kb"]
    growth_short = short["peak_kb"] - short["base_kb"]
    # a few blocks of block_seconds and two batches of chunks: a fraction of the decoded signal
    assert growth_long < decoded_kb / 4, (growth_long, decoded_kb)
    assert growth_long < growth_short + decoded_kb / 8, (growth_long, growth_short)


def test_a_brief_loud_transient_does_not_silence_the_singing():
    """A 0.1 s click 40 dB above a 10 s voice must not push the voice under the silence threshold."""
    sr = CFG.sample_rate
    t = torch.arange(10 * sr) / sr
    wave = 0.01 * torch.sin(2 * math.pi * 220 * t)
    wave[sr : sr + sr // 10] = 0.99 * torch.sign(torch.sin(2 * math.pi * 50 * t[: sr // 10]))
    kept = remove_silence(wave, CFG).numel()
    assert kept > 0.95 * wave.numel()
    loudest_only = remove_silence(wave, CFG.model_copy(update={"silence_reference_percentile": 100.0})).numel()
    assert loudest_only < 0.05 * wave.numel()  # measured against the loudest frame, the voice is lost


# --- vocal activity ----------------------------------------------------------------------------


def test_vocal_activity_drops_loud_unpitched_frames_from_files_and_tensors(tmp_path):
    """A synthetic singer, then a loud noise burst (drums, applause): RMS silence removal keeps
    the burst, vocal activity drops it; streamed in several blocks, a file gives the same."""
    from recsys.corpus import make_melodies, make_singers, sing

    voice = sing(make_singers(1, 0)[0], make_melodies(1, 0)[0], 3.0, SR, seed=0)
    burst = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32) * voice.std()
    wave = torch.from_numpy(np.concatenate([voice, burst]))
    sung = voiced_audio(torch.from_numpy(voice), CFG).numel()
    plain = voiced_audio(wave, CFG)
    active_cfg = AudioConfig(vocal_activity=True)
    active = voiced_audio(wave, active_cfg)
    assert plain.numel() > sung + 1.9 * SR  # as loud as the singing: kept as "voiced"
    assert 0.5 * sung < active.numel() < sung + 0.1 * SR  # the sung part only, less breaths and consonants
    path = tmp_path / "song.wav"
    sf.write(path, wave.numpy(), SR, subtype="FLOAT")
    small_blocks = AudioConfig(vocal_activity=True, block_seconds=0.7)
    assert torch.allclose(voiced_audio(path, small_blocks), active, atol=1e-6)


def test_vocal_activity_on_noise_only_says_no_singing(tmp_path):
    path = tmp_path / "noise.wav"
    sf.write(path, 0.3 * np.random.default_rng(1).standard_normal(2 * SR), SR)
    voiced_audio(path, CFG)  # loud enough: plain silence removal keeps it
    with pytest.raises(AudioError, match="noise.wav: no singing") as err:
        voiced_audio(path, AudioConfig(vocal_activity=True))
    assert err.value.cause == "silent"


def _harmonic_tone(seconds: float, f0: float = 220.0) -> torch.Tensor:
    """A sung-like tone: 12 harmonics, 5.5 Hz vibrato of +-0.5 semitone."""
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    f = f0 * 2 ** (0.5 / 12 * torch.sin(2 * math.pi * 5.5 * t))
    phase = 2 * math.pi * torch.cumsum(f, 0) / SR
    wave = sum(torch.sin(k * phase) / k for k in range(1, 13))
    return (0.3 * wave / wave.abs().max()).float()


def test_frame_harmonicity_matches_a_plain_loop():
    frame, lag_min, lag_max = 512, 16, 200
    x = torch.cat([_harmonic_tone(0.1), torch.randn(1600) * 0.1])
    h = frame_harmonicity(x, frame, SR)
    d = torch.diff(x.double(), prepend=x[:1].double())
    d = torch.nn.functional.pad(d, (0, (-len(d)) % frame)).view(-1, frame)
    for t in range(len(h)):
        r = []
        for lag in range(lag_max + 2):
            a, b = d[t, : frame - lag], d[t, lag:]
            r.append(float((a * b).sum() / max(math.sqrt(float((a * a).sum() * (b * b).sum())), 1e-12)))
        peaks = [
            r[lag]
            for lag in range(max(lag_min, 1), lag_max + 1)
            if r[lag] > r[lag - 1] and r[lag] >= r[lag + 1]
        ]
        assert float(h[t]) == pytest.approx(max(peaks + [0.0]), abs=1e-4)


def test_frame_harmonicity_tells_sung_tones_from_noise_and_silence():
    """At the vocal-activity threshold: tones from 110 to 700 Hz periodic; silence, white noise and
    low-passed noise (correlated at short lags, which the first difference whitens) not."""
    torch.manual_seed(0)
    second = SR
    white = 0.3 * torch.randn(second)
    kernel = torch.ones(16) / 16
    low = 4.0 * torch.nn.functional.conv1d(torch.randn(1, 1, second + 15), kernel[None, None])[0, 0]
    segments = [
        _harmonic_tone(1.0), torch.zeros(second), white, _harmonic_tone(1.0, f0=110.0), low,
        _harmonic_tone(1.0, f0=700.0),
    ]
    wave = torch.cat(segments)
    frame = round(CFG.frame_seconds * SR)
    periodic = frame_harmonicity(wave, frame, SR) >= CFG.min_harmonicity
    assert periodic.shape == (-(-wave.numel() // frame),)
    per_segment = [
        periodic[i * second // frame + 1 : (i + 1) * second // frame - 1].float().mean() for i in range(6)
    ]
    tone, silence, noise, low_tone, low_noise, high_tone = (float(p) for p in per_segment)
    assert tone > 0.95 and low_tone > 0.95 and high_tone > 0.95
    assert silence == 0.0 and noise < 0.05 and low_noise < 0.05


def test_audio_imports_nothing_from_separation():
    """Imports point down the flow: separation uses audio, never the other way round (not even
    inside a function or for type checking)."""
    import ast

    import recsys.audio

    for path in Path(recsys.audio.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.startswith("recsys.separation") for n in names), (path.name, names)


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 1600, 16037])
def test_keep_frames_keeps_exactly_the_samples_of_the_kept_frames(n):
    """Frames are picked as rows; the result is the per-sample selection, the partial last frame included."""
    g = torch.Generator().manual_seed(n)
    wave = torch.randn(n, generator=g)
    for frame in (160, 320):
        for mask in (torch.rand(-(-n // frame), generator=g) > 0.4, torch.ones(-(-n // frame), dtype=torch.bool)):
            want = wave[mask.repeat_interleave(frame)[:n]]
            assert torch.equal(keep_frames(wave, mask, frame), want)
    last = torch.zeros(-(-16037 // 160), dtype=torch.bool)
    last[-1] = True
    assert torch.equal(keep_frames(torch.arange(16037.0), last, 160), torch.arange(16000.0, 16037.0))
