r"""Strict, typed run configuration.

A configuration is resolved once, in layers, each overriding the one before:

    defaults (the dataclasses below) <- dataset card ``config:`` <- model card ``defaults:``
    <- command-line ``key=value`` <- command-line flags (``--seed`` ...)

Every key is a field of :class:`RunConfig` or of the chosen model's ``Params`` dataclass.
An unknown key or a value of the wrong type raises :class:`ConfigError`, naming where the
key came from, suggesting the closest valid key and listing them all. Components never
receive the config object: the pipeline unpacks it into their explicit arguments.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


#: Metrics and cut-offs reported for every run (MMRec's protocol, DESIGN.md section 4).
METRIC_NAMES = ("recall", "ndcg", "precision", "map")
TOPKS = (5, 10, 20, 50)
#: Item-item graph recipes (``ii_recipe``), see :class:`brmrs_pyg.graphs.GraphSpec`.
II_RECIPES = ("cosine", "mixed")
#: Loss plug-ins (``plugin``): ``brmrs`` adds CHNS and the synergy-aware BPR to a model with
#: per-modality and fused branches, see :mod:`brmrs_pyg.recommenders.branched`.
PLUGINS = ("brmrs",)
#: Train/valid/test protocols (``split``): the dataset's own ``x_label`` split, or cold-start
#: items (:func:`brmrs_pyg.data.coldstart.cold_item_split`).
SPLIT_PROTOCOLS = ("given", "cold_items")
#: Keys added after runs and searches had been stored, each with the value that keeps the
#: behaviour from before it existed. A stored config (a checkpoint's, a search's identity)
#: without such a key is read as holding that value, so that a run interrupted, or a search
#: stored, before the key existed is still resumed and found.
ADDED_KEYS: dict[str, Any] = {"syn_warmup": 0, "balance_terms": False, "min_epochs": 0}


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any],
                   ignored: frozenset[str] | set[str] = frozenset()
                   ) -> list[tuple[str, Any, Any]]:
    r"""``(key, saved value, current value)`` for every key outside ``ignored`` whose value
    differs between a stored flat config ``saved`` and ``current``, by key; a key of
    :data:`ADDED_KEYS` that ``current`` has and ``saved`` lacks counts as its former value
    in ``saved``."""
    saved = {**{k: v for k, v in ADDED_KEYS.items() if k in current}, **saved}
    return [(k, saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
            if k not in ignored and saved.get(k) != current.get(k)]


class ConfigError(ValueError):
    r"""A configuration key or value that cannot be used, with the reason and the valid keys."""


def option(default: Any, help: str) -> Any:
    r"""A dataclass field with a help text (shown by ``run.py --help``)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RunConfig:
    r"""Keys shared by every model: data, graph, training loop and evaluation."""

    dataset: str = option("synthetic", "dataset card name, datasets/<name>.yaml")
    model: str = option("lightgcn", "model name, see models/<name>.yaml")
    data_dir: str = option("", "folder with the dataset files (default: datasets/<dataset>/)")
    modalities: str = option("", "comma-separated modalities to use (default: the card's)")
    generator: str = option("", "synthetic generator overrides over the card's generator: "
                                "block, comma-separated key=value (e.g. gamma_s=2,regime=synergy)")
    seed: int = option(999, "random seed for torch, numpy and python")
    split: str = option("given", "train/valid/test protocol: 'given' (the dataset's x_label) "
                                 "or 'cold_items' (a random cold_ratio of the items, with all "
                                 "their interactions, held out of training: half of them "
                                 "valid, half test; each ranked among its own cold items)")
    cold_ratio: float = option(0.2, "share of the items held out as cold items with "
                                    "split=cold_items")
    split_seed: int = option(0, "seed of the cold-item draw with split=cold_items (not seed: "
                                "every seed and model sees the same cold items)")
    epochs: int = option(1000, "maximum number of training epochs")
    out: str = option("", "output folder (default: runs/<dataset>-<model>-s<seed>-<time>)")
    device: str = option("auto", "'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    threads: int = option(0, "torch CPU threads (0: the cores idle at the start, at most "
                             "torch's default; on CUDA torch's default)")
    embedding_dim: int = option(64, "embedding size of users and items")
    batch_size: int = option(2048, "training triples per batch")
    lr: float = option(1e-3, "Adam learning rate")
    patience: int = option(20, "epochs without valid improvement before stopping")
    min_epochs: int = option(0, "epochs trained before early stopping (or a search's "
                                "pruner) may end a run")
    valid_metric: str = option("recall@20", "metric for early stopping and model selection")
    eval_batch_size: int = option(4096, "users scored at once during full-ranking evaluation "
                                        "(on CPU at most as many as fit 32 MiB of scores)")
    knn_k: int = option(10, "neighbours per item in each modality's item-item kNN graph")
    ii_recipe: str = option("cosine", "item-item graph recipe: 'cosine' (one kNN graph per "
                                      "modality) or 'mixed' (co-interaction overlap and cosine)")
    ii_mix: float = option(0.5, "weight of the co-interaction overlap in the 'mixed' recipe")
    plugin: str = option("", "loss plug-in added to a multi-branch model: '' (none) or 'brmrs' "
                             "(CHNS + synergy-aware BPR; keys lambda_h, lambda_s, theta, "
                             "syn_ref_grad, pool_size, hard_k)")
    uu_k: int = option(0, "neighbours per user in the user-user co-interaction graph "
                          "(0: no user-user graph)")
    cache_dir: str = option("", "cache folder of graphs, feature bases and text features "
                                "(default: ~/.cache/brmrs_pyg)")
    save_topk: bool = option(False, "write each test user's top-50 items to <out>/topk_test.tsv")
    checkpoint_every: int = option(5, "write <out>/last.pt (for --resume) every N epochs and at "
                                      "the end; 0: never")
    deterministic: bool = option(False, "deterministic CUDA kernels "
                                        "(torch.use_deterministic_algorithms); slower")

    def __post_init__(self) -> None:
        for key in ("epochs", "embedding_dim", "batch_size", "patience", "eval_batch_size",
                    "knn_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.ii_recipe not in II_RECIPES:
            raise ConfigError(f"ii_recipe must be one of {II_RECIPES}, "
                              f"got {self.ii_recipe!r}")
        if self.plugin and self.plugin not in PLUGINS:
            raise ConfigError(f"plugin must be '' or one of {PLUGINS}, got {self.plugin!r}")
        if self.split not in SPLIT_PROTOCOLS:
            raise ConfigError(f"split must be one of {SPLIT_PROTOCOLS}, got {self.split!r}")
        if not 0.0 < self.cold_ratio < 1.0:
            raise ConfigError(f"cold_ratio must lie in (0, 1), got {self.cold_ratio}")
        if self.split != "cold_items":
            # a non-default value would be silently ignored (a saved config holds the defaults)
            for f in dataclasses.fields(self):
                if f.name in ("cold_ratio", "split_seed") and getattr(self, f.name) != f.default:
                    raise ConfigError(f"{f.name}={getattr(self, f.name)} applies to "
                                      "split=cold_items only: add split=cold_items, or drop it")
        if not 0.0 <= self.ii_mix <= 1.0:
            raise ConfigError(f"ii_mix must lie in [0, 1], got {self.ii_mix}")
        for key in ("threads", "checkpoint_every", "uu_k", "min_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        name, _, k = self.valid_metric.partition("@")
        if name not in METRIC_NAMES or not k.isdigit() or int(k) not in TOPKS:
            raise ConfigError(f"valid_metric={self.valid_metric!r}: expected <metric>@<K> with "
                              f"metric in {METRIC_NAMES} and K in {TOPKS}")


@dataclass(frozen=True)
class Config:
    r"""A resolved configuration: the shared keys and the model's hyperparameters."""

    run: RunConfig
    model: Any  # an instance of the chosen model's ``Params`` dataclass
    plugin: Any = None  # the plug-in's ``Params`` instance when ``run.plugin`` is set

    def flat(self) -> dict[str, Any]:
        r"""All keys in one dict, as saved in ``results.json`` and checkpoints."""
        plugin = dataclasses.asdict(self.plugin) if self.plugin is not None else {}
        return {**dataclasses.asdict(self.run), **dataclasses.asdict(self.model), **plugin}


def describe_keys(cls: type) -> list[tuple[str, str, Any, str]]:
    r"""``(name, type name, default, help)`` for every field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return [(f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), f.default,
             f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


def coerce(key: str, value: Any, typ: type, source: str) -> Any:
    r"""Converts ``value`` (a YAML value, or a string from the command line) to ``typ``."""
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        if typ is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
        else:
            try:
                return typ(text)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} ({source}): expected a value of type {typ.__name__}")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int: neither may stand for the other
    if isinstance(value, bool) != (typ is bool) or not isinstance(value, typ):
        raise ConfigError(f"{key}={value!r} ({source}): expected a value of type {typ.__name__}, "
                          f"got {type(value).__name__}")
    return value


def resolve(layers: Sequence[tuple[str, Mapping[str, Any]]], params_cls: type,
            plugin_cls: type | None = None) -> Config:
    r"""Applies override ``layers`` (``(source, {key: value})``, later wins) to the defaults.

    A key belongs to :class:`RunConfig`, else to the model's ``params_cls``, else to the
    plug-in's ``plugin_cls`` (the keys of ``plugin=...``, used only when the run sets
    ``plugin``; a plug-in key given without it is an error).

    Args:
        layers (list): Overrides in increasing priority; ``source`` names where they came from
            (a card path, ``"command line"``) for error messages.
        params_cls (type): The model's hyperparameter dataclass.
        plugin_cls (type, optional): The hyperparameter dataclass of the plug-in.
    """
    run_types = typing.get_type_hints(RunConfig)
    model_types = typing.get_type_hints(params_cls)
    plugin_types = {k: v for k, v in typing.get_type_hints(plugin_cls).items()
                    if k not in model_types} if plugin_cls is not None else {}
    clash = set(run_types) & (set(model_types) | set(plugin_types))
    assert not clash, f"{params_cls.__qualname__} redefines shared keys {sorted(clash)}"
    values: dict[str, dict[str, Any]] = {"run": {}, "model": {}, "plugin": {}}
    sources: dict[str, str] = {}
    for source, overrides in layers:
        for key, value in overrides.items():
            for part, types in (("run", run_types), ("model", model_types),
                                ("plugin", plugin_types)):
                if key in types:
                    values[part][key] = coerce(key, value, types[key], source)
                    sources[key] = source
                    break
            else:
                keys = sorted(run_types) + sorted(model_types) + sorted(plugin_types)
                close = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(f"unknown key {key!r} ({source}); {hint}valid keys: "
                                  f"{', '.join(keys)}")
    run = RunConfig(**values["run"])
    if not run.plugin and values["plugin"]:
        key = sorted(values["plugin"])[0]
        raise ConfigError(f"{key} ({sources[key]}) is a key of the loss plug-in: add "
                          f"plugin=brmrs, or drop it")
    plugin = plugin_cls(**values["plugin"]) if run.plugin and plugin_cls is not None else None
    return Config(run=run, model=params_cls(**values["model"]), plugin=plugin)
