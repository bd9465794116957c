"""Real corpora from local folders into our manifest layout: `{prefix}_cuts_{split}.jsonl.gz`.

Each corpus is read by its lhotse recipe (lhotse 1.33), in its official on-disk layout, and the
recordings + supervisions it returns become one cut per supervision:

    librispeech  lhotse.recipes.prepare_librispeech   {part}/{spk}/{chapter}/{spk}-{chapter}.trans.txt + .flac
                 -> librispeech_cuts_{part}            (parts found in corpus_dir, or `parts`)
    ljspeech     lhotse.recipes.prepare_ljspeech      metadata.csv (id|text|normalized) + wavs/{id}.wav
                 -> ljspeech_cuts_all
    commonvoice  lhotse.recipes.prepare_commonvoice   {lang}/{train,dev,test}.tsv + {lang}/clips/*.mp3
                 -> cv-{lang}_cuts_{split}
    voxpopuli    lhotse.recipes.prepare_voxpopuli     raw_audios/{lang}/{year}/*.ogg + asr_{lang}.tsv.gz
                 -> voxpopuli-asr-{lang}_cuts_{split}  (sessions cut to their transcribed segments)
    libriheavy   (no lhotse 1.33 recipe) the official `libriheavy_cuts_{subset}.jsonl.gz` cut manifests,
                 audio paths `download/librilight/...` re-rooted at `librilight_dir`, text taken from
                 `custom.texts[0]` (cased, punctuated) or `[1]` (upper case, normalized)
                 -> libriheavy_cuts_{subset}

Nothing is downloaded: VoxPopuli's recipe fetches `asr_{lang}.tsv.gz` unless it is already in
the output folder, so `annotations` must name a local copy, which is copied there first.

Units for the TTS task are attached afterwards with `datamodules.units` (fit on train, attach to
every split), and `datamodules.shards.export_shar` turns a manifest into streaming shards.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from lhotse import CutSet, load_manifest_lazy
from lhotse.cut import Cut

RECIPES: tuple[str, ...] = ("librispeech", "ljspeech", "commonvoice", "voxpopuli", "libriheavy")
LIBRIHEAVY_AUDIO_PREFIX = "download/librilight/"
log = logging.getLogger(__name__)


@dataclass
class RecipeConfig:
    """Which corpus to prepare, where it lies, and where our manifests go."""

    corpus: str
    """One of RECIPES."""
    corpus_dir: str
    """The corpus as downloaded (see the module docstring for each layout)."""
    output_dir: str
    """Where `{prefix}_cuts_{split}.jsonl.gz` (and lhotse's own recordings/supervisions) are written."""
    language: str = "en"
    """Common Voice / VoxPopuli language code."""
    parts: list[str] | None = None
    """LibriSpeech parts, Common Voice splits or Libriheavy subsets (default: all found / train, dev, test)."""
    annotations: str | None = None
    """VoxPopuli only: local `asr_{language}.tsv.gz` (the recipe would download it otherwise)."""
    librilight_dir: str | None = None
    """Libriheavy only: folder holding LibriLight's `small/ medium/ large/` (default: corpus_dir/download/librilight)."""
    text: str = "original"
    """Libriheavy only: `original` (cased, punctuated) or `normalized` (upper case, no punctuation)."""
    num_jobs: int = 1

    def __post_init__(self) -> None:
        if self.corpus not in RECIPES:
            raise ValueError(f"RecipeConfig.corpus={self.corpus!r}: choose one of {RECIPES}.")
        if not Path(self.corpus_dir).is_dir():
            raise FileNotFoundError(
                f"RecipeConfig.corpus_dir={self.corpus_dir} is not a folder: point it at the corpus."
            )
        if self.text not in ("original", "normalized"):
            raise ValueError(f"RecipeConfig.text={self.text!r}: use 'original' or 'normalized'.")


def _write_cuts(manifests: dict[str, dict], out: Path, prefix: str, trim: bool = False) -> dict[str, Path]:
    paths = {}
    for split, m in sorted(manifests.items()):
        cuts = CutSet.from_manifests(recordings=m["recordings"], supervisions=m["supervisions"])
        if trim:
            cuts = cuts.trim_to_supervisions(keep_overlapping=False)
        paths[split] = out / f"{prefix}_cuts_{split}.jsonl.gz"
        cuts.to_file(paths[split])
    return paths


def _librispeech(config: RecipeConfig, out: Path) -> dict[str, Path]:
    from lhotse.recipes import prepare_librispeech

    manifests = prepare_librispeech(
        config.corpus_dir, dataset_parts=config.parts or "auto", output_dir=out, num_jobs=config.num_jobs
    )
    return _write_cuts(manifests, out, "librispeech")


def _ljspeech(config: RecipeConfig, out: Path) -> dict[str, Path]:
    from lhotse.recipes import prepare_ljspeech

    return _write_cuts({"all": prepare_ljspeech(config.corpus_dir, out)}, out, "ljspeech")


def _commonvoice(config: RecipeConfig, out: Path) -> dict[str, Path]:
    from lhotse.recipes import prepare_commonvoice

    splits = config.parts or ["train", "dev", "test"]
    manifests = prepare_commonvoice(
        config.corpus_dir, out, languages=[config.language], splits=splits, num_jobs=config.num_jobs
    )
    return _write_cuts(manifests[config.language], out, f"cv-{config.language}")


def _voxpopuli(config: RecipeConfig, out: Path) -> dict[str, Path]:
    from lhotse.recipes import prepare_voxpopuli

    name = f"asr_{config.language}.tsv.gz"
    if config.annotations is None or not Path(config.annotations).is_file():
        raise FileNotFoundError(
            f"VoxPopuli needs its annotations locally: set `annotations` to your copy of {name} "
            f"(from dl.fbaipublicfiles.com/voxpopuli/annotations/asr/{name}); got {config.annotations}."
        )
    if not (out / name).is_file():
        shutil.copyfile(config.annotations, out / name)
    manifests = prepare_voxpopuli(config.corpus_dir, out, task="asr", lang=config.language, num_jobs=config.num_jobs)
    return _write_cuts(manifests, out, f"voxpopuli-asr-{config.language}", trim=True)


def _reroot_libriheavy(cut: Cut, librilight_dir: str, text_index: int) -> Cut:
    sources = []
    for source in cut.recording.sources:
        path = source.source
        if path.startswith(LIBRIHEAVY_AUDIO_PREFIX):
            path = str(Path(librilight_dir) / path[len(LIBRIHEAVY_AUDIO_PREFIX) :])
        sources.append(dataclasses.replace(source, source=path))
    supervisions = []
    for s in cut.supervisions:
        texts = (s.custom or {}).get("texts")
        supervisions.append(dataclasses.replace(s, text=texts[text_index]) if texts else s)
    recording = dataclasses.replace(cut.recording, sources=sources)
    return dataclasses.replace(cut, recording=recording, supervisions=supervisions)


def _libriheavy(config: RecipeConfig, out: Path) -> dict[str, Path]:
    corpus = Path(config.corpus_dir)
    librilight = config.librilight_dir or str(corpus / LIBRIHEAVY_AUDIO_PREFIX)
    found = {
        p.name.split(".")[0].removeprefix("libriheavy_cuts_"): p for p in corpus.glob("libriheavy_cuts_*.jsonl.gz")
    }
    subsets = config.parts or sorted(found)
    missing = [s for s in subsets if s not in found]
    if not subsets or missing:
        raise FileNotFoundError(
            f"no libriheavy_cuts_{{{','.join(missing or ['small'])}}}.jsonl.gz in {corpus}: put the official "
            "Libriheavy manifests there (huggingface.co/datasets/pkufool/libriheavy)."
        )
    text_index = 0 if config.text == "original" else 1
    paths = {}
    for subset in subsets:
        paths[subset] = out / f"libriheavy_cuts_{subset}.jsonl.gz"
        cuts = load_manifest_lazy(found[subset])
        with CutSet.open_writer(paths[subset]) as writer:
            for cut in cuts:
                writer.write(_reroot_libriheavy(cut, librilight, text_index))
    return paths


_PREPARE = {
    "librispeech": _librispeech,
    "ljspeech": _ljspeech,
    "commonvoice": _commonvoice,
    "voxpopuli": _voxpopuli,
    "libriheavy": _libriheavy,
}


def prepare_recipe(config: RecipeConfig) -> dict[str, Path]:
    """Run the corpus's recipe on local files; returns split -> our cut manifest."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = _PREPARE[config.corpus](config, out)
    if not paths:
        raise FileNotFoundError(f"the {config.corpus} recipe found no data in {config.corpus_dir}: check its layout.")
    log.info("%s manifests: %s", config.corpus, {k: str(v) for k, v in paths.items()})
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Command line: `python -m datamodules.recipes --config conf/data/prepare/librispeech.yaml`."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="datamodules.recipes", description=prepare_recipe.__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(RecipeConfig, None)
    args = parser.parse_args(argv).as_dict()
    args.pop("config", None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return prepare_recipe(RecipeConfig(**args))


if __name__ == "__main__":
    main()
