r"""The training loop: BPR-style epochs over shuffled training pairs, full-ranking validation
after every epoch, early stopping on the validation metric, test at the best-valid epoch.

Checkpoints (:class:`~brmrs_pyg.checkpoint.Checkpointing`): ``best.pt`` holds the best-valid
weights and their metrics and is rewritten whenever validation improves; ``last.pt`` holds
everything a resumed run needs (weights, optimiser, :class:`~brmrs_pyg.checkpoint.TrainState`,
random state) and is written every ``every`` epochs, when training ends and when it is
interrupted. Numeric guards: a NaN or infinite loss term, or a non-finite score at evaluation,
stops training with a :class:`TrainingError` that names the term and the epoch; the
checkpoints on disk were written at finite epochs and stay as they are.

Interruptions (:mod:`brmrs_pyg.interrupt`): on SIGINT or SIGTERM, training stops at the end of
the step (batch) or evaluation under way, writes ``last.pt`` with the state of the last
*completed* epoch and raises :class:`~brmrs_pyg.interrupt.TrainingInterrupted`. Between two
scheduled writes that state is kept in memory (:class:`~brmrs_pyg.checkpoint.LastCheckpoint`):
a run resumed from an epoch boundary computes exactly what an uninterrupted run would, whereas
the middle of an epoch is not all in a checkpoint (the epoch's shuffle, a model's per-epoch
graph). A stop in the middle of an epoch therefore drops that epoch's partial work.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from brmrs_pyg import __version__
from brmrs_pyg.checkpoint import (Checkpointing, LastCheckpoint, TrainState,
                                  restore_training)
from brmrs_pyg.evaluation import EvalResult, Evaluator, Scorer
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.interrupt import RESUME_COMMAND, StopSignals, TrainingInterrupted, signal_name
from brmrs_pyg.io import atomic_torch_save
from brmrs_pyg.recommenders.base import Batch, Recommender
from brmrs_pyg.sampling import sample_negatives

log = logging.getLogger(__name__)

#: Batches between two host-side looks at the running loss sums (finite? progress bar). In
#: between the sums stay on the device, so a GPU is not stalled once per batch; a NaN is
#: caught at most this many batches late, and the weights it spoiled are never saved.
CHECK_EVERY = 16

#: ``on_epoch(epoch, valid score) -> stop?`` of :func:`train`.
EpochCallback = Callable[[int, float], bool]


class TrainingError(RuntimeError):
    r"""Training cannot go on (e.g. a loss became NaN or infinite)."""


class EpochStopped(Exception):
    r"""Raised by :func:`train_epoch` when its ``stop`` callback asks to end the epoch after
    ``steps`` of its ``num_batches`` steps; the epoch is incomplete."""

    def __init__(self, steps: int, num_batches: int) -> None:
        super().__init__(f"step {steps} of {num_batches}")
        self.steps, self.num_batches = steps, num_batches


@dataclass(frozen=True)
class TrainSettings:
    r"""Settings of :func:`train` (unpacked from the run config)."""

    epochs: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    patience: int = 20
    min_epochs: int = 0
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


#: Devices on which :func:`make_optimizer` uses PyTorch's fused Adam kernel.
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    r"""Adam over ``model``'s parameters, with PyTorch's fused kernel when every parameter is
    a floating-point tensor on a device of :data:`FUSED_ADAM_DEVICES`: the same update, in one
    kernel per tensor instead of a dozen element-wise ops (on CPU about 3x faster for a
    54k x 64 table; docs/benchmarks.md), equal to the unfused update to float rounding.
    Elsewhere PyTorch's default implementation."""
    params = list(model.parameters())
    fused = all(p.is_floating_point() and p.device.type in FUSED_ADAM_DEVICES for p in params)
    return torch.optim.Adam(params, lr=lr, fused=True if fused else None)


