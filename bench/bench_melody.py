"""Melody vectors on the demo catalog: chroma profiles and TCAE variants against chroma baselines, plus speed.

    .venv/bin/python bench/bench_melody.py [--threads 2] [--epochs N] [--variants equivariant mel pitch-ki ...]
        [--seeds 3] [--singers 24] [--songs 8] [--seconds 30] [--cache DIR] [--markdown docs/melody_table.md]

The catalog is recsys.corpus.generate_corpus (the demo catalog: 24 singers x 8 songs
x 30 s, about half the songs on melodies shared by 2-4 singers, each singer in their
own key and at +-6 % tempo). Query sets "+2" / "-2": every shared-melody song sung
again (a new take) 2 semitones up / down; "ts0.9" / "ts1.1": those songs time-stretched
10 % slower / faster (recsys.augment.time_stretch_wave). The TCAE is unsupervised, so each variant
is trained on the catalog it serves, as the product does; labels are only used to
score. `--variants` with no names skips training and scores only the profiles; the default
trains the product's model (`equivariant`, the pitch-equivariant TCAE; `--seeds N` trains it
N times), the others are per-frame TCAE variants (`melody.model: frame`).
`--cache DIR` keeps the synthesised catalog (DIR/data.pt) so that later runs skip synthesis.

Profile rows (no learning):
  chroma-stats            mean and std of the chroma (key-dependent baseline)
  interval-lag            recsys.pitch.interval_lag_profile of the 48-band harmonic-sum chroma
  voiced-interval-lag     recsys.pitch.voiced_interval_lag_profile from the log-mel (1/3-semitone
                          harmonic sum, strongest pitch class, loud frames weighted): pitch_source 'mel'
  ... waveform pitch      the same descriptor over recsys.pitch.wave_pitch (1024-point STFT of the
                          waveform): pitch_source 'waveform', the product default (without the
                          unison interval, unison=False; the "with unison" row keeps it)
  ... oracle              the same descriptors over the corpus's note schedule (the notes the
                          synthesiser was asked to sing): the ceiling a perfect pitch track gives

Figures:
  P@1        nearest other song is the same melody by another singer (shared-melody songs)
  P@1 +-2    the same for the transposed takes (their own original left out), mean of +2 and -2
  valid      the monitored loss at the best epoch: held-out reconstruction MSE (per-frame TCAE) or the
             contrastive loss on fixed views (equivariant TCAE); not comparable across rows
  train s    wall time of train_melody
  embed ms   per song, and for a 3-minute song after warm-up
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import soundfile as sf
import torch

from recsys import corpus, pitch
from recsys.config import FeatureConfig, MelodyConfig, Settings
from recsys.encoders import IntervalLagConfig, IntervalLagMelody
from recsys.features import SongFeatures, log_mel
from recsys.models.tcae import TCAEConfig
from recsys.production import pitch_copy
from recsys.studies.melody_variants import compare_melody_variants, melody_precision_at_1
from recsys.training.data import TrainingSong

SR = 16000
FEAT = FeatureConfig()
VARIANTS = {
    "equivariant": {"model": "equivariant"},  # the product's default melody model
    "equivariant-produced": {"model": "equivariant", "equivariant": {"production": 0.5}},  # half its views produced
    "equivariant-no-vibrato": {"model": "equivariant", "equivariant": {"vibrato": 0.0}},  # the default before 2026-12-03
    "equivariant-vibrato-all": {"model": "equivariant", "equivariant": {"vibrato": 1.0}},  # every view with vibrato
    "mel": {"model": "frame", "input": "mel"},
    "pitch": {"model": "frame", "input": "pitch"},
    "mel+pitch": {"model": "frame", "input": "mel+pitch"},
    "pitch-ki": {"model": "frame", "input": "pitch", "key_invariant": True},
    "mel+pitch-ki": {"model": "frame", "input": "mel+pitch", "key_invariant": True},
}
Song = dict  # mel, wave, singer, melody, sched [(onset s, offset s, midi)], source (queries)


def demo_catalog(out: Path, n_singers: int, songs: int, seconds: float, common: int = 0,
                 produced: bool = False, voice_models: tuple[str, ...] = ("rosenberg_cascade",)) -> dict:
    """Generate the demo catalog and the +-2 semitone query sets: {"cat": [Song], "q": {"+2": [Song], "-2": ...}}.

    `common` melodies sung by every singer (a covers catalog); `produced`: every song through its own
    production chain (room, EQ, band limit, noise), and the +-2 queries pitch-shifted copies of the
    produced songs (formants move) instead of new clean takes. `voice_models`: the synthesisers the
    singers are dealt from (recsys.voicemodel.VOICE_MODELS).
    """
    manifest = corpus.generate_corpus(out, n_singers, songs, seconds, seed=0, sample_rate=SR, workers=2,
                                      common_melodies=common, produced=produced,
                                      voice_models=voice_models)
    with open(manifest, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    voices = {v.name: v for v in corpus.make_singers(n_singers, 0, voice_models)}
    n_mel = 1 + max(int(r["melody_id"].split("_")[1]) for r in rows)
    melodies = {m.melody_id: m for m in corpus.make_melodies(n_mel, 0)}
    sung_by: dict[str, set] = {}
    for r in rows:
        sung_by.setdefault(r["melody_id"], set()).add(r["singer"])

    def song(wave, voice, melody, transpose: int, **extra) -> Song:
        notes = corpus.note_schedule(voice, melody, seconds, transpose)
        wave = torch.from_numpy(wave)
        return {"mel": log_mel(wave, FEAT, SR), "wave": wave, "singer": voice.name, "melody": melody.melody_id,
                "sched": [(n.onset_s, n.offset_s, n.midi) for n in notes], **extra}

    data: dict = {"cat": [], "q": {"+2": [], "-2": []}}
    for i, r in enumerate(rows):
        wave, sr = sf.read(out / r["path"], dtype="float32")
        assert sr == SR
        voice = voices[r["singer"]]
        melody = replace(melodies[r["melody_id"]], tempo_bpm=float(r["tempo_bpm"]))  # as performed
        transpose = int(r["key_shift"]) - corpus.key_for(voice, melody) + melody.tonic_midi
        data["cat"].append(song(wave, voice, melody, transpose))
        if len(sung_by[r["melody_id"]]) < 2:
            continue
        for name, shift in (("+2", 2), ("-2", -2)):
            if produced:
                take = pitch_copy(wave, SR, float(shift))
            else:
                take = corpus.sing(voice, melody, seconds, SR, seed=10_000 + i, transpose=transpose + shift)
            data["q"][name].append(song(take, voice, melody, transpose + shift, source=i))
    return data


TEMPO_RATES = (0.9, 1.1)


def add_tempo_queries(data: dict) -> None:
    """Query sets "ts0.9" / "ts1.1": each shared-melody catalog song time-stretched (pitch kept)."""
    from recsys.augment import time_stretch_wave

    sources = sorted({s["source"] for s in data["q"]["+2"]})
    data["tempo"] = {}
    for rate in TEMPO_RATES:
        songs = []
        for i in sources:
            s = data["cat"][i]
            wave = time_stretch_wave(s["wave"], rate)
            songs.append({**s, "wave": wave, "mel": log_mel(wave, FEAT, SR), "source": i,
                          "sched": [(a / rate, b / rate, m) for a, b, m in s["sched"]]})
        data["tempo"][f"ts{rate:g}"] = songs


def oracle_chroma(s: Song) -> torch.Tensor:
    """(12, T) log chroma of the scheduled notes: one-hot while a note is written, flat in rests."""
    n = s["mel"].shape[-1]
    t = torch.arange(n) * FEAT.hop_length / SR
    out = torch.zeros(pitch.N_CHROMA, n)
    for onset, offset, midi in s["sched"]:
        row = torch.full((pitch.N_CHROMA,), -10.0)
        row[round(midi) % pitch.N_CHROMA] = 0.0
        out[:, (t >= onset) & (t < offset)] = row[:, None]
    return out


def score_profiles(data: dict, lags: list[int]) -> list[dict]:
    """Rows for the descriptors that need no training (module docstring)."""
    semitone = pitch.harmonic_matrix(FEAT, SR)
    fine = pitch.harmonic_matrix(FEAT, SR, bins_per_semitone=pitch.FINE_BINS)

    def voiced(sal: torch.Tensor, mel: torch.Tensor, unison: bool = False, bands: bool = True) -> torch.Tensor:
        return pitch.voiced_interval_lag_profile(
            pitch.voiced_chroma(sal), pitch.voicing_weight(mel), lags, unison, bands)

    def oracle_voiced(s: Song) -> torch.Tensor:
        chroma = oracle_chroma(s)
        written = (chroma.max(0).values > chroma.min(0).values).float()
        return pitch.voiced_interval_lag_profile(pitch.chroma_distribution(chroma), written, lags)

    descriptors: dict[str, Callable[[Song], torch.Tensor]] = {
        "chroma-stats (baseline)": lambda s: pitch.chroma_stats(s["mel"], semitone),
        "interval-lag (previous default)": lambda s: pitch.interval_lag_profile(
            pitch.fold_chroma(pitch.pitch_salience(s["mel"], semitone)), lags),
        "voiced-interval-lag, log-mel pitch": lambda s: voiced(pitch.fine_semitone_salience(s["mel"], fine), s["mel"]),
        "voiced-interval-lag, waveform pitch, with unison, single lags": lambda s: voiced(
            pitch.wave_pitch(s["wave"], SR, FEAT.hop_length), s["mel"], unison=True, bands=False),
        "voiced-interval-lag, waveform pitch, single lags": lambda s: voiced(
            pitch.wave_pitch(s["wave"], SR, FEAT.hop_length), s["mel"], bands=False),
        "voiced-interval-lag, waveform pitch (default)": lambda s: voiced(
            pitch.wave_pitch(s["wave"], SR, FEAT.hop_length), s["mel"]),
        "interval-lag, oracle notes": lambda s: pitch.interval_lag_profile(oracle_chroma(s), lags),
        "voiced-interval-lag, oracle notes": oracle_voiced,
    }
    melody = [s["melody"] for s in data["cat"]]
    singer = [s["singer"] for s in data["cat"]]
    rows = []
    for name, fn in descriptors.items():
        began = time.perf_counter()
        xb = torch.stack([fn(s) for s in data["cat"]])
        row = {"name": name, "embed_ms": 1000 * (time.perf_counter() - began) / len(data["cat"]),
               "p_at_1": melody_precision_at_1(xb, melody, singer)}
        for q, songs in {**data["q"], **data.get("tempo", {})}.items():
            xq = torch.stack([fn(s) for s in songs])
            row[f"p_at_1_{q}"] = melody_precision_at_1(xb, melody, singer, xq, [s["source"] for s in songs])
        row["p_at_1_transposed"] = sum(row[f"p_at_1_{q}"] for q in data["q"]) / len(data["q"])
        rows.append(row)
        print(row, flush=True)
    return rows


def time_3min(data: dict, pool: str, pitch_source: str = "mel") -> float:
    """ms for one 3-minute song (catalog songs joined) after warm-up, median of 3: the interval-lag
    descriptor of `pool` (recsys.encoders.IntervalLagMelody), and with pitch_source 'waveform' the
    recsys.pitch.wave_pitch it reads, from the waveform."""
    melody = MelodyConfig(pool=pool, pitch_source=pitch_source)
    encoder = IntervalLagMelody(IntervalLagConfig.from_settings(melody, FEAT, SR))
    wave = torch.cat([s["wave"] for s in data["cat"][:64]])
    wave = wave.repeat(1 + 180 * SR // wave.numel())[: 180 * SR]
    mel = log_mel(wave, FEAT, SR)

    def embed() -> torch.Tensor:
        wave_pitch = pitch.wave_pitch(wave, SR, FEAT.hop_length) if "pitch" in encoder.needs else None
        return encoder.embed_songs([SongFeatures(mel, wave_pitch)])[0]

    embed()
    times = []
    for _ in range(3):
        began = time.perf_counter()
        embed()
        times.append(time.perf_counter() - began)
    return 1000 * sorted(times)[1]


def _cell(row: dict, key: str, fmt: str = "{:.3f}") -> str:
    return fmt.format(row[key]) if key in row else "-"


def markdown(rows: list[dict]) -> str:
    lines = [
        ("| variant | P@1 | P@1 +2 | P@1 -2 | P@1 +-2 mean | P@1 tempo 0.9 | P@1 tempo 1.1 | valid | epochs | "
         "train s | embed ms/song | embed ms/3 min |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["name"], _cell(r, "p_at_1"), _cell(r, "p_at_1_+2"), _cell(r, "p_at_1_-2"),
                 _cell(r, "p_at_1_transposed"), _cell(r, "p_at_1_ts0.9"), _cell(r, "p_at_1_ts1.1"),
                 _cell(r, "valid_loss", "{:.4f}"), _cell(r, "epochs", "{}"),
                 _cell(r, "train_s", "{:.0f}"), _cell(r, "embed_ms", "{:.1f}"), _cell(r, "embed_3min_ms", "{:.0f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _features(s: Song) -> SongFeatures:
    """The log-mel and the waveform pitch, as the product computes them for its melody model."""
    return SongFeatures(s["mel"], pitch.wave_pitch(s["wave"], SR, FEAT.hop_length))


def _training_songs(data: dict) -> tuple[list[TrainingSong], dict[str, list[TrainingSong]]]:
    songs = [TrainingSong(i, _features(s), s["singer"], f"song_{i}", {"melody": s["melody"]})
             for i, s in enumerate(data["cat"])]
    queries = {q: [TrainingSong(100_000 + j, _features(s), s["singer"], "",
                                {"melody": s["melody"], "source": s["source"]})
                   for j, s in enumerate(qs)] for q, qs in {**data["q"], **data["tempo"]}.items()}
    return songs, queries


def check_targets(rows: list[dict], at: str) -> None:
    """Issue 16's melody targets, for each trained equivariant TCAE row: P@1 >= .95, every key / tempo query
    set >= .90, at least the descriptor's P@1, training within 3 minutes (on the demo catalog)."""
    from targets import check

    descriptor = next(r for r in rows if r["name"] == "voiced-interval-lag, waveform pitch (default)")
    for r in rows:
        if not r["name"].startswith("tcae equivariant"):
            continue
        name = r["name"].removeprefix("tcae ").removesuffix(" (refined-pitch profile)")
        queries = min(r[f"p_at_1_{q}"] for q in ("+2", "-2", "ts0.9", "ts1.1"))
        check("bench_melody", f"melody P@1, {name}", r["p_at_1"], 0.95, "", True, at)
        check("bench_melody", f"melody P@1 of +-2 semitone / +-10 % tempo queries (lowest), {name}", queries,
              0.90, "", True, at)
        check("bench_melody", f"melody P@1 minus the descriptor's, {name}", r["p_at_1"] - descriptor["p_at_1"], 0.0,
              "", True, at)
        check("bench_melody", f"TCAE training, {name}", r["train_s"], 180.0, "s", False, at)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--singers", type=int, default=24)
    ap.add_argument("--songs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--epochs", type=int, default=None, help="default: melody.epochs")
    ap.add_argument("--channels", type=int, default=None, help="the per-frame TCAE's (default: melody.channels)")
    ap.add_argument("--variants", nargs="*", default=["equivariant"], choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=1, help="train the equivariant TCAE with seeds 0 .. N-1")
    ap.add_argument("--common", type=int, default=0, help="melodies every singer sings (a covers catalog)")
    ap.add_argument("--produced", action="store_true", help="per-song production; +-2 queries are shifted copies")
    ap.add_argument("--voice-models", default="rosenberg_cascade",
                    help="comma-separated synthesisers the singers are dealt from (recsys.voicemodel.VOICE_MODELS)")
    ap.add_argument("--cache", type=Path, default=None, help="directory to keep / reuse the synthesised catalog in")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        cached = args.cache / "data.pt" if args.cache is not None else None
        if cached is not None and cached.exists():
            data = torch.load(cached, weights_only=False)
        else:
            data = demo_catalog(Path(tmp) / "corpus", args.singers, args.songs, args.seconds, args.common,
                                args.produced, tuple(args.voice_models.split(",")))
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save(data, cached)
        print(f"catalog: {len(data['cat'])} songs, {len(data['q']['+2'])} queries per transposition "
              f"({time.perf_counter() - began:.0f} s to synthesise or load)", flush=True)
        lags = TCAEConfig.from_settings(MelodyConfig(), FEAT, SR).lags
        add_tempo_queries(data)
        rows = score_profiles(data, lags)
        for row, pool, source in ((rows[1], "interval-lag", "mel"), (rows[2], "voiced-interval-lag", "mel"),
                                  (rows[5], "voiced-interval-lag", "waveform")):
            row["embed_3min_ms"] = time_3min(data, pool, source)
        if args.variants:
            songs, queries = _training_songs(data)
            base = MelodyConfig()
            sizes = {"epochs": args.epochs or base.epochs, "channels": args.channels or base.channels}
            variants = {}
            for name in args.variants:
                equivariant = name.startswith("equivariant")
                seeds = range(args.seeds) if equivariant else [0]
                for seed in seeds:
                    label = f"{name} seed {seed}" if equivariant and args.seeds > 1 else name
                    variants[label] = MelodyConfig(**VARIANTS[name], **sizes, seed=seed)
            settings = Settings(device="cpu", features=FEAT, audio={"sample_rate": SR})
            trained = compare_melody_variants(songs, songs, queries, variants, settings, Path(tmp) / "ws",
                                              log=lambda name, rec: print(name, rec, flush=True))
            for r in trained:  # the +-2 mean, as in the profile rows (the study averages every query set)
                r["p_at_1_transposed"] = (r["p_at_1_+2"] + r["p_at_1_-2"]) / 2
            rows += [r for r in trained if r["name"].startswith("tcae")]  # its baselines are rows above
    check_targets(rows, f"{len(data['cat'])} songs{', produced' if args.produced else ''}")
    table = markdown(rows)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
