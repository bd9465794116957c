"""`python -m lightning_most evaluate --ckpt CKPT --suites asr,tts,spoken_lm,spoken_qa,text --out_dir DIR`.

Runs the chosen evaluation suites on a checkpoint (through `MostInference`) and writes
`DIR/evaluation.json`, `DIR/evaluation.md` and TensorBoard scalars under `DIR/tensorboard`, then
prints the Markdown table. Data, when not given:

    asr, tts    the embedded corpus test split (`--corpus_dir`, default data/embedded)
    spoken_lm   the miniature sWUGGY / sBLIMP / sStoryCloze / tStoryCloze sets, built once into `--cache_dir`
    spoken_qa   the held-out generated questions of stage 2 (`--instructions_dir`, default data/instructions:
                spoken_qa_test.jsonl, held-out voices, wordings and operands), written by `prepare_instructions`
                or the first stage-2 fit; if they are not built, the miniature spoken QA set (said so on stdout);
                `--spoken_qa_jsonl miniature` asks for the miniature set
    text        perplexity on the fortunes' held-out dev split (`lightning_most/text_corpus.py`, written into data/text)

Every input is resolved (files checked, miniatures built, judge loaded) before the model runs. The text suite
needs no audio, so a checkpoint trained on text only (conf/pretrain_text.yaml: its `audio_io` names no units) is
scored on it alone; asking such a checkpoint for an audio suite is refused up front, naming the suite.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from lhotse import CutSet

from lightning_most.commands.common import (
    CommandError,
    add_checkpoint_arguments,
    add_synthesis_arguments,
    load_inference,
    run,
)
from lightning_most.evaluation.asr import AsrConfig, evaluate_asr
from lightning_most.evaluation.judges import (
    PocketsphinxJudge,
    TransformersJudge,
    TransformersJudgeConfig,
    WhisperJudgeConfig,
    WhisperTinyJudge,
)
from lightning_most.evaluation.protocols import Transcriber
from lightning_most.evaluation.report import EvaluationReport
from lightning_most.evaluation.spoken_lm import (
    PairScoringConfig,
    PairSet,
    evaluate_spoken_lm,
    load_sblimp,
    load_story_cloze,
    load_swuggy,
)
from lightning_most.evaluation.spoken_lm_miniature import SpokenLmMiniatureConfig, build_spoken_lm_miniature
from lightning_most.evaluation.spoken_qa import (
    QaConfig,
    QaSet,
    evaluate_spoken_qa_speech,
    evaluate_spoken_qa_text,
    load_spoken_qa,
)
from lightning_most.evaluation.spoken_qa_miniature import SpokenQaMiniatureConfig, build_spoken_qa_miniature
from lightning_most.evaluation.text_perplexity import TextPerplexityConfig, evaluate_text_perplexity, read_texts
from lightning_most.evaluation.tts import TtsConfig, evaluate_tts
from lightning_most.inference import SpokenAnswerBudget, is_text_only, load_stage_module, read_checkpoint_header
from lightning_most.text_corpus import DEFAULT_TEXT_DIR, prepare_text_corpus

SUITES = ("asr", "tts", "spoken_lm", "spoken_qa", "text")
AUDIO_NEEDS = {
    "asr": "it transcribes recordings",
    "tts": "it speaks texts as units through a vocoder",
    "spoken_lm": "it scores the units of recordings",
    "spoken_qa": "it hears spoken questions and speaks answers",
}
"""Why each suite but text needs the checkpoint's audio front and back ends (`audio_io`)."""
EMBEDDED_TEST_CUTS = "embedded_cuts_test.jsonl.gz"
"""The test split's manifest in a corpus folder written by `prepare` (checked against `datamodules.embedded`)."""
STORY_SETS = ("sStoryCloze", "tStoryCloze")
HELD_OUT_QA = "spoken_qa_test.jsonl"
"""The held-out spoken QA file in a folder written by `prepare_instructions` (checked against datamodules)."""
MINIATURE = "miniature"


