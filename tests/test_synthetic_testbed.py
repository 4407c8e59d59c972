r"""The synthetic testbed's additions (``brmrs_pyg.data.synthetic``): the default output pinned
byte for byte, the synergy regime's non-additivity, conflicting items, the ground truth of
held-out positives, and generator overrides from the command line."""
from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from brmrs_pyg.cli import main
from brmrs_pyg.config import ConfigError
from brmrs_pyg.data import DataError
from brmrs_pyg.data.synthetic import (TYPES, SyntheticSpec, ensure_generated, generate,
                                      overrides_tag, parse_generator_overrides,
                                      read_ground_truth)
from brmrs_pyg.io import FileLock

REPO = Path(__file__).resolve().parents[1]
TINY = {"num_users": 50, "num_items": 40, "latent_dim": 4, "text_dim": 8, "image_dim": 6,
        "mean_interactions": 6, "seed": 3}
FILES = {"text": "text_feat.npy", "image": "image_feat.npy"}


def tiny(**changes) -> SyntheticSpec:
    return SyntheticSpec(**{**TINY, **changes})


def digest(data) -> str:
    h = hashlib.sha256()
    for array in (data.users, data.items, data.labels, data.features["text"],
                  data.features["image"]):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


# computed with the generator of main at 8338477, before regimes and conflicts existed
PINNED = {
    "tiny": "66b39eb726e01be9a9659c247ea806d5d30c85006bf80446d2fc337ddded8c71",
    "synthetic": "bda4e57b8a7d910abf608f1a1eb5a9ee65e68176da1f7dd3e88bf764fb757b2d",
}


def test_default_output_is_unchanged():
    assert digest(generate(tiny())) == PINNED["tiny"]
    card = yaml.safe_load((REPO / "datasets" / "synthetic.yaml").read_text())["generator"]
    assert digest(generate(SyntheticSpec(**card))) == PINNED["synthetic"]
    assert digest(generate(tiny(regime="synergy"))) != PINNED["tiny"]


def r_squared(y: np.ndarray, basis: np.ndarray) -> float:
    r"""Fraction of the variance of ``y`` explained by least squares on ``basis`` + constant."""
    design = torch.from_numpy(np.column_stack([np.ones(len(y)), basis]))
    target = torch.from_numpy(y)[:, None]
    # torch's solver: numpy's threaded BLAS crawls on a loaded machine
    coef = torch.linalg.lstsq(design, target).solution
    return 1.0 - float((target - design @ coef).var() / target.var())


def quadratic(x: np.ndarray) -> np.ndarray:
    r"""Every monomial of degree 1 and 2 of the columns of ``x``."""
    i, j = np.triu_indices(x.shape[1])
    return np.column_stack([x, x[:, i] * x[:, j]])


@pytest.mark.parametrize("regime", ["linear", "synergy"])
def test_synergy_term_is_additive_only_in_the_linear_regime(regime):
    spec = SyntheticSpec(num_users=300, num_items=2000, latent_dim=8, text_dim=4, image_dim=4,
                         mean_interactions=6, regime=regime, seed=1)
    lat = generate(spec).latents
    text_part, image_part = lat.z["s"] @ lat.a.T, lat.z["s"] @ lat.b.T  # what each modality sees
    items = np.arange(spec.num_items)
    users = np.repeat(np.arange(spec.num_users), 50)
    sample = lat.contributions(users, np.resize(items, users.size))
    # unit variance over users and items, like every other term
    assert np.var(sample, axis=0) == pytest.approx([1.0] * 4, abs=0.15)
    additive = np.column_stack([quadratic(text_part), quadratic(image_part)])
    joint = np.column_stack([additive, np.einsum("ni,nj->nij", text_part, image_part)
                             .reshape(spec.num_items, -1)])
    for user in range(3):
        term = lat.contributions(np.full_like(items, user), items)[:, 2]
        additive_r2 = r_squared(term, additive)
        if regime == "linear":
            assert additive_r2 > 0.999
        else:  # chance level: 28 regressors on 2000 items explain about 1.4%
            assert additive_r2 < 0.03
            assert r_squared(term, joint) > 0.999  # the term is a function of both parts


def naive_terms(lat, user: int, item: int) -> list[float]:
    r"""gamma_x * tau_x(u, i) for x = t, v, s, r, one dot product at a time."""
    def dot(p, q):
        return sum(float(x) * float(y) for x, y in zip(p, q))
    terms = [dot(lat.theta[x][user], lat.z[x][item]) for x in "tvsr"]
    if lat.regime == "synergy":
        half = lat.a.shape[0]
        theta_s = lat.theta["s"][user]
        terms[2] = (dot(math.sqrt(2) * theta_s[:half], lat.a @ lat.z["s"][item])
                    * dot(math.sqrt(2) * theta_s[half:], lat.b @ lat.z["s"][item]))
    return [lat.gamma[x] * t for x, t in zip("tvsr", terms)]


