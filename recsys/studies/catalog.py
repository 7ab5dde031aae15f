"""Labelled songs for the studies, and the held-out split by song.

A study needs every song's singer (and, for melody, its melody id), its voiced audio
and its features. Songs come from a manifest (`recsys evaluate`) or from the catalog's
rows (`recsys experiment ...`). Content hashes carry recsys.fingerprint.audio_tag, as
the product's training songs do, so a model trained on audio cleaned another way
(separation, vocal activity, silence thresholds) gets a version of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from recsys.config import AudioConfig, FeatureConfig, SeparationConfig
from recsys.evaluation import split_by_song
from recsys.features import SongFeatures, voiced_wave_features
from recsys.fingerprint import audio_tag
from recsys.training.data import TrainingSong

if TYPE_CHECKING:
    from recsys.separation import Separator

TEST_FRACTION = 0.25  # 2 of 8 songs per singer held out on the demo catalog
MEL = frozenset({"mel"})
MEL_AND_PITCH = frozenset({"mel", "pitch"})

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class LabelledSong:
    """One catalog song as an evaluation needs it."""

    song_id: int  # row number in the manifest
    path: Path
    singer: str
    melody_id: str | None
    content_hash: str  # the file's hash plus the audio tag
    wave: torch.Tensor  # (N,) voiced, normalised audio at the working rate (recsys.audio.voiced_audio)
    features: SongFeatures  # of `wave`

    @property
    def mel(self) -> torch.Tensor:
        return self.features.mel

    def training_song(self) -> TrainingSong:
        """The song as the trainers take it (metadata 'melody' holds the melody id)."""
        meta = {"melody": self.melody_id} if self.melody_id is not None else {}
        return TrainingSong(self.song_id, self.features, self.singer, self.content_hash, meta)


def load_labelled_catalog(
    manifest: str | Path,
    audio_cfg: AudioConfig,
    feat_cfg: FeatureConfig,
    progress: Progress | None = None,
    separator: Separator | None = None,
    separation: SeparationConfig | None = None,
    needs: Iterable[str] = MEL,
) -> list[LabelledSong]:
    """Decode every song of a manifest (CSV or <singer>/<song> folder) that has a singer label.

    An evaluation needs a clean catalog: a bad row, an unreadable file or a song
    without a singer is an error naming it (fix or drop it from the manifest).
    `separator` (recsys.separation) suppresses accompaniment first; `separation`, its
    settings (default: none), goes into the audio tag of the content hashes. `needs`:
    the features to compute (recsys.features.FEATURES).
    """
    from recsys.audio import AudioError, content_hash
    from recsys.manifest import ManifestProblem, iter_manifest

    tag = audio_tag(audio_cfg, separation or SeparationConfig())
    items = list(iter_manifest(manifest))
    songs: list[LabelledSong] = []
    for i, item in enumerate(items):
        if isinstance(item, ManifestProblem):
            raise ValueError(  # noqa: TRY004 - a bad manifest row, not a programming error
                f"{manifest}: {item.message} ({item.cause}); evaluation needs every row usable"
            )
        if item.singer is None:
            raise ValueError(
                f"{manifest}: {item.path} has no singer; evaluation needs a `singer` column (or a "
                f"<singer>/<song> folder) for every song"
            )
        try:
            wave, features = voiced_wave_features(item.path, needs, audio_cfg, feat_cfg, separator)
        except AudioError as e:
            raise ValueError(f"{manifest}: cannot use {item.path}: {e}") from e
        songs.append(
            LabelledSong(
                song_id=i,
                path=item.path,
                singer=item.singer,
                melody_id=item.metadata.get("melody_id"),
                content_hash=content_hash(item.path) + tag,
                wave=wave,
                features=features,
            )
        )
        if progress is not None:
            progress("decode", i + 1, len(items))
    if len(songs) < 4:
        raise ValueError(f"{manifest}: {len(songs)} songs; an evaluation needs at least 4 (2 singers x 2 songs)")
    return songs


def catalog_songs(
    rows: Sequence[dict[str, Any]],
    audio_cfg: AudioConfig,
    feat_cfg: FeatureConfig,
    need_waves: bool = False,
    separator: Separator | None = None,
    separation: SeparationConfig | None = None,
) -> tuple[list[TrainingSong], list[torch.Tensor]]:
    """Recommender.songs() rows -> TrainingSong (log-mel and waveform pitch; metadata 'melody' from
    'melody_id') and, with `need_waves`, their voiced waves (else an empty list).

    Pass the workspace's separator and separation settings to follow its audio path.
    """
    tag = audio_tag(audio_cfg, separation or SeparationConfig())
    songs, waves = [], []
    for row in rows:
        wave, features = voiced_wave_features(row["path"], MEL_AND_PITCH, audio_cfg, feat_cfg, separator)
        meta = dict(row.get("metadata") or {})
        if "melody_id" in meta:
            meta["melody"] = meta["melody_id"]
        digest = (row.get("content_hash") or "") + tag
        songs.append(TrainingSong(row["id"], features, row["singer"], digest, meta))
        if need_waves:
            waves.append(wave)
    return songs, waves


def split_songs(
    singers: Sequence[str], test_fraction: float = TEST_FRACTION, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), sorted: every singer with >= 2 songs has songs on both sides.

    recsys.evaluation.split_by_song (mode "per_singer"), checked: at least one held-out song.
    """
    train, test = split_by_song(range(len(singers)), test_fraction, seed, mode="per_singer", labels=singers)
    if not test:
        raise ValueError("no singer has 2 or more songs: nothing can be held out for evaluation")
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def split_training_songs(
    songs: Sequence[TrainingSong], test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """split_songs on TrainingSong: every song needs a singer."""
    missing = sum(s.singer is None for s in songs)
    if missing:
        raise ValueError(f"{missing} catalog songs have no singer; the studies need a singer label on every song")
    train_idx, test_idx = split_songs([s.singer for s in songs], test_fraction, seed)  # type: ignore[misc]
    return train_idx.tolist(), test_idx.tolist()
