"""Accompaniment suppression: estimate the sung voice of a mixed song before learning from it.

The original study removed the accompaniment (MR) before training; real catalogs hold
mixed songs. Three methods, chosen at ingest:

- ``none``: the audio is used as it is (a cappella catalogs).
- ``classical``: REPET-SIM (Rafii & Pardo 2012), no weights needed. The accompaniment
  repeats (bars, loops, choruses), the voice much less: for each STFT frame the median
  of its most similar frames elsewhere in the song models the repeating background,
  and a soft mask keeps what the background does not explain.
- ``neural``: a pretrained separator the user gives as a local file (a TorchScript
  module, or a state dict plus a registered architecture name). Nothing is downloaded.

Every separator has a ``name``, ``separate(wave (N,), sample_rate) -> (N,)`` and
``separate_stream(blocks, sample_rate)``, which cuts the stream into overlapping
windows, separates each and cross-fades them (:class:`OverlapBlocks`), so memory does
not grow with the file's length.

The `Separator` protocol is defined by recsys.audio, whose voiced stream calls it before
silence detection (and whose `audio.vocal_activity` then keeps the frames where singing
remains); it is importable from here too.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from recsys.audio import Separator
from recsys.config import SeparationConfig

SEPARATION_METHODS = ("none", "classical", "neural")  # recsys.config.SeparationConfig.method
DEVICES = ("auto", "cpu", "cuda")
NEURAL_FILE_KINDS = (
    "a TorchScript file (torch.jit.save), an exported program (torch.export.save, .pt2) "
    "or a state dict (.pt) with an architecture name"
)
NO_WEIGHTS_MESSAGE = (
    "separation method 'neural' needs pretrained weights from a local file, and nothing is ever "
    "downloaded: set separation.weights in the config (RECSYS_SEPARATION__WEIGHTS, or the "
    "--separation-weights flag) to {kinds}; for a state dict also set separation.architecture "
    "(one of: {archs}). Or use separation.method=classical (--separate classical), which needs no weights."
)


# ---------------------------------------------------------------------------- streaming


def crossfade(n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) fade-in and fade-out (raised cosine) that sum to 1 at every sample."""
    fade_in = torch.sin(0.5 * math.pi * (torch.arange(n, device=device) + 0.5) / max(n, 1)).square()
    return fade_in, 1.0 - fade_in


class OverlapBlocks:
    """Apply `fn` ((n,) -> (n,)) to overlapping windows of a stream and cross-fade the results.

    Window k covers input samples [k * hop, k * hop + block), hop = block - overlap; over the
    `overlap` samples two windows share, the output fades from the earlier to the later::

        window 0 |=========\\
        window 1        /=========\\
        window 2               /==============|   <- the last window takes the rest
                        ^overlap

    A window is cut only once block + hop samples are buffered, so the last one holds
    between block and block + hop samples (the whole signal when it is shorter than
    that): no short scrap at the end, and a signal shorter than a block is processed
    exactly as fn(whole signal). At most block + hop samples plus one pushed block are
    held. With fn the identity the output equals the input.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], block: int, overlap: int):
        if block <= 0 or overlap < 0 or 2 * overlap > block:
            raise ValueError(
                f"need block > 0 and 0 <= overlap <= block / 2, got block={block}, overlap={overlap}"
            )
        self.fn, self.block, self.overlap, self.hop = fn, block, overlap, block - overlap
        self._buffer: torch.Tensor | None = None  # input from the start of the next window
        self._tail: torch.Tensor | None = None  # previous window's output over the first `overlap` of _buffer

    def push(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) input samples -> (m,) output samples that are now final (m may be 0)."""
        if x.dim() != 1:
            raise ValueError(f"expected a (n,) mono block, got shape {tuple(x.shape)}")
        self._buffer = x if self._buffer is None else torch.cat([self._buffer, x])
        done = []
        while self._buffer.numel() >= self.block + self.hop:
            y = self._apply(self._buffer[: self.block])
            done.append(y[: self.hop])
            self._tail = y[self.hop :]
            self._buffer = self._buffer[self.hop :]
        return torch.cat(done) if done else x.new_zeros(0)

    def flush(self) -> torch.Tensor:
        """The rest of the output at the end of the stream; the object is then ready for a new stream."""
        if self._buffer is None or self._buffer.numel() == 0:
            return torch.zeros(0)
        y = self._apply(self._buffer)
        self._buffer, self._tail = None, None
        return y

    def _apply(self, window: torch.Tensor) -> torch.Tensor:
        y = self.fn(window)
        if y.shape != window.shape:
            raise ValueError(
                f"separator returned shape {tuple(y.shape)} for a window of shape {tuple(window.shape)}"
            )
        if self._tail is None or self.overlap == 0:
            return y
        fade_in, fade_out = crossfade(self.overlap, y.device)
        head = self._tail.to(y.device) * fade_out + y[: self.overlap] * fade_in
        return torch.cat([head, y[self.overlap :]])


