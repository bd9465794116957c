"""Spoken instructions: speak the instruction side of instruction pairs with the offline voices.

`prepare_spoken_instructions(out_dir, config)` turns instruction pairs (the generated set of
`generated_instructions.py` by default, or shards such as converted SmolTalk, `smoltalk.py`) into
the data of the stage-2 tasks:

1. text: every pair of each split as an instruction shard (the text-instruct task reads train);
2. speakers: every voice x (tempo, pitch) variant, as in the embedded corpus (`lightning_most.audio.offline_voices`);
   `num_test_speakers` of them (chosen by `seed`) speak only test, so test = held-out questions
   spoken by held-out voices; train and dev use the others;
3. audio: each spoken pair's prompt as a 16 kHz wav (`num_jobs` processes, a progress bar); each
   distinct answer spoken once by `answer_voice`, the speech-to-speech target;
4. cuts: one per spoken prompt, supervision text = the response (the loss target), with
   `custom` = prompt, answers, relation, holdout and, given the corpus's `unit_quantizer`, the
   answer's discrete units `answer_units` (`cut.load_answer_units()` -> (U,), the quantizer's
   own encoder, as `units.py` gives the TTS targets);
5. spoken QA files of dev and test in the layout `lightning_most.evaluation.spoken_qa` reads;
6. with `features.kind == "whisper"`, the Whisper encoder states of every cut, stored once
   (`encoder_features.prepare_encoder_features`).

Layout of `out_dir`:

    instructions_{train,dev,test}.jsonl.gz          instruction shards (all pairs)
    wav/{speaker}/{id}.wav, answer_wav/{key}.wav    spoken prompts, spoken answers
    spoken_cuts_{train,dev,test}.jsonl.gz           CutSets of the speech-instruct task
    answer_units/                                   answer unit arrays referenced by the cuts
    spoken_qa_{dev,test}.jsonl                      {"id", "audio", "question", "answers"} lines
    whisper_features/                               stored encoder states (features.kind whisper)
    instructions.json                               config, counts, skips, seconds

Resumable: a wav that already holds audio is not spoken again, so an interrupted run continues
where it stopped, and a folder whose `instructions.json` records the same config is reused as is.
Bad pairs are counted per reason of `quality.py` and reported in `instructions.json` and the log:
a prompt or response that is empty or has no letters (`empty_text` / `non_text`), a prompt longer
than `max_prompt_words` (`too_long`), a prompt the synthesizer fails on (`missing_audio`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import torch
from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.array import Array
from lhotse.features.io import NumpyFilesWriter
from tqdm import tqdm

from datamodules.encoder_features import prepare_encoder_features
from datamodules.generated_instructions import GeneratedInstructionsConfig, generate_instructions
from datamodules.instructions import InstructionPair, read_instructions, write_instructions
from datamodules.quality import SkipLog, text_problem
from lightning_most.audio.features import FeatureConfig
from lightning_most.audio.offline_voices import DEFAULT_VOICES, Speaker, get_voice, speak

SPLITS: tuple[str, ...] = ("train", "dev", "test")
EVAL_SPLITS: tuple[str, ...] = ("dev", "test")
ANSWER_UNITS_FIELD = "answer_units"
WHISPER_FEATURES_DIR = "whisper_features"
log = logging.getLogger(__name__)


@dataclass
class SpokenInstructionsConfig:
    """Which pairs are spoken, by which voices, and how the work is split."""

    instructions: GeneratedInstructionsConfig = field(default_factory=GeneratedInstructionsConfig)
    """The generated instruction set (used when `instruction_files` is empty)."""
    instruction_files: dict[str, str] = field(default_factory=dict)
    """split -> instruction shard (`instructions.py` layout, e.g. converted SmolTalk); empty = the generated set."""
    num_spoken_train: int = 1500
    """Train pairs that are spoken (a seeded sample; all train pairs stay in the text shard)."""
    num_spoken_eval: int | None = None
    """Dev / test pairs that are spoken, each (None: all)."""
    voices: tuple[str, ...] = DEFAULT_VOICES
    variants: tuple[tuple[float, int], ...] = ((1.0, 0), (1.1, 150), (0.9, -150))
    """(sox tempo factor, pitch shift in cents) per speaker derived from each voice."""
    num_test_speakers: int = 3
    """Speakers who speak only the test split."""
    answer_voice: str = "flite_rms"
    """The voice that speaks the answers (the speech-to-speech targets)."""
    speak_answers: bool = True
    max_prompt_words: int = 60
    """Longer prompts are skipped (`too_long`)."""
    seed: int = 0
    num_jobs: int = 2
    """Synthesis processes."""
    chunk_size: int = 25
    """Prompts per synthesis job (one speaker per job)."""

    def __post_init__(self) -> None:
        if isinstance(self.instructions, dict):
            self.instructions = GeneratedInstructionsConfig(**self.instructions)
        num_speakers = len(self.voices) * len(self.variants)
        if not 0 < self.num_test_speakers < num_speakers:
            raise ValueError(
                f"SpokenInstructionsConfig.num_test_speakers={self.num_test_speakers} must lie in "
                f"[1, {num_speakers - 1}] for {len(self.voices)} voices x {len(self.variants)} variants."
            )
        unknown = sorted(set(self.instruction_files) - set(SPLITS))
        if unknown:
            raise ValueError(f"SpokenInstructionsConfig.instruction_files: unknown split(s) {unknown}; use {SPLITS}.")


@dataclass
class SpokenInstructions:
    """Paths of a prepared spoken-instruction folder."""

    root: Path
    text: dict[str, Path]
    cuts: dict[str, Path]
    qa: dict[str, Path]
    summary: Path

    def feature_cuts(self, split: str) -> Path:
        """The cuts of `split` with stored Whisper states (written when features.kind is whisper)."""
        return self.root / WHISPER_FEATURES_DIR / self.cuts[split].name


def spoken_instruction_paths(out_dir: str | Path) -> SpokenInstructions:
    """Where `prepare_spoken_instructions` writes each file under `out_dir`."""
    root = Path(out_dir)
    return SpokenInstructions(
        root=root,
        text={s: root / f"instructions_{s}.jsonl.gz" for s in SPLITS},
        cuts={s: root / f"spoken_cuts_{s}.jsonl.gz" for s in SPLITS},
        qa={s: root / f"spoken_qa_{s}.jsonl" for s in EVAL_SPLITS},
        summary=root / "instructions.json",
    )


@dataclass(frozen=True)
class SpokenItem:
    """One pair to speak, with its speaker and split."""

    pair: InstructionPair
    speaker: Speaker
    split: str


def _wav_path(root: Path, item: SpokenItem) -> Path:
    return root / "wav" / item.speaker.id / f"{item.pair.id}.wav"


def _answer_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _answer_path(root: Path, text: str) -> Path:
    return root / "answer_wav" / f"{_answer_key(text)}.wav"


def _has_audio(path: Path) -> bool:
    try:
        return soundfile.info(str(path)).frames > 0
    except (RuntimeError, OSError, soundfile.LibsndfileError):
        return False


def load_pairs(config: SpokenInstructionsConfig) -> dict[str, list[InstructionPair]]:
    """The instruction pairs of each split: from `instruction_files`, or generated."""
    if not config.instruction_files:
        return generate_instructions(config.instructions)
    missing = [p for p in config.instruction_files.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"instruction_files: no such file(s) {missing}")
    return {split: list(read_instructions(config.instruction_files[split])) if split in config.instruction_files
            else [] for split in SPLITS}


def check_pairs(pairs: list[InstructionPair], max_prompt_words: int, skips: SkipLog) -> list[InstructionPair]:
    """The pairs that can be spoken and learnt; the others are counted in `skips` per reason."""
    kept = []
    for pair in pairs:
        reason = text_problem(pair.prompt) or text_problem(pair.response)
        if reason is None and len(pair.prompt.split()) > max_prompt_words:
            reason = "too_long"
        if reason:
            skips.skip(pair.id, reason, f"prompt {pair.prompt!r:.80} -> response {pair.response!r:.40}")
        else:
            kept.append(pair)
    return kept


def plan_spoken(config: SpokenInstructionsConfig, pairs: dict[str, list[InstructionPair]]) -> list[SpokenItem]:
    """Choose the spoken pairs of each split and give each a speaker (test: the held-out speakers only)."""
    rng = random.Random(config.seed)
    speakers = [Speaker(get_voice(v), tempo, pitch) for v in config.voices for tempo, pitch in config.variants]
    held_out = set(rng.sample(range(len(speakers)), config.num_test_speakers))
    seen = [s for i, s in enumerate(speakers) if i not in held_out]
    unseen = [s for i, s in enumerate(speakers) if i in held_out]
    items = []
    for split in SPLITS:
        chosen = list(pairs[split])
        limit = config.num_spoken_train if split == "train" else config.num_spoken_eval
        if limit is not None and limit < len(chosen):
            chosen = sorted(random.Random(f"{config.seed}-{split}").sample(chosen, limit), key=chosen.index)
        split_speakers = unseen if split == "test" else seen
        items += [SpokenItem(p, split_speakers[i % len(split_speakers)], split) for i, p in enumerate(chosen)]
    return items


def _speak_job(job: tuple[Speaker, list[tuple[str, Path]]]) -> list[tuple[Path, str | None]]:
    """Speak a chunk; on failure, each sentence alone, so one bad sentence costs only itself."""
    speaker, chunk = job
    try:
        speak(speaker, chunk)
        return [(path, None) for _, path in chunk]
    except RuntimeError:
        results = []
        for text, path in chunk:
            try:
                speak(speaker, [(text, path)])
                results.append((path, None))
            except RuntimeError as e:
                results.append((path, str(e)))
        return results


def synthesize(jobs: list[tuple[Speaker, list[tuple[str, Path]]]], num_jobs: int, what: str) -> dict[Path, str]:
    """Run the speaking jobs over `num_jobs` processes with a progress bar; return path -> error of the failures."""
    failures: dict[Path, str] = {}
    total = sum(len(chunk) for _, chunk in jobs)
    if not total:
        return failures
    with ProcessPoolExecutor(max_workers=num_jobs) as pool, tqdm(total=total, desc=what, unit="wav") as bar:
        for future in as_completed([pool.submit(_speak_job, job) for job in jobs]):
            for path, error in future.result():
                if error is not None:
                    failures[path] = error
                bar.update(1)
    return failures


def _chunked(speaker: Speaker, items: list[tuple[str, Path]], size: int) -> list[tuple[Speaker, list]]:
    return [(speaker, items[i : i + size]) for i in range(0, len(items), size)]


def speak_items(root: Path, items: list[SpokenItem], config: SpokenInstructionsConfig, skips: SkipLog) -> set[str]:
    """Speak every prompt (and answer) not spoken yet; return the ids of the items whose audio is there."""
    by_speaker: dict[Speaker, list[tuple[str, Path]]] = {}
    for item in items:
        path = _wav_path(root, item)
        if not _has_audio(path):
            by_speaker.setdefault(item.speaker, []).append((item.pair.prompt, path))
    jobs = [job for speaker, todo in by_speaker.items() for job in _chunked(speaker, todo, config.chunk_size)]
    failures = synthesize(jobs, config.num_jobs, "speaking prompts")
    if config.speak_answers:
        answers = sorted({item.pair.response for item in items})
        todo = [(text, _answer_path(root, text)) for text in answers if not _has_audio(_answer_path(root, text))]
        answer_speaker = Speaker(get_voice(config.answer_voice))
        failures.update(synthesize(_chunked(answer_speaker, todo, config.chunk_size), config.num_jobs, "speaking answers"))
    done = set()
    for item in items:
        path = _wav_path(root, item)
        answer_failed = config.speak_answers and _answer_path(root, item.pair.response) in failures
        if path in failures or answer_failed:
            skips.skip(item.pair.id, "missing_audio", failures.get(path) or failures[_answer_path(root, item.pair.response)])
        elif not _has_audio(path):
            skips.skip(item.pair.id, "zero_length", f"{path} holds no samples")
        else:
            done.add(item.pair.id)
    return done


def spoken_cuts(root: Path, items: list[SpokenItem]) -> CutSet:
    """One cut per spoken prompt: supervision text = response, custom = prompt, answers, relation, holdout."""
    cuts = []
    for item in items:
        pair = item.pair
        recording = Recording.from_file(_wav_path(root, item), recording_id=pair.id)
        supervision = SupervisionSegment(
            id=pair.id, recording_id=pair.id, start=0.0, duration=recording.duration, channel=0,
            text=pair.response, language="English", speaker=item.speaker.id,
            custom={"voice": item.speaker.voice.name},
        )
        cut = dataclasses.replace(recording.to_cut(), supervisions=[supervision])
        cut.custom = {"prompt": pair.prompt, "answers": list(pair.answers or (pair.response,)),
                      "relation": pair.relation, "holdout": pair.holdout}
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def attach_answer_units(cuts: CutSet, root: Path, unit_quantizer: Path, split: str) -> CutSet:
    """Quantise each cut's spoken answer with the corpus's quantizer and its encoder; attach `answer_units` (U,)."""
    from lightning_most.audio import UnitQuantizer, build_waveform_encoder

    description = json.loads(unit_quantizer.with_suffix(".json").read_text())
    encoder = build_waveform_encoder(description["encoder"], **description["encoder_config"])
    quantizer = UnitQuantizer.load(unit_quantizer, num_units=description["num_units"])
    units_by_answer: dict[str, Array] = {}
    out = []
    storage = root / "answer_units" / split
    with NumpyFilesWriter(storage) as writer:
        for cut in cuts:
            response = cut.supervisions[0].text
            if response not in units_by_answer:
                audio, _ = soundfile.read(str(_answer_path(root, response)), dtype="float32")  # 16 kHz mono (offline_voices.py)
                frames = encoder(torch.from_numpy(np.asarray(audio).reshape(-1)))  # (T, F)
                units = quantizer.quantize(frames).numpy().astype(np.int32)  # (U,)
                units_by_answer[response] = writer.store_array(_answer_key(response), units)
            out.append(cut.with_custom(ANSWER_UNITS_FIELD, units_by_answer[response]))
    return CutSet.from_cuts(out)


def write_spoken_qa(path: Path, root: Path, items: list[SpokenItem]) -> None:
    """The spoken QA file of a split (layout of `lightning_most.evaluation.spoken_qa.load_spoken_qa`)."""
    lines = [
        json.dumps({"id": item.pair.id, "audio": str(_wav_path(root, item).relative_to(root)),
                    "question": item.pair.prompt, "answers": list(item.pair.answers or (item.pair.response,)),
                    "relation": item.pair.relation, "holdout": item.pair.holdout})
        for item in items
    ]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _config_json(config: SpokenInstructionsConfig, unit_quantizer: Path | None, features: FeatureConfig | None) -> dict:
    return json.loads(json.dumps({
        "config": dataclasses.asdict(config),
        "unit_quantizer": str(unit_quantizer) if unit_quantizer else None,
        "features": dataclasses.asdict(features) if features and features.kind == "whisper" else None,
    }))


def prepare_spoken_instructions(
    out_dir: str | Path = "data/instructions",
    config: SpokenInstructionsConfig | None = None,
    unit_quantizer: str | Path | None = None,
    features: FeatureConfig | None = None,
) -> SpokenInstructions:
    """Build the spoken-instruction folder (see the module docstring), or reuse / resume it.

    Args:
        out_dir: output folder.
        config: pairs, voices, workers.
        unit_quantizer: the corpus's `unit_quantizer.safetensors` (its `.json` beside it); None = no answer units.
        features: with kind "whisper", also store the Whisper states of the cuts.
    """
    config = config or SpokenInstructionsConfig()
    root = Path(out_dir).resolve()
    paths = spoken_instruction_paths(root)
    unit_quantizer = Path(unit_quantizer).resolve() if unit_quantizer else None
    stamp = _config_json(config, unit_quantizer, features)
    if paths.summary.is_file() and json.loads(paths.summary.read_text()).get("stamp") == stamp:
        log.info("spoken instructions in %s are already built with this config: reusing them", root)
        return paths
    if unit_quantizer is not None and not unit_quantizer.with_suffix(".json").is_file():
        raise FileNotFoundError(
            f"unit_quantizer {unit_quantizer}: it or its description {unit_quantizer.with_suffix('.json')} is missing; "
            "point it at the unit_quantizer.safetensors of a built corpus (python -m lightning_most prepare)."
        )
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    skips = SkipLog()
    pairs = {split: check_pairs(p, config.max_prompt_words, skips) for split, p in load_pairs(config).items()}
    for split in SPLITS:
        write_instructions(pairs[split], paths.text[split])
    items = plan_spoken(config, pairs)
    done = speak_items(root, items, config, skips)
    items = [item for item in items if item.pair.id in done]
    synthesis_seconds = time.perf_counter() - start
    counts = {}
    for split in SPLITS:
        split_items = [item for item in items if item.split == split]
        cuts = spoken_cuts(root, split_items)
        if unit_quantizer is not None and config.speak_answers:
            cuts = attach_answer_units(cuts, root, unit_quantizer, split)
        cuts.to_file(paths.cuts[split])
        if split in EVAL_SPLITS:
            write_spoken_qa(paths.qa[split], root, split_items)
        if features is not None and features.kind == "whisper":
            out = paths.feature_cuts(split)
            prepare_encoder_features(paths.cuts[split], out, out.parent / split, features)
        counts[split] = {
            "pairs": len(pairs[split]),
            "spoken": len(split_items),
            "hours": round(sum(c.duration for c in cuts) / 3600, 3),
            "speakers": sorted({item.speaker.id for item in split_items}),
        }
    summary = {
        "stamp": stamp,
        "splits": counts,
        "skipped": dict(skips.counts),
        "synthesis_seconds": round(synthesis_seconds, 1),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    paths.summary.write_text(json.dumps(summary, indent=2) + "\n")
    if skips.counts:
        log.warning("spoken instructions: skipped %s (details above)", dict(skips.counts))
    log.info("spoken instructions built in %.1f s: %s", summary["build_seconds"],
             {s: (c["pairs"], c["spoken"]) for s, c in counts.items()})
    return paths


def main(argv: list[str] | None = None) -> SpokenInstructions:
    """Build the (spoken) instruction data of stage 2.

    Command line: `python -m lightning_most prepare_instructions [--out_dir DIR] [--unit_quantizer Q] ...`.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lightning_most prepare_instructions", description=prepare_spoken_instructions.__doc__)
    parser.add_argument("--out_dir", type=str, default="data/instructions", help="Output folder.")
    parser.add_argument("--unit_quantizer", type=str | None, default="data/embedded/unit_quantizer.safetensors",
                        help="The corpus's unit quantizer, for the answers' units (null: none).")
    parser.add_argument("--features", type=FeatureConfig | None, default=None,
                        help="Store Whisper states too (features.kind whisper).")
    parser.add_class_arguments(SpokenInstructionsConfig, "config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    init = parser.instantiate_classes(args)
    paths = prepare_spoken_instructions(init.out_dir, init.config, init.unit_quantizer, init.features)
    print(paths.summary.read_text(), file=sys.stdout)
    return paths
