r"""Rebuilding a trained model from its run folder: the one place that does it, for
``run.py analyze`` (:mod:`brmrs_pyg.analysis`) and for the loaded runs of
:mod:`brmrs_pyg.trained` (``brmrs_pyg.load_run``, ``run.py recommend``, ``run.py export``).

A finished run's folder holds ``results.json`` (with the resolved config) and ``best.pt``
(the best-valid weights). The model is rebuilt from that config on the dataset the config
names, as the run built it (:func:`~brmrs_pyg.pipeline.build_model`), and the weights are
loaded into it; a folder without those files, or weights that do not fit, is a
:class:`RunError`.

**New items.** :func:`with_new_items` rebuilds a trained model on its dataset with item
feature rows appended (new item :math:`j` is item :math:`|\mathcal{I}| + j`) and the trained
weights carried over by :func:`extend_state_dict`: the new items are cold items (their ID
rows zero, see :meth:`~brmrs_pyg.recommenders.base.Recommender.set_cold_items`), represented
from their features alone.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor

from brmrs_pyg.config import Config
from brmrs_pyg.data.cards import DatasetCard
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.nn.features import reference_rows
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


def extend_state_dict(saved: Mapping[str, Tensor], model: torch.nn.Module,
                      num_items: int) -> dict[str, Tensor]:
    r"""The trained ``saved`` state of a model over :math:`|\mathcal{I}|` = ``num_items``
    items, made to fit ``model``, the same model freshly built over more items (new items
    appended). Each entry of ``saved`` whose shape in ``model`` is

    - the same: loaded as saved;
    - :math:`(|\mathcal{I}| + n, \dots)` where saved is :math:`(|\mathcal{I}|, \dots)`: the
      saved rows, then :math:`n` zero rows (an item table: the new items have no trained row,
      and a cold item's ID rows are zeroed in any case);
    - anything else: a buffer keeps the freshly built value (derived from the data it was
      built on), a parameter is a :class:`RunError`.

    Buffers outside the state dict (``persistent=False``: the graphs and features the model
    holds, which ``from_data`` rebuilds from the extended data) are never touched.

    Shapes:
        - **saved[k]**: as in the trained model; **output[k]**: as in ``model``.
    """
    fresh = model.state_dict()
    parameters = {name for name, _ in model.named_parameters()}
    out: dict[str, Tensor] = {}
    for name, value in saved.items():
        target = fresh.get(name)
        if target is None or target.shape == value.shape:
            out[name] = value  # an unknown key is left for load_state_dict to report
        elif (value.dim() >= 1 and value.size(0) == num_items
              and target.size(0) > num_items and target.shape[1:] == value.shape[1:]):
            pad = value.new_zeros(target.size(0) - num_items, *value.shape[1:])
            out[name] = torch.cat([value, pad.to(value.device)])
        elif name in parameters:
            raise RunError(f"parameter {name} of shape {tuple(value.shape)} does not fit the "
                           f"model built with new items ({tuple(target.shape)}), and is not an "
                           f"item table of {num_items} rows")
        else:
            log.info("buffer %s: shape %s in the run, %s with new items: the rebuilt value "
                     "is kept", name, tuple(value.shape), tuple(target.shape))
            out[name] = target
    return out


def with_new_items(config: Config, data: InteractionData, model: Recommender,
                   features: Mapping[str, Tensor]) -> tuple[InteractionData, Recommender]:
    r"""``data`` with the feature rows ``features`` appended as new items, ids
    :math:`|\mathcal{I}|` on (the same interactions), and ``model`` rebuilt on it as the
    pipeline builds it (:func:`~brmrs_pyg.pipeline.build_model`, the item-item graphs built
    over all items), in eval mode, with the weights of ``model`` (:func:`extend_state_dict`)
    and the new items cold, as are the run's own cold items.

    Every feature is prepared with the statistics of the dataset's items only
    (:func:`~brmrs_pyg.nn.features.reference_rows`), so a model without item-item graphs
    (VBPR, concat) scores the old items as before and a new item as the run scored a cold item
    with the same features.

    Args:
        config (Config): The run's config.
        data (InteractionData): The run's dataset.
        model (Recommender): The trained model; must support cold items.
        features (dict): Checked new rows per modality, every modality of ``data``.

    Shapes:
        - **features[m]**: :math:`(n, d_m)`, float32.
    """
    num_items = data.num_items
    count = next(iter(features.values())).size(0)
    extended = dataclasses.replace(
        data, num_items=num_items + count,
        features={m: torch.cat([x, features[m].to(x.dtype)]) for m, x in data.features.items()})
    device = next(model.parameters()).device
    with reference_rows(num_items):
        rebuilt = build_model(config, extended, device)
    try:
        rebuilt.load_state_dict(extend_state_dict(model.state_dict(), rebuilt, num_items))
    except RuntimeError as exc:
        raise RunError("the trained weights do not fit the model rebuilt with new items: "
                       f"{str(exc).splitlines()[0]}") from None
    cold = torch.ones(num_items + count, dtype=torch.bool)
    cold[:num_items] = (data.cold.mask(num_items) if data.cold is not None
                        else torch.zeros(num_items, dtype=torch.bool))
    rebuilt.set_cold_items(cold)
    return extended, rebuilt.eval()
