r"""A finished run, loaded for use: its best-valid model bound to its dataset
(:func:`load_run`, exported as ``brmrs_pyg.load_run``), which recommends, scores and hands
out embeddings. ``run.py recommend`` and ``run.py export`` (:mod:`brmrs_pyg.export`) are built
on it; the model is rebuilt by :func:`brmrs_pyg.restore.restore_run`, as for
``run.py analyze``.

**Scores.** Branch :math:`b` scores user :math:`u` and item :math:`i` by the inner product

.. math::
    s_b(u, i) = \langle \mathbf{p}^{(b)}_u, \mathbf{q}^{(b)}_i \rangle

of the embeddings of :meth:`~brmrs_pyg.recommenders.base.Recommender.forward` (a one-branch
model: branch ``fused`` only) or of ``branches()`` (each modality, then ``fused``), exactly as
the model's ``scorer()`` and ``branch_scorers()`` do. A model that replaces those with scores
of its own still recommends and scores through them, but has no embeddings that give its
scores (:attr:`TrainedModel.inner_product`), and asking for them is an error saying so.

**Recommendations** are the evaluator's full ranking (:class:`~brmrs_pyg.evaluation.Evaluator`):
every item scored, the user's training items masked with ``exclude_seen`` (valid and test
items are not: the evaluation protocol masks training items only), the top :math:`k` by
``torch.topk`` in chunks of the run's ``eval_batch_size`` users. For the test users of a run
with ``save_topk=true`` the lists are therefore those of its ``topk_test.tsv`` (where scores
tie exactly, their order is ``torch.topk``'s, as there). Other sets of users may get scores
that differ in the last float32 digits (the matrix product blocks rows differently), so two
items whose scores are that close may swap. Lists of users with fewer than :math:`k`
unmasked items are padded with item ``-1`` and score ``-inf``.

**New items** (``recommend(users, new_items={"text": X_t, "image": X_v})``,
:meth:`TrainedModel.with_new_items`) exist only as feature rows, one per item in every
modality of the run, in the form of the dataset's feature files. New item :math:`j` (row
:math:`j`) is item :math:`|\mathcal{I}| + j`: the model is rebuilt with the rows appended
(:func:`~brmrs_pyg.restore.with_new_items`) and scores them as a cold item
(``split=cold_items``), from its features alone, ranked together with the dataset's items.
Models that cannot rank cold items (``supports_cold_items``) refuse them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from brmrs_pyg.config import Config
from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.idmaps import IdMap, IdMaps, read_id_maps
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.evaluation import (Evaluator, Scorer, mask_scores, outside, ranked_lists,
                                  score_chunk_rows)
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.pipeline import Paths, data_dir_of
from brmrs_pyg.recommenders.base import Recommender
from brmrs_pyg.recommenders.branched import FUSED, BranchedRecommender
from brmrs_pyg.restore import RunError, branch_embeddings, restore_run, with_new_items

__all__ = ["Recommendations", "RunError", "TrainedModel", "load_run"]

#: Users, or items, given by id: a tensor, a sequence, one id, or :obj:`None` for all.
Ids = Tensor | Sequence[int] | int | None

#: Feature rows of new items per modality: arrays or tensors :math:`(n, d_m)`.
NewItems = Mapping[str, Any]


class Recommendations(NamedTuple):
    r"""The top lists of :meth:`TrainedModel.recommend`.

    Shapes:
        - **users**: :math:`(U,)` user ids, in the order asked.
        - **items**: :math:`(U, k)` item ids, best first; ``-1`` pads short lists.
        - **scores**: :math:`(U, k)` their scores; ``-inf`` where ``items`` is ``-1``.
    """

    users: Tensor
    items: Tensor
    scores: Tensor


def scores_are_inner_products(model: Recommender) -> bool:
    r"""Whether ``model`` scores with the inner products of its embeddings
    (:func:`~brmrs_pyg.restore.branch_embeddings`): it keeps
    the ``scorer()`` and ``branch_scorers()`` of the base classes."""
    cls = type(model)
    return (cls.scorer is Recommender.scorer and cls.branch_scorers in
            (Recommender.branch_scorers, BranchedRecommender.branch_scorers))


def inner_product_scorer(user: Tensor, item: Tensor) -> Scorer:
    r"""``users -> user[users] @ item.T``, the scorer of one branch's embeddings (``item``
    may hold rows beyond the dataset's items, e.g. new items appended to them).

    >>> scorer = inner_product_scorer(torch.eye(2), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    >>> scorer(torch.tensor([1])).tolist()
    [[2.0, 4.0]]
    """
    return lambda users: user[users] @ item.T


def load_run(run_dir: str | Path, device: str | None = None, root: str | Path | None = None,
             run_threads: bool = False) -> "TrainedModel":
    r"""The trained model of a finished run, bound to its dataset: its config, training
    interactions and, where the dataset folder has mapping files, the raw keys of its ids.

    Args:
        run_dir (str or Path): The run's output folder (``results.json``, ``best.pt``).
        device (str, optional): Torch device (default: the run's ``device`` key, the CPU
            where that names CUDA and this machine has none).
        root (str or Path, optional): The project root whose ``datasets/`` and ``models/``
            cards the run used (default: the current folder). A relative ``data_dir`` is read
            from the current folder, as the run read it.
        run_threads (bool, optional): Set torch's CPU threads as the run's ``threads`` key
            does (otherwise torch's setting is left alone). (default: :obj:`False`)

    Example (after ``run.py --model lightgcn --out runs/lgcn``)::

        >>> from brmrs_pyg import load_run                       # doctest: +SKIP
        >>> model = load_run("runs/lgcn")                        # doctest: +SKIP
        >>> model.recommend([0, 1], k=5).items                   # doctest: +SKIP
    """
    paths = Paths(Path(root) if root is not None else Path.cwd())
    run = restore_run(Path(run_dir), paths, device, run_threads)
    maps = read_id_maps(data_dir_of(run.config, paths), run.data.num_users, run.data.num_items)
    return TrainedModel(run.model, run.data, run.config, maps, run.config.run.eval_batch_size)


class TrainedModel:
    r"""A trained model bound to its dataset (module docstring); see :func:`load_run`.

    Embeddings and scorers are computed once, on first use, from the model in eval mode;
    the model must not be trained further while this object is in use.

    Args:
        model (Recommender): The trained model (set to eval mode).
        data (InteractionData): Its dataset; its training interactions are the seen items.
        config (Config, optional): The run's config. (default: :obj:`None`)
        id_maps (IdMaps, optional): Raw keys of the ids. (default: :obj:`None`, none)
        chunk_size (int, optional): Users scored at once (for top lists, on a CPU at most as
            many as fit 32 MiB of scores: :func:`~brmrs_pyg.evaluation.score_chunk_rows`).
            (default: :obj:`4096`)
    """

    def __init__(self, model: Recommender, data: InteractionData, config: Config | None = None,
                 id_maps: IdMaps | None = None, chunk_size: int = 4096) -> None:
        self.model = model.eval()
        self.data = data
        self.config = config
        self.id_maps = id_maps or IdMaps(Path("."), None, None)
        self.chunk_size = chunk_size
        tensors = [*model.parameters(), *model.buffers()]
        self.device = tensors[0].device if tensors else torch.device("cpu")
        self.train = PairIndex.from_edges(data.train, data.num_users, data.num_items,
                                          self.device)
        self._embeddings: dict[str, tuple[Tensor, Tensor]] | None = None
        self._own_scorers: dict[str, Scorer] | None = None
        #: Ids of the items added by :meth:`with_new_items` (empty for a run's own model).
        self.new_item_ids = torch.zeros(0, dtype=torch.long, device=self.device)

    def __repr__(self) -> str:
        return (f"TrainedModel({self.name}, dataset {self.data.name!r}: {self.data.num_users} "
                f"users, {self.data.num_items} items, branches {list(self.branches)})")

    @property
    def name(self) -> str:
        r"""The model's registry name (its class name without a config)."""
        return self.config.run.model if self.config is not None else type(self.model).__name__

    @property
    def inner_product(self) -> bool:
        r"""Whether every branch scores by the inner product of its embeddings."""
        return scores_are_inner_products(self.model)

    @property
    def branches(self) -> tuple[str, ...]:
        r"""The branch names: each modality, then ``"fused"``; only ``"fused"`` for a
        one-branch model."""
        return tuple(self._all_embeddings())

    def embeddings(self, branch: str = FUSED) -> tuple[Tensor, Tensor]:
        r"""User and item embeddings of ``branch``, whose inner products are its scores.

        Shapes:
            - **output**: :math:`((|\mathcal{U}|, d), (|\mathcal{I}|, d))`.
        """
        self._check_branch(branch)
        if not self.inner_product:
            raise RunError(f"model {self.name} scores with its own scorer(), not the inner "
                           "product of a user and an item embedding: no embeddings give its "
                           "scores (recommend() and score() use its scorer)")
        return self._all_embeddings()[branch]

    def user_embeddings(self, branch: str = FUSED) -> Tensor:
        r"""User embeddings of ``branch``, :math:`(|\mathcal{U}|, d)` (:meth:`embeddings`)."""
        return self.embeddings(branch)[0]

    def item_embeddings(self, branch: str = FUSED) -> Tensor:
        r"""Item embeddings of ``branch``, :math:`(|\mathcal{I}|, d)` (:meth:`embeddings`)."""
        return self.embeddings(branch)[1]

    @torch.no_grad()
    def score(self, users: Ids, items: Ids = None, branch: str = FUSED) -> Tensor:
        r"""Scores of ``branch`` for every pair of the given users and items (all items by
        default): the values of the model's scorer.

        Shapes:
            - **output**: :math:`(U, I)`.
        """
        scorer, user_ids = self._scorer(branch), self.user_ids(users)
        item_ids = self.item_ids(items)
        rows = [scorer(user_ids[lo:lo + self.chunk_size])[:, item_ids]
                for lo in range(0, user_ids.numel(), self.chunk_size)]
        return torch.cat(rows) if rows else torch.empty(0, item_ids.numel(), device=self.device)

    @torch.no_grad()
    def recommend(self, users: Ids = None, k: int = 20, exclude_seen: bool = True,
                  branch: str = FUSED, candidates: Ids = None,
                  new_items: NewItems | None = None) -> Recommendations:
        r"""The top ``k`` items of each user under ``branch`` (module docstring).

        Args:
            users (Tensor or list or int, optional): User ids (default: all users).
            k (int, optional): List length (all items where there are fewer). (default: 20)
            exclude_seen (bool, optional): Mask each user's training items.
                (default: :obj:`True`)
            branch (str, optional): The scoring branch, see :attr:`branches`.
                (default: ``"fused"``)
            candidates (Tensor or list, optional): Rank only these item ids (default: all);
                with ``new_items``, ids up to :math:`|\mathcal{I}| + n - 1`.
            new_items (dict, optional): Feature rows of :math:`n` new items per modality
                (:meth:`with_new_items`), ranked with the dataset's items as ids
                :math:`|\mathcal{I}|` to :math:`|\mathcal{I}| + n - 1` (row :math:`j` is
                id :math:`|\mathcal{I}| + j`). (default: :obj:`None`)

        Example (new items only, the best 5 of them for users 0 and 1)::

            >>> new = model.with_new_items({"text": x_t, "image": x_v})   # doctest: +SKIP
            >>> model.recommend([0, 1], k=5, new_items={"text": x_t, "image": x_v},
            ...                 candidates=new.new_item_ids)              # doctest: +SKIP
        """
        if k < 1:
            raise RunError(f"k must be >= 1, got {k}")
        ranker = self if new_items is None else self.with_new_items(new_items)
        scorer, user_ids = ranker._scorer(branch), self.user_ids(users)
        allowed = None if candidates is None else ranker.item_ids(candidates)
        return self._top_k(user_ids, scorer, k, exclude_seen, allowed)

    def with_new_items(self, new_items: NewItems) -> "TrainedModel":
        r"""This trained model over its dataset's items plus new items given only by their
        feature rows (module docstring): its items are those of :attr:`data` followed by the
        new ones, ids :attr:`new_item_ids`, scored as cold items from their features
        (:func:`~brmrs_pyg.restore.with_new_items`). Its training interactions, users and
        user mapping are this model's; it has no item mapping.

        Args:
            new_items (dict): Per modality of the run, an array or tensor :math:`(n, d_m)` of
                finite feature rows (the same :math:`n` for all), as in the dataset's
                feature files.

        Raises:
            RunError: The model cannot rank cold items, or rows missing, extra, of the wrong
                width or count, or not finite.
        """
        model_cls = type(self.model)
        if not model_cls.supports_cold_items:
            raise RunError(f"model {self.name} cannot rank new items, "
                           f"{model_cls.cold_refusal}")
        if self.config is None:
            raise RunError("new items need the run's config to rebuild the model: load the "
                           "run with load_run()")
        features = check_new_items(new_items, self.data)
        data, model = with_new_items(self.config, self.data, self.model, features)
        extended = TrainedModel(model, data, self.config,
                                IdMaps(self.id_maps.folder, self.id_maps.user, None),
                                self.chunk_size)
        extended.new_item_ids = torch.arange(self.data.num_items, data.num_items,
                                             device=self.device)
        return extended

    def _top_k(self, users: Tensor, scorer: Scorer, k: int, exclude_seen: bool,
               candidates: Tensor | None) -> Recommendations:
        r"""The top ``k`` columns of ``scorer`` for each of ``users``. The scorer may score
        more columns than the dataset has items (new items appended after them, ids from
        :math:`|\mathcal{I}|` on): those are never seen items."""
        items, scores = [], []
        excluded = None  # made once, at the width of the scorer's first chunk
        rows = score_chunk_rows(self.chunk_size, self.data.num_items, self.device)
        for lo in range(0, users.numel(), rows):
            chunk = users[lo:lo + rows]
            s = scorer(chunk).float()
            if candidates is not None and excluded is None:
                excluded = outside(candidates, s.size(1), s.device)
            mask_scores(s, chunk, self.train if exclude_seen else None, excluded)
            value, top = s.topk(min(k, s.size(1)), dim=1)
            items.append(ranked_lists(top, value))
            scores.append(value)
        if not items:
            width = min(k, self.data.num_items)
            return Recommendations(users, users.new_empty(0, width),
                                   torch.empty(0, width, device=users.device))
        return Recommendations(users, torch.cat(items), torch.cat(scores))

    def user_ids(self, users: Ids) -> Tensor:
        r"""``users`` as a checked 1-D id tensor on the model's device (:obj:`None`: all)."""
        return self._ids(users, self.data.num_users, "user")

    def item_ids(self, items: Ids) -> Tensor:
        r"""``items`` as a checked 1-D id tensor on the model's device (:obj:`None`: all)."""
        return self._ids(items, self.data.num_items, "item")

    def heldout_users(self, split: str = "test") -> Tensor:
        r"""The users the evaluator ranks for ``split``: those with a training and a
        ``split`` interaction, ascending (the users of ``topk_test.tsv`` for ``"test"``)."""
        heldout = PairIndex.from_edges(self.data.split(split), self.data.num_users,
                                       self.data.num_items, self.device)
        return Evaluator(self.train, heldout).users

    def id_map(self, side: str) -> IdMap:
        r"""The raw keys of ``side`` (``"user"`` or ``"item"``) from the dataset's mapping
        file; a :class:`RunError` when the dataset has none."""
        found = self.id_maps.user if side == "user" else self.id_maps.item
        if found is None:
            raise RunError(f"dataset {self.data.name!r} has no {side} mapping file "
                           f"({side[0]}_id_mapping.tsv or .csv in {self.id_maps.folder}): its "
                           f"{side} ids are the only {side} keys it knows")
        return found

    def users_of_keys(self, keys: Sequence[str]) -> Tensor:
        r"""The user ids of raw user keys (:meth:`id_map`)."""
        try:
            return torch.tensor(self.id_map("user").ids_of(keys), dtype=torch.long,
                                device=self.device)
        except DataError as exc:
            raise RunError(str(exc)) from None

    def _ids(self, ids: Ids, count: int, side: str) -> Tensor:
        if ids is None:
            return torch.arange(count, device=self.device)
        out = torch.as_tensor(ids, device=self.device)
        if out.is_floating_point() or out.is_complex() or out.dtype == torch.bool:
            raise RunError(f"{side} ids must be integers, got a {out.dtype} tensor")
        out = out.long().reshape(-1)
        bad = (out < 0) | (out >= count)
        if bool(bad.any()):
            article = "an" if side == "item" else "a"
            raise RunError(f"{side} {int(out[bad][0])} is not {article} {side} id of dataset "
                           f"{self.data.name!r} (ids 0..{count - 1})")
        return out

    def _check_branch(self, branch: str) -> None:
        if branch not in self.branches:
            kind = "has one branch" if len(self.branches) == 1 else "has branches"
            raise RunError(f"unknown branch {branch!r}: model {self.name} {kind}: "
                           f"{', '.join(self.branches)}")

    def _all_embeddings(self) -> dict[str, tuple[Tensor, Tensor]]:
        if self._embeddings is None:
            self._embeddings = branch_embeddings(self.model)
        return self._embeddings

    def _scorer(self, branch: str) -> Scorer:
        self._check_branch(branch)
        if self.inner_product:
            return inner_product_scorer(*self._all_embeddings()[branch])
        if self._own_scorers is None:
            self._own_scorers = {**self.model.branch_scorers(), FUSED: self.model.scorer()}
        return self._own_scorers[branch]


def check_new_items(new_items: NewItems, data: InteractionData) -> dict[str, Tensor]:
    r"""``new_items`` as float32 CPU tensors, checked against the modalities of ``data``:
    every one present and no other, 2-D with its feature width, the same number of rows
    (at least one) in each, every value finite; a :class:`RunError` naming what is wrong.

    Shapes:
        - **new_items[m]**: :math:`(n, d_m)`; **output[m]**: the same.

    >>> data = InteractionData("toy", 1, 2, *[torch.zeros(2, 0, dtype=torch.long)] * 3,
    ...                        features={"text": torch.zeros(2, 3)})
    >>> check_new_items({"text": [[1.0, 2.0, 3.0]]}, data)["text"].shape
    torch.Size([1, 3])
    """
    wanted = data.features
    missing, extra = sorted(set(wanted) - set(new_items)), sorted(set(new_items) - set(wanted))
    if missing or extra:
        raise RunError(f"new_items must give every modality of the run and no other: "
                       f"{', '.join(wanted)} (missing: {', '.join(missing) or 'none'}; "
                       f"unknown: {', '.join(extra) or 'none'})")
    out: dict[str, Tensor] = {}
    for m, x in wanted.items():
        value = new_items[m]
        rows = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
        rows = rows.detach().to("cpu", torch.float32)
        if rows.dim() != 2 or rows.size(1) != x.size(1):
            raise RunError(f"new_items[{m!r}] must be (n, {x.size(1)}), the width of the "
                           f"run's {m} features; got shape {tuple(rows.shape)}")
        if not bool(torch.isfinite(rows).all()):
            bad = int((~torch.isfinite(rows)).any(1).nonzero()[0])
            raise RunError(f"new_items[{m!r}] row {bad} holds a NaN or infinite value")
        out[m] = rows
    counts = {m: x.size(0) for m, x in out.items()}
    if len(set(counts.values())) != 1 or min(counts.values(), default=0) < 1:
        raise RunError(f"new_items must hold the same number (>= 1) of rows in every modality, "
                       f"one per new item; got {counts}")
    return out