def build_parser() -> argparse.ArgumentParser:
    """The `evaluate` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_most evaluate",
        description="Evaluate a checkpoint on ASR WER, TTS WER (judged), spoken-LM pair accuracy and spoken QA; "
        "write OUT_DIR/evaluation.json, OUT_DIR/evaluation.md and TensorBoard scalars in OUT_DIR/tensorboard.",
    )
    add_checkpoint_arguments(parser)
    add_synthesis_arguments(parser)
    parser.add_argument(
        "--suites", default="asr,tts,spoken_lm,spoken_qa", help=f"comma-separated, of {', '.join(SUITES)}"
    )
    parser.add_argument("--out_dir", required=True, help="where the report is written")
    data = parser.add_argument_group("data (defaults: embedded test split, miniature sets)")
    data.add_argument("--corpus_dir", default="data/embedded", help="embedded corpus for the default asr/tts data")
    data.add_argument("--asr_cuts", help="Lhotse CutSet manifest with text supervisions for asr")
    data.add_argument("--tts_cuts", help="Lhotse CutSet manifest whose texts (and recordings) tts uses")
    data.add_argument("--max_utterances", type=int, help="use only the first N cuts of the asr/tts manifests")
    data.add_argument(
        "--spoken_lm_root", help="folder with lexical/<split>, syntactic/<split>, sStoryCloze/, tStoryCloze/"
    )
    data.add_argument("--spoken_lm_split", default="dev", help="ZeroSpeech split (default: dev)")
    data.add_argument(
        "--spoken_qa_jsonl",
        help="spoken QA JSON Lines file (id, audio, question, answers), or 'miniature' (default: the held-out "
        "generated questions in --instructions_dir if built, else the miniature set)",
    )
    data.add_argument(
        "--instructions_dir", default="data/instructions", help="stage 2's spoken instructions (prepare_instructions)"
    )
    data.add_argument("--text_jsonl", help="held-out text (.jsonl(.gz) with \"text\") for the text suite's perplexity")
    data.add_argument("--max_texts", type=int, default=200, help="texts scored by the text suite (default 200)")
    data.add_argument("--cache_dir", help="where miniature sets are built and reused (default: OUT_DIR/cache)")
    data.add_argument("--miniature_pairs", type=int, help="pairs per miniature spoken-LM set (default: 300, stories 200)")
    data.add_argument("--miniature_questions", type=int, default=6, help="questions of the miniature QA set")
    run_group = parser.add_argument_group("run")
    run_group.add_argument(
        "--judge",
        default="whisper",
        help="ASR judge of tts and spoken QA speech answers: whisper (tiny.en), pocketsphinx, or a folder "
        "(CTranslate2 Whisper with model.bin, or a transformers Whisper/CTC checkpoint)",
    )
    run_group.add_argument("--batch_size", type=int, default=8, help="utterances per model call")
    run_group.add_argument(
        "--answer_units_per_character", type=float, default=SpokenAnswerBudget.units_per_character,
        help="spoken_qa speech answers: units allowed per character of the text answer, plus --answer_unit_margin, "
        "at most the checkpoint's tts_max_new_tokens (--max_units); default 4.0 covers the embedded corpus's "
        "slowest speech (2.9 units per character on average, 50 units/s)",
    )  # fmt: skip
    run_group.add_argument(
        "--answer_unit_margin", type=int, default=SpokenAnswerBudget.margin,
        help="spoken_qa speech answers: units added to every answer's budget (default 80: silence, slower voices)",
    )  # fmt: skip
    return parser


def parse_suites(value: str) -> list[str]:
    """The suites named in a comma-separated list, checked against SUITES."""
    suites = [s.strip() for s in value.split(",") if s.strip()]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown or not suites:
        raise CommandError(f"--suites {value!r}: unknown {unknown}; choose among {', '.join(SUITES)}")
    return list(dict.fromkeys(suites))


def check_audio_suites(suites: list[str], args: argparse.Namespace) -> None:
    """CommandError naming the suites and why, when audio suites are asked of a checkpoint trained on text only."""
    audio_suites = [suite for suite in suites if suite in AUDIO_NEEDS]
    if not audio_suites or args.audio_io or not is_text_only(read_checkpoint_header(args.ckpt).get("audio_io")):
        return
    reasons = "; ".join(f"{suite}: {AUDIO_NEEDS[suite]}" for suite in audio_suites)
    raise CommandError(
        f"--suites {','.join(audio_suites)}: checkpoint {args.ckpt} was trained on text only (its audio_io names no "
        f"unit quantizer and no unit encoder), so it has no audio to evaluate ({reasons}): evaluate it with "
        "--suites text, or give its audio front and back ends with --audio_io FILE.json"
    )


def load_cuts(manifest: str | None, corpus_dir: str, option: str, limit: int | None) -> tuple[str, CutSet]:
    """(name, cuts) of a manifest, or of the embedded test split when `manifest` is None."""
    if manifest is None:
        path = Path(corpus_dir) / EMBEDDED_TEST_CUTS
        if not path.is_file():
            raise CommandError(
                f"the embedded test split {path} does not exist: build the corpus with "
                f"`python -m lightning_most prepare --out_dir {corpus_dir}`, or pass {option} MANIFEST"
            )
    else:
        path = Path(manifest)
        if not path.is_file():
            raise CommandError(f"{option} {path}: no such file")
    try:
        cuts = CutSet.from_file(path)
    except Exception as error:  # lhotse raises many types for a file that is not a CutSet
        raise CommandError(
            f"{option} {path} is not a Lhotse CutSet manifest ({type(error).__name__}: {error})"
        ) from error
    if limit is not None:
        cuts = cuts.subset(first=limit)
    name = path.name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json")
    return name, cuts


def _build_once(target: Path, build) -> Path:
    """Build a miniature set into `target` unless it is there; builds into a scratch folder, then renames."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(scratch)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_pair_sets(root: Path, split: str) -> list[PairSet]:
    """Every spoken-LM set present under `root` (sWUGGY, sBLIMP, sStoryCloze, tStoryCloze)."""
    sets = []
    if (root / "lexical" / split).is_dir():
        sets.append(load_swuggy(root, split))
    if (root / "syntactic" / split).is_dir():
        sets.append(load_sblimp(root, split))
    sets += [load_story_cloze(root / name, name) for name in STORY_SETS if (root / name).is_dir()]
    if not sets:
        raise CommandError(
            f"--spoken_lm_root {root} holds none of lexical/{split}, syntactic/{split}, {', '.join(STORY_SETS)}"
        )
    return sets


