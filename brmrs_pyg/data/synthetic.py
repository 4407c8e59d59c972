r"""Synthetic multimodal testbed (DESIGN.md section 1, first version).

Every item :math:`i` has independent latent factors :math:`z_t, z_v, z_s, z_r \in \mathbb{R}^k`
(text-unique, visual-unique, synergy, redundant). Its two modalities see

.. math::
    m_t = W_t [z_t; A z_s; z_r] + \epsilon, \qquad m_v = W_v [z_v; B z_s; z_r] + \epsilon,

with :math:`A, B` the two halves of a random orthogonal :math:`k \times k` matrix, so
:math:`z_s` is recoverable only from both modalities, and :math:`W_t, W_v` random maps to the
feature widths. Each user has :math:`\theta_u = [\theta_t; \theta_v; \theta_s; \theta_r]` and
true preference

.. math::
    s^*(u, i) = \sum_x \gamma_x \langle \theta_{u,x}, z_{i,x} \rangle + b_i,

where :math:`b_i` is an item popularity bias. A user's positives are the top-:math:`n_u` items
by :math:`s^*` plus Gumbel noise (a Plackett-Luce draw); :math:`n_u` is ``min_interactions``
plus a geometric tail, with mean ``mean_interactions`` overall. Interactions are split per user
as MMRec does, written in MMRec format and read back through the ordinary reader.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brmrs_pyg.config import ConfigError, coerce
from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.split import split_per_user
from brmrs_pyg.io import atomic_save_npy, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
GENERATOR_VERSION = 2


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
    feature_noise: float = 0.5
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


@dataclass
class SyntheticData:
    r"""Generated interactions (with their split) and item features."""

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    features: dict[str, np.ndarray]


def generate(spec: SyntheticSpec) -> SyntheticData:
    r"""Draws a synthetic dataset; deterministic given ``spec`` (including its seed)."""
    rng = np.random.default_rng(spec.seed)
    k, n_items, n_users = spec.latent_dim, spec.num_items, spec.num_users
    z = {x: rng.standard_normal((n_items, k)) for x in "tvsr"}
    q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    a, b = q[: k // 2], q[k // 2:]
    text = np.concatenate([z["t"], z["s"] @ a.T, z["r"]], axis=1)
    image = np.concatenate([z["v"], z["s"] @ b.T, z["r"]], axis=1)
    features = {
        "text": _observe(text, spec.text_dim, spec.feature_noise, rng),
        "image": _observe(image, spec.image_dim, spec.feature_noise, rng),
    }
    gamma = {"t": spec.gamma_t, "v": spec.gamma_v, "s": spec.gamma_s, "r": spec.gamma_r}
    # scale user factors so each <theta_x, z_x> has unit variance
    theta = {x: rng.standard_normal((n_users, k)) / math.sqrt(k) for x in "tvsr"}
    item_lat = np.concatenate([gamma[x] * z[x] for x in "tvsr"], axis=1)
    user_lat = np.concatenate([theta[x] for x in "tvsr"], axis=1)
    bias = spec.popularity * rng.standard_normal(n_items)
    # min + (Geometric - 1): a long tail of heavy users with exactly the requested mean
    extra = rng.geometric(1.0 / (spec.mean_interactions - spec.min_interactions + 1), n_users) - 1
    counts = np.minimum(spec.min_interactions + extra, n_items // 2)
    users, items = _draw_positives(user_lat, item_lat, bias, counts, spec.temperature,
                                   int(rng.integers(2**31)))
    labels = split_per_user(users, seed=spec.seed)
    return SyntheticData(users=users, items=items, labels=labels, features=features)


def _observe(latent: np.ndarray, dim: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    proj = rng.standard_normal((latent.shape[1], dim)) / math.sqrt(latent.shape[1])
    obs = latent @ proj + noise * rng.standard_normal((latent.shape[0], dim))
    return obs.astype(np.float32)


def _draw_positives(user_lat: np.ndarray, item_lat: np.ndarray, bias: np.ndarray,
                    counts: np.ndarray, temperature: float, seed: int,
                    chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    # Top-n of (score + Gumbel) is a Plackett-Luce sample without replacement; chunks keep the
    # users x items score matrix out of memory for Sports-sized sets.
    gen = torch.Generator().manual_seed(seed)
    items_t = torch.from_numpy(item_lat).float()
    bias_t = torch.from_numpy(bias).float()
    users_out, items_out = [], []
    for start in range(0, user_lat.shape[0], chunk):
        u = torch.from_numpy(user_lat[start:start + chunk]).float()
        scores = u @ items_t.T + bias_t
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


def ensure_generated(spec: SyntheticSpec, folder: Path, inter_name: str,
                     feature_files: dict[str, str]) -> None:
    r"""Generates the dataset into ``folder`` unless files from the same ``spec`` are there.

    A ``generator.json`` beside the files records the settings they were drawn with; any
    change of settings (or of the generator version) regenerates them.
    """
    folder = Path(folder)
    stamp = {"version": GENERATOR_VERSION, **dataclasses.asdict(spec)}
    stamp_path = folder / "generator.json"
    files = [inter_name, *feature_files.values()]
    if stamp_path.is_file() and all((folder / f).is_file() for f in files):
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return
        except json.JSONDecodeError:
            pass
    unknown = set(feature_files) - {"text", "image"}
    if unknown:
        raise DataError(f"the synthetic generator makes modalities 'text' and 'image', not "
                        f"{sorted(unknown)}")
    log.info("generating synthetic dataset (%d users, %d items) into %s", spec.num_users,
             spec.num_items, folder)
    write_mmrec(generate(spec), folder, inter_name, feature_files)
    atomic_write_json(stamp_path, stamp)