class _WindowedSeparator:
    """separate / separate_stream on top of a per-window `_separate_window(x, sample_rate)`."""

    name: str
    window_seconds: float
    overlap_seconds: float

    def _separate_window(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        raise NotImplementedError

    def separate_stream(self, blocks: Iterable[torch.Tensor], sample_rate: int) -> Iterator[torch.Tensor]:
        """Stream of (n,) mix blocks -> stream of (m,) vocal blocks; concatenated, as long as the input."""
        streamer = OverlapBlocks(
            lambda x: self._separate_window(x, sample_rate),
            block=max(1, round(self.window_seconds * sample_rate)),
            overlap=round(self.overlap_seconds * sample_rate),
        )
        for block in blocks:
            out = streamer.push(_check_wave(block))
            if out.numel():
                yield out
        out = streamer.flush()
        if out.numel():
            yield out

    def separate(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(N,) mix -> (N,) vocal estimate, computed window by window."""
        wave = _check_wave(wave)
        out = list(self.separate_stream([wave], sample_rate))
        return torch.cat(out) if out else wave.new_zeros(0)


def _check_wave(wave: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(wave) or wave.dim() != 1 or not wave.is_floating_point():
        shape = tuple(wave.shape) if torch.is_tensor(wave) else type(wave).__name__
        raise ValueError(f"expected a (N,) float mono waveform tensor, got {shape}")
    return wave


# ---------------------------------------------------------------------------- none


class PassThrough:
    """Method 'none': the mix is taken as the voice (a cappella catalogs)."""

    name = "none"

    def separate(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return _check_wave(wave)

    def separate_stream(self, blocks: Iterable[torch.Tensor], sample_rate: int) -> Iterator[torch.Tensor]:
        for block in blocks:
            yield _check_wave(block)


# ---------------------------------------------------------------------------- classical


def repeating_background(
    magnitude: torch.Tensor, n_similar: int, min_distance: int, frames_per_step: int = 256
) -> torch.Tensor:
    """(F, T) magnitude -> (F, T) REPET-SIM model of the repeating background.

    Frame t's model is the median, bin by bin, of the `n_similar` frames most similar
    to it (cosine similarity of magnitude spectra) that are at least `min_distance`
    frames away. When fewer frames are far enough, the nearest ones fill in (in a very
    short signal the model then follows the mix and little is kept as voice).
    Frames are handled `frames_per_step` at a time so memory stays O(F * T).
    """
    n_frames = magnitude.shape[1]
    k = min(n_similar, n_frames)
    unit = magnitude / magnitude.norm(dim=0, keepdim=True).clamp_min(1e-8)  # (F, T)
    positions = torch.arange(n_frames, device=magnitude.device)
    model = torch.empty_like(magnitude)
    for start in range(0, n_frames, frames_per_step):
        stop = min(start + frames_per_step, n_frames)
        sim = unit[:, start:stop].T @ unit  # (t, T), in [0, 1]
        near = (positions[start:stop, None] - positions[None, :]).abs() < min_distance
        sim = sim - 2.0 * near  # near frames rank after every far one
        idx = sim.topk(k, dim=1).indices  # (t, k)
        model[:, start:stop] = magnitude[:, idx].median(dim=-1).values  # (F, t, k) -> (F, t)
    return model


def soft_mask(target: torch.Tensor, reference: torch.Tensor, power: float) -> torch.Tensor:
    """target**p / (target**p + reference**p), elementwise in [0, 1]; 0 where both are 0."""
    t, r = target.clamp_min(0) ** power, reference.clamp_min(0) ** power
    return t / (t + r).clamp_min(torch.finfo(t.dtype).tiny)


def repet_sim(
    wave: torch.Tensor,
    sample_rate: int,
    n_fft: int = 2048,
    hop_length: int = 512,
    similar_frames: int = 40,
    min_distance_seconds: float = 1.0,
    mask_margin: float = 1.0,
    mask_power: float = 2.0,
    voice_min_hz: float = 80.0,
) -> torch.Tensor:
    """(N,) mix -> (N,) vocal estimate by REPET-SIM over the whole signal (Rafii & Pardo 2012).

    Background B = min(median of similar frames, V) on the magnitude V; voice mask
    soft_mask(V - B, margin * B, power), zero below `voice_min_hz`; inverse STFT of
    the masked mix. Memory grows with N**2 / hop**2 for the similarity: use
    :class:`RepetSimSeparator` for long files.
    """
    wave = _check_wave(wave)
    n = wave.numel()
    x = F.pad(wave.float(), (0, max(0, n_fft - n)))  # a clip shorter than one FFT frame
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, hop_length, window=window, center=True, return_complex=True)  # (F, T)
    magnitude = spec.abs()
    min_distance = max(1, round(min_distance_seconds * sample_rate / hop_length))
    background = torch.minimum(repeating_background(magnitude, similar_frames, min_distance), magnitude)
    mask = soft_mask(magnitude - background, mask_margin * background, mask_power)
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate).to(x.device)
    mask[freqs < voice_min_hz] = 0.0
    voice = torch.istft(spec * mask, n_fft, hop_length, window=window, center=True, length=x.numel())
    return voice[:n].to(wave.dtype)


class RepetSimSeparator(_WindowedSeparator):
    """Method 'classical': REPET-SIM over windows of `block_seconds`, cross-faded over `overlap_seconds`.

    Runs on the device of the waveform it is given.
    """

    name = "classical"

    def __init__(
        self,
        block_seconds: float = 30.0,
        overlap_seconds: float = 2.0,
        n_fft: int = 2048,
        hop_length: int = 512,
        similar_frames: int = 40,
        min_distance_seconds: float = 1.0,
        mask_margin: float = 1.0,
        mask_power: float = 2.0,
        voice_min_hz: float = 80.0,
    ):
        if n_fft <= 0 or hop_length <= 0 or hop_length > n_fft:
            raise ValueError(f"need 0 < hop_length <= n_fft, got n_fft={n_fft}, hop_length={hop_length}")
        if similar_frames < 1:
            raise ValueError(f"similar_frames must be >= 1, got {similar_frames}")
        self.window_seconds, self.overlap_seconds = block_seconds, overlap_seconds
        self.options = {
            "n_fft": n_fft,
            "hop_length": hop_length,
            "similar_frames": similar_frames,
            "min_distance_seconds": min_distance_seconds,
            "mask_margin": mask_margin,
            "mask_power": mask_power,
            "voice_min_hz": voice_min_hz,
        }

    def _separate_window(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return repet_sim(wave, sample_rate, **self.options)


# ---------------------------------------------------------------------------- neural


class MaskNet(nn.Module):
    """A small STFT-mask separator: (B, N) mix -> (B, N) voice at `sample_rate`.

    log|STFT| -> conv stack over (freq, time) -> sigmoid mask -> masked iSTFT. The
    'mask_net' architecture: a place to load weights trained elsewhere.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 128,
        channels: int = 16,
        layers: int = 3,
    ):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        blocks: list[nn.Module] = []
        c_in = 1
        for _ in range(layers):
            blocks += [nn.Conv2d(c_in, channels, kernel_size=3, padding=1), nn.GELU()]
            c_in = channels
        blocks.append(nn.Conv2d(c_in, 1, kernel_size=1))
        self.net = nn.Sequential(*blocks)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        n = mix.shape[-1]
        spec = torch.stft(
            mix, self.n_fft, self.hop_length, window=self.window, return_complex=True
        )  # (B, F, T)
        logmag = torch.log1p(spec.abs()).unsqueeze(1)  # (B, 1, F, T)
        mask = torch.sigmoid(self.net(logmag)).squeeze(1)  # (B, F, T)
        return torch.istft(spec * mask, self.n_fft, self.hop_length, window=self.window, length=n)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mask_net": MaskNet}


def register_architecture(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make a separator architecture loadable from a state dict by `name`.

    `builder(**config)` returns an nn.Module mapping (B, N) mix -> (B, N) voice; it may
    have an int `sample_rate` attribute (the rate it expects; default: the input's).
    """
    if name in ARCHITECTURES and ARCHITECTURES[name] is not builder:
        raise ValueError(f"separator architecture {name!r} is already registered")
    ARCHITECTURES[name] = builder


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cpu' / 'cuda' as given."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(device)


class NeuralSeparator(_WindowedSeparator):
    """Method 'neural': a pretrained (B, N) -> (B, N) module run over `chunk_seconds` windows.

    Windows are resampled to `model_sample_rate` (default: the module's `sample_rate`
    attribute when it has one, else the input's rate) and back, run on `device` under inference mode, and cross-faded over `overlap_seconds`.
    The result is on the input's device and exactly as long as the input.
    """

    name = "neural"

    def __init__(
        self,
        model: nn.Module,
        chunk_seconds: float = 10.0,
        overlap_seconds: float = 1.0,
        device: str = "auto",
        model_sample_rate: int | None = None,
    ):
        self.device = resolve_device(device)
        if not isinstance(
            model, torch.fx.GraphModule
        ):  # an exported program keeps the mode it was exported in
            model = model.eval()
        self.model = model.to(self.device)
        rate = model_sample_rate or getattr(model, "sample_rate", None)
        self.model_sample_rate = int(rate) if rate is not None else None
        self.window_seconds, self.overlap_seconds = chunk_seconds, overlap_seconds

    @torch.inference_mode()
    def _separate_window(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        n = wave.numel()
        rate = self.model_sample_rate or sample_rate
        x = wave.to(self.device, torch.float32)
        if rate != sample_rate:
            x = torchaudio.functional.resample(x, sample_rate, rate)
        y = self.model(x[None])  # (1, n') -> (1, n')
        if y.shape != (1, x.numel()):
            raise ValueError(
                f"the neural separator returned shape {tuple(y.shape)} for input shape (1, {x.numel()}); "
                "it must map a (B, N) mix to a (B, N) vocal waveform"
            )
        y = y[0]
        if rate != sample_rate:
            y = torchaudio.functional.resample(y, rate, sample_rate)
            y = F.pad(y, (0, max(0, n - y.numel())))[:n]
        return y.to(wave.device, wave.dtype)


def load_model(weights: str | Path | None, architecture: str | None = None) -> nn.Module:
    """A separator module from a local file, on the CPU; never downloads.

    Without `architecture` the file must be TorchScript (torch.jit.save) or, named
    *.pt2, an exported program (torch.export.save, exported on the CPU with a dynamic
    length); with it, a state dict, or a checkpoint {"state_dict": ..., "config": {...}}
    whose config is passed to the architecture's builder.
    """
    archs = ", ".join(sorted(ARCHITECTURES))
    if weights is None or str(weights) == "":
        raise ValueError(NO_WEIGHTS_MESSAGE.format(kinds=NEURAL_FILE_KINDS, archs=archs))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"separation weights not found: {path} (expected {NEURAL_FILE_KINDS})")
    if architecture is None and path.suffix == ".pt2":
        try:
            return torch.export.load(str(path)).module()
        except Exception as e:  # torch.export.load raises many types for a bad archive
            raise ValueError(f"{path}: not a readable exported program (torch.export.save): {e}") from e
    if architecture is None:
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"{path}: not a TorchScript file ({e.__class__.__name__}); for a state dict also set "
                f"separation.architecture (one of: {archs})"
            ) from e
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown separator architecture {architecture!r}; valid: {archs}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a bad file
        raise ValueError(f"{path}: cannot read a state dict for architecture {architecture!r}: {e}") from e
    if not isinstance(checkpoint, dict):
        raise TypeError(f"{path}: expected a state dict (a dict of tensors), got {type(checkpoint).__name__}")
    config = checkpoint.get("config", {}) if "state_dict" in checkpoint else {}
    state = checkpoint.get("state_dict", checkpoint)
    try:
        model = ARCHITECTURES[architecture](**config)
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{path}: weights do not fit architecture {architecture!r}: {e}") from e
    return model


def load_neural_separator(
    weights: str | Path | None = None,
    architecture: str | None = None,
    chunk_seconds: float = 10.0,
    overlap_seconds: float = 1.0,
    device: str = "auto",
    model_sample_rate: int | None = None,
) -> NeuralSeparator:
    """A NeuralSeparator over the module in the local file `weights` (see :func:`load_model`)."""
    model = load_model(weights, architecture)
    return NeuralSeparator(model, chunk_seconds, overlap_seconds, device, model_sample_rate)


# ---------------------------------------------------------------------------- choosing


_BUILDERS: dict[str, Callable[..., Separator]] = {
    "none": PassThrough,
    "classical": RepetSimSeparator,
    "neural": load_neural_separator,
}


def make_separator(method: str, **options: object) -> Separator:
    """The separator for `method` ('none' | 'classical' | 'neural') with its keyword options."""
    if method not in _BUILDERS:
        raise ValueError(f"unknown separation method {method!r}; valid: {', '.join(SEPARATION_METHODS)}")
    builder = _BUILDERS[method]
    valid = [p for p in inspect.signature(builder).parameters if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for separation method {method!r}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )
    return builder(**options)


def separator_from_config(cfg: SeparationConfig) -> Separator:
    """The separator a SeparationConfig describes (the options of its method only)."""
    if cfg.method == "classical":
        return make_separator(
            "classical",
            block_seconds=cfg.block_seconds,
            overlap_seconds=cfg.overlap_seconds,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            similar_frames=cfg.similar_frames,
            min_distance_seconds=cfg.min_distance_seconds,
            mask_margin=cfg.mask_margin,
            mask_power=cfg.mask_power,
            voice_min_hz=cfg.voice_min_hz,
        )
    if cfg.method == "neural":
        return make_separator(
            "neural",
            weights=cfg.weights,
            architecture=cfg.architecture,
            chunk_seconds=cfg.chunk_seconds,
            overlap_seconds=cfg.overlap_seconds,
            device=cfg.device,
            model_sample_rate=cfg.model_sample_rate,
        )
    return make_separator(cfg.method)