def train_epoch(model: Recommender, optimizer: torch.optim.Optimizer, train_edges: Tensor,
                train_index: PairIndex, batch_size: int, bar: tqdm | None = None,
                stop: Callable[[], bool] | None = None) -> dict[str, float]:
    r"""One pass over the shuffled training pairs, ``model.num_negatives`` uniform negatives
    per pair.

    Args:
        stop (callable, optional): Asked after every step; :obj:`True` ends the epoch there
            with :class:`EpochStopped`. (default: :obj:`None`)

    Returns:
        The mean of the total loss (``"loss"``) and of each term over the batches.

    Raises:
        TrainingError: A term became NaN or infinite (checked every :data:`CHECK_EVERY`
            batches and at the end of the epoch).
        EpochStopped: ``stop()`` was true.
    """
    model.train()
    model.start_epoch()
    perm = torch.randperm(train_edges.size(1), device=train_edges.device)
    sums: dict[str, Tensor] = {}
    num_batches = math.ceil(perm.numel() / batch_size)
    means: dict[str, float] = {}
    checked = 0
    with flush_denormals():
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
            if stop is not None and stop():
                raise EpochStopped(step + 1, num_batches)
    return means


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    r"""CPU arithmetic with subnormal floats (below :math:`1.2 \cdot 10^{-38}`) flushed to
    zero, as on GPUs: a loss whose pairs are ranked far apart has gradients that small
    (:math:`\sigma(-x)` for a margin :math:`x > 87`), and x86 processors compute with them
    tens of times slower, which made products of a BR-MRS step several times slower. Values
    that small change nothing an optimiser does. Restored to off on exit."""
    flushing = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushing:
            torch.set_flush_denormal(False)


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
          checkpoints: Checkpointing | None = None, resume: Mapping[str, Any] | None = None,
          on_epoch: EpochCallback | None = None) -> TrainResult:
    r"""Trains ``model`` until ``settings.epochs`` or early stopping, then restores the
    best-valid weights.

    After each epoch the model is evaluated on ``valid``; when ``settings.valid_metric``
    improves, the test split (and every branch, for multi-branch models) is evaluated and the
    weights are kept (and saved to ``checkpoints.best``). Training stops after
    ``settings.patience`` epochs without improvement, but not before epoch
    ``settings.min_epochs``.

    Args:
        checkpoints (Checkpointing, optional): Where to save ``best.pt`` and ``last.pt``
            (default: nothing is saved).
        resume (dict, optional): A ``last.pt`` payload (its config and data checked by the
            caller, :mod:`brmrs_pyg.checkpoint`): training continues after its epoch, with
            its weights, optimiser, state and random generators.
        on_epoch (callable, optional): Called after every epoch as ``on_epoch(epoch,
            score)`` with that epoch's valid ``settings.valid_metric``; returning :obj:`True`
            ends training there as early stopping does (a hyperparameter search prunes a
            trial this way); what it raises propagates. (default: :obj:`None`)

    Raises:
        TrainingError: A loss term or a score became NaN or infinite.
        TrainingInterrupted: SIGINT or SIGTERM arrived (handled in the main thread only):
            training stopped at the end of the step or evaluation under way and ``last.pt``
            holds the last completed epoch (:class:`LastCheckpoint`).
    """
    optimizer = make_optimizer(model, settings.lr)
    num_batches = math.ceil(train_edges.size(1) / settings.batch_size)
    disable = None if settings.progress is None else not settings.progress
    with StopSignals(_abort_note(checkpoints)) as signals:
        state = (TrainState() if resume is None
                 else _resume(resume, model, optimizer, settings, checkpoints))
        last = LastCheckpoint(checkpoints, model, optimizer, state, resumed=resume is not None)
        while state.epoch < settings.epochs and not _patience_ran_out(state, settings):
            epoch = state.epoch + 1
            try:
                start = time.perf_counter()
                with tqdm(total=num_batches, desc=f"epoch {epoch}", leave=False,
                          disable=disable) as bar:
                    losses = train_epoch(model, optimizer, train_edges, train_index,
                                         settings.batch_size, bar, signals.requested)
                seconds = time.perf_counter() - start
                state.train_seconds += seconds
                score, improved = _validate(model, epoch, state, valid, test,
                                            settings.valid_metric, checkpoints)
            except TrainingError as exc:
                kept = _kept(state, checkpoints, last.saved, settings.valid_metric)
                raise TrainingError(f"epoch {epoch}: {exc}. {kept}") from None
            except EpochStopped as stop:
                raise _interrupted(last, signals, f"in epoch {epoch} ({stop})", state) from None
            state.epoch, state.last_losses = epoch, losses
            state.history.append({"epoch": epoch, **losses, settings.valid_metric: score})
            log.info("epoch %4d | %s | valid %s %.4f%s | %.2fs train", epoch,
                     " ".join(f"{k} {v:.4f}" for k, v in losses.items()),
                     settings.valid_metric, score, " *" if improved else "", seconds)
            last.keep(state)
            if signals.requested():
                raise _interrupted(last, signals, f"after epoch {epoch}", state)
            if on_epoch is not None and on_epoch(epoch, score):
                log.info("stopped after epoch %d by the on_epoch callback", epoch)
                break
        stopped_early = _patience_ran_out(state, settings)
        if stopped_early:
            log.info("early stop: no %s improvement for %d epochs; best epoch %d (%.4f)",
                     settings.valid_metric, state.waited, state.best_epoch,
                     state.best_score)
        last.flush()
        if signals.requested():  # arrived after the last epoch's check
            raise _interrupted(last, signals, f"after epoch {state.epoch}", state)
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    epochs = max(state.epoch, 1)
    return TrainResult(best_epoch=state.best_epoch, valid=state.best_valid,
                       test=state.best_test, test_branches=state.best_branches,
                       epochs_run=state.epoch, stopped_early=stopped_early,
                       seconds_per_epoch=state.train_seconds / epochs,
                       seconds_per_eval=state.eval_seconds / epochs,
                       last_losses=state.last_losses, history=state.history)


