"""Long files: features streamed block by block equal the whole-file ones, and the vectors do not change.

Blocks are made tiny here (audio.block_seconds, recsys.pitch.FRAME_BLOCK, a few timbre
chunks per pass), so short files cross many block edges; bench/bench_long_files.py
measures the memory of a real 2-hour recording.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from recsys import corpus, pitch
from recsys.audio import voiced_audio, voiced_stream
from recsys.audio.framing import CentredFrames
from recsys.config import AudioConfig, FeatureConfig, MelodyConfig, TimbreConfig
from recsys.embedding import Embedder
from recsys.encoders import IntervalLagConfig, IntervalLagMelody, TimbreSongEncoder
from recsys.features import SongFeatures, log_mel, song_features, voiced_wave_features, wave_features
from recsys.ingest import FileFailure, prepare_file
from recsys.manifest import ManifestEntry
from recsys.models.timbre import TimbreEncoder
from recsys.registry import Models
from recsys.training.contrastive import model_config_for

SR = 16000
FEAT = FeatureConfig()
BOTH = frozenset({"mel", "pitch"})
SMALL = AudioConfig(block_seconds=0.7)  # a 0.7 s block: a 20 s file crosses about 25 block edges


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sung phrases with silent gaps between them (so silence removal cuts), 16-bit WAV, ~20 s."""
    singers, tunes = corpus.make_singers(3, seed=5), corpus.make_melodies(3, seed=5)
    gap = np.zeros(int(0.8 * SR), np.float32)
    parts = [np.concatenate([corpus.sing(singers[i], tunes[i], 6.0, SR, seed=i).astype(np.float32), gap])
             for i in range(3)]
    path = tmp_path_factory.mktemp("long") / "recording.wav"
    sf.write(str(path), np.concatenate(parts), SR, subtype="PCM_16")
    return path


@pytest.fixture
def small_frame_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The melody descriptor's per-frame steps and lag sums in blocks of 97 frames (lags reach ~500)."""
    monkeypatch.setattr(pitch, "FRAME_BLOCK", 97)


# --- framing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "n_fft", "hop", "block_frames", "push"), [
    (5000, 512, 256, 7, 333),      # pushes smaller than a window
    (5120, 512, 256, 4, 5120),     # N a multiple of the hop, one push
    (4097, 1024, 512, 1, 100),     # one frame per segment; the first pushes are shorter than the pad
    (3001, 400, 160, 50, 1),       # sample by sample
])
def test_centred_frames_equal_the_whole_signal_stft(n, n_fft, hop, block_frames, push):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    window = torch.hann_window(n_fft)
    whole = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True)
    framer = CentredFrames(n, n_fft, hop, block_frames)
    got = torch.zeros_like(whole)
    segments = [s for block in x.split(push) for s in framer.push(block)] + framer.finish()
    for seg in segments:
        assert seg.n_frames <= block_frames
        got[:, seg.first : seg.first + seg.n_frames] = torch.stft(
            seg.samples, n_fft, hop, window=window, center=False, return_complex=True)
    assert [s.first for s in segments] == list(np.cumsum([0] + [s.n_frames for s in segments[:-1]]))
    assert sum(s.n_frames for s in segments) == framer.n_frames == whole.shape[-1]
    torch.testing.assert_close(got, whole, atol=1e-5, rtol=1e-5)


def test_centred_frames_check_the_announced_length():
    framer = CentredFrames(1000, 512, 256, 4)
    with pytest.raises(ValueError, match="more than the 1000 samples"):
        framer.push(torch.zeros(1001))
    framer = CentredFrames(1000, 512, 256, 4)
    framer.push(torch.zeros(999))
    with pytest.raises(ValueError, match="999 samples, 1000 were announced"):
        framer.finish()
    with pytest.raises(ValueError, match="too few"):
        CentredFrames(256, 512, 256, 4)


# --- streamed features == whole-file features ------------------------------------------------------


def test_the_voiced_stream_announces_its_length(recording):
    stream = voiced_stream(recording, SMALL)
    blocks = list(stream.blocks)
    assert len(blocks) > 10
    assert sum(b.numel() for b in blocks) == stream.n_samples == voiced_audio(recording, SMALL).numel()
    assert stream.n_samples < sf.info(str(recording)).frames  # the gaps were cut


