r"""A data folder in MMRec's layout, read without a dataset card.

MMRec users keep a dataset as one folder: ``<name>.inter`` and one ``<modality>_feat.npy``
per modality (``image_feat.npy``, ``text_feat.npy``), often beside MMRec's own caches. Such a
folder runs as it is (``run.py --data-dir DIR``): :func:`infer_card` builds the card the
folder implies,

- the one ``*.inter`` file names the dataset (with several, ``--dataset NAME`` picks
  ``NAME.inter``);
- every ``<modality>_feat.npy`` is the modality ``<modality>``;
- every other ``.npy`` file holding a 2-D numeric matrix with one row per item is a modality
  named after the file (``whisper.npy`` -> ``whisper``);
- everything else (MMRec's ``user_graph_dict.npy`` and ``*.pt`` caches, the id mapping files,
  matrices of another height) is left alone, each with a note saying why.

The files are then validated exactly as a carded dataset's are. :func:`dataset_card` is the
one place that decides between a card and the folder.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from brmrs_pyg.data.cards import DatasetCard, ModalitySpec, load_card
from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.mmrec import read_inter

#: Files MMRec keeps in a data folder that this project does not read, and why.
KNOWN_EXTRAS = {
    "user_graph_dict.npy": "MMRec's user-user graph cache; the user graph is built here from "
                           "the training interactions (uu_k)",
    "u_id_mapping": "raw user keys of the ids",
    "i_id_mapping": "raw item keys of the ids",
}
FEATURE_SUFFIX = "_feat.npy"


def dataset_card(name: str | None, data_dir: str | Path | None, cards_dir: Path
                 ) -> DatasetCard:
    r"""The card of a run: ``cards_dir/<name>.yaml`` when it exists, else the card inferred
    from ``data_dir`` (:func:`infer_card`); with neither, :func:`load_card`'s error.

    Args:
        name (str, optional): The dataset's name (``--dataset``); :obj:`None` takes the name
            of the one ``*.inter`` file of ``data_dir`` (whose card is then used if there is
            one, as it is when the run is resumed with its saved name).
        data_dir (str or Path, optional): ``--data-dir`` (empty or :obj:`None`: not given).
        cards_dir (Path): The folder of the dataset cards.
    """
    if name and (Path(cards_dir) / f"{name}.yaml").is_file():
        return load_card(name, cards_dir)  # a missing folder is reported with the card's files
    if not data_dir:
        return load_card(str(name), cards_dir)
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"--data-dir {folder}: "
                        + ("not a folder" if folder.exists() else "no such folder"))
    name = name or inter_file(folder).stem
    if (Path(cards_dir) / f"{name}.yaml").is_file():
        return load_card(name, cards_dir)
    return infer_card(folder, name)


def inter_file(folder: Path, name: str | None = None) -> Path:
    r"""The interactions file of an MMRec folder: its one ``*.inter`` file, or
    ``<name>.inter`` among several."""
    found = sorted(p for p in Path(folder).glob("*.inter") if p.is_file())
    if name is not None and (Path(folder) / f"{name}.inter") in found:
        return Path(folder) / f"{name}.inter"
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{folder}: no *.inter file; a data folder in MMRec's layout holds "
                        "<name>.inter (tab-separated userID, itemID, x_label) and one "
                        "<modality>_feat.npy per modality. To use a dataset card instead: "
                        "--dataset NAME (datasets/NAME.yaml)")
    raise DataError(f"{folder}: {len(found)} .inter files ({', '.join(p.name for p in found)}); "
                    "pick one with --dataset NAME (reads NAME.inter)")


def infer_card(folder: Path, name: str | None = None) -> DatasetCard:
    r"""The dataset card an MMRec folder implies (see the module docstring).

    Nothing is written; the files are only listed and the headers of the ``.npy`` files read
    (memory-mapped). The card's ``notes`` say what was left out and why.

    Args:
        folder (Path): The data folder.
        name (str, optional): The dataset's name (default: the ``.inter`` file's stem).
    """
    folder = Path(folder)
    inter = inter_file(folder, name)
    name = name or inter.stem
    notes: list[str] = []
    # modality -> (file, rows, columns); None where the file is not a readable matrix
    features: dict[str, tuple[str, int | None, int | None]] = {}
    others: list[tuple[Path, int, int]] = []
    for path in sorted(folder.iterdir()):
        if path == inter or path.name.startswith("."):
            continue
        why = _extra_reason(path)
        if why is not None:
            notes.append(f"{path.name}: ignored ({why})")
            continue
        shape = _matrix_shape(path)
        if path.name.endswith(FEATURE_SUFFIX) and len(path.name) > len(FEATURE_SUFFIX):
            # a modality by its name: a file that is not a matrix is an error of the reader's
            rows, dim = shape if not isinstance(shape, str) else (None, None)
            features[path.name[:-len(FEATURE_SUFFIX)]] = (path.name, rows, dim)
        elif isinstance(shape, str):
            notes.append(f"{path.name}: ignored ({shape})")
        else:
            others.append((path, *shape))
    heights = {r for _, r, _ in features.values()}
    items = next(iter(heights)) if len(heights) == 1 else None
    if others and not features:
        items = int(read_inter(inter)[1].max()) + 1
    for path, n, d in others:
        if n == items and path.stem not in features:
            features[path.stem] = (path.name, n, d)
        else:
            notes.append(f"{path.name}: ignored (a {n} x {d} matrix; the items' features have "
                         f"{items} rows)" if n != items else
                         f"{path.name}: ignored (modality {path.stem!r} is "
                         f"{features[path.stem][0]})")
    modalities = tuple(ModalitySpec(name=m, file=f, dim=d)
                       for m, (f, _, d) in sorted(features.items(), key=lambda kv: kv[1][0]))
    if not modalities:
        notes.append("no feature file: the dataset has interactions only (models that use no "
                     "item features run on it)")
    return DatasetCard(
        name=name, inter=inter.name, modalities=modalities,
        default_modalities=tuple(m.name for m in modalities),
        source=f"the MMRec-layout folder {folder}, read without a card", path=folder,
        description=f"inferred by brmrs_pyg from the files in {folder}",
        inferred_from=folder, notes=tuple(notes))


def _extra_reason(path: Path) -> str | None:
    r"""Why a file of the folder is not a candidate modality, or :obj:`None`."""
    if not path.is_file():
        return "not a file"
    if path.name in KNOWN_EXTRAS:
        return KNOWN_EXTRAS[path.name]
    if path.stem in KNOWN_EXTRAS:
        return KNOWN_EXTRAS[path.stem]
    if path.suffix == ".pt":
        return "a PyTorch cache file (MMRec keeps its graphs there); graphs are built here"
    if path.suffix != ".npy":
        return "not a .npy feature matrix"
    return None


def _matrix_shape(path: Path) -> tuple[int, int] | str:
    r"""``(rows, columns)`` of a 2-D numeric ``.npy`` matrix, else why it is not one."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "allow_pickle" in reason or "Object arrays" in reason:
            reason = "it holds Python objects, not a numeric matrix"
        return f"not readable as a numeric .npy matrix: {reason}"
    if not isinstance(array, np.ndarray):
        array.close()
        return "an .npz archive, not one matrix"
    numeric = np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    if array.ndim != 2 or not numeric:
        return f"a {array.dtype} array of shape {array.shape}, not a 2-D numeric matrix"
    return int(array.shape[0]), int(array.shape[1])