@pytest.mark.parametrize("regime", ["linear", "synergy"])
def test_ground_truth_labels_agree_with_the_latents(regime):
    data = generate(tiny(regime=regime, gamma_t=0.5, gamma_s=2.0))
    truth = data.truth
    held = data.labels > 0
    assert np.array_equal(truth.users, data.users[held])
    assert np.array_equal(truth.items, data.items[held])
    assert np.array_equal(truth.labels, data.labels[held])
    assert set(truth.labels.tolist()) == {1, 2}
    for u, i, t in zip(truth.users.tolist(), truth.items.tolist(), truth.types.tolist()):
        terms = naive_terms(data.latents, u, i)
        assert t == TYPES[terms.index(max(terms))]
    assert len(set(truth.types.tolist())) >= 3


def test_ground_truth_follows_the_dominant_gamma():
    data = generate(tiny(gamma_t=0.1, gamma_v=0.1, gamma_s=0.1, gamma_r=5.0))
    assert np.mean(data.truth.types == "redundant") > 0.9


def test_ground_truth_file_round_trip(tmp_path):
    assert read_ground_truth(tmp_path) is None
    spec = tiny(regime="synergy")
    ensure_generated(spec, tmp_path, "syn.inter", FILES)
    read = read_ground_truth(tmp_path)
    want = generate(spec).truth
    assert read is not None
    for field in ("users", "items", "labels", "types"):
        assert np.array_equal(getattr(read, field), getattr(want, field)), field
    lines = (tmp_path / "ground_truth.tsv").read_text().splitlines()
    assert lines[0] == "userID\titemID\tx_label\ttype" and len(lines) == len(want.users) + 1
    inter = (tmp_path / "syn.inter").read_text().splitlines()[1:]
    held = {tuple(map(int, line.split("\t"))) for line in inter if not line.endswith("\t0")}
    assert {tuple(map(int, line.split("\t")[:3])) for line in lines[1:]} == held


@pytest.mark.parametrize("content, message", [
    ("userID\titemID\ttype\n", "header"),
    ("userID\titemID\tx_label\ttype\n1\t2\t0\tsynergy\n", "line 2: expected ids >= 0, x_label"),
    ("userID\titemID\tx_label\ttype\n1\t2\t1\tsynergistic\n", "line 2: expected"),
    ("userID\titemID\tx_label\ttype\n1\tb\t1\tsynergy\n", "line 2: userID, itemID and x_label"),
])
def test_read_ground_truth_rejects_malformed_files(tmp_path, content, message):
    (tmp_path / "ground_truth.tsv").write_text(content)
    with pytest.raises(DataError, match=re.escape(message)):
        read_ground_truth(tmp_path)


def test_conflicting_items_show_another_items_latents(tmp_path):
    spec = tiny(conflict_rate=0.25, feature_noise=0.0, num_items=80)
    data, clean = generate(spec), generate(tiny(feature_noise=0.0, num_items=80))
    c = data.conflicts
    assert len(c.items) == 20 and len(set(c.items.tolist())) == 20
    assert set(c.modality.tolist()) == {"text", "image"} and np.all(c.source != c.items)
    # preferences and the split do not depend on what the features show
    for field in ("users", "items", "labels"):
        assert np.array_equal(getattr(data, field), getattr(clean, field)), field
    other = {"text": "image", "image": "text"}
    checked = 0
    for item, modality, source in zip(c.items, c.modality, c.source):
        # the other modality and every clean row are the item's own
        assert np.array_equal(data.features[other[modality]][item],
                              clean.features[other[modality]][item])
        assert not np.allclose(data.features[modality][item], clean.features[modality][item])
        if source not in c.items[c.modality == modality]:
            assert np.allclose(data.features[modality][item], clean.features[modality][source])
            checked += 1
    assert checked >= 10
    conflicted = set(c.items.tolist())
    for m in ("text", "image"):
        rows = [i for i in range(80) if i not in conflicted]
        assert np.array_equal(data.features[m][rows], clean.features[m][rows])
    ensure_generated(spec, tmp_path, "syn.inter", FILES)
    lines = (tmp_path / "conflicts.tsv").read_text().splitlines()
    assert lines[0] == "itemID\tmodality\tsource_itemID"
    assert lines[1:] == [f"{i}\t{m}\t{s}" for i, m, s in zip(c.items, c.modality, c.source)]


