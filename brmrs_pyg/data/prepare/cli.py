r"""The ``run.py prepare`` command line: ``prepare amazon`` and ``prepare csv``."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Sequence

from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.encoders import DEFAULT_TEXT_MODEL
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.data.prepare.amazon import STANDARD_NAMES, find_files, prepare_amazon
from brmrs_pyg.data.prepare.convert import CsvColumns, ItemSources, convert_csv
from brmrs_pyg.data.prepare.interactions import SplitSettings
from brmrs_pyg.data.prepare.lfm2k import COPIED, prepare_lfm2k
from brmrs_pyg.data.prepare.writer import EncoderSettings, Output, planned_files


def build_prepare_parser() -> argparse.ArgumentParser:
    r"""The parser of ``run.py prepare ...``."""
    parser = argparse.ArgumentParser(
        prog="run.py prepare", description="Build an MMRec-format dataset folder (and card) "
        "from raw Amazon review data or from your own interactions table.")
    sub = parser.add_subparsers(dest="source", required=True, metavar="{amazon,csv,lfm2k}")
    amazon = sub.add_parser(
        "amazon", help="raw Amazon 2014 (or 2023) files -> datasets/<name>/",
        description="Raw Amazon files -> MMRec dataset, as MMRec built Baby, Sports and "
        "Clothing: 5-core, contiguous ids (mapping files), per-user split, all-MiniLM-L6-v2 "
        "text features of title, brand, categories and description, image features from "
        "image_features_<Cat>.b (mean for items without one).")
    amazon.add_argument("--category", required=True,
                        help="Amazon category as in the file names, e.g. Sports_and_Outdoors, "
                             "Baby, Clothing_Shoes_and_Jewelry")
    amazon.add_argument("--raw", required=True, type=Path, metavar="DIR",
                        help="folder with reviews_<Cat>_5.json.gz (or ratings_<Cat>.csv), "
                             "meta_<Cat>.json.gz, image_features_<Cat>.b; or, 2023: "
                             "<Cat>.jsonl.gz and meta_<Cat>.jsonl.gz")
    amazon.add_argument("--layout", choices=("auto", "2014", "2023"), default="auto",
                        help="release of the raw files (default: auto)")
    amazon.add_argument("--kcore", type=int, default=5, help="k of the k-core (default: 5)")
    _common(amazon, default_name="baby/sports/clothing for the standard categories, else the "
            "category in lower case (+ _2023 for the 2023 release)")

    csv = sub.add_parser(
        "csv", help="your interactions table + item texts/features -> datasets/<name>/",
        description="Own data -> MMRec dataset folder and card: an interactions table (user, "
        "item, optional timestamp) plus per-item texts, feature matrices and/or images.")
    csv.add_argument("interactions", type=Path, metavar="FILE",
                     help="interactions table, .csv or .tsv with a header row")
    csv.add_argument("--user", default="user", metavar="COL", help="user column (default: user)")
    csv.add_argument("--item", default="item", metavar="COL",
                     help="item column, also the key column of --texts and feature tables "
                          "(default: item)")
    csv.add_argument("--time", metavar="COL", help="timestamp column (integers, decimals or "
                     "ISO dates), kept in the .inter file and used by --split time")
    csv.add_argument("--rating", metavar="COL", help="rating column, kept in the .inter file")
    csv.add_argument("--kcore", type=int, default=0, help="k of a k-core filter (default: 0, "
                     "none)")
    csv.add_argument("--split", choices=("random", "time"), default="random",
                     help="hold out random interactions per user (MMRec) or each user's "
                          "latest (needs --time) (default: random)")
    csv.add_argument("--texts", type=Path, metavar="FILE",
                     help="table of item texts (item column + text columns) -> modality text")
    csv.add_argument("--text-columns", default="", metavar="A,B",
                     help="text columns of --texts, joined by a space (default: all but the "
                          "item column)")
    csv.add_argument("--feature", action="append", default=[], metavar="NAME=FILE",
                     help="modality NAME from a table (item column + numeric columns) or a "
                          ".npy matrix (rows per --feature-keys); repeatable")
    csv.add_argument("--feature-keys", type=Path, metavar="FILE",
                     help="item key of each row of the .npy features, one per line")
    _common(csv, default_name=None)

    lfm2k = sub.add_parser(
        "lfm2k", help="Last.fm-2K from a clone of its public repository -> datasets/lfm2k/",
        description="Copies Last.fm-2K (multimodal, MMRec format) from a clone of the public "
                    "repository giuspillo/extending_sota_data_mm_feat and builds its item map.")
    lfm2k.add_argument("--repo", required=True, type=Path, metavar="DIR",
                       help="root of a clone (or unpacked archive) of the repository")
    lfm2k.add_argument("--out", type=Path, metavar="DIR",
                       help="folder for the files (default: datasets/lfm2k/)")
    lfm2k.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def _common(parser: argparse.ArgumentParser, default_name: str | None) -> None:
    if default_name is None:
        parser.add_argument("--name", required=True, help="dataset name (card datasets/NAME"
                            ".yaml, files in datasets/NAME/)")
    else:
        parser.add_argument("--name", help=f"dataset name (default: {default_name})")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder for the files (default: datasets/NAME/); the card always "
                             "goes to datasets/NAME.yaml")
    parser.add_argument("--seed", type=int, default=999, help="seed of the split (default: 999)")
    parser.add_argument("--text-model", default=DEFAULT_TEXT_MODEL, metavar="NAME_OR_DIR",
                        help="sentence encoder: local folder, or model name (all-MiniLM-L6-v2 "
                             "comes from the installed extra 'text', offline)")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="item images <item key>.<jpg|png|...> -> modality image "
                             "(needs --image-model)")
    parser.add_argument("--image-model", metavar="DIR_OR_NAME",
                        help="transformers image model (CLIP, ViT, ...): a local folder, or a "
                             "hub name when online")
    parser.add_argument("--device", default="cpu", help="torch device of the encoders "
                        "(default: cpu)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="texts or images encoded at once (default: 64)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def run_prepare(argv: Sequence[str], cards_dir: Path) -> InteractionData:
    r"""Parses ``argv`` (the words after ``prepare``), prepares the dataset, prints a summary
    and returns the dataset as read back."""
    args = build_prepare_parser().parse_args(argv)
    if args.source == "lfm2k":
        output = Output("lfm2k", args.out or cards_dir / "lfm2k", cards_dir, args.force)
        data = prepare_lfm2k(args.repo, output)
        _summary(data, output, cards_dir, [*COPIED, "i_id_mapping.tsv"])
        return data
    encoders = EncoderSettings(text_model=args.text_model, image_model=args.image_model,
                               device=args.device, batch_size=args.batch_size)
    if args.source == "amazon":
        name = args.name or _amazon_name(args.raw, args.category, args.layout)
        output = Output(name, args.out or cards_dir / name, cards_dir, args.force)
        data = prepare_amazon(args.raw, args.category, output, args.layout,
                              SplitSettings(kcore=args.kcore, seed=args.seed), encoders,
                              args.images)
    else:
        output = Output(args.name, args.out or cards_dir / args.name, cards_dir, args.force)
        sources = ItemSources(
            texts=args.texts, feature_keys=args.feature_keys, images=args.images,
            text_columns=tuple(c.strip() for c in args.text_columns.split(",") if c.strip()),
            features=_features(args.feature))
        columns = CsvColumns(user=args.user, item=args.item, time=args.time, rating=args.rating)
        split = SplitSettings(kcore=args.kcore, seed=args.seed, by_time=args.split == "time")
        data = convert_csv(args.interactions, columns, sources, output, split, encoders,
                           command=shlex.join(["python", "run.py", "prepare", *argv]))
    _summary(data, output, cards_dir, planned_files(output.name, list(data.features)))
    return data


def _amazon_name(raw: Path, category: str, layout: str) -> str:
    files = find_files(raw, category, layout)
    base = STANDARD_NAMES.get(category, category.lower())
    return base if files.layout == "2014" else f"{base}_2023"


def _features(items: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name.strip() or not file:
            raise DataError(f"--feature expects NAME=FILE, got {item!r}")
        if name.strip() in out:
            raise DataError(f"--feature {name.strip()!r} is given twice")
        out[name.strip()] = Path(file)
    return out


def _summary(data: InteractionData, output: Output, cards_dir: Path, files: list[str]) -> None:
    stats = data.stats()
    print(f"prepared {output.name}: {data.num_users:,} users, {data.num_items:,} items, "
          f"{stats['num_interactions']:,} interactions (train/valid/test {stats['num_train']:,}"
          f"/{stats['num_valid']:,}/{stats['num_test']:,}), modalities {stats['modalities']}")
    print(f"files in {output.folder}/: {', '.join(files)}")
    print(f"card: {output.card}")
    default_dir = (cards_dir / output.name).resolve() == Path(output.folder).resolve()
    print(f"train: python run.py --dataset {output.name}"
          + ("" if default_dir else f" --data-dir {output.folder}"))
