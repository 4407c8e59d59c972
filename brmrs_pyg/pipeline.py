r"""One run end to end: card -> dataset -> graph -> model -> training -> results.

This is where the resolved config is unpacked into the explicit arguments of each component.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import yaml

from brmrs_pyg import __version__
from brmrs_pyg.allocator import reuse_freed_memory
from brmrs_pyg.checkpoint import check_config, check_data, read_training_checkpoint
from brmrs_pyg.config import Config, ConfigError, RunConfig, resolve
from brmrs_pyg.data.cards import DatasetCard
from brmrs_pyg.data.coldstart import cold_item_split
from brmrs_pyg.data.folder import dataset_card
from brmrs_pyg.data.mmrec import InteractionData, load_dataset
from brmrs_pyg.data.synthetic import (SyntheticSpec, ensure_generated, overrides_tag,
                                      parse_generator_overrides)
from brmrs_pyg.evaluation import Evaluator
from brmrs_pyg.graphs import GraphSpec, load_or_build_graph
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.io import atomic_save_npz, atomic_write_json, atomic_write_text
from brmrs_pyg.nn.features import basis_cache
from brmrs_pyg.recommenders import MODELS, Recommender
from brmrs_pyg.recommenders.branched import BranchedRecommender, PluginParams
from brmrs_pyg.sampling import SubsetPairIndex
from brmrs_pyg.threads import set_threads
from brmrs_pyg.train import Checkpointing, EpochCallback, TrainSettings, train

log = logging.getLogger(__name__)

#: Per-user metrics every run saves in ``per_user.npz`` (for paired tests between runs).
PER_USER_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
#: The card a run on a folder without a card inferred, saved in its output folder.
INFERRED_CARD = "dataset_card.yaml"


@dataclass(frozen=True)
class Paths:
    r"""Where the repository keeps dataset cards, model cards and, by default, data and runs."""

    root: Path

    @property
    def dataset_cards(self) -> Path:
        return self.root / "datasets"

    @property
    def model_cards(self) -> Path:
        return self.root / "models"


def model_card_defaults(name: str, paths: Paths) -> tuple[Path, dict[str, Any]]:
    r"""The ``defaults:`` of ``models/<name>.yaml`` (empty when the model has no card)."""
    path = paths.model_cards / f"{name}.yaml"
    if not path.is_file():
        return path, {}
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) - {"defaults", "grid", "description"}:
        raise ConfigError(f"{path}: a model card has keys defaults, grid and description only")
    return path, dict(raw.get("defaults") or {})


def load_config(paths: Paths, overrides: Sequence[tuple[str, Mapping[str, Any]]]) -> Config:
    r"""Resolves a run's config: defaults <- dataset card ``config:`` <- model card
    ``defaults:`` <- ``overrides`` (``(source, {key: value})`` in increasing priority, where
    ``dataset``, ``data_dir`` and ``model`` are found too).

    A ``data_dir`` without a ``dataset`` names the dataset after the folder's ``*.inter``
    file, never the default dataset; a dataset without a card is read from ``data_dir`` as
    an MMRec folder (:func:`~brmrs_pyg.data.folder.dataset_card`)."""
    chosen: dict[str, Any] = {}
    for _, layer in overrides:
        chosen.update({k: layer[k] for k in ("dataset", "model", "data_dir") if k in layer})
    model = str(chosen.get("model", RunConfig.model))
    model_cls = MODELS.get(model)
    data_dir = str(chosen.get("data_dir") or "")
    if "dataset" in chosen or not data_dir:
        card = dataset_card(str(chosen.get("dataset", RunConfig.dataset)), data_dir,
                            paths.dataset_cards)
    else:
        card = dataset_card(None, data_dir, paths.dataset_cards)
        overrides = [(f"the *.inter file of {data_dir}", {"dataset": card.name}), *overrides]
    card_path, model_defaults = model_card_defaults(model, paths)
    config = resolve([(f"dataset card {card.path}", card.config),
                      (f"model card {card_path}", model_defaults), *overrides],
                     model_cls.Params, PluginParams)
    if config.run.plugin and not model_cls.supports_plugin:
        able = [n for n in MODELS.names() if MODELS.get(n).supports_plugin]
        raise ConfigError(f"plugin={config.run.plugin}: model {model} cannot take it, "
                          f"{model_cls.plugin_refusal}; models that can: {', '.join(able)}")
    return config


def resume_config(paths: Paths, run_dir: Path,
                  overrides: Sequence[tuple[str, Mapping[str, Any]]]
                  ) -> tuple[Config, dict[str, Any]]:
    r"""The config and ``last.pt`` payload to resume the run in ``run_dir``.

    The checkpoint's saved config is the base; ``overrides`` (the command line) may change
    only :data:`~brmrs_pyg.checkpoint.RESUMABLE_KEYS`, anything else is a
    :class:`~brmrs_pyg.checkpoint.ResumeError` naming the keys that differ.
    """
    path = Path(run_dir) / "last.pt"
    payload = read_training_checkpoint(path)
    saved = payload["meta"]["config"]
    config = load_config(paths, [(f"checkpoint {path}", saved), *overrides])
    check_config(payload, config.flat(), path)
    return config, payload


def seed_everything(seed: int) -> None:
    r"""Seeds python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    r"""While the block runs, makes torch use deterministic kernels when ``enabled``
    (:func:`torch.use_deterministic_algorithms`): a CUDA op that has none raises an error
    naming it. Also sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which cuBLAS needs for
    reproducible matrix products, unless the environment sets it; cuBLAS reads it when CUDA
    starts, so for certainty export it before launching. The previous setting is restored."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = benchmark


def resolve_device(name: str) -> torch.device:
    r"""``"auto"`` is CUDA when available, else CPU; other names are passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def data_dir_of(config: Config, paths: Paths) -> Path:
    r"""``--data-dir`` when given, else ``datasets/<dataset>/``, or, with ``generator``
    overrides, ``datasets/<dataset>-<tag>/`` (:func:`~brmrs_pyg.data.synthetic.overrides_tag`)
    so that generator variants never overwrite each other."""
    if config.run.data_dir:
        return Path(config.run.data_dir)
    overrides = parse_generator_overrides(config.run.generator)
    name = config.run.dataset + (f"-{overrides_tag(overrides)}" if overrides else "")
    return paths.dataset_cards / name


