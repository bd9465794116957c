"""Train the tiny backbone on fixed batches under one strategy; write the global loss of every step to JSON.

Run by `tests/test_distributed.py` as a script, because Lightning's launcher for `devices=2` on CPU
re-runs the script (`python tests/distributed_train.py ...`) in a second process:

    python tests/distributed_train.py --strategy fsdp --devices 2 --out losses.json --root runs/x

`--strategy fsdp_ep` adds expert parallelism: EP groups of `--expert-parallel-size` ranks (2: each rank holds half
of every MoE layer's experts), FSDP2-sharded over the groups when there are several.

The data: `NUM_STEPS` global batches of `GLOBAL_BATCH` rows of the same length, each rank's rows
holding the same number of target tokens (`global_batches`). Rank r of W trains on rows
[r * GLOBAL_BATCH / W, (r + 1) * GLOBAL_BATCH / W) of each global batch; the token-mean loss of the
global batch is then the mean of the ranks' losses and the averaged gradients are the global
batch's, so 1, 2 (DDP) and 2 (FSDP2) processes must log the same losses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from lightning_most.batch import IGNORE_INDEX, TASKS
from lightning_most.decoding import ASRDecodingConfig
from lightning_most.expert_parallel import ExpertParallelConfig, moe_blocks
from lightning_most.layouts import asr_example, collate, text_lm_example, tts_example
from lightning_most.stages import OptimizerConfig, StageModule
from lightning_most.tokenizer import ByteTokenizer, SpecialTokens

NUM_STEPS = 6  # one epoch
GLOBAL_BATCH = 4
SEQ_LEN = 24
NUM_FRAMES = 4


def global_batches(config, seed: int = 0, frames_from_step: int = 1) -> list[list[dict]]:
    """`NUM_STEPS` global batches of `GLOBAL_BATCH` rows (T = SEQ_LEN): text, then audio units.

    From step `frames_from_step` (1 = the first), even rows also carry `NUM_FRAMES` continuous audio
    frames (as an ASR prompt: no loss there), so every parameter gets a gradient; before it the audio
    projector gets none. Each rank's rows hold the same number of targets either way.
    """
    g = torch.Generator().manual_seed(seed)
    half = SEQ_LEN // 2
    steps = []
    for step in range(1, NUM_STEPS + 1):
        rows = []
        for i in range(GLOBAL_BATCH):
            text = torch.randint(0, 256, (half,), generator=g)  # byte tokens
            units = config.text_vocab_size + torch.randint(0, config.num_audio_units, (SEQ_LEN - half,), generator=g)
            input_ids = torch.cat([text, units])  # (T,)
            modality_ids = torch.cat([torch.zeros_like(text), torch.ones_like(units)])  # (T,)
            labels = torch.cat([input_ids[1:], input_ids[:1]])  # (T,)
            feature_mask = torch.zeros(SEQ_LEN, dtype=torch.bool)
            if i % 2 == 0:
                labels[: 1 + NUM_FRAMES] = IGNORE_INDEX
                if step >= frames_from_step:
                    feature_mask[1 : 1 + NUM_FRAMES] = True
                    modality_ids[feature_mask] = 1
            rows.append({
                "input_ids": input_ids, "modality_ids": modality_ids, "labels": labels, "feature_mask": feature_mask,
                "audio_features": torch.randn(int(feature_mask.sum()), config.audio_feature_dim, generator=g),
            })
        steps.append(rows)
    return steps


def collate_rows(rows: list[dict]) -> dict:
    """Stack rows into the `lightning_most.layouts.collate` batch dict (frames concatenated in row order)."""
    B = len(rows)
    return {
        "input_ids": torch.stack([r["input_ids"] for r in rows]),
        "modality_ids": torch.stack([r["modality_ids"] for r in rows]),
        "labels": torch.stack([r["labels"] for r in rows]),
        "feature_mask": torch.stack([r["feature_mask"] for r in rows]),
        "audio_features": torch.cat([r["audio_features"] for r in rows]),
        "attention_mask": torch.ones(B, SEQ_LEN, dtype=torch.bool),
        "task_ids": torch.full((B,), TASKS.index("tts")),
        "texts": [""] * B,
        "cut_ids": [f"row-{i}" for i in range(B)],
    }


class RankSlices:
    """This rank's rows of each global batch, in order; resumable (`state_dict` = batches yielded this epoch).

    It has a length, so Lightning does not fetch ahead and the position is the number of steps run.
    """

    def __init__(self, steps: list[list[dict]], rank: int, world_size: int) -> None:
        per_rank = GLOBAL_BATCH // world_size
        self.batches = [collate_rows(rows[rank * per_rank : (rank + 1) * per_rank]) for rows in steps]
        self.position = 0
        self._restored = False

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        if not self._restored:
            self.position = 0
        self._restored = False
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]
        self._restored = True


class FixedBatches(pl.LightningDataModule):
    """The global batches of `global_batches`, split across the trainer's ranks."""

    def __init__(self, config, frames_from_step: int = 1) -> None:
        super().__init__()
        self.steps = global_batches(config, frames_from_step=frames_from_step)

    def train_dataloader(self) -> RankSlices:
        return RankSlices(self.steps, self.trainer.global_rank, self.trainer.world_size)


