r"""Synthetic multimodal testbed (DESIGN.md section 1, "Synthetic testbed").

Every item :math:`i` has independent latent factors :math:`z_t, z_v, z_s, z_r \in \mathbb{R}^k`
(text-unique, visual-unique, synergy, redundant). Its two modalities see

.. math::
    m_t = W_t [z_t; A z_s; z_r] + \epsilon, \qquad m_v = W_v [z_v; B z_s; z_r] + \epsilon,

with :math:`A, B` the two halves (:math:`k/2 \times k` each) of a random orthogonal
:math:`k \times k` matrix, so :math:`z_s` is recoverable only from both modalities,
:math:`W_t, W_v` random maps to the feature widths and :math:`\epsilon` Gaussian noise of
standard deviation ``feature_noise``. Each user has
:math:`\theta_u = [\theta_t; \theta_v; \theta_s; \theta_r]`, :math:`\theta_x \sim
\mathcal{N}(0, I_k / k)`, and true preference

.. math::
    s^*(u, i) = \sum_{x \in \{t, v, s, r\}} \gamma_x \, \tau_x(u, i) + b_i, \qquad
    \tau_x(u, i) = \langle \theta_{u,x}, z_{i,x} \rangle \ (x \ne s),

where :math:`b_i` is an item popularity bias. The synergy term :math:`\tau_s` depends on
``regime``:

- ``"linear"``: :math:`\tau_s = \langle \theta_{u,s}, z_{i,s} \rangle
  = \langle A\theta_{u,s}, A z_{i,s} \rangle + \langle B\theta_{u,s}, B z_{i,s} \rangle`,
  a sum of a text-visible and an image-visible part, which an additive late fusion of
  the two modalities can represent.
- ``"synergy"``: with :math:`\theta_{u,a}, \theta_{u,b} = \sqrt{2}` times the first and the
  second half of :math:`\theta_{u,s}`,

  .. math::
      \tau_s(u, i) = \langle \theta_{u,a}, A z_{i,s} \rangle \,
      \langle \theta_{u,b}, B z_{i,s} \rangle,

  the product of the part the text sees and the part the image sees. :math:`A z_s` and
  :math:`B z_s` are independent standard normal vectors, so each factor has unit variance
  and so does the product (the scale of the linear terms); and
  :math:`\mathbb{E}[\tau_s \mid A z_s] = \mathbb{E}[\tau_s \mid B z_s] = 0`: no function of
  one modality plus a function of the other explains any of its variance. Only a model
  that combines both modalities non-additively can use it.

A user's positives are the top-:math:`n_u` items by :math:`s^*` plus Gumbel noise (a
Plackett-Luce draw); :math:`n_u` is ``min_interactions`` plus a geometric tail, with mean
``mean_interactions`` overall. Interactions are split per user as MMRec does, written in MMRec
format and read back through the ordinary reader.

**Conflicts.** With ``conflict_rate`` :math:`\rho > 0`, :math:`\mathrm{round}(\rho
|\mathcal{I}|)` items, chosen at random, get one modality (text or image, at random per item)
that describes another random item: that feature row is generated from the other item's
latents, while preferences still use the item's own. They are listed in ``conflicts.tsv``
(``itemID``, ``modality``, ``source_itemID``; a header only when there are none).

**Ground truth.** The type of every held-out (valid and test) positive is the term that
contributes most to its preference, :math:`\arg\max_x \gamma_x \tau_x(u, i)`, written to
``ground_truth.tsv`` (``userID itemID x_label type``, type one of :data:`TYPES`) and read back
with :func:`read_ground_truth`.

The defaults (``regime="linear"``, ``conflict_rate=0``) draw exactly the random numbers, and
write exactly the interactions and features, of the generator's first version: results
published on the default sets still hold.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from brmrs_pyg.config import ConfigError, coerce
from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.split import split_per_user
from brmrs_pyg.data.tables import read_table
from brmrs_pyg.io import FileLock, atomic_save_npy, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
GENERATOR_VERSION = 2
REGIMES = ("linear", "synergy")
#: Ground-truth types that name no modality; see :func:`truth_types`.
GENERIC_TYPES = ("synergy", "redundant")


def truth_types(modalities: Sequence[str]) -> tuple[str, ...]:
    r"""The ground-truth types a ``ground_truth.tsv`` of a dataset with ``modalities`` may
    hold: ``<m>_unique`` for every modality :math:`m`, then :data:`GENERIC_TYPES`.

    >>> truth_types(["visual", "textual"])
    ('visual_unique', 'textual_unique', 'synergy', 'redundant')
    """
    return (*(f"{m}_unique" for m in modalities), *GENERIC_TYPES)


#: Ground-truth types of a generated held-out positive, in the order of the terms t, v, s, r.
TYPES = truth_types(("text", "image"))
GROUND_TRUTH_FILE = "ground_truth.tsv"
CONFLICTS_FILE = "conflicts.tsv"
GENERATOR_STAMP = "generator.json"  # the settings the files were drawn with
GENERATOR_LOCK = ".generator.lock"  # held while generating; marks the folder as ours
_GT_HEADER = ["userID", "itemID", "x_label", "type"]


@dataclass(frozen=True)
class SyntheticSpec:
    r"""Settings of the synthetic generator (the ``generator:`` block of a dataset card)."""

    num_users: int = 3000
    num_items: int = 2000
    latent_dim: int = 16
    text_dim: int = 64
    image_dim: int = 128
    gamma_t: float = 1.0
    gamma_v: float = 1.0
    gamma_s: float = 1.0
    gamma_r: float = 1.0
    regime: str = "linear"
    feature_noise: float = 0.5
    conflict_rate: float = 0.0
    popularity: float = 1.0
    temperature: float = 1.0
    min_interactions: int = 5
    mean_interactions: float = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latent_dim < 2 or self.latent_dim % 2:
            raise DataError(f"generator latent_dim must be an even number >= 2, got "
                            f"{self.latent_dim}")
        if not self.min_interactions <= self.mean_interactions < self.num_items / 2:
            raise DataError("generator needs min_interactions <= mean_interactions < "
                            "num_items / 2")
        if self.regime not in REGIMES:
            raise DataError(f"generator regime must be one of {REGIMES}, got {self.regime!r}")
        if not 0.0 <= self.conflict_rate <= 1.0:
            raise DataError(f"generator conflict_rate must lie in [0, 1], got "
                            f"{self.conflict_rate}")

    @classmethod
    def from_card(cls, raw: dict[str, Any], source: Path) -> "SyntheticSpec":
        r"""Builds a spec from a card's ``generator:`` mapping, rejecting unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise DataError(f"{source}: unknown generator keys {sorted(unknown)}; valid keys: "
                            f"{sorted(names)}")
        types = typing.get_type_hints(cls)
        values = {}
        for key, value in raw.items():
            try:
                values[key] = coerce(key, value, types[key], str(source))
            except ConfigError as exc:
                raise DataError(f"generator setting {exc}") from None
        return cls(**values)


