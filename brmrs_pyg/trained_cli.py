r"""``run.py recommend`` and ``run.py export``: a finished run used from the command line
(:mod:`brmrs_pyg.trained`, :mod:`brmrs_pyg.export`).

``recommend`` writes one line per recommended item, tab-separated, after a header::

    userID  rank  itemID  score

``rank`` counts from 1 (best); ``score`` is the model's score (``%.9g``, which keeps every
digit of a float32). With ``--raw-ids`` the user and item columns hold the raw keys of the
dataset's mapping files and are named after their key columns (e.g. ``artistID``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from brmrs_pyg.export import FORMATS, INDEX_KINDS, IndexSettings, export_run
from brmrs_pyg.io import atomic_write_text
from brmrs_pyg.pipeline import Paths
from brmrs_pyg.recommenders.branched import FUSED
from brmrs_pyg.trained import Recommendations, RunError, TrainedModel, load_run

log = logging.getLogger(__name__)


def run_parser(prog: str, description: str, branch_help: str) -> argparse.ArgumentParser:
    r"""A parser with the arguments of every command on a finished run: ``DIR``,
    ``--branch`` and ``--device``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("run_dir", metavar="DIR", help="output folder of a finished run")
    parser.add_argument("--branch", default=FUSED, help=branch_help)
    parser.add_argument("--device", help="torch device (default: the run's)")
    return parser


def build_recommend_parser() -> argparse.ArgumentParser:
    r"""The parser of ``run.py recommend``."""
    parser = run_parser(
        "run.py recommend",
        "Top-k items of users under a finished run's best-valid model, ranked as the "
        "evaluation ranks them (every item scored, the user's training items left out), so a "
        "run's test users get the lists of its topk_test.tsv. Output: tab-separated, header "
        "userID rank itemID score, one line per recommended item, rank 1 the best.",
        "scoring branch of a model with branches: a modality or fused (default: fused)")
    parser.add_argument("--users", required=True, metavar="all|FILE|ID,ID",
                        help="all users, a file with one user per line (its first "
                             "tab-separated field; a header line naming the column is "
                             "skipped), or comma-separated users")
    parser.add_argument("--k", type=int, default=20, help="items per user (default: 20)")
    parser.add_argument("--raw-ids", action="store_true",
                        help="users (input) and items (output) are the raw keys of the "
                             "dataset's u_id_mapping / i_id_mapping files")
    parser.add_argument("--include-seen", action="store_true",
                        help="also recommend the user's training items")
    parser.add_argument("--out", metavar="FILE", help="write here (default: standard output); "
                                                      "an existing file is refused")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    return parser


def run_recommend(argv: Sequence[str], paths: Paths) -> None:
    r"""``run.py recommend DIR ...`` (module docstring)."""
    args = build_recommend_parser().parse_args(argv)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and (out.is_dir() or not args.force):
        raise RunError(f"--out {out} exists; recommend writes a new file "
                       + ("(it is a folder)" if out.is_dir() else "(--force overwrites it)"))
    trained = load_run(args.run_dir, device=args.device, root=paths.root, run_threads=True)
    if args.raw_ids:
        check_raw_ids(trained)
    users = parse_users(args.users, trained, args.raw_ids)
    recs = trained.recommend(users, args.k, exclude_seen=not args.include_seen,
                             branch=args.branch)
    text = recommendations_text(recs, trained, args.raw_ids)
    if out is None:
        sys.stdout.write(text)
        return
    atomic_write_text(out, text)
    print(f"wrote {out}: top-{args.k} items of {recs.users.numel()} users", file=sys.stderr)


def check_raw_ids(trained: TrainedModel) -> None:
    r"""``--raw-ids`` needs a mapping file; a side without one keeps its ids (said once)."""
    maps = trained.id_maps
    if maps.user is None and maps.item is None:
        raise RunError(f"--raw-ids: dataset {trained.data.name!r} has no mapping files "
                       f"(u_id_mapping.tsv/.csv, i_id_mapping.tsv/.csv in {maps.folder}): its "
                       "ids are the only keys it knows")
    for side, found in (("user", maps.user), ("item", maps.item)):
        if found is None:
            log.warning("--raw-ids: dataset %r has no %s mapping file: %ss are %s ids",
                        trained.data.name, side, side, side)


