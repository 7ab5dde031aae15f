"""Accompaniment suppression (recsys.separation) on generated mixes with known stems."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recsys import corpus
from recsys.separation import (
    ARCHITECTURES,
    MaskNet,
    NeuralSeparator,
    OverlapBlocks,
    PassThrough,
    RepetSimSeparator,
    SeparationConfig,
    crossfade,
    make_separator,
    repet_sim,
    separator_from_config,
)

SR = 16000


def song_stems(index: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(vocal, accompaniment) of one generated song, at equal energy (0 dB voice-to-accompaniment)."""
    voice = corpus.make_singers(4, seed=1)[index]
    melody = corpus.make_melodies(4, seed=2)[index]
    vocal = corpus.sing(voice, melody, seconds, SR, seed=index)
    backing = corpus.accompany(melody, corpus.key_for(voice, melody), seconds, SR, seed=index)
    backing = backing * np.sqrt(np.mean(vocal**2) / np.mean(backing**2))
    return vocal.astype(np.float64), backing.astype(np.float64)


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019)."""
    target = np.dot(estimate, reference) / np.dot(reference, reference) * reference
    return 10.0 * math.log10(np.sum(target**2) / max(np.sum((estimate - target) ** 2), 1e-20))


def run_stream(separator, wave: torch.Tensor, piece: int) -> torch.Tensor:
    pieces = list(torch.split(wave, piece))
    return torch.cat(list(separator.separate_stream(pieces, SR)))


# ---------------------------------------------------------------------------- streaming machinery


def test_crossfade_sums_to_one():
    fade_in, fade_out = crossfade(100)
    assert torch.allclose(fade_in + fade_out, torch.ones(100))
    assert bool((fade_in[1:] > fade_in[:-1]).all())


@pytest.mark.parametrize("n", [1, 700, 1000, 1500, 1799, 1800, 1801, 5432])
@pytest.mark.parametrize("piece", [1, 333, 4000])
def test_overlap_blocks_identity_reconstructs_the_input(n, piece):
    x = torch.randn(n)
    streamer = OverlapBlocks(lambda w: w.clone(), block=1000, overlap=200)
    out = [streamer.push(p) for p in torch.split(x, piece)] + [streamer.flush()]
    y = torch.cat(out)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x)


def _reference_windows(n: int, block: int, overlap: int) -> list[tuple[int, int]]:
    """The documented layout: windows every `hop` while a full next window fits; the last takes the rest."""
    hop = block - overlap
    windows, start = [], 0
    while n - start >= block + hop:
        windows.append((start, start + block))
        start += hop
    windows.append((start, n))
    return windows


def test_overlap_blocks_matches_a_naive_crossfade_of_each_window():
    n, block, overlap = 4700, 1000, 250
    x = torch.randn(n)
    calls = []

    def fn(w: torch.Tensor) -> torch.Tensor:  # a different, window-dependent result per window
        calls.append(w.numel())
        return w * len(calls) + len(calls)

    streamer = OverlapBlocks(fn, block, overlap)
    y = torch.cat([streamer.push(p) for p in torch.split(x, 321)] + [streamer.flush()])

    windows = _reference_windows(n, block, overlap)
    assert calls == [b - a for a, b in windows]
    fade_in, fade_out = crossfade(overlap)
    total = torch.zeros(n)
    for k, (a, b) in enumerate(windows, start=1):
        weight = torch.ones(b - a)
        if k > 1:
            weight[:overlap] = fade_in
        if k < len(windows):
            weight[-overlap:] = fade_out
        total[a:b] += weight * (x[a:b] * k + k)
    torch.testing.assert_close(y, total)


def test_overlap_blocks_output_is_continuous_across_boundaries():
    """Windows returning different constants: the output ramps between them, with no jump."""
    calls = []

    def fn(w: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.full_like(w, float(len(calls)))

    overlap = 400
    streamer = OverlapBlocks(fn, block=2000, overlap=overlap)
    y = torch.cat([streamer.push(p) for p in torch.split(torch.zeros(9000), 1000)] + [streamer.flush()])
    assert len(calls) >= 3
    steps = y.diff()
    assert bool((steps >= -1e-6).all())  # monotone: never falls back
    assert float(steps.max()) <= math.pi / (2 * overlap) * 1.01  # the steepest step of a sin^2 fade
    assert float(y[0]) == 1.0 and float(y[-1]) == float(len(calls))


def test_overlap_blocks_rejects_bad_sizes_and_shapes():
    with pytest.raises(ValueError, match="overlap"):
        OverlapBlocks(lambda w: w, block=100, overlap=60)
    streamer = OverlapBlocks(lambda w: w[:-1], block=100, overlap=10)
    with pytest.raises(ValueError, match="returned shape"):
        streamer.push(torch.zeros(300))


# ---------------------------------------------------------------------------- classical


@pytest.fixture(scope="module")
def mixes() -> list[tuple[np.ndarray, np.ndarray]]:
    return [song_stems(i, 8.0) for i in range(2)]


def test_classical_improves_si_sdr_on_generated_mixes(mixes):
    separator = make_separator("classical")
    for vocal, backing in mixes:
        mix = vocal + backing
        estimate = separator.separate(torch.from_numpy(mix).float(), SR).double().numpy()
        assert estimate.shape == mix.shape
        gain = si_sdr(vocal, estimate) - si_sdr(vocal, mix)
        assert gain > 3.0, f"SI-SDR improvement {gain:.2f} dB"
        # the accompaniment left in the estimate is much quieter than in the mix
        leak = np.dot(estimate, backing) / np.dot(backing, backing)
        assert leak < 0.5


def test_classical_improves_bss_eval_sdr(mixes):
    mir_eval = pytest.importorskip("mir_eval")
    vocal, backing = (s[: 4 * SR] for s in mixes[0])
    mix = vocal + backing
    estimate = repet_sim(torch.from_numpy(mix).float(), SR).double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # bss_eval_sources is deprecated in mir_eval 0.8
        sdr_mix = mir_eval.separation.bss_eval_sources(vocal[None], mix[None])[0][0]
        sdr_est = mir_eval.separation.bss_eval_sources(vocal[None], estimate[None])[0][0]
    assert sdr_est > sdr_mix + 3.0, f"SDR {sdr_mix:.2f} -> {sdr_est:.2f} dB"


def test_none_leaves_the_mix_unchanged(mixes):
    mix = torch.from_numpy(mixes[0][0] + mixes[0][1]).float()
    separator = make_separator("none")
    assert isinstance(separator, PassThrough)
    assert torch.equal(separator.separate(mix, SR), mix)
    assert torch.equal(run_stream(separator, mix, 5000), mix)


def test_classical_stream_equals_whole_signal_when_shorter_than_a_block(mixes):
    vocal, backing = mixes[0]
    mix = torch.from_numpy(vocal + backing).float()  # 8 s < one 30 s block
    separator = RepetSimSeparator()
    streamed = run_stream(separator, mix, SR)  # pushed one second at a time
    assert streamed.shape == mix.shape
    torch.testing.assert_close(streamed, repet_sim(mix, SR), atol=1e-5, rtol=0)


def test_classical_stream_is_crossfaded_windows_of_repet_sim():
    """Blocks shorter than the file: each window is REPET-SIM of its samples, cross-faded into the next."""
    vocal, backing = song_stems(2, 14.0)
    mix = torch.from_numpy(vocal + backing).float()
    block, overlap = 4 * SR, SR
    separator = RepetSimSeparator(block_seconds=4.0, overlap_seconds=1.0)
    streamed = run_stream(separator, mix, 3 * SR + 17)
    assert streamed.shape == mix.shape

    windows = _reference_windows(mix.numel(), block, overlap)
    assert len(windows) >= 3
    fade_in, fade_out = crossfade(overlap)
    expected = torch.zeros_like(mix)
    for k, (a, b) in enumerate(windows):
        weight = torch.ones(b - a)
        if k > 0:
            weight[:overlap] = fade_in
        if k < len(windows) - 1:
            weight[-overlap:] = fade_out
        expected[a:b] += weight * repet_sim(mix[a:b], SR)
    torch.testing.assert_close(streamed, expected, atol=1e-5, rtol=0)
    # separated block-wise it still removes the accompaniment
    gain = si_sdr(vocal, streamed.double().numpy()) - si_sdr(vocal, vocal + backing)
    assert gain > 2.0, f"SI-SDR improvement {gain:.2f} dB"


def test_repet_sim_handles_a_clip_shorter_than_one_fft_frame():
    y = repet_sim(torch.randn(300), SR)
    assert y.shape == (300,) and bool(torch.isfinite(y).all())


# ---------------------------------------------------------------------------- neural


class TinyMaskNet(nn.Module):
    """A waveform mask estimator: x * sigmoid(conv(x)), receptive field 9 samples."""

    def __init__(self, sample_rate: int = SR):
        super().__init__()
        self.sample_rate = sample_rate
        self.conv = nn.Sequential(nn.Conv1d(1, 4, 5, padding=2), nn.Tanh(), nn.Conv1d(4, 1, 5, padding=2))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, N)
        return mix * torch.sigmoid(self.conv(mix.unsqueeze(1))).squeeze(1)


def _scripted(tmp_path: Path, sample_rate: int = SR) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = TinyMaskNet(sample_rate).eval()
    path = tmp_path / "tiny.ts"
    _jit_save(model, path)
    return path, model


def _jit_save(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.11 deprecates TorchScript
        torch.jit.save(torch.jit.script(model), str(path))


def test_neural_without_weights_says_how_to_provide_them():
    with pytest.raises(ValueError) as info:
        make_separator("neural")
    message = str(info.value)
    for needed in (
        "separation.weights",
        "--separation-weights",
        "TorchScript",
        "state dict",
        "mask_net",
        "download",
    ):
        assert needed in message
    with pytest.raises(ValueError, match="separation.weights"):
        separator_from_config(SeparationConfig(method="neural"))


def test_neural_missing_or_invalid_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ts"):
        make_separator("neural", weights=tmp_path / "nowhere.ts")
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="architecture"):
        make_separator("neural", weights=junk)
    with pytest.raises(ValueError, match="mask_net"):
        make_separator("neural", weights=junk, architecture="no_such_net")


def test_neural_torchscript_plugin_runs_chunked(tmp_path):
    path, model = _scripted(tmp_path)
    separator = make_separator("neural", weights=path, chunk_seconds=1.0, overlap_seconds=0.25)
    assert isinstance(separator, NeuralSeparator)
    expected_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert next(separator.model.parameters()).device.type == expected_device.type

    mix = torch.randn(int(3.3 * SR)) * 0.1  # 3.3 s: several 1 s chunks
    out = separator.separate(mix, SR)
    assert out.shape == mix.shape and out.device == mix.device
    with torch.no_grad():
        whole = model(mix[None])[0]
    # chunk edges only differ inside the 9-sample receptive field, where the fade weight is ~0
    torch.testing.assert_close(out, whole, atol=1e-4, rtol=0)
    assert torch.equal(run_stream(separator, mix, 4321), out)


def test_neural_plugin_resamples_to_the_model_rate(tmp_path):
    path, _ = _scripted(tmp_path, sample_rate=8000)
    separator = make_separator("neural", weights=path, chunk_seconds=1.0, overlap_seconds=0.2, device="cpu")
    assert separator.model_sample_rate == 8000
    t = torch.arange(int(2.5 * SR)) / SR
    mix = 0.3 * torch.sin(2 * math.pi * 440 * t)
    out = separator.separate(mix, SR)
    assert out.shape == mix.shape
    # a 440 Hz tone survives the 16 k -> 8 k -> 16 k round trip in shape (the mask only scales it)
    inner = slice(SR // 4, -SR // 4)
    corr = torch.corrcoef(torch.stack([out[inner], mix[inner]]))[0, 1]
    assert float(corr) > 0.95


def test_neural_exported_program_plugin(tmp_path):
    torch.manual_seed(0)
    model = TinyMaskNet().eval()
    length = torch.export.Dim("length", min=64, max=1 << 26)
    program = torch.export.export(model, (torch.randn(1, SR),), dynamic_shapes={"mix": {1: length}})
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))
    separator = make_separator("neural", weights=path, chunk_seconds=1.0, overlap_seconds=0.25, device="cpu")
    mix = torch.randn(int(2.6 * SR)) * 0.1
    with torch.no_grad():
        whole = model(mix[None])[0]
    out = separator.separate(mix, SR)
    assert out.shape == mix.shape
    torch.testing.assert_close(out, whole, atol=1e-4, rtol=0)


def test_neural_state_dict_with_registered_architecture(tmp_path):
    torch.manual_seed(1)
    config = {"n_fft": 256, "hop_length": 64, "channels": 4, "layers": 2}
    model = MaskNet(**config).eval()
    path = tmp_path / "masknet.pt"
    torch.save({"state_dict": model.state_dict(), "config": config}, path)
    separator = separator_from_config(
        SeparationConfig(
            method="neural", weights=path, architecture="mask_net", chunk_seconds=5.0, device="cpu"
        )
    )
    mix = torch.randn(2 * SR) * 0.1  # shorter than one chunk: one call to the model
    with torch.no_grad():
        expected = model(mix[None])[0]
    torch.testing.assert_close(separator.separate(mix, SR), expected)
    assert "mask_net" in ARCHITECTURES

    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)  # a bare state dict: built with the default config, which differs
    with pytest.raises(ValueError, match="do not fit"):
        make_separator("neural", weights=bare, architecture="mask_net", device="cpu")


def test_neural_rejects_a_model_that_changes_the_length(tmp_path):
    class Shorter(nn.Module):
        def forward(self, mix: torch.Tensor) -> torch.Tensor:
            return mix[:, :-1]

    path = tmp_path / "shorter.ts"
    _jit_save(Shorter(), path)
    separator = make_separator("neural", weights=path, device="cpu")
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        separator.separate(torch.randn(SR), SR)


# ---------------------------------------------------------------------------- choosing


def test_make_separator_rejects_unknown_methods_and_options():
    with pytest.raises(ValueError, match="none, classical, neural"):
        make_separator("karaoke")
    with pytest.raises(ValueError, match="similar_frames"):
        make_separator("classical", similar_frame=10)
    with pytest.raises(ValueError, match="valid"):
        SeparationConfig(method="demucs")
    with pytest.raises(ValueError, match="at most half"):
        SeparationConfig(block_seconds=2.0, overlap_seconds=1.5)


def test_separator_from_config_picks_the_method():
    assert separator_from_config(SeparationConfig()).name == "none"
    classical = separator_from_config(
        SeparationConfig(method="classical", similar_frames=7, block_seconds=10.0)
    )
    assert isinstance(classical, RepetSimSeparator)
    assert classical.options["similar_frames"] == 7 and classical.window_seconds == 10.0