# Dev batches of `--validate`, (task, text) rows per batch; rank r of 2 gets VAL_BATCHES_OF_RANK[r], one
# process all of them. Rank 1 has no ASR row at all, so it decodes nothing while rank 0 decodes.
VAL_BATCHES = [
    [("asr", "hello"), ("asr", "a longer transcript"), ("tts", "spoken")],
    [("tts", "more text"), ("tts", "to say")],
    [("tts", "the third batch"), ("text_lm", "and some text")],
]
VAL_BATCHES_OF_RANK = [[0, 1], [2]]


def val_batches(config, indices: list[int]) -> list[dict]:
    """The collated `VAL_BATCHES` at `indices` (random frames and units, fixed seeds)."""
    tok = ByteTokenizer()
    specials = SpecialTokens(tok.base_vocab_size)
    batches = []
    for index in indices:
        g = torch.Generator().manual_seed(index)
        examples = []
        for task, text in VAL_BATCHES[index]:
            ids = tok.encode(text)
            if task == "asr":
                frames = torch.randn(3 * len(ids), config.audio_feature_dim, generator=g)
                examples.append(asr_example(ids, specials, config.text_vocab_size, features=frames, text=text))
            elif task == "tts":
                units = torch.randint(0, config.num_audio_units, (2 * len(ids),), generator=g)
                examples.append(tts_example(ids, units, specials, config.text_vocab_size, text=text))
            else:
                examples.append(text_lm_example(ids, specials, text=text))
        batches.append(collate(examples, specials.pad))
    return batches


class BatchList:
    """Collated batches as one dataloader (a plain list would be read as one dataloader per batch)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class ValBatches(pl.LightningDataModule):
    """`VAL_BATCHES` as the dev split: this rank's share of them (all of them in one process)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config

    def val_dataloader(self) -> BatchList:
        if self.trainer.world_size == 1:
            return BatchList(val_batches(self.config, list(range(len(VAL_BATCHES)))))
        return BatchList(val_batches(self.config, VAL_BATCHES_OF_RANK[self.trainer.global_rank]))


class GlobalLoss(pl.Callback):
    """Mean over ranks of each step's loss (= the global batch's loss here), kept on every rank."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach().float(), reduce_op="mean")
        self.losses[trainer.global_step] = float(loss)


class KilledRun(RuntimeError):
    """Stands in for a crashed job."""


class KillAtStep(pl.Callback):
    """Raises `KilledRun` as the batch after optimizer step `step` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KilledRun(f"killed at step {self.step}")