def test_streamed_features_equal_the_whole_file_features(recording):
    streamed = song_features(recording, SMALL, FEAT, needs=BOTH)
    whole = wave_features(voiced_audio(recording, SMALL), BOTH, SMALL, FEAT)
    assert streamed.mel.shape == whole.mel.shape and streamed.mel.shape[-1] > 20 * (SR * 0.7 // FEAT.hop_length)
    torch.testing.assert_close(streamed.mel, whole.mel, atol=1e-5, rtol=0)
    torch.testing.assert_close(streamed.pitch, whole.pitch, atol=1e-5, rtol=0)
    assert streamed.mel.is_contiguous() and streamed.pitch.is_contiguous()


@pytest.mark.parametrize("n_samples", [SR * 3 + 17, SR * 3 + 256, SR * 3 + 512])
def test_streamed_features_of_a_tensor_match_at_every_edge(n_samples):
    """A tensor source, lengths that end mid-hop and on a hop / pitch-hop boundary."""
    wave = 0.3 * torch.randn(n_samples, generator=torch.Generator().manual_seed(n_samples))
    cfg = AudioConfig(block_seconds=0.25, normalization="none")
    streamed = song_features(wave, cfg, FEAT, needs=BOTH)
    whole = wave_features(voiced_audio(wave, cfg), BOTH, cfg, FEAT)
    torch.testing.assert_close(streamed.mel, whole.mel, atol=1e-5, rtol=0)
    torch.testing.assert_close(streamed.pitch, whole.pitch, atol=1e-5, rtol=0)


def test_a_stream_within_one_block_is_the_whole_file_path(recording):
    cfg = AudioConfig()  # 30 s blocks: the 20 s recording is one
    streamed = song_features(recording, cfg, FEAT, needs=BOTH)
    whole = wave_features(voiced_audio(recording, cfg), BOTH, cfg, FEAT)
    assert torch.equal(streamed.mel, whole.mel) and torch.equal(streamed.pitch, whole.pitch)


# --- the vectors do not change ---------------------------------------------------------------------


def _timbre_model() -> TimbreEncoder:
    torch.manual_seed(0)
    model = TimbreEncoder(model_config_for(TimbreConfig(), FEAT))
    with torch.no_grad():  # a few training-mode passes so BatchNorm statistics are not the identity
        for _ in range(3):
            model(torch.randn(8, FEAT.n_mels, 188) * 2 - 5)
    return model.eval()


def _melody(**kw) -> IntervalLagMelody:
    return IntervalLagMelody(IntervalLagConfig.from_settings(MelodyConfig(**kw), FEAT, SR))


def _reference_vectors(path: Path, model: TimbreEncoder, melody: IntervalLagMelody) -> tuple[torch.Tensor, ...]:
    """The whole-file computation: the voiced waveform in memory, all chunks at once, unblocked profile."""
    _, feats = voiced_wave_features(path, BOTH, SMALL, FEAT)  # with the timeline the melody vector reads
    timbre = F.normalize(model.embed(model.chunk_song(feats.mel)).mean(0), dim=-1)
    return timbre, melody.embed_songs([feats])[0]


@pytest.mark.parametrize("melody_kw", [
    {},  # the default: voiced interval lags of the waveform pitch
    {"pitch_source": "mel"},
    {"pool": "interval-lag"},
])
def test_the_vector_of_a_file_is_unchanged(recording, monkeypatch, melody_kw):
    model, melody = _timbre_model(), _melody(**melody_kw)
    ref_timbre, ref_melody = _reference_vectors(recording, model, melody)
    monkeypatch.setattr(pitch, "FRAME_BLOCK", 97)  # blocked per-frame steps and lag sums from here on
    models = Models(TimbreSongEncoder(model, max_chunks_per_pass=3), melody, None, None)
    v = Embedder(models, SMALL, FEAT).embed(recording)
    assert np.abs(v.timbre[0] - ref_timbre.numpy()).max() < 1e-5
    assert np.abs(v.melody[0] - ref_melody.numpy()).max() < 1e-5


def test_timbre_chunks_in_passes_equal_one_pass_with_songs_of_every_length(small_frame_blocks):
    """Songs shorter than a chunk, with a wrapped tail and without, split across passes alike."""
    model = _timbre_model()
    gen = torch.Generator().manual_seed(3)
    songs = [SongFeatures(torch.randn(FEAT.n_mels, t, generator=gen) - 4) for t in (90, 188, 988, 1466, 60)]
    ref = torch.stack([F.normalize(model.embed(model.chunk_song(s.mel)).mean(0), dim=-1) for s in songs])
    for per_pass in (1, 4, 1000):
        got = TimbreSongEncoder(model, max_chunks_per_pass=per_pass).embed_songs(songs)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_blocked_lag_sums_equal_the_whole_song(small_frame_blocks):
    x = torch.rand(12, 2000, generator=torch.Generator().manual_seed(0))
    lags = [1, 3, 40, 96, 97, 98, 500]
    torch.testing.assert_close(pitch._lag_correlation(x, lags), pitch._lag_correlation(x, lags, block=10**9))
    mel = log_mel(0.1 * torch.randn(SR * 3, generator=torch.Generator().manual_seed(1)), FEAT, SR)
    torch.testing.assert_close(pitch.voicing_weight(mel), torch.sigmoid(
        (10 / np.log(10) * torch.logsumexp(mel, 0) - torch.quantile(10 / np.log(10) * torch.logsumexp(mel, 0), 0.95)
         + pitch.VOICING_DB) / pitch.VOICING_SLOPE_DB), atol=1e-5, rtol=0)


# --- duration limits -------------------------------------------------------------------------------


def test_ingest_records_a_file_over_the_maximum_duration(recording):
    failure = prepare_file(ManifestEntry(recording), AudioConfig(max_file_seconds=10.0), FEAT, None, BOTH)
    assert isinstance(failure, FileFailure) and failure.cause == "too_long"
    assert "audio.max_file_seconds=10" in failure.message and str(recording) in failure.message
    assert not isinstance(prepare_file(ManifestEntry(recording), AudioConfig(max_file_seconds=60.0)), FileFailure)


def test_the_app_refuses_an_upload_over_the_query_limit(recording):
    from app import views

    def no_embedding(path):
        raise AssertionError("an over-long upload must be refused before it is decoded")

    rec = SimpleNamespace(embedder=SimpleNamespace(audio_cfg=AudioConfig(max_query_seconds=12.0), embed=no_embedding))
    with pytest.raises(views.UploadError, match=r"recording\.wav: the recording lasts 0\.3 min, longer than the "
                                                r"0\.2 min a query may last \(audio\.max_query_seconds=12\)"):
        views.handle_upload("recording.wav", recording.read_bytes(), rec)


def test_the_query_limit_is_two_hours_by_default_and_can_be_lifted():
    assert AudioConfig().max_query_seconds == 2 * 3600
    assert AudioConfig(max_query_seconds=None).max_query_seconds is None
    with pytest.raises(ValueError):
        AudioConfig(max_query_seconds=0)
