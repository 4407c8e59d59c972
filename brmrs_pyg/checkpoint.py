r"""Checkpoints for resuming: the random-number state of every generator the trainer draws
from, and the reading and checking of a run's ``last.pt``.

A resumed run must compute exactly what the interrupted one would have: on CPU its epochs are
bit-identical to an uninterrupted run's. That needs, besides the weights, the optimiser state
and the trainer's own state (:class:`~brmrs_pyg.train.TrainState`), the state of every random
generator (torch's CPU and CUDA generators draw the shuffles and negatives; python's and
numpy's are saved too, for models that use them), and the guarantee that the config, the
package version and the data are those of the interrupted run. This module checks the last
three; a mismatch is a :class:`ResumeError` that says what differs.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from brmrs_pyg import __version__

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
    the checkpoint only in :data:`RESUMABLE_KEYS`."""
    saved = payload["meta"]["config"]
    changed = sorted(k for k in set(saved) | set(config)
                     if k not in RESUMABLE_KEYS and saved.get(k) != config.get(k))
    if changed:
        diff = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {config.get(k)!r} now"
                         for k in changed)
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
