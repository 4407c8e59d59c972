r"""``run.py export``: a trained model's embeddings as files, for use outside this package.

One branch's embeddings go into a new folder (default ``<run>/export-<branch>/``):

=================  =============================================================================
``user_emb.npy``   :math:`(|\mathcal{U}|, d)` float32; row :math:`u` is user id :math:`u`
``item_emb.npy``   :math:`(|\mathcal{I}|, d)` float32; row :math:`i` is item id :math:`i`
``users.tsv``      ``userID`` and, where the dataset has ``u_id_mapping``, the raw key of each row
``items.tsv``      ``itemID`` and, where the dataset has ``i_id_mapping``, the raw key of each row
``items.faiss``    (``--format faiss``) an inner-product index of ``item_emb.npy``; its ids are
                   the item ids
``export.json``    what was exported and how: run, model, branch, sizes, files, index settings,
                   timings and the index's recall (below); ``"complete": false`` until the end
=================  =============================================================================

The model's score of the branch is ``user_emb[u] @ item_emb[i]`` (a model whose scores are
not such inner products cannot be exported, :attr:`~brmrs_pyg.trained.TrainedModel.
inner_product`).

**Index.** ``flat`` is exact (``IndexFlatIP``); ``hnsw`` is an approximate graph index
(``IndexHNSWFlat`` with the inner-product metric, ``M`` neighbours per node, ``efSearch``
stored in the file); ``auto`` (the default) is ``flat`` below :data:`AUTO_HNSW_ITEMS` items and
``hnsw`` from there: on a 2-core CPU, one thread, :math:`d = 64`, a batch of 2,000 queries
searches faster with the exact index up to 100,000 items (0.70 s against 1.34 s for HNSW), and
one query at a time is faster with HNSW from about 100,000 items (0.53 ms against 0.95 ms;
1.2 ms against 4.6 ms at 300,000).

**Recall.** Every export with an index searches it for the run's test users, as the
evaluation ranks them: the index returns :math:`k + \max_u |\mathcal{O}_u|` items (the most a
test user has seen), the user's training items are dropped and the first :math:`k` kept; the
recall of the exact top-:math:`k` (:meth:`~brmrs_pyg.trained.TrainedModel.recommend`) is
logged and saved in ``export.json``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from brmrs_pyg.data.idmaps import IdMap
from brmrs_pyg.io import atomic_open, atomic_save_npy, atomic_write_json, atomic_write_text
from brmrs_pyg.recommenders.branched import FUSED
from brmrs_pyg.trained import RunError, TrainedModel

log = logging.getLogger(__name__)

#: Formats of ``run.py export``; ``faiss`` adds ``items.faiss`` to the ``npy`` files.
FORMATS = ("npy", "faiss")
#: Index kinds of ``--index``.
INDEX_KINDS = ("auto", "flat", "hnsw")
#: From this many items ``auto`` builds an HNSW index (module docstring).
AUTO_HNSW_ITEMS = 100_000
#: The file that marks a folder as an export (and says what it holds).
MANIFEST = "export.json"


@dataclass(frozen=True)
class IndexSettings:
    r"""The FAISS index of an export (module docstring).

    Args:
        kind (str, optional): ``"auto"``, ``"flat"`` or ``"hnsw"``. (default: ``"auto"``)
        hnsw_m (int, optional): HNSW neighbours per node. (default: :obj:`32`)
        ef_construction (int, optional): HNSW candidate list while building. (default: 40)
        ef_search (int, optional): HNSW candidate list while searching, stored in the
            index. (default: :obj:`128`)
        recall_k (int, optional): :math:`k` of the recall check. (default: :obj:`20`)
    """

    kind: str = "auto"
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 128
    recall_k: int = 20

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise RunError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got "
                           f"{self.kind!r}")
        if min(self.hnsw_m, self.ef_construction, self.ef_search, self.recall_k) < 1:
            raise RunError(f"index settings must be >= 1, got {self}")

    def resolved(self, num_items: int) -> str:
        r"""The kind built for ``num_items`` items (``auto`` resolved)."""
        if self.kind != "auto":
            return self.kind
        return "hnsw" if num_items >= AUTO_HNSW_ITEMS else "flat"


def import_faiss() -> ModuleType:
    r"""The ``faiss`` module, or a :class:`RunError` saying how to install it."""
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs each attempt
    try:
        import faiss
    except ImportError:
        raise RunError("--format faiss needs the optional extra faiss (faiss-cpu): "
                       "pip install -e '.[faiss]'") from None
    return faiss


def check_export_dir(folder: Path, force: bool) -> None:
    r"""An export writes only into a new or empty folder or an earlier export (one with an
    ``export.json``), unless ``force``: never among files it did not write."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise RunError(f"--out {folder}: not a folder")
    if any(folder.iterdir()) and not (folder / MANIFEST).is_file() and not force:
        raise RunError(f"--out {folder}: the folder holds files that are not an export's (no "
                       f"{MANIFEST}); an export writes only into a new or empty folder or over "
                       "an earlier export (--force writes there anyway)")