def cache_dir_of(config: Config) -> Path:
    r"""``cache_dir`` when set, else ``$XDG_CACHE_HOME/brmrs_pyg`` (``~/.cache/brmrs_pyg``)."""
    if config.run.cache_dir:
        return Path(config.run.cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "brmrs_pyg"


def out_dir_of(config: Config, paths: Paths) -> Path:
    r"""``--out`` when given, else ``runs/<dataset>-<model>-s<seed>-<timestamp>``."""
    if config.run.out:
        return Path(config.run.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = config.run
    return paths.root / "runs" / f"{run.dataset}-{run.model}-s{run.seed}-{stamp}"


def card_of(config: Config, paths: Paths) -> DatasetCard:
    r"""The dataset card of a resolved config (a card file, or inferred from ``data_dir``)."""
    return dataset_card(config.run.dataset, config.run.data_dir, paths.dataset_cards)


def load_data(card: DatasetCard, config: Config, paths: Paths) -> InteractionData:
    r"""Reads the dataset, generating it first when its card has a ``generator`` (with the
    run's ``generator`` overrides applied over it).

    A model that uses no item features (``uses_features``) reads none unless ``modalities``
    names some, so LightGCN runs on a folder that holds only the interactions.

    With ``split=cold_items`` the validated data are re-split here, the one place where a run
    applies its split (:func:`~brmrs_pyg.data.coldstart.cold_item_split`)."""
    overrides = parse_generator_overrides(config.run.generator)
    if overrides and card.generator is None:
        raise ConfigError(f"generator={config.run.generator!r}: dataset {card.name!r} is not "
                          f"generated (its card {card.path} has no generator: block)")
    data_dir = data_dir_of(config, paths)
    if card.generator is not None:
        spec = SyntheticSpec.from_card({**card.generator, **overrides}, card.path)
        ensure_generated(spec, data_dir, card.inter,
                         {m.name: str(m.file) for m in card.modalities})
    if card.inferred_from is not None:
        log.info("no dataset card %s: read %s as an MMRec folder, inferred card:\n%s",
                 paths.dataset_cards / f"{card.name}.yaml", data_dir, card.to_yaml().rstrip())
        for note in card.notes:
            log.info("note: %s", note)
    features = bool(config.run.modalities) or MODELS.get(config.run.model).uses_features
    data = load_dataset(card, data_dir, config.run.modalities, cache_dir_of(config),
                        with_features=features)
    if config.run.split == "cold_items":
        data = cold_item_split(data, config.run.cold_ratio, config.run.split_seed)
    return data


def build_model(config: Config, data: InteractionData, device: torch.device) -> Recommender:
    r"""The model of ``config`` on ``device``, built on the (cached) training graph."""
    run = config.run
    model_cls = MODELS.get(run.model)
    if run.uu_k and not model_cls.uses_user_graph:
        raise ConfigError(f"uu_k={run.uu_k}: model {run.model} does not use a user-user graph")
    if run.ii_recipe != "cosine" and not model_cls.uses_item_graphs:
        raise ConfigError(f"ii_recipe={run.ii_recipe}: model {run.model} does not use "
                          "item-item graphs")
    if data.cold is not None and not model_cls.supports_cold_items:
        raise ConfigError(f"split=cold_items: model {run.model} cannot rank cold items, "
                          f"{model_cls.cold_refusal}; models that can: "
                          + ", ".join(n for n in MODELS.names()
                                      if MODELS.get(n).supports_cold_items))
    if model_cls.uses_features and not data.features:
        raise ConfigError(f"model {run.model} needs item features, and dataset {data.name!r} "
                          "has no modality (only its interactions file); models that use none: "
                          + ", ".join(n for n in MODELS.names()
                                      if not MODELS.get(n).uses_features))
    spec = GraphSpec(knn_k=run.knn_k, ii_recipe=run.ii_recipe, ii_mix=run.ii_mix,
                     uu_k=run.uu_k)
    graph = load_or_build_graph(data, spec, cache_dir_of(config))
    with basis_cache(cache_dir_of(config)):  # principal bases of the features, see nn.features
        model = model_cls.from_data(config.model, graph, data.features,
                                    config.run.embedding_dim)
    if config.plugin is not None:
        assert isinstance(model, BranchedRecommender)
        model.attach_plugin(config.plugin)
    if data.cold is not None:
        model.set_cold_items(data.cold.mask(data.num_items))
    return model.to(device)


def build_evaluators(data: InteractionData, device: torch.device, chunk_size: int
                     ) -> tuple[PairIndex, dict[str, Evaluator]]:
    r"""The training-interaction index of the negative sampler and an evaluator for
    ``"valid"`` and for ``"test"``, on ``device``.

    With cold items (``split=cold_items``) each split ranks its own cold items only, a third
    evaluator ``"test_all_items"`` ranks the test split among all items, and the sampler's
    index is a :class:`~brmrs_pyg.sampling.SubsetPairIndex` over the warm items, so that no
    cold item is trained on as a negative."""
    train_index = PairIndex.from_edges(data.train, data.num_users, data.num_items, device)
    cold = data.cold
    evaluators = {
        split: Evaluator(train_index, PairIndex.from_edges(data.split(split), data.num_users,
                                                           data.num_items, device),
                         chunk_size=chunk_size, candidates=None if cold is None else cold.of(split))
        for split in ("valid", "test")}
    if cold is None:
        return train_index, evaluators
    evaluators["test_all_items"] = Evaluator(train_index, evaluators["test"].heldout,
                                             chunk_size=chunk_size)
    warm = torch.nonzero(~cold.mask(data.num_items)).view(-1)
    return (SubsetPairIndex.over(data.train, data.num_users, data.num_items, warm, device),
            evaluators)


def run(config: Config, paths: Paths, out_dir: Path,
        resume: Mapping[str, Any] | None = None,
        on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    r"""Trains and evaluates one configuration; writes ``results.json`` (and the
    checkpoints, and ``topk_test.tsv`` with ``save_topk``) into ``out_dir``. Returns the
    results.

    With ``resume`` (a ``last.pt`` payload from :func:`resume_config`), training continues
    after the checkpoint's epoch; the dataset must be the one the run was trained on.
    ``on_epoch`` is :func:`~brmrs_pyg.train.train`'s per-epoch callback (a search's pruner).
    """
    run_cfg = config.run
    check_out_dir(out_dir, resume is not None)
    device = resolve_device(run_cfg.device)
    with deterministic_algorithms(run_cfg.deterministic):
        seed_everything(run_cfg.seed)
        reuse_freed_memory()
        card = card_of(config, paths)
        data = load_data(card, config, paths)
        set_threads(run_cfg.threads, device)
        fingerprint = data.fingerprint()
        if resume is not None:
            check_config(resume, config.flat(), out_dir / "last.pt")
            check_data(resume, fingerprint, out_dir / "last.pt")
        model = build_model(config, data, device)
        # the output folder is made only once data and model are ready, so a run that fails
        # on its inputs leaves nothing behind
        out_dir.mkdir(parents=True, exist_ok=True)
        with log_to_file(out_dir / "train.log"):
            log.info("output folder %s", out_dir)
            if card.inferred_from is not None:
                atomic_write_text(out_dir / INFERRED_CARD, card.to_yaml())
                log.info("inferred dataset card saved as %s (copy it to %s to name the "
                         "dataset and pin its files)", out_dir / INFERRED_CARD,
                         paths.dataset_cards / f"{card.name}.yaml")
            checkpoints = Checkpointing(out_dir, run_cfg.checkpoint_every,
                                        {"config": config.flat(), "data": fingerprint})
            return _train_and_report(model, data, config, device, checkpoints, resume,
                                     on_epoch)


def check_out_dir(out_dir: Path, resuming: bool) -> None:
    r"""A run writes only into a new or empty folder, or into an earlier run's (one with a
    ``train.log``): never among files it did not write."""
    if resuming or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: not a folder")
    if any(out_dir.iterdir()) and not (out_dir / "train.log").is_file():
        raise ConfigError(f"--out {out_dir}: the folder holds files that are not a run's (no "
                          "train.log); a run writes only into a new or empty folder, or over "
                          "an earlier run")


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    r"""Copies the package's log records to ``path`` while the block runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    package_log = logging.getLogger("brmrs_pyg")
    package_log.addHandler(handler)
    try:
        yield
    finally:
        package_log.removeHandler(handler)
        handler.close()


def _train_and_report(model: Recommender, data: InteractionData, config: Config,
                      device: torch.device, checkpoints: Checkpointing,
                      resume: Mapping[str, Any] | None,
                      on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    r"""The training and reporting half of :func:`run`."""
    run_cfg = config.run
    out_dir = checkpoints.folder
    stats = data.stats()
    log.info("dataset %s: %d users, %d items, %d/%d/%d train/valid/test, modalities %s",
             data.name, data.num_users, data.num_items, stats["num_train"], stats["num_valid"],
             stats["num_test"], stats["modalities"])
    if data.cold is not None:
        log.info("cold-item split (cold_ratio=%g, split_seed=%d): %d valid and %d test cold "
                 "items, each split ranked among its own; %d users have no training interaction "
                 "left (cold users) and are not evaluated", run_cfg.cold_ratio,
                 run_cfg.split_seed, stats["num_cold_valid_items"],
                 stats["num_cold_test_items"], stats["num_users_without_train"])
    log.info("model %s on %s, %d CPU threads", model, device, torch.get_num_threads())
    train_index, evaluators = build_evaluators(data, device, run_cfg.eval_batch_size)
    settings = TrainSettings(epochs=run_cfg.epochs, batch_size=run_cfg.batch_size,
                             lr=run_cfg.lr, patience=run_cfg.patience,
                             min_epochs=run_cfg.min_epochs,
                             valid_metric=run_cfg.valid_metric)
    flat = config.flat()
    result = train(model, data.train.to(device), train_index, evaluators["valid"],
                   evaluators["test"], settings, checkpoints, resume, on_epoch)
    extra: dict[str, Any] = {}
    if "test_all_items" in evaluators:  # the model holds its best-valid weights
        model.eval()
        extra["test_all_items"] = evaluators["test_all_items"].evaluate(model.scorer()).metrics
    results: dict[str, Any] = {
        "config": flat, "dataset": stats, "best_epoch": result.best_epoch,
        "valid": result.valid, "test": result.test, **extra,
        "timings": {"seconds_per_epoch": result.seconds_per_epoch,
                    "seconds_per_eval": result.seconds_per_eval,
                    "threads": torch.get_num_threads()},
        "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
        "last_epoch_losses": result.last_losses, "history": result.history,
        "version": __version__,
    }
    if result.test_branches:
        results["test_branches"] = result.test_branches
    if run_cfg.save_topk:
        write_topk(model, evaluators["test"], out_dir / "topk_test.tsv")
    write_per_user(model, evaluators, out_dir / "per_user.npz")
    atomic_write_json(out_dir / "results.json", results)
    log.info("best epoch %d | valid %s | test %s", result.best_epoch,
             _fmt(result.valid), _fmt(result.test))
    if extra:
        log.info("test among all items (not only the cold ones) %s",
                 _fmt(extra["test_all_items"]))
    return results


def write_topk(model: Recommender, test: Evaluator, path: Path) -> None:
    r"""Writes ``userID<TAB>item ids, best first, comma-separated`` for every test user."""
    model.eval()
    result = test.evaluate(model.scorer(), return_topk=True)
    assert result.users is not None and result.topk is not None
    lines = [f"{u}\t{','.join(str(i) for i in items if i >= 0)}"
             for u, items in zip(result.users.tolist(), result.topk.tolist())]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_per_user(model: Recommender, evaluators: Mapping[str, Evaluator], path: Path,
                   metrics: Sequence[str] = PER_USER_METRICS) -> None:
    r"""Writes every evaluated user's metrics, for each split, to ``path`` (``.npz``):
    ``<split>_users`` (user ids, int64) and ``<split>_<metric>`` (float64, same order), e.g.
    ``test_users`` and ``test_recall@20``. The model holds its best-valid weights, so the
    mean of ``test_<metric>`` is ``results.json``'s ``test[metric]``.

    Shapes:
        - **<split>_users**, **<split>_<metric>**: :math:`(\text{users evaluated in split},)`.
    """
    model.eval()
    scorer = model.scorer()
    arrays: dict[str, np.ndarray] = {}
    for split, evaluator in evaluators.items():
        result = evaluator.evaluate(scorer, return_per_user=True)
        assert result.users is not None and result.per_user is not None
        arrays[f"{split}_users"] = result.users.cpu().numpy().astype(np.int64)
        for key in metrics:
            arrays[f"{split}_{key}"] = result.per_user[key].double().cpu().numpy()
    atomic_save_npz(path, arrays)


def _fmt(metrics: dict[str, float]) -> str:
    keys = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)
