"""One typed configuration for the whole product.

Layers, lowest precedence first: defaults below < the `settings:` section of
``data_manifest.yaml`` < a ``--config`` YAML file < ``RECSYS_*`` environment
variables (nested with ``__``, e.g. ``RECSYS_AUDIO__SAMPLE_RATE=22050``) < CLI
flags. Only the outer layers (CLI, jobs, app) call :func:`load_settings`; every
library function takes the part of :class:`Settings` it needs as an argument.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = PROJECT_ROOT / "data_manifest.yaml"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


PITCH_POOL_MAX_SEMITONES = 6.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioConfig(_Section):
    """Decoding and vocal-focused clean-up (recsys.audio)."""

    sample_rate: int = Field(16000, gt=0, description="Working rate in Hz; every file is resampled to it.")
    normalization: Literal["loudness", "peak", "none"] = "loudness"
    target_rms_db: float = Field(-20.0, le=0, description="Loudness target (RMS dBFS of voiced audio).")
    peak_level: float = Field(0.95, gt=0, le=1.0)
    silence_threshold_db: float = Field(
        -35.0, le=0, description="Frames quieter than this, relative to the reference level, are silence."
    )
    silence_reference_percentile: float = Field(
        99.0, gt=0, le=100, description="Reference level = this percentile of frame levels (100: the loudest frame)."
    )
    silence_floor_db: float = Field(-60.0, le=0, description="Absolute dBFS floor: quieter frames are silence.")
    frame_seconds: float = Field(0.032, gt=0, description="RMS frame length for silence detection.")
    vocal_activity: bool = Field(
        False,
        description="Also drop loud frames that are not periodic (no sung pitch: drums, noise, breaths); "
        "most useful with separation, where backing leaks through.",
    )
    min_harmonicity: float = Field(
        0.5, ge=0, le=1, description="With vocal_activity: a kept frame's autocorrelation peak (0..1)."
    )
    chunk_seconds: float = Field(4.0, gt=0, description="Length of the voiced chunks fed to the encoders.")
    chunk_hop_seconds: float = Field(2.0, gt=0)
    min_chunk_seconds: float = Field(1.0, gt=0, description="A trailing voiced stretch shorter than this is dropped.")
    block_seconds: float = Field(30.0, gt=0, description="Long files are decoded in blocks of this length.")
    decode_once_seconds: float = Field(
        1200.0, ge=0, description="Files up to this long are decoded once and their working-rate audio held "
        "between the two passes of the clean-up (4 bytes a sample: 77 MB for 20 minutes); longer ones are "
        "decoded twice, so memory stays flat for any length.")
    max_file_seconds: float | None = Field(
        None, description="Ingest records files longer than this as 'too_long' failures (None: no limit)."
    )
    max_query_seconds: float | None = Field(
        2 * 3600.0, gt=0, description="The app refuses uploaded queries longer than this (None: no limit)."
    )

    @model_validator(mode="after")
    def _chunks_fit(self) -> AudioConfig:
        if self.min_chunk_seconds > self.chunk_seconds:
            raise ValueError("audio.min_chunk_seconds must not exceed audio.chunk_seconds")
        return self


class FeatureConfig(_Section):
    """Log-mel parameters; defaults are the original study's (16 kHz, 512, 256, 48 bands)."""

    n_fft: int = Field(512, gt=0)
    win_length: int = Field(512, gt=0)
    hop_length: int = Field(256, gt=0)
    n_mels: int = Field(48, gt=0)
    f_min: float = Field(0.0, ge=0)
    f_max: float | None = None
    log_floor: float = Field(1e-5, gt=0, description="Added before the log so silence stays finite.")
    speaker_partials: int = Field(8, ge=0, description="timbre.front_end speaker / log-mel+speaker: the most "
                                  "1.6 s partials the speaker front end reads per song, spread evenly over its "
                                  "voiced audio (about 5 ms of CPU each); 0 reads them all, half a partial apart.")

    @model_validator(mode="after")
    def _window_fits(self) -> FeatureConfig:
        if self.win_length > self.n_fft:
            raise ValueError(f"features.win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        return self


Role = Literal["positive", "negative", "off"]


class AugmentPolicy(_Section):
    """Role and parameter range of one augmentation in contrastive training."""

    role: Role = "off"
    low: float = 0.0
    high: float = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> AugmentPolicy:
        if self.low > self.high:
            raise ValueError(f"augmentation range low={self.low} exceeds high={self.high}")
        return self


class TimbreConfig(_Section):
    """Contrastive timbre/style encoder (recsys.models.timbre, recsys.training.contrastive)."""

    # log-mel: on the produced development catalogs it leads every retrieval column (docs/evaluation.md, issue 15).
    front_end: Literal["log-mel", "speaker", "log-mel+speaker"] = Field(
        "log-mel", description="What the contrastive encoder reads: 'log-mel' (the project's own convolutional "
        "encoder), 'speaker' (Resemblyzer's pretrained GE2E d-vectors of 1.6 s partials, weights in its wheel, "
        "the `speaker` extra; a back end trained over them with the same pair policies, applied to the waveform), "
        "or 'log-mel+speaker' (both trained, the song vector their weighted concatenation: speaker_share). "
        "Takes effect at the next `recsys train`.")
    speaker_share: float = Field(0.2, gt=0, lt=1, description="front_end log-mel+speaker: the speaker part's "
                                 "share of the timbre cosine (0.2: ahead of the log-mel part alone on three "
                                 "development catalogs, docs/evaluation.md; 0.35 before 2026-12-04).")
    speaker_steps: int = Field(300, gt=0, description="front_end speaker: training steps of its back end (the "
                               "log-mel encoder's schedule is epochs x steps_per_epoch).")
    speaker_songs_per_step: int = Field(32, gt=1, description="front_end speaker: songs per training step.")
    speaker_pseudo_neighbours: int = Field(10, ge=0, description="front_end speaker, without singer labels: each "
                                           "song's this many nearest songs by the pretrained front end (its mean "
                                           "d-vector) are not used as its negatives: likely its singer's other "
                                           "songs, which plain instance discrimination pushes apart. 0: off.")
    policy: str = Field("ps_neg_ts_pos", description="Named pair policy; see recsys.augment.PAIR_POLICIES.")
    pitch_shift: AugmentPolicy | None = Field(None, description="Overrides the named policy's pitch shift.")
    time_stretch: AugmentPolicy | None = Field(None, description="Overrides the named policy's time stretch.")
    # gain + noise + room (eq, reverb) + a recording chain per view + key change: robust to the recordings
    # the product meets (each song its own chain, unseen singers in another key); bench/study_timbre.py,
    # bench/bench_timbre_robustness.py, docs/evaluation.md.
    extra_positives: tuple[str, ...] = Field(
        ("gain", "noise", "eq", "reverb", "chain", "key"), description="Augmentations always used as positives."
    )
    supervised: bool = Field(False, description="Use singer labels: all songs of a singer are positives.")
    pseudo_neighbours: int = Field(0, ge=0, description="Without singer labels, each song's this many nearest "
                                   "songs (by the model being trained, recomputed every epoch after the first) are "
                                   "not used as its negatives: likely its singer's other songs. 0: off.")
    validation: Literal["produced", "own_song"] = Field(
        "produced", description="Early stopping without singer labels: each held-out song's first half, through a "
        "production chain of its own, must find its second half ('produced'), or the plain halves ('own_song', which "
        "the shared recording chain alone solves).")
    keep: Literal["auto", "best", "last"] = Field(
        "auto", description="The epoch published: 'best' by validation (with early stopping), or 'last' of the "
        "whole schedule (no early stopping); 'auto': best when songs have singer labels, else last.")
    # Off: pooled over +-2 st it found more pitched copies in the encoder study (.760 -> .875) but not on the
    # product path (3 trainings: .844 -> .823 seen, mAP -.02 everywhere; docs/evaluation.md, run 8).
    pitch_pool: tuple[float, ...] = Field(
        (), description="Semitone shifts (formants moving) the song vector is pooled over, so a pitched re-upload "
        "meets its original (e.g. [-2, -1, 0, 1, 2]). Recorded with the model: takes effect at the next "
        "`recsys train`. [] = off (the plain vector).")
    pitch_pool_chunks: Literal["every", "rotate"] = Field(
        "rotate", description="How pitch_pool reads a song: 'rotate': chunk j at the j-th shift of the pool "
        "(smallest first; a song with fewer chunks than shifts reads its chunks again until every shift is used), "
        "as cheap as the plain vector; 'every' chunk at every shift (one embedding per shift).")
    embedding_dim: int = Field(128, gt=0)
    projection_dim: int = Field(64, gt=0)
    channels: int = Field(32, gt=0)
    chunk_frames: int = Field(188, gt=0, description="Frames per training chunk (188 x 256 / 16 kHz ~ 3 s).")
    songs_per_batch: int = Field(16, gt=1)
    chunks_per_song: int = Field(2, gt=0)
    temperature: float = Field(0.1, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    epochs: int = Field(20, gt=0)
    steps_per_epoch: int = Field(40, gt=0)
    patience: int = Field(5, gt=0)
    seed: int = 0

    @field_validator("pitch_pool", mode="after")
    @classmethod
    def _pitch_pool_in_range(cls, shifts: tuple[float, ...]) -> tuple[float, ...]:
        if any(abs(s) > PITCH_POOL_MAX_SEMITONES for s in shifts):
            raise ValueError(f"timbre.pitch_pool {list(shifts)}: every shift must lie within ±{PITCH_POOL_MAX_SEMITONES} "
                             "semitones (a larger one moves the formants past any voice); e.g. [-2, -1, 0, 1, 2]")
        if len(set(shifts)) != len(shifts):
            raise ValueError(f"timbre.pitch_pool {list(shifts)} repeats a shift; list each once")
        return shifts


class EquivariantMelodyConfig(_Section):
    """The pitch-equivariant TCAE (recsys.models.pitch_tcae) and its contrastive training (recsys.training.melody).

    Views of a song (a crop of `view_seconds`, pitch-shifted and time-stretched per the two
    policies) are positives of their song, and of its pseudo-covers (each song's mutual
    nearest `pseudo_covers` songs by the untrained vector); other songs are negatives,
    except each song's `exclude_nearest` nearest, which may be covers nobody labelled.
    """

    channels: int = Field(8, gt=0)
    n_layers: int = Field(6, gt=0, description="Time dilations 1, 2, ... 2**(n_layers-1), causal.")
    pitch_kernel: int = Field(3, gt=0, description="Semitones each convolution spans (odd).")
    time_kernel: int = Field(3, gt=1)
    frame_stride: int = Field(2, gt=0, description="The model runs every this many log-mel frames (16 ms each; "
                              "the waveform pitch is computed every 2). 4 halves training and embedding time, equal on "
                              "the demo catalog but below 2 on covers catalogs (docs/melody.md).")
    smooth_frames: int = Field(11, gt=0, description="The song vector's moving mean of the pitch classes, in log-mel "
                               "frames (recsys.pitch.SMOOTH_FRAMES): 11 = 176 ms, about one vibrato cycle, so that a "
                               "swing of up to a semitone reads as its note; 3 (48 ms) before 2026-12-02.")
    pitch_shift: AugmentPolicy = Field(AugmentPolicy(role="positive", low=0.0, high=2.0),
                                       description="Semitones (whole, either way): positive or off.")
    time_stretch: AugmentPolicy = Field(AugmentPolicy(role="positive", low=1.0, high=1.15),
                                        description="Tempo factor (either way): positive or off.")
    view_seconds: float = Field(20.0, gt=0, description="Length of a training view (shorter songs are tiled).")
    production: float = Field(0.0, ge=0, le=1, description="Share of training views put through a production chain "
                              "of their own on the salience (recsys.augment.produce_salience: EQ tilt, a high-pass's "
                              "low-pitch loss, a room's tail, a noise floor).")
    vibrato: float = Field(0.5, ge=0, le=1, description="Share of training views sung with a vibrato of their own "
                           "(recsys.augment.vibrato_salience: 30-100 cents, 4.5-7 Hz), positives of their song: the "
                           "model learns to read a swinging note at its centre (docs/melody.md; 0 before 2026-12-03).")
    songs_per_step: int = Field(16, gt=1, description="Songs per step, half of them pseudo-covers of the other half.")
    steps_per_epoch: int = Field(10, gt=0)
    temperature: float = Field(0.1, gt=0)
    reconstruction_weight: float = Field(0.1, ge=0)
    pseudo_covers: int = Field(2, ge=0, description="Mutual nearest songs that count as covers (0: none).")
    exclude_nearest: int = Field(8, ge=0, description="Nearest songs never used as negatives.")

    @model_validator(mode="after")
    def _positive_roles(self) -> EquivariantMelodyConfig:
        for name in ("pitch_shift", "time_stretch"):
            if getattr(self, name).role == "negative":
                raise ValueError(f"melody.equivariant.{name} cannot be 'negative': the same melody in another "
                                 "key or tempo is the same melody; use 'positive' or 'off'")
        return self


class MelodyConfig(_Section):
    """TCAE melody autoencoder (recsys.models.pitch_tcae or recsys.models.tcae; recsys.training)."""

    model: Literal["equivariant", "frame"] = Field(
        "equivariant",
        description="equivariant: the pitch-equivariant TCAE over the waveform pitch, trained contrastively, whose "
        "refined pitch gives the melody vector (melody.equivariant); frame: the per-frame TCAE over log-mel "
        "features, reconstruction only, song vector by `pool` (the descriptor for a profile pool).",
    )
    equivariant: EquivariantMelodyConfig = EquivariantMelodyConfig()
    # The frame model's settings. Defaults chosen by bench/bench_melody.py (docs/melody.md): pitch input with
    # key invariance; the voiced interval-lag song vector (finer pitch, strongest class, loud frames weighted).
    input: Literal["mel", "pitch", "mel+pitch"] = "pitch"
    key_invariant: bool = True
    pool: Literal["stats", "stats+lag", "interval-lag", "voiced-interval-lag"] = Field(
        "voiced-interval-lag",
        description="Song vector: latent statistics, + their lag profile, the interval-lag profile, or that profile "
        "over near-hard pitch classes of a 1/3-semitone harmonic sum with loud frames weighted up.",
    )
    pitch_source: Literal["waveform", "mel"] = Field(
        "waveform",
        description="Where the voiced-interval-lag vector reads pitch: a 1024-point STFT of the voiced waveform "
        "(resolves low voices; melody P@1 0.8 on the demo) or the log-mel's harmonic sum (0.56; no waveform needed).",
    )
    channels: int = Field(32, gt=0)
    latent_dim: int = Field(16, gt=0)
    kernel_size: int = Field(3, gt=1)
    n_layers: int = Field(8, gt=0, description="Dilations 1, 2, 4, ... 2**(n_layers-1) per block.")
    n_blocks: int = Field(1, gt=0)
    chunk_frames: int = Field(512, gt=0)
    chunk_overlap: int = Field(128, ge=0)
    batch_size: int = Field(16, gt=0)
    # Both models (defaults chosen for the equivariant one: docs/melody.md).
    learning_rate: float = Field(3e-3, gt=0)
    epochs: int = Field(12, gt=0, description="Epochs (equivariant: of melody.equivariant.steps_per_epoch steps).")
    patience: int = Field(4, gt=0)
    seed: int = 0


class QuestionWeights(_Section):
    """Shares of timbre and melody evidence in one question's ranking (recsys.fusion)."""

    timbre: float = Field(..., ge=0)
    melody: float = Field(..., ge=0)

    @model_validator(mode="after")
    def _not_both_zero(self) -> QuestionWeights:
        if self.timbre == 0 and self.melody == 0:
            raise ValueError("the timbre and melody weights of a question cannot both be 0")
        return self


class FusionConfig(_Section):
    """How timbre and melody similarities combine, per question the user asks (recsys.fusion)."""

    calibration: Literal["zscore", "none"] = Field(
        "zscore", description="zscore: each similarity standardised against the catalog's own distribution "
        "before weighting, so weights are shares of evidence; none: raw cosines.")
    singer: QuestionWeights = Field(QuestionWeights(timbre=1.0, melody=0.0),
                                    description="'Who sounds like this singer / sings like this recording?'")
    song: QuestionWeights = Field(QuestionWeights(timbre=0.5, melody=0.5), description="'Similar songs.'")
    melody: QuestionWeights = Field(QuestionWeights(timbre=0.0, melody=1.0), description="'The same melody.'")

    @model_validator(mode="before")
    @classmethod
    def _fill_each_question(cls, data: Any) -> Any:
        """A layer may set one weight of a question (`fusion: {song: {melody: 0.8}}`): the other keeps its default."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for question in ("singer", "song", "melody"):
            given = out.get(question)
            if isinstance(given, dict):
                default = cls.model_fields[question].default.model_dump()
                out[question] = default | given
        return out


class IndexConfig(_Section):
    """FAISS index choice (recsys.index)."""

    kind: Literal["auto", "flat", "ivf", "ivfpq", "hnsw"] = "auto"
    # Exact search while it is fast enough, IVF-Flat while its updates are cheap, then IVF-PQ re-ranked
    # from 8-bit codes; the thresholds and probe counts come from bench/bench_index.py (docs/benchmarks.md).
    exact_max: int = Field(20_000, gt=0, description="With kind=auto, catalogs up to this size use exact search.")
    ivfpq_min: int = Field(
        100_000,
        gt=0,
        description="With kind=auto, catalogs past this size (and past exact_max) use ivfpq, smaller ones "
        "ivf (cheaper updates, no PQ training on few songs).",
    )
    nlist: int | None = Field(None, description="IVF lists (None: about 4 x sqrt(n) for ivf, sqrt(n) for ivfpq).")
    nprobe: int = Field(128, gt=0, description="IVF lists visited per query by kind=ivf.")
    pq_nprobe: int = Field(
        48, gt=0, description="IVF lists visited per query by kind=ivfpq."
    )
    pq_search_dims: int | None = Field(
        128,
        gt=0,
        description="ivfpq: the PQ candidates are searched on the vectors' top this-many principal axes "
        "(randomly rotated); None: on all d dimensions. The re-rank uses every dimension.",
    )
    pq_dims: int = Field(
        2,
        gt=0,
        description="ivfpq: searched dimensions per 4-bit PQ code (zero-padded to a multiple); "
        "fewer = larger codes, better candidates, slower scans.",
    )
    refine_factor: int = Field(
        16, ge=1, description="ivfpq re-ranks k x this many PQ candidates by their stored (8-bit) vectors."
    )
    use_gpu: bool = Field(True, description="Use a GPU index when faiss-gpu and CUDA are present (flat and ivf).")
    retrain_growth: float = Field(
        4.0, ge=1.0, description="An ivf / ivfpq index holding more than this many times the songs it was trained "
        "for is stale: the next job or load retrains it on the whole catalog (its centroids fit the old catalog).")


class SeparationConfig(_Section):
    """Accompaniment suppression before silence removal (recsys.separation); chosen at ingest."""

    # none: the audio as it is (a cappella); classical: REPET-SIM; neural: local pretrained weights
    method: Literal["none", "classical", "neural"] = "none"
    overlap_seconds: float = Field(2.0, ge=0, description="Cross-fade between consecutive windows.")
    # classical (REPET-SIM)
    block_seconds: float = Field(30.0, gt=0, description="Window the similarity matrix is computed over.")
    n_fft: int = Field(2048, gt=0, description="128 ms at 16 kHz: resolves the partials of a low voice.")
    hop_length: int = Field(512, gt=0)
    similar_frames: int = Field(40, ge=1, description="k: frames whose median models the background.")
    min_distance_seconds: float = Field(1.0, gt=0, description="Similar frames are at least this far apart.")
    mask_margin: float = Field(1.0, gt=0, description="> 1 suppresses more accompaniment and more voice.")
    mask_power: float = Field(2.0, gt=0, description="1: Rafii & Pardo's ratio mask; 2: Wiener-like.")
    voice_min_hz: float = Field(80.0, ge=0, description="Bins below this are accompaniment.")
    # neural
    weights: Path | None = Field(None, description="Local TorchScript file or state dict; never downloaded.")
    architecture: str | None = Field(None, description="Registered architecture for a state dict.")
    chunk_seconds: float = Field(10.0, gt=0, description="Window fed to the network at once.")
    model_sample_rate: int | None = Field(None, description="Rate the network expects (default: its own).")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _overlap_fits(self) -> SeparationConfig:
        for window in ("block_seconds", "chunk_seconds"):
            if 2 * self.overlap_seconds > getattr(self, window):
                raise ValueError(
                    f"separation.overlap_seconds ({self.overlap_seconds}) must be at most half of "
                    f"separation.{window} ({getattr(self, window)})"
                )
        return self


class DatasetConfig(_Section):
    """A catalog the project knows: a manifest CSV or a <singer>/<song>.<ext> folder."""

    description: str = ""
    source: str = Field(..., description="Path to a manifest CSV or a folder; 'generated' for the demo catalog.")
    generator: dict[str, Any] = Field(default_factory=dict)


class Settings(BaseSettings):
    """Everything configurable, typed and validated once."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_nested_delimiter="__", extra="forbid", populate_by_name=True
    )

    workspace: Path = Field(
        Path("~/.singer-recsys").expanduser(),
        validation_alias=AliasChoices("workspace", "RECSYS_HOME", "RECSYS_WORKSPACE"),
        description="Folder holding catalog.db, models/, index/ and projections/ of one catalog.",
    )
    db_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<workspace>/catalog.db.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    audio: AudioConfig = AudioConfig()
    features: FeatureConfig = FeatureConfig()
    timbre: TimbreConfig = TimbreConfig()
    melody: MelodyConfig = MelodyConfig()
    fusion: FusionConfig = FusionConfig()
    index: IndexConfig = IndexConfig()
    separation: SeparationConfig = SeparationConfig()
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)

    @field_validator("workspace", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.workspace / 'catalog.db').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: CLI flags (init) > environment > YAML files.
        return (init_settings, env_settings, _FileLayer(settings_cls))