def export_run(trained: TrainedModel, out: Path, branch: str = FUSED, fmt: str = "npy",
               index: IndexSettings = IndexSettings(), force: bool = False,
               source: str = "") -> dict[str, Any]:
    r"""Writes the embeddings of ``branch`` (and with ``fmt="faiss"`` an index of the items)
    into ``out`` (module docstring); returns the content of its ``export.json``.

    Args:
        trained (TrainedModel): The loaded run.
        out (Path): The export folder (see :func:`check_export_dir`).
        branch (str, optional): The branch. (default: ``"fused"``)
        fmt (str, optional): ``"npy"`` or ``"faiss"``. (default: ``"npy"``)
        index (IndexSettings, optional): The index of ``"faiss"``.
        force (bool, optional): Write into a folder that is not an export. (default: False)
        source (str, optional): Where the run is, recorded in ``export.json``.
    """
    if fmt not in FORMATS:
        raise RunError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    check_export_dir(out, force)
    faiss = import_faiss() if fmt == "faiss" else None  # before anything is written
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    user, item = (t.detach().float().cpu().numpy() for t in trained.embeddings(branch))
    seconds["embeddings"] = time.perf_counter() - start
    manifest: dict[str, Any] = {
        "complete": False, "run": source, "model": trained.name, "dataset": trained.data.name,
        "branch": branch, "format": fmt, "num_users": int(user.shape[0]),
        "num_items": int(item.shape[0]), "dim": int(user.shape[1]),
        "score": "inner product: user_emb[u] @ item_emb[i]",
        "files": ["user_emb.npy", "item_emb.npy", "users.tsv", "items.tsv"]}
    previous = _previous_files(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST, manifest)
    start = time.perf_counter()
    atomic_save_npy(out / "user_emb.npy", np.ascontiguousarray(user))
    atomic_save_npy(out / "item_emb.npy", np.ascontiguousarray(item))
    atomic_write_text(out / "users.tsv", ids_text("userID", trained.id_maps.user, len(user)))
    atomic_write_text(out / "items.tsv", ids_text("itemID", trained.id_maps.item, len(item)))
    seconds["write"] = time.perf_counter() - start
    if faiss is not None:
        manifest["files"].append("items.faiss")
        manifest["index"] = write_index(faiss, trained, branch, user, item, index,
                                        out / "items.faiss", seconds)
    for name in previous - set(manifest["files"]):
        (out / name).unlink(missing_ok=True)  # an earlier export's file this one replaces
    manifest.update(complete=True, seconds=seconds)
    atomic_write_json(out / MANIFEST, manifest)
    log.info("exported branch %s of %s to %s (%s) in %.2fs", branch, trained.name, out,
             ", ".join(manifest["files"]), sum(seconds.values()))
    return manifest


