r"""The training loop: BPR-style epochs over shuffled training pairs, full-ranking validation
after every epoch, early stopping on the validation metric, test at the best-valid epoch.

Checkpoints (:class:`Checkpointing`): ``best.pt`` holds the best-valid weights and their
metrics and is rewritten whenever validation improves; ``last.pt`` holds everything a resumed
run needs (weights, optimiser, :class:`TrainState`, random state) and is written every
``every`` epochs and when training ends. Numeric guards: a NaN or infinite loss term, or a
non-finite score at evaluation, stops training with a :class:`TrainingError` that names the
term and the epoch; the checkpoints on disk were written at finite epochs and stay as they are.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from brmrs_pyg import __version__
from brmrs_pyg.checkpoint import TRAINING_CHECKPOINT, capture_rng, restore_rng
from brmrs_pyg.evaluation import EvalResult, Evaluator, Scorer
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.io import atomic_torch_save
from brmrs_pyg.recommenders.base import Batch, Recommender
from brmrs_pyg.sampling import sample_negatives

log = logging.getLogger(__name__)

#: Batches between two host-side looks at the running loss sums (finite? progress bar). In
#: between the sums stay on the device, so a GPU is not stalled once per batch; a NaN is
#: caught at most this many batches late, and the weights it spoiled are never saved.
CHECK_EVERY = 16


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


@dataclass(frozen=True)
class Checkpointing:
    r"""What :func:`train` saves, and where.

    Args:
        folder (Path): Receives ``best.pt`` and ``last.pt``.
        every (int, optional): ``last.pt`` is written every ``every`` epochs and when
            training ends; 0 never writes it (the run cannot be resumed). (default: :obj:`5`)
        meta (dict, optional): Saved in both checkpoints: the resolved ``config`` and the
            dataset's fingerprint ``data``, compared on resume
            (:mod:`brmrs_pyg.checkpoint`).
    """

    folder: Path
    every: int = 5
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Path:
        return Path(self.folder) / "best.pt"

    @property
    def last(self) -> Path:
        return Path(self.folder) / "last.pt"


@dataclass
class TrainState:
    r"""Everything the loop carries from one epoch to the next besides the model and the
    optimiser: early stopping, the best epoch's metrics and weights, timings and history.
    ``last.pt`` saves it whole, so a resumed run continues exactly where it stopped."""

    epoch: int = 0  # epochs completed
    best_score: float = -math.inf
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    best_test: dict[str, float] = field(default_factory=dict)
    best_branches: dict[str, dict[str, float]] = field(default_factory=dict)
    best_weights: dict[str, Tensor] | None = None
    waited: int = 0  # epochs since the last improvement
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    last_losses: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        r"""The fields as a dict (tensors shared, not copied), for a checkpoint."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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

    Raises:
        TrainingError: A term became NaN or infinite (checked every :data:`CHECK_EVERY`
            batches and at the end of the epoch).
    """
    model.train()
    model.start_epoch()
    perm = torch.randperm(train_edges.size(1), device=train_edges.device)
    sums: dict[str, Tensor] = {}
    num_batches = math.ceil(perm.numel() / batch_size)
    means: dict[str, float] = {}
    checked = 0
    for step, idx in enumerate(perm.split(batch_size)):
        users, pos = train_edges[:, idx]
        batch = Batch(users, pos, sample_negatives(users, train_index, model.num_negatives))
        loss, terms = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in {"loss": loss.detach(), **terms}.items():
            value = torch.as_tensor(value, device=loss.device)
            sums[key] = sums[key] + value if key in sums else value
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == num_batches:
            means = _finite_means(sums, step + 1, checked + 1, num_batches)
            checked = step + 1
            if bar is not None:
                bar.set_postfix(loss=f"{means['loss']:.4f}")
        if bar is not None:
            bar.update(1)
    return means


def _finite_means(sums: dict[str, Tensor], count: int, first: int, num_batches: int
                  ) -> dict[str, float]:
    r"""``sums / count`` on the host (one synchronisation for all terms); raises when a sum
    is no longer finite, i.e. a term was NaN or infinite in batches ``first..count``."""
    values = torch.stack([v.detach().float().reshape(()) for v in sums.values()]).tolist()
    bad = [key for key, value in zip(sums, values) if not math.isfinite(value)]
    if bad:
        raise TrainingError(f"loss term(s) {', '.join(bad)} became NaN or infinite in batches "
                            f"{first}-{count} of {num_batches}")
    return {key: value / count for key, value in zip(sums, values)}


def evaluate_finite(evaluator: Evaluator, scorer: Scorer, what: str) -> EvalResult:
    r"""``evaluator.evaluate(scorer)``, checking on the device that every score is finite
    (one synchronisation at the end).

    NaN or infinite scores mean the embeddings are no longer finite; ranked, they would give
    meaningless metrics rather than an error. Items are all scored, so any non-finite item
    embedding is caught; a user embedding is caught here when the user is evaluated and
    otherwise by the loss, since every user takes part in every epoch.
    """
    flags: list[Tensor] = []

    def checked(users: Tensor) -> Tensor:
        scores = scorer(users)
        flags.append(torch.isfinite(scores).all())
        return scores

    result = evaluator.evaluate(checked)
    if flags and not bool(torch.stack(flags).all()):
        raise TrainingError(f"the {what} scores contain NaN or inf: the model's embeddings "
                            "are no longer finite")
    return result


def train(model: Recommender, train_edges: Tensor, train_index: PairIndex,
          valid: Evaluator, test: Evaluator, settings: TrainSettings,
          checkpoints: Checkpointing | None = None, resume: Mapping[str, Any] | None = None
          ) -> TrainResult:
    r"""Trains ``model`` until ``settings.epochs`` or early stopping, then restores the
    best-valid weights.

    After each epoch the model is evaluated on ``valid``; when ``settings.valid_metric``
    improves, the test split (and every branch, for multi-branch models) is evaluated and the
    weights are kept (and saved to ``checkpoints.best``). Training stops after
    ``settings.patience`` epochs without improvement.

    Args:
        checkpoints (Checkpointing, optional): Where to save ``best.pt`` and ``last.pt``
            (default: nothing is saved).
        resume (dict, optional): A ``last.pt`` payload (its config and data checked by the
            caller, :mod:`brmrs_pyg.checkpoint`): training continues after its epoch, with
            its weights, optimiser, state and random generators.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    state, saved = TrainState(), 0  # saved: the epoch last.pt holds
    if resume is not None:
        state = restore_training(resume, model, optimizer)
        saved = state.epoch
        log.info("resumed after epoch %d (best epoch %d, %s %.4f)", state.epoch,
                 state.best_epoch, settings.valid_metric, state.best_score)
        if checkpoints is not None and state.best_weights is not None:
            # best.pt may hold an epoch trained after last.pt and lost with the interruption
            _save_best(state, checkpoints)
    num_batches = math.ceil(train_edges.size(1) / settings.batch_size)
    disable = None if settings.progress is None else not settings.progress
    while state.epoch < settings.epochs and state.waited < settings.patience:
        epoch = state.epoch + 1
        try:
            start = time.perf_counter()
            with tqdm(total=num_batches, desc=f"epoch {epoch}", leave=False,
                      disable=disable) as bar:
                losses = train_epoch(model, optimizer, train_edges, train_index,
                                     settings.batch_size, bar)
            state.train_seconds += time.perf_counter() - start
            start = time.perf_counter()
            model.eval()
            result = evaluate_finite(valid, model.scorer(), "validation")
            state.eval_seconds += time.perf_counter() - start
            score = result.metrics[settings.valid_metric]
            improved = score > state.best_score
            if improved:
                _record_best(model, state, epoch, score, result, test, checkpoints)
            else:
                state.waited += 1
        except TrainingError as exc:
            kept = _kept(state, checkpoints, saved, settings.valid_metric)
            raise TrainingError(f"epoch {epoch}: {exc}. {kept}") from None
        state.epoch, state.last_losses = epoch, losses
        state.history.append({"epoch": epoch, **losses, settings.valid_metric: score})
        log.info("epoch %4d | %s | valid %s %.4f%s | %.2fs train", epoch,
                 " ".join(f"{k} {v:.4f}" for k, v in losses.items()), settings.valid_metric,
                 score, " *" if improved else "", state.train_seconds / epoch)
        if checkpoints is not None and checkpoints.every and epoch % checkpoints.every == 0:
            save_training(checkpoints, model, optimizer, state)
            saved = epoch
    if state.waited >= settings.patience:
        log.info("early stop: no %s improvement for %d epochs; best epoch %d (%.4f)",
                 settings.valid_metric, settings.patience, state.best_epoch, state.best_score)
    if checkpoints is not None and checkpoints.every and saved != state.epoch:
        save_training(checkpoints, model, optimizer, state)
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    epochs = max(state.epoch, 1)
    return TrainResult(best_epoch=state.best_epoch, valid=state.best_valid,
                       test=state.best_test, test_branches=state.best_branches,
                       epochs_run=state.epoch, stopped_early=state.waited >= settings.patience,
                       seconds_per_epoch=state.train_seconds / epochs,
                       seconds_per_eval=state.eval_seconds / epochs,
                       last_losses=state.last_losses, history=state.history)


