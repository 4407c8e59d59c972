r"""Rebuilding a trained model from its run folder: the one place that does it, for
``run.py analyze`` (:mod:`brmrs_pyg.analysis`) and for the loaded runs of
:mod:`brmrs_pyg.trained` (``brmrs_pyg.load_run``, ``run.py recommend``, ``run.py export``).

A finished run's folder holds ``results.json`` (with the resolved config) and ``best.pt``
(the best-valid weights). The model is rebuilt from that config on the dataset the config
names, as the run built it (:func:`~brmrs_pyg.pipeline.build_model`), and the weights are
loaded into it; a folder without those files, or weights that do not fit, is a
:class:`RunError`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from brmrs_pyg.config import Config
from brmrs_pyg.data.cards import DatasetCard
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.pipeline import (Paths, build_model, card_of, load_config, load_data,
                                resolve_device)
from brmrs_pyg.recommenders.base import Recommender
from brmrs_pyg.recommenders.branched import FUSED
from brmrs_pyg.threads import set_threads

log = logging.getLogger(__name__)


class RunError(ValueError):
    r"""A run folder that cannot be loaded (not a finished run, weights that do not fit the
    model its config builds), or a request a loaded run cannot answer (an unknown user, item
    or branch, raw keys of a dataset without mapping files)."""


class RestoredRun(NamedTuple):
    r"""What :func:`restore_run` rebuilds: the run's config, dataset card, dataset and model
    (with its best-valid weights, in eval mode)."""

    config: Config
    card: DatasetCard
    data: InteractionData
    model: Recommender


def read_run(run_dir: Path, paths: Paths) -> tuple[Config, dict[str, Any]]:
    r"""The config of the finished run in ``run_dir`` (from ``results.json``) and the weights
    of its ``best.pt``."""
    results_path, best_path = run_dir / "results.json", run_dir / "best.pt"
    for path, what in ((results_path, "a finished run writes it"),
                       (best_path, "the best-valid weights, written during training")):
        if not path.is_file():
            raise RunError(f"{run_dir} is not a finished run: no {path.name} ({what})")
    try:
        saved = json.loads(results_path.read_text())["config"]
        payload = torch.load(best_path, map_location="cpu", weights_only=True)
        weights = payload["model"]
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as exc:
        raise RunError(f"{run_dir}: cannot read results.json or best.pt "
                       f"({type(exc).__name__}: {exc})") from None
    return load_config(paths, [(f"run {results_path}", saved)]), weights


def restore_run(run_dir: Path, paths: Paths, device: str | None = None,
                run_threads: bool = True) -> RestoredRun:
    r"""Rebuilds the model of the finished run in ``run_dir`` from its saved config, on its
    dataset, with the best-valid weights of its ``best.pt``, in eval mode.

    Args:
        run_dir (Path): The run's output folder (``results.json`` and ``best.pt``).
        paths (Paths): Where the dataset and model cards are.
        device (str, optional): Torch device (default: the run's ``device`` key; the CPU
            where that names CUDA and this machine has none).
        run_threads (bool, optional): Set torch's CPU threads as the run's ``threads`` key
            does. (default: :obj:`True`)
    """
    run_dir = Path(run_dir)
    config, weights = read_run(run_dir, paths)
    target = resolve_device(device or config.run.device)
    if target.type == "cuda" and not torch.cuda.is_available():
        log.info("the run's device %s is not available here: the model is loaded on the CPU",
                 target)
        target = torch.device("cpu")
    if run_threads:
        set_threads(config.run.threads, target)
    card = card_of(config, paths)
    data = load_data(card, config, paths)
    model = build_model(config, data, target)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise RunError(f"{run_dir / 'best.pt'} does not fit the model its config builds: "
                       f"{str(exc).splitlines()[0]}") from None
    return RestoredRun(config, card, data, model.eval())


@torch.no_grad()
def branch_embeddings(model: Recommender) -> dict[str, tuple[Tensor, Tensor]]:
    r"""User and item embeddings of every branch of ``model`` (in its current mode): its
    ``branches()`` (each modality, then ``"fused"``) when it has them, else
    ``{"fused": model()}``.

    Shapes:
        - **output[b]**: :math:`((|\mathcal{U}|, d_b), (|\mathcal{I}|, d_b))`.
    """
    branches = getattr(model, "branches", None)
    if callable(branches):
        return {name: (user, item) for name, (user, item) in branches().items()}
    return {FUSED: model()}