def parse_generator_overrides(text: str) -> dict[str, Any]:
    r"""Parses the run key ``generator`` (``"gamma_s=2,regime=synergy"``): comma-separated
    ``key=value`` pairs, each split at its first ``=``, values converted to the types of
    :class:`SyntheticSpec`. An empty text gives no overrides.

    Raises:
        ConfigError: A pair without ``=``, an unknown key (the message lists the valid
            ones) or a value of the wrong type.

    >>> parse_generator_overrides("gamma_s=2, regime=synergy")
    {'gamma_s': 2.0, 'regime': 'synergy'}
    """
    types = typing.get_type_hints(SyntheticSpec)
    out: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"generator={text!r}: expected comma-separated key=value pairs, "
                              f"got {item!r}")
        if key not in types:
            raise ConfigError(f"generator={text!r}: unknown generator key {key!r}; valid keys: "
                              f"{', '.join(f.name for f in dataclasses.fields(SyntheticSpec))}")
        out[key] = coerce(key, value, types[key], "generator=")
    return out


def overrides_tag(overrides: dict[str, Any]) -> str:
    r"""Eight hex digits of a SHA-256 of parsed ``overrides`` (order-free), naming the data
    folder of a generator variant, ``datasets/<card>-<tag>/``.

    >>> overrides_tag({"gamma_s": 2.0}) == overrides_tag({"gamma_s": 2.0}) != overrides_tag({})
    True
    """
    text = json.dumps(sorted(overrides.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass
class Latents:
    r"""The latent factors a synthetic dataset was drawn from.

    Shapes:
        - **z[x]**: :math:`(|\mathcal{I}|, k)` for ``x`` in ``"tvsr"``.
        - **theta[x]**: :math:`(|\mathcal{U}|, k)`.
        - **a**, **b**: :math:`(k/2, k)`, the text's and the image's view of :math:`z_s`.
        - **bias**: :math:`(|\mathcal{I}|,)`.
    """

    z: dict[str, np.ndarray]
    theta: dict[str, np.ndarray]
    a: np.ndarray
    b: np.ndarray
    bias: np.ndarray
    gamma: dict[str, float]
    regime: str

    def synergy_factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        r"""``(theta_a, A z_s, theta_b, B z_s)`` of the ``"synergy"`` regime (module docstring):
        user factors :math:`(|\mathcal{U}|, k/2)`, item factors :math:`(|\mathcal{I}|, k/2)`."""
        half = self.a.shape[0]
        theta_s, z_s = self.theta["s"], self.z["s"]
        return (math.sqrt(2.0) * theta_s[:, :half], z_s @ self.a.T,
                math.sqrt(2.0) * theta_s[:, half:], z_s @ self.b.T)

    def contributions(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        r"""The terms :math:`\gamma_x \tau_x(u, i)` of pairs ``(users[j], items[j])``, columns
        in the order t, v, s, r (that of :data:`TYPES`); float64.

        Shapes:
            - **users**, **items**: :math:`(N,)`; **output**: :math:`(N, 4)`.
        """
        out = np.empty((len(users), 4))
        for col, x in enumerate("tvsr"):
            out[:, col] = np.einsum("nk,nk->n", self.theta[x][users], self.z[x][items])
        if self.regime == "synergy":
            ua, ia, ub, ib = self.synergy_factors()
            out[:, 2] = (np.einsum("nk,nk->n", ua[users], ia[items])
                         * np.einsum("nk,nk->n", ub[users], ib[items]))
        return out * np.array([self.gamma[x] for x in "tvsr"])


@dataclass
class GroundTruth:
    r"""The type of every held-out positive (module docstring): ``types[j]``, one of
    :data:`TYPES`, is the dominant preference term of the pair ``(users[j], items[j])`` of
    split ``labels[j]`` (1 valid, 2 test).

    Shapes:
        - **users**, **items**, **labels**, **types**: :math:`(N,)`.
    """

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    types: np.ndarray


@dataclass
class Conflicts:
    r"""Items whose ``modality`` (``"text"`` or ``"image"``) row describes item ``source``.

    Shapes:
        - **items**, **modality**, **source**: :math:`(C,)`.
    """

    items: np.ndarray
    modality: np.ndarray
    source: np.ndarray


@dataclass
class SyntheticData:
    r"""Generated interactions (with their split) and item features, the latents they were
    drawn from, the held-out positives' ground truth and the conflicting items."""

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    features: dict[str, np.ndarray]
    latents: Latents
    truth: GroundTruth
    conflicts: Conflicts


def generate(spec: SyntheticSpec) -> SyntheticData:
    r"""Draws a synthetic dataset; deterministic given ``spec`` (including its seed)."""
    rng = np.random.default_rng(spec.seed)
    k, n_items, n_users = spec.latent_dim, spec.num_items, spec.num_users
    z = {x: rng.standard_normal((n_items, k)) for x in "tvsr"}
    q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    a, b = q[: k // 2], q[k // 2:]
    views = {"text": np.concatenate([z["t"], z["s"] @ a.T, z["r"]], axis=1),
             "image": np.concatenate([z["v"], z["s"] @ b.T, z["r"]], axis=1)}
    # conflicts draw from their own stream, so the main one (and with it every other array)
    # is the same whatever the conflict rate
    conflicts = _draw_conflicts(spec)
    for modality in ("text", "image"):
        rows = conflicts.modality == modality
        views[modality][conflicts.items[rows]] = views[modality][conflicts.source[rows]]
    features = {
        "text": _observe(views["text"], spec.text_dim, spec.feature_noise, rng),
        "image": _observe(views["image"], spec.image_dim, spec.feature_noise, rng),
    }
    gamma = {"t": spec.gamma_t, "v": spec.gamma_v, "s": spec.gamma_s, "r": spec.gamma_r}
    # scale user factors so each <theta_x, z_x> has unit variance
    theta = {x: rng.standard_normal((n_users, k)) / math.sqrt(k) for x in "tvsr"}
    bias = spec.popularity * rng.standard_normal(n_items)
    latents = Latents(z=z, theta=theta, a=a, b=b, bias=bias, gamma=gamma, regime=spec.regime)
    linear = "tvsr" if spec.regime == "linear" else "tvr"
    item_lat = np.concatenate([gamma[x] * z[x] for x in linear], axis=1)
    user_lat = np.concatenate([theta[x] for x in linear], axis=1)
    product = None
    if spec.regime == "synergy":
        ua, ia, ub, ib = latents.synergy_factors()
        product = (ua, gamma["s"] * ia, ub, ib)
    # min + (Geometric - 1): a long tail of heavy users with exactly the requested mean
    extra = rng.geometric(1.0 / (spec.mean_interactions - spec.min_interactions + 1), n_users) - 1
    counts = np.minimum(spec.min_interactions + extra, n_items // 2)
    users, items = _draw_positives(user_lat, item_lat, bias, counts, spec.temperature,
                                   int(rng.integers(2**31)), product)
    labels = split_per_user(users, seed=spec.seed)
    return SyntheticData(users=users, items=items, labels=labels, features=features,
                         latents=latents, truth=ground_truth(latents, users, items, labels),
                         conflicts=conflicts)


def _draw_conflicts(spec: SyntheticSpec) -> Conflicts:
    count = int(round(spec.conflict_rate * spec.num_items))
    if count == 0 or spec.num_items < 2:
        empty = np.zeros(0, dtype=np.int64)
        return Conflicts(items=empty, modality=np.zeros(0, dtype="<U5"), source=empty)
    rng = np.random.default_rng([spec.seed, 1])
    items = np.sort(rng.choice(spec.num_items, size=count, replace=False))
    modality = np.where(rng.random(count) < 0.5, "text", "image")
    # a uniform other item: shift by 1..n-1 modulo n never lands on the item itself
    source = (items + rng.integers(1, spec.num_items, size=count)) % spec.num_items
    return Conflicts(items=items, modality=modality, source=source)


def ground_truth(latents: Latents, users: np.ndarray, items: np.ndarray,
                 labels: np.ndarray) -> GroundTruth:
    r"""The type (:data:`TYPES`) of every held-out pair (``labels > 0``): the term
    :math:`x` with the largest :math:`\gamma_x \tau_x(u, i)`."""
    held = labels > 0
    terms = latents.contributions(users[held], items[held])
    types = np.asarray(TYPES)[terms.argmax(1)]
    return GroundTruth(users=users[held], items=items[held], labels=labels[held], types=types)


def _observe(latent: np.ndarray, dim: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    proj = rng.standard_normal((latent.shape[1], dim)) / math.sqrt(latent.shape[1])
    obs = latent @ proj + noise * rng.standard_normal((latent.shape[0], dim))
    return obs.astype(np.float32)


def _draw_positives(user_lat: np.ndarray, item_lat: np.ndarray, bias: np.ndarray,
                    counts: np.ndarray, temperature: float, seed: int,
                    product: tuple[np.ndarray, ...] | None = None,
                    chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    # Top-n of (score + Gumbel) is a Plackett-Luce sample without replacement; chunks keep the
    # users x items score matrix out of memory for Sports-sized sets. ``product`` =
    # (user_a, item_a, user_b, item_b) adds the non-additive term <u_a, i_a> * <u_b, i_b>.
    gen = torch.Generator().manual_seed(seed)
    items_t = torch.from_numpy(item_lat).float()
    bias_t = torch.from_numpy(bias).float()
    factors = None if product is None else [torch.from_numpy(f).float() for f in product]
    users_out, items_out = [], []
    for start in range(0, user_lat.shape[0], chunk):
        u = torch.from_numpy(user_lat[start:start + chunk]).float()
        scores = u @ items_t.T + bias_t
        if factors is not None:
            ua, ia, ub, ib = factors
            stop = start + chunk
            scores += (ua[start:stop] @ ia.T) * (ub[start:stop] @ ib.T)
        uniform = torch.rand(scores.shape, generator=gen).clamp_min(1e-12)
        scores = scores - temperature * torch.log(-torch.log(uniform))
        n = torch.from_numpy(counts[start:start + chunk])
        top = scores.topk(int(n.max()), dim=1).indices
        keep = torch.arange(top.size(1)) < n[:, None]
        rows = torch.arange(start, start + u.size(0))[:, None].expand_as(top)
        users_out.append(rows[keep].numpy())
        items_out.append(top[keep].numpy())
    return np.concatenate(users_out), np.concatenate(items_out)


def write_mmrec(data: SyntheticData, folder: Path, inter_name: str,
                feature_files: dict[str, str]) -> None:
    r"""Writes ``data`` as an MMRec dataset folder (``.inter`` plus one ``.npy`` per modality)."""
    lines = ["userID\titemID\tx_label"] + [
        f"{u}\t{i}\t{x}" for u, i, x in zip(data.users.tolist(), data.items.tolist(),
                                            data.labels.tolist())]
    atomic_write_text(folder / inter_name, "\n".join(lines) + "\n")
    for modality, file in feature_files.items():
        atomic_save_npy(folder / file, data.features[modality])


def write_truth(data: SyntheticData, folder: Path) -> None:
    r"""Writes ``ground_truth.tsv`` and ``conflicts.tsv`` (module docstring) into ``folder``."""
    truth = data.truth
    rows = zip(truth.users.tolist(), truth.items.tolist(), truth.labels.tolist(),
               truth.types.tolist())
    lines = ["\t".join(_GT_HEADER)] + [f"{u}\t{i}\t{x}\t{t}" for u, i, x, t in rows]
    atomic_write_text(folder / GROUND_TRUTH_FILE, "\n".join(lines) + "\n")
    c = data.conflicts
    lines = ["itemID\tmodality\tsource_itemID"] + [
        f"{i}\t{m}\t{s}" for i, m, s in zip(c.items.tolist(), c.modality.tolist(),
                                            c.source.tolist())]
    atomic_write_text(folder / CONFLICTS_FILE, "\n".join(lines) + "\n")


def read_ground_truth(folder: Path, modalities: Sequence[str] = ("text", "image")
                      ) -> GroundTruth | None:
    r"""Reads ``folder/ground_truth.tsv`` (written by the generator, or by hand); :obj:`None`
    when the folder has none (a real dataset).

    Args:
        folder (Path): The dataset's folder.
        modalities (list of str, optional): The dataset's modalities; a type is one of
            :func:`truth_types` of them. (default: the generator's, ``("text", "image")``)

    Raises:
        DataError: The file exists but is not a ground-truth table (header, ids, labels or
            types), naming the line.
    """
    types = truth_types(modalities)
    path = Path(folder) / GROUND_TRUTH_FILE
    if not path.is_file():
        return None
    table = read_table(path, sep="\t")
    if table.header != _GT_HEADER:
        raise DataError(f"{path}, line 1: header {table.header}, expected {_GT_HEADER}")
    columns: list[list[int]] = [[], [], []]
    for line, row in enumerate(table.rows, start=2):
        try:
            values = [int(v) for v in row[:3]]
        except ValueError:
            raise DataError(f"{path}, line {line}: userID, itemID and x_label must be "
                            f"integers, got {row[:3]}") from None
        if values[2] not in (1, 2) or min(values) < 0 or row[3] not in types:
            raise DataError(f"{path}, line {line}: expected ids >= 0, x_label 1 or 2 and a "
                            f"type in {types}, got {row}")
        for column, value in zip(columns, values):
            column.append(value)
    users, items, labels = (np.asarray(c, dtype=np.int64) for c in columns)
    return GroundTruth(users=users, items=items, labels=labels,
                       types=np.asarray([row[3] for row in table.rows], dtype=str))


def ensure_generated(spec: SyntheticSpec, folder: Path, inter_name: str,
                     feature_files: dict[str, str]) -> None:
    r"""Generates the dataset into ``folder`` unless files from the same ``spec`` are there.

    Writes the MMRec files, ``ground_truth.tsv`` and ``conflicts.tsv``. A ``generator.json``
    beside the files records the settings they were drawn with; any change of settings (or of
    the generator version) regenerates them. A folder that exists, is not empty and has no
    ``generator.json`` (nor the ``.generator.lock`` held while generating) is someone
    else's: a :class:`DataError`, nothing written. Processes calling this at once on one
    folder (the workers of a suite or search) generate it once: the others wait on the lock
    and read its output.
    """
    folder = Path(folder)
    stamp = {"version": GENERATOR_VERSION, **dataclasses.asdict(spec)}
    files = [inter_name, *feature_files.values(), GROUND_TRUTH_FILE, CONFLICTS_FILE]
    if _generated(folder, stamp, files):
        return
    unknown = set(feature_files) - {"text", "image"}
    if unknown:
        raise DataError(f"the synthetic generator makes modalities 'text' and 'image', not "
                        f"{sorted(unknown)}")
    _refuse_foreign(folder)
    # several workers of a suite or search may reach here at once: one generates, the
    # others wait and then find its output
    with FileLock(folder / GENERATOR_LOCK):
        if _generated(folder, stamp, files):
            return
        _generate_into(spec, folder, inter_name, feature_files, stamp)


def _generated(folder: Path, stamp: dict[str, Any], files: list[str]) -> bool:
    stamp_path = folder / GENERATOR_STAMP
    if not (stamp_path.is_file() and all((folder / f).is_file() for f in files)):
        return False
    try:
        return bool(json.loads(stamp_path.read_text()) == stamp)
    except json.JSONDecodeError:
        return False


def _refuse_foreign(folder: Path) -> None:
    # a folder with neither the stamp nor the lock of this generator is someone's data,
    # never written into
    if not folder.exists() or (folder / GENERATOR_STAMP).is_file() \
            or (folder / GENERATOR_LOCK).is_file() or not any(folder.iterdir()):
        return
    held = sorted(p.name for p in folder.iterdir())
    raise DataError(
        f"{folder} holds files the synthetic generator did not write ("
        f"{', '.join(held[:5])}{' ...' if len(held) > 5 else ''}) and no {GENERATOR_STAMP}; "
        "it generates only into an empty folder or one holding its own earlier output. "
        "To train on the files there, name the dataset after them: --dataset NAME "
        "--data-dir DIR (an MMRec folder without a card is read as it is)")


def _generate_into(spec: SyntheticSpec, folder: Path, inter_name: str,
                   feature_files: dict[str, str], stamp: dict[str, Any]) -> None:
    log.info("generating synthetic dataset (%d users, %d items, %s regime) into %s",
             spec.num_users, spec.num_items, spec.regime, folder)
    data = generate(spec)
    write_mmrec(data, folder, inter_name, feature_files)
    write_truth(data, folder)
    atomic_write_json(folder / GENERATOR_STAMP, stamp)