def test_no_conflicts_by_default(tmp_path):
    assert len(generate(tiny()).conflicts.items) == 0
    ensure_generated(tiny(), tmp_path, "syn.inter", FILES)
    assert (tmp_path / "conflicts.tsv").read_text() == "itemID\tmodality\tsource_itemID\n"


def test_a_folder_another_worker_is_generating_is_waited_for_not_refused(tmp_path):
    # the workers of a suite or search reach the generator together: while one writes, the
    # folder holds its partial output and its lock; the others must wait, not take it for
    # user data (as they did before the lock: a DataError in CI)
    folder = tmp_path / "syn"
    writer = FileLock(folder / ".generator.lock")
    (folder / "syn.inter").write_text("half-written")
    errors: list[BaseException] = []

    def other_worker() -> None:
        try:
            ensure_generated(tiny(), folder, "syn.inter", FILES)
        except BaseException as error:  # handed to the test thread
            errors.append(error)

    thread = threading.Thread(target=other_worker)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive() and not errors  # waiting on the writer's lock
    writer.release()  # the writer died half-way: its output is redone, not trusted
    thread.join(60)
    assert not errors
    assert json.loads((folder / "generator.json").read_text())["num_users"] == TINY["num_users"]
    assert (folder / "syn.inter").read_text() != "half-written"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".generator.lock", "generator.json", "syn.inter", *FILES.values(),
         "ground_truth.tsv", "conflicts.tsv"])


@pytest.mark.parametrize("changes, message", [
    ({"regime": "product"}, "generator regime must be one of ('linear', 'synergy'), got "
                            "'product'"),
    ({"conflict_rate": 1.5}, "generator conflict_rate must lie in [0, 1], got 1.5"),
])
def test_spec_rejects_bad_testbed_settings(changes, message):
    with pytest.raises(DataError, match=re.escape(message)):
        tiny(**changes)


def test_parse_generator_overrides():
    assert parse_generator_overrides("") == {}
    assert parse_generator_overrides("gamma_s=2,regime=synergy, seed=4") == {
        "gamma_s": 2.0, "regime": "synergy", "seed": 4}
    with pytest.raises(ConfigError, match="unknown generator key 'gama_s'; valid keys: "
                                          "num_users, num_items"):
        parse_generator_overrides("gama_s=2")
    with pytest.raises(ConfigError, match="expected comma-separated key=value pairs, got "
                                          "'regime'"):
        parse_generator_overrides("gamma_s=2,regime")
    with pytest.raises(ConfigError, match="expected a value of type int"):
        parse_generator_overrides("num_users=many")
    # the folder tag depends on the values, not on their spelling or order
    assert (overrides_tag(parse_generator_overrides("gamma_s=2,seed=1"))
            == overrides_tag(parse_generator_overrides("seed=1,gamma_s=2.0")))
    assert (overrides_tag(parse_generator_overrides("gamma_s=2"))
            != overrides_tag(parse_generator_overrides("gamma_s=3")))


def run_cli(project, *args):
    return main(["--dataset", "tiny", f"cache_dir={project / 'cache'}", "threads=1",
                 "--epochs", "1", *args], root=project)


def test_generator_overrides_from_the_command_line(project, tmp_path):
    assert run_cli(project, "--out", str(tmp_path / "a"), "generator=gamma_s=2,regime=synergy") == 0
    tag = overrides_tag({"gamma_s": 2.0, "regime": "synergy"})
    folder = project / "datasets" / f"tiny-{tag}"
    stamp = json.loads((folder / "generator.json").read_text())
    assert stamp["regime"] == "synergy" and stamp["gamma_s"] == 2.0 and stamp["seed"] == 3
    assert not (project / "datasets" / "tiny").exists()  # the card's own folder is untouched
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["config"]["generator"] == "gamma_s=2,regime=synergy"
    # the variant is the card's settings with the overrides, nothing else
    card = yaml.safe_load((project / "datasets" / "tiny.yaml").read_text())["generator"]
    want = generate(SyntheticSpec(**{**card, "gamma_s": 2.0, "regime": "synergy"}))
    assert read_ground_truth(folder).types.tolist() == want.truth.types.tolist()
    assert run_cli(project, "--out", str(tmp_path / "b")) == 0
    assert (project / "datasets" / "tiny" / "generator.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["generator=gama_s=2"], "unknown generator key 'gama_s'"),
    (["generator=regime=product"], "generator regime must be one of"),
    (["--dataset", "lfm2k", "generator=gamma_s=2"], "dataset 'lfm2k' is not generated"),
])
def test_generator_override_errors(project, tmp_path, capsys, args, message):
    assert run_cli(project, "--out", str(tmp_path / "out"), *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
