"""`EmbeddedInstructionDataModule`: stage 2's task mix on the embedded corpus and the spoken instructions.

Train sources (task weights default to MoST's stage 2, `mixing.STAGE2_TASK_WEIGHTS`):

    speech_instruct 0.4   spoken_cuts_train of `instructions_dir` (spoken prompt -> text response)
    text_instruct   0.4   instructions_train of `instructions_dir` (prompt -> response, all train pairs)
    asr 0.1, tts 0.1      the embedded corpus's train cuts, as in stage 1 (keeps stage 1 from being forgotten)

(the fortunes text-LM source stays only if `task_weights` names `text_lm`). Validation: the embedded
dev cuts (asr, tts) and the dev questions (speech_instruct, text_instruct); test: the test split
(held-out speakers and voices) of both. `prepare_data` builds what is missing: the embedded corpus
(`embedded.py`), then the spoken instructions (`spoken_instructions.py`) with the corpus's unit
quantizer for the answers' units and, with `features.kind == "whisper"`, their stored states.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.datamodule import LoaderConfig
from datamodules.embedded import EmbeddedCorpusConfig, corpus_paths
from datamodules.embedded_datamodule import EmbeddedDataModule
from datamodules.mixing import STAGE2_TASK_WEIGHTS, SourceConfig, validate_mix
from datamodules.spoken_instructions import (
    SpokenInstructionsConfig,
    prepare_spoken_instructions,
    spoken_instruction_paths,
)
from lightning_most.audio.features import FeatureConfig


class EmbeddedInstructionDataModule(EmbeddedDataModule):
    """Stage-2 batches from the embedded corpus and its spoken instructions (see the module docstring)."""

    def __init__(
        self,
        corpus_dir: str = "data/embedded",
        corpus: EmbeddedCorpusConfig | None = None,
        instructions_dir: str = "data/instructions",
        instructions: SpokenInstructionsConfig | None = None,
        task_weights: dict[str, float] | None = None,
        tokenizer: str = "byte",
        features: FeatureConfig | None = None,
        loader: LoaderConfig | None = None,
    ) -> None:
        """Args are those of `EmbeddedDataModule`, plus `instructions_dir` and the `instructions` config to build it."""
        super().__init__(
            corpus_dir=corpus_dir,
            corpus=corpus,
            tokenizer=tokenizer,
            features=features,
            loader=loader,
        )
        self.instructions_dir = instructions_dir
        self.instructions = instructions or SpokenInstructionsConfig()
        self.task_weights = dict(STAGE2_TASK_WEIGHTS if task_weights is None else task_weights)
        spoken = spoken_instruction_paths(instructions_dir)
        whisper = self.features.kind == "whisper"
        spoken_cuts = {s: str(spoken.feature_cuts(s) if whisper else spoken.cuts[s]) for s in spoken.cuts}

        def instruction_sources(split: str) -> list[SourceConfig]:
            return [
                SourceConfig("spoken_instructions", "speech_instruct", spoken_cuts[split]),
                SourceConfig("instructions", "text_instruct", str(spoken.text[split])),
            ]

        kept = [s for s in self.train_sources if s.task in self.task_weights]
        self.train_sources = [*instruction_sources("train"), *kept]
        validate_mix(self.train_sources, self.task_weights, "train_sources")
        self.val_sources += instruction_sources("dev")
        self.test_sources += instruction_sources("test")

    @property
    def spoken_qa_files(self) -> dict[str, Path]:
        """The dev / test spoken QA files (held-out questions; test spoken by held-out voices)."""
        return spoken_instruction_paths(self.instructions_dir).qa

    def prepare_data(self) -> None:
        """Lightning hook: build the embedded corpus, then the spoken instructions, unless already there."""
        super().prepare_data()
        quantizer = corpus_paths(self.corpus_dir).unit_quantizer
        prepare_spoken_instructions(self.instructions_dir, self.instructions, quantizer, self.features)