_FILE_DATA: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "recsys_file_settings", default={})  # noqa: B039 - never mutated: each load sets a new dict


class _FileLayer(PydanticBaseSettingsSource):
    """Settings read from YAML files by load_settings, below the environment."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return _FILE_DATA.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_DATA.get())


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 - a bad file is a bad value, reported like the others
            f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return data


def _manifest_layer(path: Path) -> dict[str, Any]:
    """The settings a data manifest declares: its `settings:` section and its `datasets:`."""
    data = read_yaml(path)
    unknown = set(data) - {"settings", "datasets", "version"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}; valid: settings, datasets, version")
    layer = dict(data.get("settings") or {})
    if data.get("datasets"):
        layer["datasets"] = data["datasets"]
    return layer


def load_settings(
    config_file: Path | None = None,
    manifest_file: Path | None = DEFAULT_MANIFEST,
    **overrides: Any,
) -> Settings:
    """Build Settings from the manifest, a config file, the environment and explicit overrides.

    `overrides` are the CLI flags (highest precedence); None values are ignored so
    that unset flags do not mask lower layers.
    """
    layer: dict[str, Any] = {}
    if manifest_file is not None and Path(manifest_file).exists():
        layer = _deep_merge(layer, _manifest_layer(Path(manifest_file)))
    if config_file is not None:
        data = read_yaml(Path(config_file))
        layer = _deep_merge(layer, data.get("settings", data))
    token = _FILE_DATA.set(layer)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _FILE_DATA.reset(token)
