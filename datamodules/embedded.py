"""The embedded speech corpus: real fortune sentences spoken by offline Debian voices.

`prepare_embedded_corpus(out_dir, config)` builds it from nothing but apt packages (no network):

1. sentences: unique speakable sentences of Debian's fortunes (`lightning_most.fortunes`), shuffled by seed and
   cut into disjoint pools: train / dev / test speech sentences and train / dev text-LM sentences;
2. speakers: every configured voice x (tempo, pitch) variant (`lightning_most.audio.offline_voices`); `num_test_speakers` of
   them are held out for test. train and dev use the seen speakers, test the held-out ones, so
   dev = held-out sentences, seen speakers; test = held-out sentences and held-out speakers;
3. audio: 16 kHz mono 16-bit wav, synthesized over `num_jobs` processes;
4. units: a k-means unit quantizer is fit on the train split's encoder frames and every cut gets its
   discrete units (`units.py`), the TTS targets.

Layout of `out_dir` (lhotse naming, `{corpus}_{manifest}_{split}.jsonl.gz`):

    wav/{speaker}/{utterance}.wav
    embedded_recordings_{train,dev,test}.jsonl.gz     RecordingSet
    embedded_supervisions_{train,dev,test}.jsonl.gz   SupervisionSet (text, speaker, custom.voice)
    embedded_cuts_{train,dev,test}.jsonl.gz           CutSet, with the custom tensor field `units`
    units/                                            unit arrays referenced by the cuts
    unit_quantizer.safetensors                        the k-means centroids
    text_{train,dev}.jsonl.gz                         {"id", "text"} lines for the text-LM task
    corpus.json                                       config, counts, hours, build seconds

Deterministic given `seed`: the same config writes the same manifests (and, the synthesizers being
deterministic, the same audio). A finished corpus whose `corpus.json` records the same config is
reused as is.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from tqdm import tqdm

from datamodules.units import QUANTIZER_FILE, UnitsConfig, fit_and_attach_units
from lightning_most.audio.offline_voices import DEFAULT_VOICES, Speaker, get_voice, speak
from lightning_most.fortunes import fortune_sentences

CORPUS = "embedded"
SPLITS = ("train", "dev", "test")
TEXT_SPLITS = ("train", "dev")
log = logging.getLogger(__name__)


@dataclass
class EmbeddedCorpusConfig:
    """Size, voices and seed of the embedded corpus."""

    num_train: int = 1500
    """Train utterances (one distinct sentence each)."""
    num_dev: int = 100
    """Dev utterances: sentences not in train, spoken by train speakers."""
    num_test: int = 100
    """Test utterances: sentences not in train or dev, spoken by the held-out speakers."""
    num_text_train: int = 5000
    """Text-only sentences for the text-LM task (disjoint from every speech sentence)."""
    num_text_dev: int = 200
    voices: tuple[str, ...] = DEFAULT_VOICES
    """Voices from `lightning_most.audio.offline_voices.VOICES` (espeak-ng ones, e.g. `espeakng_enus`, add variety)."""
    variants: tuple[tuple[float, int], ...] = ((1.0, 0), (1.1, 150), (0.9, -150))
    """(sox tempo factor, pitch shift in cents) per speaker derived from each voice."""
    num_test_speakers: int = 3
    """Speakers held out of train and dev, chosen by `seed`."""
    min_words: int = 3
    max_words: int = 20
    seed: int = 0
    num_jobs: int = 2
    """Synthesis processes."""
    chunk_size: int = 25
    """Sentences per synthesis job (festival speaks a whole chunk from one process)."""
    units: UnitsConfig = field(default_factory=UnitsConfig)
    """Discrete units for the TTS task."""

    def __post_init__(self) -> None:
        if isinstance(self.units, dict):
            self.units = UnitsConfig(**self.units)
        num_speakers = len(self.voices) * len(self.variants)
        if not 0 < self.num_test_speakers < num_speakers:
            raise ValueError(
                f"EmbeddedCorpusConfig.num_test_speakers={self.num_test_speakers} must lie in [1, {num_speakers - 1}] "
                f"for {len(self.voices)} voices x {len(self.variants)} variants."
            )
        for name in ("num_train", "num_dev", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"EmbeddedCorpusConfig.{name} must be >= 1, got {getattr(self, name)}.")


@dataclass
class EmbeddedCorpus:
    """Paths of a built embedded corpus."""

    root: Path
    cuts: dict[str, Path]
    recordings: dict[str, Path]
    supervisions: dict[str, Path]
    text: dict[str, Path]
    unit_quantizer: Path
    summary: Path


def corpus_paths(out_dir: str | Path) -> EmbeddedCorpus:
    """Where `prepare_embedded_corpus` writes each manifest under `out_dir`."""
    root = Path(out_dir)
    return EmbeddedCorpus(
        root=root,
        cuts={s: root / f"{CORPUS}_cuts_{s}.jsonl.gz" for s in SPLITS},
        recordings={s: root / f"{CORPUS}_recordings_{s}.jsonl.gz" for s in SPLITS},
        supervisions={s: root / f"{CORPUS}_supervisions_{s}.jsonl.gz" for s in SPLITS},
        text={s: root / f"text_{s}.jsonl.gz" for s in TEXT_SPLITS},
        unit_quantizer=root / QUANTIZER_FILE,
        summary=root / "corpus.json",
    )


@dataclass(frozen=True)
class Utterance:
    """One sentence to speak: its id, text, speaker and split."""

    id: str
    text: str
    speaker: Speaker
    split: str


def build_speakers(config: EmbeddedCorpusConfig) -> list[Speaker]:
    """Every voice x variant, in config order."""
    return [Speaker(get_voice(v), tempo, pitch) for v in config.voices for tempo, pitch in config.variants]


def plan_utterances(config: EmbeddedCorpusConfig, sentences: list[str]) -> tuple[list[Utterance], dict[str, list[str]]]:
    """Assign shuffled sentences to splits and speakers; also return the text-LM sentences per split."""
    rng = random.Random(config.seed)
    pool = sentences[:]
    rng.shuffle(pool)
    sizes = {
        "train": config.num_train,
        "dev": config.num_dev,
        "test": config.num_test,
        "text_train": config.num_text_train,
        "text_dev": config.num_text_dev,
    }
    if sum(sizes.values()) > len(pool):
        raise ValueError(
            f"the embedded corpus asks for {sum(sizes.values())} distinct sentences ({sizes}) but the fortunes give "
            f"{len(pool)} with {config.min_words}-{config.max_words} words: lower the num_* fields."
        )
    chunks, start = {}, 0
    for name, n in sizes.items():
        chunks[name], start = pool[start : start + n], start + n
    speakers = build_speakers(config)
    held_out = set(rng.sample(range(len(speakers)), config.num_test_speakers))
    seen = [s for i, s in enumerate(speakers) if i not in held_out]
    unseen = [s for i, s in enumerate(speakers) if i in held_out]
    utterances = []
    for split, split_speakers in (("train", seen), ("dev", seen), ("test", unseen)):
        for i, text in enumerate(chunks[split]):
            speaker = split_speakers[i % len(split_speakers)]
            utterances.append(Utterance(f"{speaker.id}-{split}-{i:05d}", text, speaker, split))
    return utterances, {"train": chunks["text_train"], "dev": chunks["text_dev"]}


def _wav_path(root: Path, utt: Utterance) -> Path:
    return root / "wav" / utt.speaker.id / f"{utt.id}.wav"


def _speak_chunk(job: tuple[Path, list[Utterance]]) -> int:
    root, chunk = job
    speak(chunk[0].speaker, [(u.text, _wav_path(root, u)) for u in chunk])
    return len(chunk)


def synthesize(root: Path, utterances: list[Utterance], num_jobs: int, chunk_size: int) -> None:
    """Speak every utterance into `root/wav/`, `chunk_size` sentences of one speaker per job."""
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker.id, []).append(u)
    jobs = [
        (root, group[i : i + chunk_size]) for group in by_speaker.values() for i in range(0, len(group), chunk_size)
    ]
    with ProcessPoolExecutor(max_workers=num_jobs) as pool, tqdm(
        total=len(utterances), desc="embedded corpus: speaking", unit="utt"
    ) as bar:
        for n in pool.map(_speak_chunk, jobs):
            bar.update(n)


def write_manifests(root: Path, utterances: list[Utterance]) -> dict[str, CutSet]:
    """Recording, supervision and cut manifests of each split, from the synthesized wavs."""
    paths = corpus_paths(root)
    cuts = {}
    for split in SPLITS:
        recordings, supervisions = [], []
        for u in (u for u in utterances if u.split == split):
            recording = Recording.from_file(_wav_path(root, u), recording_id=u.id)
            recordings.append(recording)
            supervisions.append(
                SupervisionSegment(
                    id=u.id,
                    recording_id=u.id,
                    start=0.0,
                    duration=recording.duration,
                    channel=0,
                    text=u.text,
                    language="English",
                    speaker=u.speaker.id,
                    custom={"voice": u.speaker.voice.name},
                )
            )
        RecordingSet.from_recordings(recordings).to_file(paths.recordings[split])
        SupervisionSet.from_segments(supervisions).to_file(paths.supervisions[split])
        cuts[split] = CutSet.from_cuts(
            dataclasses.replace(recording.to_cut(), supervisions=[segment])
            for recording, segment in zip(recordings, supervisions)
        )
    return cuts


def write_text(path: Path, sentences: list[str], prefix: str) -> None:
    """Write sentences as `{"id", "text"}` jsonl.gz lines."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, text in enumerate(sentences):
            f.write(json.dumps({"id": f"{prefix}-{i:06d}", "text": text}) + "\n")


