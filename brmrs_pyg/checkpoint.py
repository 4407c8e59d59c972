r"""Checkpoints for resuming: what a run's ``last.pt`` holds, when it is written
(:class:`LastCheckpoint`), the random-number state of every generator the trainer draws from,
and the reading and checking of ``last.pt`` on resume.

A resumed run must compute exactly what the interrupted one would have: on CPU its epochs are
bit-identical to an uninterrupted run's. That needs, besides the weights, the optimiser state
and the trainer's own state (:class:`TrainState`), the state of every random generator
(torch's CPU and CUDA generators draw the shuffles and negatives; python's and numpy's are
saved too, for models that use them), and the guarantee that the config, the package version
and the data are those of the interrupted run. This module checks the last three; a mismatch
is a :class:`ResumeError` that says what differs. It also needs an epoch boundary: ``last.pt``
always holds the state at the end of a completed epoch, even when training is interrupted in
the middle of one (:class:`LastCheckpoint`).
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from brmrs_pyg import __version__
from brmrs_pyg.config import config_changes
from brmrs_pyg.io import atomic_torch_save
from brmrs_pyg.recommenders.base import Recommender

log = logging.getLogger(__name__)

#: ``kind`` of a full training checkpoint (``best.pt`` holds weights and metrics only).
TRAINING_CHECKPOINT = "training-state"

#: Config keys a resumed run may change: they decide where and how fast it runs, or
#: (``epochs``) how long, never what an epoch computes.
RESUMABLE_KEYS = frozenset({"device", "threads", "cache_dir", "data_dir", "epochs",
                            "eval_batch_size", "checkpoint_every"})


class ResumeError(ValueError):
    r"""A run cannot be resumed as asked (no checkpoint, or one from another config, package
    version or dataset)."""


def capture_rng() -> dict[str, Any]:
    r"""The state of python's, numpy's and torch's (CPU and every initialised CUDA device)
    global generators, as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state(legacy=False)
    cuda = (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
            and torch.cuda.is_initialized() else [])
    return {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    r"""Sets every generator :func:`capture_rng` saved. CUDA states are restored only when
    this process has as many CUDA devices as the saving one; otherwise a warning says that
    the continuation draws different random numbers from the interrupted run."""
    random.setstate(_as_python_state(state["python"]))
    numpy = state["numpy"]
    np.random.set_state({"bit_generator": numpy["bit_generator"],
                         "state": {"key": numpy["key"].numpy().astype(np.uint32),
                                   "pos": numpy["pos"]},
                         "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
    torch.set_rng_state(state["torch"])
    cuda = list(state["cuda"])
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    elif cuda or torch.cuda.is_available():
        log.warning("the checkpoint's CUDA random state (%d devices) cannot be restored here "
                    "(%d devices): the resumed run draws other shuffles and negatives than the "
                    "interrupted one would have", len(cuda),
                    torch.cuda.device_count() if torch.cuda.is_available() else 0)


def cpu_copy(obj: Any) -> Any:
    r"""A copy of ``obj`` in which every tensor is cloned to the CPU, and dicts, lists and
    tuples are new: a snapshot of a checkpoint payload that later training steps cannot change
    and that holds no accelerator memory. Other values (numbers, strings) are shared.

    >>> state = {"w": torch.zeros(2), "steps": [1, 2]}
    >>> snapshot = cpu_copy(state)
    >>> _ = state["w"].add_(1.0)
    >>> snapshot["w"].tolist()
    [0.0, 0.0]
    """
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [cpu_copy(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(cpu_copy(value) for value in obj)
    return obj


def _as_python_state(value: Any) -> tuple[Any, ...]:
    # random.setstate wants tuples; a serialiser may hand back lists
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    r"""Loads a run's ``last.pt`` and checks that this version of the package wrote it.

    Raises:
        ResumeError: The file is missing, unreadable, not a training checkpoint, or from
            another package version.
    """
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"no checkpoint {path}: nothing to resume in {path.parent}. A run "
                          f"writes last.pt every checkpoint_every epochs (and when it ends); "
                          f"a run killed before its first checkpoint must be started again")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file gets the same answer
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ResumeError(f"{path} is unreadable ({reason}); the run cannot be resumed from "
                          f"it") from None
    if not isinstance(payload, dict) or payload.get("kind") != TRAINING_CHECKPOINT:
        raise ResumeError(f"{path} is not a training checkpoint of brmrs_pyg")
    if payload.get("version") != __version__:
        raise ResumeError(f"{path} was written by brmrs_pyg {payload.get('version')}, this is "
                          f"{__version__}: resume it with that version, or start a new run")
    return payload


def check_config(payload: Mapping[str, Any], config: Mapping[str, Any], path: Path) -> None:
    r"""Raises :class:`ResumeError` unless ``config`` (flat) differs from the config saved in
    the checkpoint only in :data:`RESUMABLE_KEYS` (a key of
    :data:`~brmrs_pyg.config.ADDED_KEYS` missing from the saved config counts as its value
    there)."""
    changed = config_changes(payload["meta"]["config"], config, RESUMABLE_KEYS)
    if changed:
        diff = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in changed)
        raise ResumeError(f"cannot resume {path}: the config differs ({diff}). A resumed run "
                          f"continues the interrupted one; only "
                          f"{', '.join(sorted(RESUMABLE_KEYS))} may change. To train with "
                          f"other settings, start a new run")


def check_data(payload: Mapping[str, Any], fingerprint: str, path: Path) -> None:
    r"""Raises :class:`ResumeError` unless the dataset's ``fingerprint``
    (:meth:`~brmrs_pyg.data.InteractionData.fingerprint`) is the checkpoint's."""
    saved = str(payload["meta"]["data"])
    if saved != fingerprint:
        raise ResumeError(f"cannot resume {path}: the dataset's files differ from those the "
                          f"run was trained on (fingerprint {fingerprint[:12]} now, "
                          f"{saved[:12]} in the checkpoint)")


@dataclass(frozen=True)
class Checkpointing:
    r"""What :func:`~brmrs_pyg.train.train` saves, and where.

    Args:
        folder (Path): Receives ``best.pt`` and ``last.pt``.
        every (int, optional): ``last.pt`` is written every ``every`` epochs, when
            training ends and when it is interrupted; 0 never writes it (the run cannot be
            resumed). (default: :obj:`5`)
        meta (dict, optional): Saved in both checkpoints: the resolved ``config`` and the
            dataset's fingerprint ``data``, compared on resume (:func:`check_config`,
            :func:`check_data`).
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


def training_payload(checkpoints: Checkpointing, model: Recommender,
                     optimizer: torch.optim.Optimizer, state: TrainState) -> dict[str, Any]:
    r"""The content of ``last.pt``: weights, optimiser, :class:`TrainState` and random state,
    with ``checkpoints.meta`` and the package version (see :func:`restore_training`). Its
    tensors are the live ones, not copies."""
    return {"kind": TRAINING_CHECKPOINT, "version": __version__, "meta": checkpoints.meta,
            "epoch": state.epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "state": state.as_dict(), "rng": capture_rng()}


def save_training(checkpoints: Checkpointing, model: Recommender,
                  optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    r"""Writes ``last.pt`` (:func:`training_payload`)."""
    atomic_torch_save(training_payload(checkpoints, model, optimizer, state), checkpoints.last)


def restore_training(payload: Mapping[str, Any], model: Recommender,
                     optimizer: torch.optim.Optimizer) -> TrainState:
    r"""Loads a :func:`save_training` payload into ``model`` and ``optimizer`` and sets the
    random generators; returns the saved :class:`TrainState`."""
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    state = TrainState(**payload["state"])
    restore_rng(payload["rng"])  # last: nothing may draw between this and the next epoch
    return state


class LastCheckpoint:
    r"""``last.pt`` for :func:`~brmrs_pyg.train.train`: written every ``checkpoints.every``
    epochs; in between, the payload of the last completed epoch is kept in memory (on the
    CPU, see :func:`cpu_copy`), so that an interruption, in the middle of an
    epoch too, writes the state of an epoch boundary, from which a resumed run computes
    exactly what an uninterrupted one would. The copy costs, once per epoch, the size of the
    weights, the optimiser's state and the best weights; ``every=0`` keeps nothing.

    Args:
        checkpoints (Checkpointing, optional): Where to write (:obj:`None`: nowhere).
        model (Recommender): The model being trained.
        optimizer (torch.optim.Optimizer): Its optimiser.
        state (TrainState): The state training starts from (epoch 0, or a resumed one).
        resumed (bool): ``state`` was read from ``last.pt``, which therefore holds it.
    """

    def __init__(self, checkpoints: Checkpointing | None, model: Recommender,
                 optimizer: torch.optim.Optimizer, state: TrainState, resumed: bool) -> None:
        self.checkpoints, self.model, self.optimizer = checkpoints, model, optimizer
        self.saved: int | None = state.epoch if resumed else None  # the epoch on disk
        self.pending: dict[str, Any] | None = None
        if not resumed:
            self.keep(state)  # a stop in the first epoch saves the start

    def keep(self, state: TrainState) -> None:
        r"""At the end of epoch ``state.epoch``: writes ``last.pt`` when the epoch is a
        multiple of ``every``, otherwise keeps its payload in memory for :meth:`flush`."""
        if self.checkpoints is None or not self.checkpoints.every:
            return
        if state.epoch and state.epoch % self.checkpoints.every == 0:
            save_training(self.checkpoints, self.model, self.optimizer, state)
            self.saved, self.pending = state.epoch, None
        else:
            self.pending = cpu_copy(training_payload(self.checkpoints, self.model,
                                                     self.optimizer, state))

    def flush(self) -> None:
        r"""Writes the payload kept in memory, if any, to ``last.pt``."""
        if self.pending is not None and self.checkpoints is not None:
            atomic_torch_save(self.pending, self.checkpoints.last)
            self.saved, self.pending = int(self.pending["epoch"]), None