def _record_best(model: Recommender, state: TrainState, epoch: int, score: float,
                 result: EvalResult, test: Evaluator, checkpoints: Checkpointing | None
                 ) -> None:
    r"""Keeps the weights and valid metrics of a new best epoch, evaluates the test split
    (and each branch) with them, and saves ``best.pt``."""
    test_metrics = evaluate_finite(test, model.scorer(), "test").metrics
    branches = {name: evaluate_finite(test, fn, f"{name} branch").metrics
                for name, fn in model.branch_scorers().items()}
    state.best_score, state.best_epoch, state.best_valid = score, epoch, result.metrics
    state.waited = 0
    state.best_test, state.best_branches = test_metrics, branches
    state.best_weights = copy.deepcopy(model.state_dict())
    if checkpoints is not None:
        _save_best(state, checkpoints)
    if result.tie_rate > 0.05:
        log.warning("%.0f%% of users have tied scores at the cut-off: their ranking "
                    "depends on item order, not on the model", 100 * result.tie_rate)


def _save_best(state: TrainState, checkpoints: Checkpointing) -> None:
    atomic_torch_save({**checkpoints.meta, "version": __version__, "model": state.best_weights,
                       "epoch": state.best_epoch, "valid": state.best_valid,
                       "test": state.best_test, "test_branches": state.best_branches},
                      checkpoints.best)