def spoken_lm_sets(args: argparse.Namespace, cache_dir: Path) -> list[PairSet]:
    """The given spoken-LM sets, or the miniature ones (built into the cache once)."""
    if args.spoken_lm_root:
        root = Path(args.spoken_lm_root)
        if not root.is_dir():
            raise CommandError(f"--spoken_lm_root {root}: no such folder")
        return load_pair_sets(root, args.spoken_lm_split)
    config = SpokenLmMiniatureConfig()
    if args.miniature_pairs is not None:
        n = args.miniature_pairs
        config = SpokenLmMiniatureConfig(
            num_lexical_pairs=n, num_syntactic_pairs=n, num_story_pairs=n
        )
    name = f"spoken_lm_miniature_{config.num_lexical_pairs}_{config.num_syntactic_pairs}_{config.num_story_pairs}"
    root = _build_once(cache_dir / name, lambda out: build_spoken_lm_miniature(out, config))
    return load_pair_sets(root, "dev")


def spoken_qa_set(args: argparse.Namespace, cache_dir: Path) -> QaSet:
    """The given spoken QA set, else the held-out generated questions if built, else the miniature set."""
    if args.spoken_qa_jsonl and args.spoken_qa_jsonl != MINIATURE:
        return load_spoken_qa(args.spoken_qa_jsonl)
    held_out = Path(args.instructions_dir) / HELD_OUT_QA
    if args.spoken_qa_jsonl is None:
        if held_out.is_file():
            return load_spoken_qa(held_out, name="generated_test")
        print(f"spoken QA: {held_out} is not built (`python -m lightning_most prepare_instructions --out_dir "
              f"{args.instructions_dir}`); scoring the {args.miniature_questions}-question miniature set instead",
              flush=True)
    config = SpokenQaMiniatureConfig(num_questions=args.miniature_questions)
    folder = _build_once(
        cache_dir / f"spoken_qa_miniature_{config.num_questions}", lambda out: build_spoken_qa_miniature(out, config)
    )
    return load_spoken_qa(folder / "questions.jsonl", name="spoken_qa_miniature")


