r"""Item features as model inputs: centring, optional reduction to principal components, and
a common scale across modalities. The principal basis of a feature matrix is cached on disk,
keyed by a hash of the matrix and the number of components."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from brmrs_pyg.cache import read_entry, tensor_checksum, write_entry

log = logging.getLogger(__name__)

#: Bump when :func:`principal_basis` changes, so that bases cached by older code are not used.
BASIS_VERSION = 1

_CACHE_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("basis_cache",
                                                                           default=None)
_REFERENCE_ROWS: contextvars.ContextVar[int | None] = contextvars.ContextVar("reference_rows",
                                                                             default=None)


@contextlib.contextmanager
def basis_cache(cache_dir: Path | None) -> Iterator[None]:
    r"""Within the block, :func:`prepare_features` keeps the principal bases it computes in
    ``cache_dir`` (``None``: no cache, the default outside any block).

    Models take no cache folder (they do no I/O); the pipeline wraps their construction in
    this block instead, so every model that reduces its features shares one cache without a
    new argument on every ``from_data``.

    >>> import tempfile
    >>> with basis_cache(Path(tempfile.mkdtemp())):
    ...     out = prepare_features(torch.randn(8, 4), dim=2)
    """
    token = _CACHE_DIR.set(None if cache_dir is None else Path(cache_dir))
    try:
        yield
    finally:
        _CACHE_DIR.reset(token)


@contextlib.contextmanager
def reference_rows(count: int | None) -> Iterator[None]:
    r"""Within the block, :func:`prepare_features` takes its centring, principal basis and
    scale from the first ``count`` rows only and applies them to every row (``None``: all
    rows, the default outside any block).

    Rows appended after a trained model's items (new items of a loaded run,
    :meth:`~brmrs_pyg.trained.TrainedModel.with_new_items`) are then prepared exactly as the
    training items were, and leave those items' prepared features unchanged.

    >>> x = torch.randn(6, 4)
    >>> with reference_rows(4):
    ...     out = prepare_features(x)
    >>> torch.allclose(out[:4], prepare_features(x[:4]))
    True
    """
    token = _REFERENCE_ROWS.set(count)
    try:
        yield
    finally:
        _REFERENCE_ROWS.reset(token)


def prepare_features(x: Tensor, dim: int = 0, name: str = "features") -> Tensor:
    r"""Centres the columns of ``x``, keeps its top-``dim`` principal components (all columns
    when ``dim`` is 0 or not smaller than the width) and rescales so that the mean row norm
    is 1, so that modalities of different widths and scales enter a model alike.

    A linear layer on the ``dim`` components equals a linear layer on the full features
    restricted to their top-``dim`` principal subspace, at a fraction of the cost per step
    (a 4096-wide image matrix of 18k items costs about 5 GFLOP per forward pass, its 128
    components 0.15).

    The components come from :func:`principal_basis`, read from the cache of the enclosing
    :func:`basis_cache` block when it holds the same matrix's basis (the tensor the first run
    computed, so a cached run gives that run's features to the bit). The step is logged at
    INFO with its time.

    Args:
        x (Tensor): Item features.
        dim (int, optional): Principal components kept (0: all columns). (default: ``0``)
        name (str, optional): The modality's name, for the log. (default: ``"features"``)

    Shapes:
        - **x**: :math:`(N, D)`; **output**: :math:`(N, \min(D, \text{dim}))` (or
          :math:`(N, D)` when ``dim`` is 0).
    """
    if dim < 0:
        raise ValueError(f"dim must be >= 0, got {dim}")
    start = time.perf_counter()
    rows = _REFERENCE_ROWS.get()  # None: statistics of all rows (x[:None] is x)
    x = x.double()
    x = x - x[:rows].mean(0, keepdim=True)
    if 0 < dim < x.size(1):
        basis, cached = load_or_compute_basis(x[:rows], dim, _CACHE_DIR.get())
        width = x.size(1)
        x = x @ basis
        log.info("feature projection %s: %d -> %d dims in %.1f s, basis %s", name, width, dim,
                 time.perf_counter() - start, f"from cache {cached}" if cached else "computed")
    scale = x[:rows].norm(dim=1).mean().clamp_min(1e-12)
    return (x / scale).float()


def principal_basis(x: Tensor, dim: int) -> Tensor:
    r"""The top-``dim`` principal directions of the centred matrix ``x``, by decreasing
    variance: the leading eigenvectors of :math:`\mathbf{X}^\top \mathbf{X}` (float64
    ``eigh``), each signed so that its largest-magnitude loading is positive.

    Shapes:
        - **x**: :math:`(N, D)`, float64, centred columns; **output**: :math:`(D, \text{dim})`.
    """
    _, vectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
    basis = vectors[:, -dim:].flip(1)
    # fix each component's sign (largest-magnitude loading positive) for reproducibility
    sign = basis.gather(0, basis.abs().argmax(0, keepdim=True)).sign()
    return basis * sign


def load_or_compute_basis(x: Tensor, dim: int, cache_dir: Path | None
                          ) -> tuple[Tensor, Path | None]:
    r""":func:`principal_basis` of ``x``, from ``cache_dir/bases/`` when an entry for the same
    matrix (hash of its bytes) and ``dim`` is there; computed and stored otherwise. Returns
    the basis and the entry it was read from (``None`` when computed). ``None`` as
    ``cache_dir`` disables the cache.

    The entry holds the computed tensor itself, since another computation may differ in the
    last bits (``eigh`` on another thread count or BLAS). An entry is verified by a SHA-256
    checksum and its shape (:func:`~brmrs_pyg.cache.read_entry`); one that fails is
    recomputed and rewritten with a warning.

    Shapes:
        - **x**: :math:`(N, D)`, float64, centred columns; **output**: :math:`(D, \text{dim})`.
    """
    if cache_dir is None:
        return principal_basis(x, dim), None
    key = tensor_checksum({"version": torch.tensor(BASIS_VERSION), "dim": torch.tensor(dim),
                           "x": x})
    path = Path(cache_dir) / "bases" / f"pca-{x.size(1)}x{dim}-{key[:24]}.pt"
    cached = read_entry(path, "basis", lambda tensors: _basis_of(tensors, (x.size(1), dim)))
    if cached is not None:
        return cached, path
    basis = principal_basis(x, dim)
    write_entry(path, {"basis": basis})
    return basis, None


def _basis_of(tensors: dict[str, Tensor], shape: tuple[int, int]) -> Tensor:
    r"""The basis of a verified cache entry; ``ValueError`` when it is not a float64 matrix of
    ``shape``."""
    if set(tensors) != {"basis"}:
        raise ValueError("not a basis cache entry")
    basis = tensors["basis"]
    if basis.dtype != torch.float64 or tuple(basis.shape) != shape:
        raise ValueError(f"a {basis.dtype} basis of shape {tuple(basis.shape)}, expected "
                         f"float64 {shape}")
    return basis