def save_training(checkpoints: Checkpointing, model: Recommender,
                  optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    r"""Writes ``last.pt``: weights, optimiser, :class:`TrainState` and random state, with
    ``checkpoints.meta`` and the package version (see :func:`restore_training`)."""
    atomic_torch_save({"kind": TRAINING_CHECKPOINT, "version": __version__,
                       "meta": checkpoints.meta, "epoch": state.epoch,
                       "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "state": state.as_dict(), "rng": capture_rng()}, checkpoints.last)


def restore_training(payload: Mapping[str, Any], model: Recommender,
                     optimizer: torch.optim.Optimizer) -> TrainState:
    r"""Loads a :func:`save_training` payload into ``model`` and ``optimizer`` and sets the
    random generators; returns the saved :class:`TrainState`."""
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    state = TrainState(**payload["state"])
    restore_rng(payload["rng"])  # last: nothing may draw between this and the next epoch
    return state


def _kept(state: TrainState, checkpoints: Checkpointing | None, saved: int, metric: str
          ) -> str:
    r"""Where the last good results are, for the message of a failed epoch."""
    if checkpoints is None:
        return "No checkpoint was being written"
    best = (f"{checkpoints.best} holds the best epoch so far, {state.best_epoch} (valid "
            f"{metric} {state.best_score:.4f}, with its test metrics)" if state.best_epoch
            else "no epoch finished, so there is no best.pt")
    last = (f"{checkpoints.last} holds epoch {saved}" if saved else "no last.pt was written")
    return (f"The checkpoints on disk are from finite epochs and were kept: {best}; {last}. "
            "Lower lr or check the data before training again")