def held_out_texts(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(name, texts) of --text_jsonl, or of the fortunes' held-out dev split (written into data/text if missing)."""
    path = Path(args.text_jsonl) if args.text_jsonl else prepare_text_corpus(DEFAULT_TEXT_DIR)["dev"]
    name = path.name.removesuffix(".gz").removesuffix(".jsonl")
    return name, read_texts(path, args.max_texts)


def build_judge(name: str) -> Transcriber:
    """The judge named by --judge."""
    if name == "whisper":
        return WhisperTinyJudge()
    if name == "pocketsphinx":
        return PocketsphinxJudge()
    folder = Path(name)
    if not folder.is_dir():
        raise CommandError(f"--judge {name!r}: not whisper, pocketsphinx, or an existing model folder")
    if (folder / "model.bin").is_file():
        return WhisperTinyJudge(WhisperJudgeConfig(model_dir=str(folder)))
    return TransformersJudge(TransformersJudgeConfig(model_dir=str(folder)))


def evaluate(args: argparse.Namespace) -> None:
    """Resolve the data, run the suites, write and print the report."""
    suites = parse_suites(args.suites)
    if args.batch_size < 1:
        raise CommandError(f"--batch_size must be >= 1, got {args.batch_size}")
    check_audio_suites(suites, args)
    try:
        answer_budget = SpokenAnswerBudget(args.answer_units_per_character, args.answer_unit_margin)
    except ValueError as error:
        raise CommandError(f"--answer_units_per_character / --answer_unit_margin: {error}") from error
    out_dir = Path(args.out_dir)
    cache_dir = Path(args.cache_dir) if args.cache_dir else out_dir / "cache"
    try:
        asr = load_cuts(args.asr_cuts, args.corpus_dir, "--asr_cuts", args.max_utterances) if "asr" in suites else None
        tts = load_cuts(args.tts_cuts, args.corpus_dir, "--tts_cuts", args.max_utterances) if "tts" in suites else None
        pair_sets = spoken_lm_sets(args, cache_dir) if "spoken_lm" in suites else []
        qa_set = spoken_qa_set(args, cache_dir) if "spoken_qa" in suites else None
        texts = held_out_texts(args) if "text" in suites else None
        judge = build_judge(args.judge) if {"tts", "spoken_qa"} & set(suites) else None
    except (FileNotFoundError, ValueError, ImportError) as error:  # the loaders' messages name the file
        raise CommandError(str(error)) from error
    if AUDIO_NEEDS.keys() & set(suites):
        inference = load_inference(args)
        inference.answer_budget = answer_budget
        module, global_step = inference.module, inference.global_step
    else:  # text alone: the model without its audio front and back ends
        module, global_step = load_stage_module(args.ckpt, args.device, word_lm=not args.no_word_lm)

    results = {}
    if asr is not None:
        print(f"ASR decoding: {inference.module.asr_decoding.describe()}", flush=True)
        results[f"asr/{asr[0]}"] = evaluate_asr(inference, asr[1], AsrConfig(batch_size=args.batch_size))
    if tts is not None:
        results[f"tts/{tts[0]}"] = evaluate_tts(
            inference, judge, tts[1], TtsConfig(batch_size=args.batch_size, judge_batch_size=args.batch_size),
            resynthesizer=inference,
        )
        print(f"TTS ({tts[0]}): {results[f'tts/{tts[0]}'].summary()}", flush=True)
        if getattr(judge, "dropped_segments", 0):  # reference, resynthesis and the model's speech together
            print(f"the judge left out {judge.dropped_segments} repetition-loop segment(s) "
                  "(WhisperJudgeConfig.max_compression_ratio)", flush=True)
    if pair_sets:
        scored = evaluate_spoken_lm(inference, pair_sets, PairScoringConfig(batch_size=args.batch_size))
        results.update({f"spoken_lm/{name}": result for name, result in scored.items()})
    if qa_set is not None:
        config = QaConfig(batch_size=args.batch_size, judge_batch_size=args.batch_size)
        results[f"spoken_qa/{qa_set.name}/speech_to_text"] = evaluate_spoken_qa_text(inference, qa_set, config)
        results[f"spoken_qa/{qa_set.name}/speech_to_speech"] = evaluate_spoken_qa_speech(
            inference, judge, qa_set, config
        )

    if texts is not None:
        name, lines = texts
        results[f"text/{name}"] = evaluate_text_perplexity(
            module, lines, name, TextPerplexityConfig(batch_size=args.batch_size)
        )

    report = EvaluationReport.from_results(results)
    report.to_json(out_dir / "evaluation.json")
    markdown = report.to_markdown()
    (out_dir / "evaluation.md").write_text(markdown, encoding="utf-8")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out_dir / "tensorboard")) as writer:
        report.log_to_tensorboard(writer, step=global_step)
    print(markdown, end="")
    print(f"wrote {out_dir / 'evaluation.json'}, {out_dir / 'evaluation.md'}, TensorBoard: {out_dir / 'tensorboard'}")


def main(argv: list[str] | None = None) -> None:
    """Run `evaluate` on `argv`."""
    run(build_parser(), evaluate, argv)