def parse_users(spec: str, trained: TrainedModel, raw: bool) -> list[int] | None:
    r"""The user ids of ``--users`` (:obj:`None` for ``all``); with ``raw``, keys of the
    dataset's user mapping file where it has one."""
    if spec == "all":
        return None
    path = Path(spec)
    by_key = raw and trained.id_maps.user is not None
    column = trained.id_map("user").column if by_key else "userID"
    if path.is_file():
        values = [line.split("\t")[0].strip() for line in path.read_text().splitlines()]
        values = [v for v in values if v]
        values = values[1:] if values[:1] == [column] else values
    else:
        values = [v.strip() for v in spec.split(",") if v.strip()]
    if not values:
        raise RunError(f"--users {spec}: no user")
    if by_key:
        return trained.users_of_keys(values).tolist()
    ids = []
    for value in values:
        try:
            ids.append(int(value))
        except ValueError:
            raise RunError(f"--users: {value!r} is not a user id (an integer)"
                           + ("" if raw else "; raw keys need --raw-ids")) from None
    return ids


def recommendations_text(recs: Recommendations, trained: TrainedModel, raw: bool) -> str:
    r"""The table of the module docstring; short lists end early (no padding lines)."""
    user_map = trained.id_maps.user if raw else None
    item_map = trained.id_maps.item if raw else None
    ids = recs.users.tolist()
    users = user_map.keys_of(ids) if user_map else [str(u) for u in ids]
    item_name = item_map.keys.__getitem__ if item_map else str
    lines = ["\t".join([user_map.column if user_map else "userID", "rank",
                        item_map.column if item_map else "itemID", "score"])]
    for user, items, scores in zip(users, recs.items.tolist(), recs.scores.tolist()):
        lines += [f"{user}\t{rank}\t{item_name(i)}\t{s:.9g}"
                  for rank, (i, s) in enumerate(zip(items, scores), start=1) if i >= 0]
    return "\n".join(lines) + "\n"


def build_export_parser() -> argparse.ArgumentParser:
    r"""The parser of ``run.py export``."""
    parser = run_parser(
        "run.py export",
        "A finished run's user and item embeddings of one branch as .npy files with their ids "
        "(and raw keys where the dataset has mapping files); with --format faiss also an "
        "inner-product FAISS index of the items, whose recall of the exact top-20 for the "
        "test users is logged. Writes user_emb.npy, item_emb.npy, users.tsv, items.tsv, "
        "[items.faiss] and export.json into a new folder.",
        "branch to export: a modality or fused (default: fused)")
    parser.add_argument("--format", choices=FORMATS, default="npy",
                        help="npy, or faiss: npy plus items.faiss (default: npy)")
    parser.add_argument("--out", metavar="DIR2",
                        help="export folder (default: DIR/export-<branch>); a folder that "
                             "holds other files than an earlier export's is refused")
    parser.add_argument("--index", choices=INDEX_KINDS, default="auto",
                        help="faiss index: flat (exact), hnsw, or auto: flat below 100,000 "
                             "items, hnsw from there (default: auto)")
    parser.add_argument("--ef-search", type=int, default=IndexSettings.ef_search,
                        help=f"hnsw efSearch (default: {IndexSettings.ef_search})")
    parser.add_argument("--force", action="store_true",
                        help="write into a folder that is not an export")
    return parser


def run_export(argv: Sequence[str], paths: Paths) -> None:
    r"""``run.py export DIR ...`` (see :func:`brmrs_pyg.export.export_run`)."""
    args = build_export_parser().parse_args(argv)
    out = Path(args.out) if args.out else Path(args.run_dir) / f"export-{args.branch}"
    settings = IndexSettings(kind=args.index, ef_search=args.ef_search)
    trained = load_run(args.run_dir, device=args.device, root=paths.root, run_threads=True)
    manifest = export_run(trained, out, args.branch, args.format, settings, args.force,
                          source=str(args.run_dir))
    print(f"wrote {out}: {', '.join(manifest['files'])}")
    if "index" in manifest:
        index = manifest["index"]
        recall = next(v for key, v in index.items() if key.startswith("recall@"))
        print(f"faiss {index['kind']} index: recall of the exact top-{settings.recall_k} for "
              f"{recall['users']} test users {recall['value']:.4f}")
