r"""The training loop: BPR-style epochs over shuffled training pairs, full-ranking validation
after every epoch, early stopping on the validation metric, test at the best-valid epoch."""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from brmrs_pyg import __version__
from brmrs_pyg.evaluation import Evaluator
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.io import atomic_torch_save
from brmrs_pyg.recommenders.base import Batch, Recommender
from brmrs_pyg.sampling import sample_negatives

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    r"""Training cannot go on (e.g. a loss became NaN or infinite)."""


@dataclass(frozen=True)
class TrainSettings:
    r"""Settings of :func:`train` (unpacked from the run config)."""

    epochs: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    patience: int = 20
    valid_metric: str = "recall@20"
    progress: bool | None = None  # tqdm's default: a bar only on a terminal


@dataclass
class TrainResult:
    r"""What a training run produced; metrics are those of the best-valid epoch."""

    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    test_branches: dict[str, dict[str, float]]
    epochs_run: int
    stopped_early: bool
    seconds_per_epoch: float
    seconds_per_eval: float
    last_losses: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


def train_epoch(model: Recommender, optimizer: torch.optim.Optimizer, train_edges: Tensor,
                train_index: PairIndex, batch_size: int, bar: tqdm | None = None
                ) -> dict[str, float]:
    r"""One pass over the shuffled training pairs, ``model.num_negatives`` uniform negatives
    per pair.

    Returns:
        The mean of the total loss (``"loss"``) and of each term over the batches.
    """
    model.train()
    perm = torch.randperm(train_edges.size(1), device=train_edges.device)
    sums: dict[str, Tensor] = {}
    num_batches = math.ceil(perm.numel() / batch_size)
    for step, idx in enumerate(perm.split(batch_size)):
        users, pos = train_edges[:, idx]
        batch = Batch(users, pos, sample_negatives(users, train_index, model.num_negatives))
        loss, terms = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in {"loss": loss.detach(), **terms}.items():
            sums[key] = sums.get(key, 0.0) + value
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 or step == num_batches - 1:
                bar.set_postfix(loss=f"{float(sums['loss']) / (step + 1):.4f}")
    means = {key: float(value) / num_batches for key, value in sums.items()}
    bad = [key for key, value in means.items() if not math.isfinite(value)]
    if bad:
        raise TrainingError(f"loss term(s) {', '.join(bad)} became NaN or infinite: {means}")
    return means


def train(model: Recommender, train_edges: Tensor, train_index: PairIndex,
          valid: Evaluator, test: Evaluator, settings: TrainSettings,
          checkpoint: Path | None = None, config: dict[str, Any] | None = None) -> TrainResult:
    r"""Trains ``model`` until ``settings.epochs`` or early stopping, then restores the
    best-valid weights.

    After each epoch the model is evaluated on ``valid``; when ``settings.valid_metric``
    improves, the test split (and every branch, for multi-branch models) is evaluated and the
    weights are kept (and saved to ``checkpoint`` with ``config``). Training stops after
    ``settings.patience`` epochs without improvement.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    best_score, best_epoch, best_state, waited = -math.inf, 0, None, 0
    best_valid: dict[str, float] = {}
    best_test: dict[str, float] = {}
    best_branches: dict[str, dict[str, float]] = {}
    train_time = eval_time = 0.0
    history: list[dict[str, Any]] = []
    num_batches = math.ceil(train_edges.size(1) / settings.batch_size)
    losses: dict[str, float] = {}
    epoch = 0
    for epoch in range(1, settings.epochs + 1):
        start = time.perf_counter()
        disable = None if settings.progress is None else not settings.progress
        with tqdm(total=num_batches, desc=f"epoch {epoch}", leave=False,
                  disable=disable) as bar:
            losses = train_epoch(model, optimizer, train_edges, train_index,
                                 settings.batch_size, bar)
        train_time += time.perf_counter() - start
        start = time.perf_counter()
        model.eval()
        result = valid.evaluate(model.scorer())
        eval_time += time.perf_counter() - start
        score = result.metrics[settings.valid_metric]
        improved = score > best_score
        if improved:
            best_score, best_epoch, best_valid, waited = score, epoch, result.metrics, 0
            best_state = copy.deepcopy(model.state_dict())
            best_test = test.evaluate(model.scorer()).metrics
            best_branches = {name: test.evaluate(fn).metrics
                             for name, fn in model.branch_scorers().items()}
            if checkpoint is not None:
                atomic_torch_save({"model": best_state, "config": config, "epoch": epoch,
                                   "valid": best_valid, "version": __version__}, checkpoint)
            if result.tie_rate > 0.05:
                log.warning("%.0f%% of users have tied scores at the cut-off: their ranking "
                            "depends on item order, not on the model", 100 * result.tie_rate)
        else:
            waited += 1
        history.append({"epoch": epoch, **losses, settings.valid_metric: score})
        log.info("epoch %4d | %s | valid %s %.4f%s | %.2fs train", epoch,
                 " ".join(f"{k} {v:.4f}" for k, v in losses.items()), settings.valid_metric,
                 score, " *" if improved else "", train_time / epoch)
        if waited >= settings.patience:
            log.info("early stop: no %s improvement for %d epochs; best epoch %d (%.4f)",
                     settings.valid_metric, settings.patience, best_epoch, best_score)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(best_epoch=best_epoch, valid=best_valid, test=best_test,
                       test_branches=best_branches, epochs_run=epoch,
                       stopped_early=waited >= settings.patience,
                       seconds_per_epoch=train_time / max(epoch, 1),
                       seconds_per_eval=eval_time / max(epoch, 1), last_losses=losses,
                       history=history)