def _config_json(config: EmbeddedCorpusConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def prepare_embedded_corpus(
    out_dir: str | Path = "data/embedded", config: EmbeddedCorpusConfig | None = None
) -> EmbeddedCorpus:
    """Build the embedded corpus under `out_dir` (see the module docstring), or reuse a finished one."""
    config = config or EmbeddedCorpusConfig()
    root = Path(out_dir).resolve()
    paths = corpus_paths(root)
    if paths.summary.is_file() and json.loads(paths.summary.read_text()).get("config") == _config_json(config):
        log.info("embedded corpus in %s is already built with this config: reusing it", root)
        return paths
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sentences = fortune_sentences(min_words=config.min_words, max_words=config.max_words)
    utterances, text = plan_utterances(config, sentences)
    synthesize(root, utterances, config.num_jobs, config.chunk_size)
    synthesis_seconds = time.perf_counter() - start
    cuts = write_manifests(root, utterances)
    for split in TEXT_SPLITS:
        write_text(paths.text[split], text[split], f"fortune-{split}")
    unit_stats = fit_and_attach_units(cuts, paths.cuts, root, config.units, config.seed)
    seconds = time.perf_counter() - start
    summary = {
        "config": _config_json(config),
        "build_seconds": round(seconds, 1),
        "synthesis_seconds": round(synthesis_seconds, 1),
        "units": unit_stats,
        "splits": {
            split: {
                "utterances": len(cuts[split]),
                "hours": round(sum(c.duration for c in cuts[split]) / 3600, 3),
                "speakers": sorted({c.supervisions[0].speaker for c in cuts[split]}),
            }
            for split in SPLITS
        },
        "text_sentences": {split: len(text[split]) for split in TEXT_SPLITS},
    }
    paths.summary.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("embedded corpus built in %.1f s: %s", seconds, {s: summary["splits"][s]["hours"] for s in SPLITS})
    return paths


def main(argv: list[str] | None = None) -> EmbeddedCorpus:
    """Build the embedded speech corpus (fortunes spoken by offline voices).

    Command line: `python -m lightning_most prepare [--out_dir DIR] [--num_train N] ...`.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lightning_most prepare", description=prepare_embedded_corpus.__doc__)
    parser.add_argument("--out_dir", type=str, default="data/embedded", help="Output folder of the corpus.")
    parser.add_class_arguments(EmbeddedCorpusConfig, None)
    args = parser.parse_args(argv).as_dict()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out_dir = args.pop("out_dir")
    config = EmbeddedCorpusConfig(**args)
    paths = prepare_embedded_corpus(out_dir, config)
    print(paths.summary.read_text(), file=sys.stdout)
    return paths