def ids_text(id_column: str, id_map: IdMap | None, count: int) -> str:
    r"""The text of ``users.tsv``/``items.tsv``: ``id_column`` and, with an ``id_map``, its
    key column, for ids ``0 .. count-1``.

    >>> print(ids_text("itemID", None, 2), end="")
    itemID
    0
    1
    """
    if id_map is None:
        return "\n".join([id_column, *map(str, range(count))]) + "\n"
    rows = [f"{i}\t{key}" for i, key in enumerate(id_map.keys)]
    return "\n".join([f"{id_column}\t{id_map.column}", *rows]) + "\n"


def write_index(faiss: ModuleType, trained: TrainedModel, branch: str, user: np.ndarray,
                item: np.ndarray, settings: IndexSettings, path: Path,
                seconds: dict[str, float]) -> dict[str, Any]:
    r"""Builds the index of ``settings`` over ``item``, writes it to ``path``, checks its
    recall (module docstring) and returns what ``export.json`` records of it; adds its
    timings to ``seconds``."""
    faiss.omp_set_num_threads(torch.get_num_threads())
    kind = settings.resolved(len(item))
    start = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(item.shape[1])
    else:
        index = faiss.IndexHNSWFlat(item.shape[1], settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.ef_construction
        index.hnsw.efSearch = settings.ef_search
    index.add(np.ascontiguousarray(item))
    seconds["index_build"] = time.perf_counter() - start
    with atomic_open(path, "wb") as handle:
        handle.write(faiss.serialize_index(index).tobytes())
    recall = index_recall(index, trained, branch, user, settings.recall_k, seconds)
    log.info("faiss %s index of %d items: recall of the exact top-%d for %d test users "
             "%.4f (index search %.3fs, exact ranking %.3fs)", kind, len(item),
             settings.recall_k, recall["users"], recall["value"], seconds["index_search"],
             seconds["exact_ranking"])
    return {"kind": kind, **({"hnsw_m": settings.hnsw_m,
                              "ef_construction": settings.ef_construction,
                              "ef_search": settings.ef_search} if kind == "hnsw" else {}),
            "metric": "inner product", f"recall@{settings.recall_k}_vs_exact": recall}


def index_recall(index: Any, trained: TrainedModel, branch: str, user: np.ndarray, k: int,
                 seconds: dict[str, float]) -> dict[str, Any]:
    r"""Recall of the exact top-``k`` (training items excluded) in the index's top-``k`` for
    the run's test users (module docstring): ``{"value", "users", "search_depth"}``."""
    users = trained.heldout_users("test")
    start = time.perf_counter()
    exact = trained.recommend(users, k, branch=branch).items.cpu()
    seconds["exact_ranking"] = time.perf_counter() - start
    users = users.cpu()
    seen = trained.train.degree().cpu()[users]
    depth = min(k + (int(seen.max()) if users.numel() else 0), trained.data.num_items)
    start = time.perf_counter()
    _, found_np = index.search(np.ascontiguousarray(user[users.numpy()]), depth)
    seconds["index_search"] = time.perf_counter() - start
    found = torch.from_numpy(found_np).long()
    rows = users[:, None].expand_as(found)
    keep = (found >= 0) & ~trained.train.to("cpu").contains(rows.reshape(-1),
                                                             found.clamp(min=0).reshape(-1)
                                                             ).view_as(found)
    keep &= keep.cumsum(1) <= k  # the first k unseen items
    value = _recall(found, keep, exact, users, trained.data.num_items)
    return {"value": value, "users": int(users.numel()), "search_depth": depth}


def _recall(found: Tensor, keep: Tensor, exact: Tensor, users: Tensor, num_items: int) -> float:
    # keys user * num_items + item name a pair, so one isin serves every user at once
    listed = exact >= 0
    exact_keys = (users[:, None] * num_items + exact)[listed]
    hit = torch.isin(users[:, None] * num_items + found, exact_keys) & keep
    size = listed.sum(1)
    present = size > 0
    if not bool(present.any()):
        return 0.0
    return float((hit.sum(1)[present] / size[present]).mean())


def _previous_files(folder: Path) -> set[str]:
    r"""The files an earlier export in ``folder`` wrote (names only), from its manifest."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {f for f in files if isinstance(f, str) and f == Path(f).name and f != MANIFEST}
