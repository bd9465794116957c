"""Routing analysis of a trained checkpoint (notebooks/01-routing-analysis.ipynb): which experts each modality
uses per layer, and how routing entropy evolved over training.

- `expert_load`: top-k assignments (L, M, E) of each modality's tokens to each expert of every MoE layer,
  summed over batches routed through the backbone as trained (masked or not);
- `load_shares` / `modality_experts`: each modality's share of its assignments per expert, and the
  experts that carry a given share of a modality's routing;
- `entropy_curves`: the `routing/entropy_*` scalars that training logged to TensorBoard;
- `stage_and_batches`: a fit's checkpoint with the dev batches of the data module it was trained with
  (read from the `config.yaml` LightningCLI saved beside its logs);
- `demo_run`: a tiny checkpoint trained here in seconds on synthetic batches (real Lightning fit, real
  logs), for running the notebook without a trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lightning_most.mamoe import RoutingStats
from lightning_most.safe_loading import load_checkpoint


@torch.no_grad()
def expert_load(backbone: torch.nn.Module, batches) -> Tensor:
    """Top-k assignments (L, M, E) per MoE layer, modality and expert, summed over `batches` of backbone inputs."""
    was_training = backbone.training
    backbone.eval()
    total = None
    for batch in batches:
        out = backbone(batch["input_ids"], batch["modality_ids"], batch.get("attention_mask"),
                       batch.get("audio_features"), batch.get("feature_mask"))
        load = torch.stack([stats.expert_load.float().cpu() for stats in out.routing])  # (L, M, E)
        total = load if total is None else total + load
    backbone.train(was_training)
    if total is None:
        raise ValueError("no batches to route")
    return total


def load_shares(load: Tensor) -> Tensor:
    """(L, M, E): each modality's assignments per expert as a share of that modality's assignments in the layer."""
    return load / load.sum(dim=-1, keepdim=True).clamp(min=1)


def as_routing_stats(load: Tensor) -> list[RoutingStats]:
    """Per-layer `RoutingStats` of a load tensor (L, M, E), for `routing_logging.load_heatmap`."""
    return [RoutingStats(expert_load=layer, entropy=torch.zeros(layer.shape[0]), tokens=layer.sum(-1)) for layer in load]


def modality_experts(load: Tensor, mass: float = 0.9) -> list[list[list[int]]]:
    """Per layer and modality, the fewest experts (most used first) that carry `mass` of the modality's routing."""
    shares = load_shares(load)
    out = []
    for layer in shares:
        per_modality = []
        for row in layer:
            order = torch.argsort(row, descending=True)
            cumulative = torch.cumsum(row[order], 0)
            count = int((cumulative < mass - 1e-9).sum()) + 1
            per_modality.append(sorted(order[:count].tolist()) if row.sum() > 0 else [])
        out.append(per_modality)
    return out


def entropy_curves(log_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """{tag: (steps, values)} of every `routing/entropy*` scalar in the TensorBoard events under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = {}
    for events_dir in sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(events_dir), size_guidance={"scalars": 0, "images": 1, "histograms": 1}).Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith("routing/entropy"):
                points = events.Scalars(tag)
                curves[tag] = ([p.step for p in points], [p.value for p in points])
    return curves


def stage_and_batches(checkpoint: str | Path, max_batches: int = 10):
    """(StageModule with the checkpoint's weights, its run's dev batches, its log folder) for a `fit` checkpoint."""
    from lightning_most.partitions import _model_and_data

    checkpoint = Path(checkpoint)
    configs = sorted(checkpoint.parent.parent.rglob("config.yaml")) or sorted(checkpoint.parents[2].rglob("config.yaml"))
    if not configs:
        raise FileNotFoundError(f"no config.yaml (saved by fit) near {checkpoint}: give a checkpoint of a `fit` run")
    module, datamodule = _model_and_data([str(configs[0])], ["--model.init_args.init_from", "null"])
    module.configure_model()
    state = load_checkpoint(checkpoint)["state_dict"]
    module.load_state_dict(state, strict=False)
    datamodule.prepare_data()
    datamodule.setup("validate")
    batches = [batch for _, batch in zip(range(max_batches), datamodule.val_dataloader())]
    return module, batches, configs[0].parent


@dataclass
class DemoRun:
    """A tiny trained checkpoint, its TensorBoard folder and batches to route."""

    checkpoint: Path
    log_dir: Path
    batches: list[dict]


def _synthetic_batches(num: int, seed: int, num_units: int = 32, feature_dim: int = 160) -> list[dict]:
    """Batches of one ASR, one TTS and one text-LM example each (random audio, real words)."""
    from lightning_most.layouts import asr_example, collate, text_lm_example, tts_example
    from lightning_most.tokenizer import ByteTokenizer, SpecialTokens

    generator = torch.Generator().manual_seed(seed)
    tokenizer = ByteTokenizer()
    specials = SpecialTokens(tokenizer.base_vocab_size)
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "rain", "fell", "over", "the", "quiet", "town"]
    batches = []
    for i in range(num):
        text = " ".join(words[i % 5 : i % 5 + 6])
        frames = torch.randn(20 + i % 7, feature_dim, generator=generator)
        units = torch.randint(0, num_units, (24 + i % 5,), generator=generator)
        examples = [asr_example(tokenizer.encode(text), specials, 267, features=frames),
                    tts_example(tokenizer.encode(text), units, specials, 267), text_lm_example(tokenizer.encode(text), specials)]
        batches.append(collate(examples, specials.pad))
    return batches


def demo_run(out_dir: str | Path, steps: int = 8, seed: int = 0) -> DemoRun:
    """Train the tiny MAMoE preset for `steps` steps on synthetic batches, logging routing every step."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_most.stages import Stage1Module
    from lightning_most.stages.optimizer import OptimizerConfig

    out_dir = Path(out_dir)
    pl.seed_everything(seed)
    module = Stage1Module(backbone="tiny", backbone_overrides={"num_layers": 3, "num_audio_units": 32},
                          log_routing_every_n_steps=1, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=1))
    batches = _synthetic_batches(steps, seed)
    logger = TensorBoardLogger(str(out_dir), name="tensorboard", version=0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=logger, log_every_n_steps=1,
                         callbacks=[ModelCheckpoint(dirpath=str(out_dir / "checkpoints"), save_last=True)],
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return DemoRun(out_dir / "checkpoints" / "last.ckpt", Path(logger.log_dir), batches)