def strategy_for(name: str, devices: int):
    """Lightning strategy object for `single`, `ddp`, `fsdp` or `fsdp_ep` (FSDP2 through ModelParallelStrategy;
    `fsdp_ep` adds expert parallelism, set on the module)."""
    if name == "single":
        return "auto"
    if name == "ddp":
        # as conf/strategy/ddp.yaml: a batch without ASR rows leaves the audio projector unused
        return DDPStrategy(process_group_backend="gloo", find_unused_parameters=True)
    if name in ("fsdp", "fsdp_ep"):
        return ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
    raise ValueError(f"unknown strategy {name!r}: single, ddp, fsdp or fsdp_ep")


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, train, write {"losses": {step: loss}, ...} from rank 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=["single", "ddp", "fsdp", "fsdp_ep"], required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="save a checkpoint every N steps (0: never)")
    parser.add_argument("--kill-at", type=int, default=None, help="raise after this many steps (a crashed run)")
    parser.add_argument("--ckpt-path", default=None, help="resume from this checkpoint (file or sharded folder)")
    parser.add_argument("--frames-from-step", type=int, default=1,
                        help="first step whose batch has audio frames (before it the audio projector gets no gradient)")
    parser.add_argument("--validate", action="store_true",
                        help="only validate (dev losses and WER) on VAL_BATCHES, and write the logged metrics")
    parser.add_argument("--expert-parallel-size", type=int, default=2,
                        help="fsdp_ep: ranks sharing each MoE layer's experts (must divide --devices)")
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    pl.seed_everything(0)
    module = StageModule(
        backbone="tiny",
        backbone_overrides={"num_audio_units": 16},
        optimizer=OptimizerConfig(lr=3e-3, warmup_steps=2, weight_decay=0.01),
        activation_checkpointing=args.activation_checkpointing,
        log_routing_every_n_steps=1000,
        asr_decoding=ASRDecodingConfig(max_new_tokens=6),
        expert_parallel=ExpertParallelConfig(size=args.expert_parallel_size if args.strategy == "fsdp_ep" else 1),
    )
    if args.validate:
        trainer = pl.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy_for(args.strategy, args.devices),
                             precision=args.precision, logger=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.validate(module, datamodule=ValBatches(module.config))
        if trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            Path(args.out).write_text(json.dumps({"metrics": metrics, "world_size": trainer.world_size}))
        return
    data = FixedBatches(module.config, args.frames_from_step)
    recorder = GlobalLoss()
    callbacks: list[pl.Callback] = [recorder]
    if args.checkpoint_every:
        callbacks.append(ModelCheckpoint(dirpath=os.path.join(args.root, "checkpoints"),
                                         every_n_train_steps=args.checkpoint_every, save_last=True, save_top_k=-1))
    if args.kill_at is not None:
        callbacks.append(KillAtStep(args.kill_at))
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy=strategy_for(args.strategy, args.devices),
        precision=args.precision, max_steps=NUM_STEPS, gradient_clip_val=1.0, callbacks=callbacks,
        default_root_dir=args.root, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    killed = False
    try:
        trainer.fit(module, datamodule=data, ckpt_path=args.ckpt_path)
    except KilledRun:
        killed = True
    weight_norms = {} if killed else {  # every rank takes part in gathering the sharded weights
        name: float(torch.linalg.vector_norm((p.full_tensor() if isinstance(p, DTensor) else p).detach().double()))
        for name, p in module.backbone.named_parameters()
    }
    if trainer.is_global_zero:
        last = os.path.join(args.root, "checkpoints", "last.ckpt")
        Path(args.out).write_text(json.dumps({
            "losses": recorder.losses,
            "killed": killed,
            "world_size": trainer.world_size,
            "last_checkpoint": last if os.path.exists(last) else None,
            "last_checkpoint_is_dir": os.path.isdir(last),
            "fsdp_wrapped_blocks": sum(type(b).__name__.startswith("FSDP") for b in module.backbone.layers),
            "expert_exchanges": sum(b.expert_exchange is not None for b in moe_blocks(module.backbone)),
            "expert_mesh": [list(b.experts.gate_up_proj.device_mesh.mesh_dim_names) for b in moe_blocks(module.backbone)
                            if isinstance(b.experts.gate_up_proj, DTensor)],
            "weight_norms": weight_norms,
        }))


if __name__ == "__main__":
    main()