def _patience_ran_out(state: TrainState, settings: TrainSettings) -> bool:
    r"""Whether early stopping ends the run: ``settings.patience`` epochs without improvement,
    once ``settings.min_epochs`` epochs have run."""
    return state.waited >= settings.patience and state.epoch >= settings.min_epochs


def _resume(payload: Mapping[str, Any], model: Recommender, optimizer: torch.optim.Optimizer,
            settings: TrainSettings, checkpoints: Checkpointing | None) -> TrainState:
    r"""Restores a ``last.pt`` payload (:func:`restore_training`) and rewrites ``best.pt``
    from it."""
    state = restore_training(payload, model, optimizer)
    log.info("resumed after epoch %d (best epoch %d, %s %.4f)", state.epoch,
             state.best_epoch, settings.valid_metric, state.best_score)
    if checkpoints is not None and state.best_weights is not None:
        # best.pt may hold an epoch trained after last.pt and lost with the interruption
        _save_best(state, checkpoints)
    return state


def _validate(model: Recommender, epoch: int, state: TrainState, valid: Evaluator,
              test: Evaluator, metric: str, checkpoints: Checkpointing | None
              ) -> tuple[float, bool]:
    r"""Evaluates the model after ``epoch`` on ``valid`` and, when ``metric`` improved, keeps
    it as the best epoch (:func:`_record_best`). Returns the score and whether it improved."""
    start = time.perf_counter()
    model.eval()
    result = evaluate_finite(valid, model.scorer(), "validation")
    state.eval_seconds += time.perf_counter() - start
    score = result.metrics[metric]
    if score > state.best_score:
        _record_best(model, state, epoch, score, result, test, checkpoints)
        return score, True
    state.waited += 1
    return score, False


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


def _interrupted(last: LastCheckpoint, signals: StopSignals, where: str, state: TrainState
                 ) -> TrainingInterrupted:
    r"""Writes ``last.pt`` (:meth:`LastCheckpoint.flush`) and returns the exception that
    reports the stop in one line: the signal, ``where`` training stopped, the epoch reached
    and how to resume, or why the run cannot be resumed."""
    last.flush()
    assert signals.received is not None
    signum, checkpoints = signals.received, last.checkpoints
    head = f"{signal_name(signum)}: training stopped {where}"
    if checkpoints is None or not checkpoints.every:
        why = ("no checkpoint was being written" if checkpoints is None
               else "checkpoint_every=0 writes no last.pt")
        return TrainingInterrupted(signum, f"{head}, {state.epoch} epoch(s) completed; the "
                                           f"run cannot be resumed: {why}")
    folder = Path(checkpoints.folder)
    return TrainingInterrupted(
        signum, f"{head}; {checkpoints.last} holds epoch {last.saved}, the last one "
                f"completed. Resume with: {RESUME_COMMAND} {shlex.quote(str(folder))}",
        epoch=last.saved, run_dir=folder)


def _abort_note(checkpoints: Checkpointing | None) -> str:
    # the tail of the message of a second signal, which aborts without writing anything
    if checkpoints is None:
        return ""
    return f"; the checkpoints already in {checkpoints.folder} are kept"


def _kept(state: TrainState, checkpoints: Checkpointing | None, saved: int | None,
          metric: str) -> str:
    r"""Where the last good results are, for the message of a failed epoch."""
    if checkpoints is None:
        return "No checkpoint was being written"
    best = (f"{checkpoints.best} holds the best epoch so far, {state.best_epoch} (valid "
            f"{metric} {state.best_score:.4f}, with its test metrics)" if state.best_epoch
            else "no epoch finished, so there is no best.pt")
    last = (f"{checkpoints.last} holds epoch {saved}" if saved is not None
            else "no last.pt was written")
    return (f"The checkpoints on disk are from finite epochs and were kept: {best}; {last}. "
            "Lower lr or check the data before training again")
