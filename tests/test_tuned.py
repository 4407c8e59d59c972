"""The equal-budget suite ``tuned`` (brmrs_pyg.experiments.tuned): variant entries, the space
each search gets, the table, resuming, the reference chosen on valid, the cost, and the
recall per ground-truth type on synthetic_tiny."""
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from brmrs_pyg import pipeline
from brmrs_pyg.cli import main
from brmrs_pyg.config import ConfigError
from brmrs_pyg.experiments import tuned
from brmrs_pyg.experiments.grid import Range, card_grid, grid_points
from brmrs_pyg.experiments.runner import RunRecord, Variant
from brmrs_pyg.nn.fusion import FUSIONS
from brmrs_pyg.recommenders import MODELS

from test_experiments import fake_results, make_runner, run_suite
from test_search import runs  # noqa: F401  (the fixture counting pipeline.run calls)


# --- variants ------------------------------------------------------------------------------

def test_variant_entries_parse_and_bad_ones_are_refused(project, tmp_path):
    v = tuned.parse_entry("brmrs:fusion=concat:theta=0.5")
    assert v == Variant("brmrs", (("fusion", "concat"), ("theta", "0.5")),
                        "brmrs:fusion=concat:theta=0.5")
    assert tuned.parse_entry("lightgcn") == Variant("lightgcn", (), "lightgcn")
    for bad in ("brmrs:fusion", ":theta=1", "brmrs:=x", "a=b", "brmrs:theta=1:theta=2"):
        with pytest.raises(ConfigError, match="variant"):
            tuned.parse_entry(bad)
    with pytest.raises(ConfigError, match="two variants with the label 'concat'"):
        tuned.parse_variants(["concat", "lightgcn", "concat"])
    with pytest.raises(ConfigError, match="folder name"):  # ':' and '_' both become '_'
        tuned.parse_variants(["brmrs:theta=1:hard_k=2", "brmrs:theta=1_hard_k=2"])
    runner = make_runner(project, tmp_path)
    checked = tuned.check_variants(runner, tuned.parse_variants(["Light-GCN", "brmrs:theta=0.5"]),
                                   1)
    assert [c.model for c in checked] == ["lightgcn", "brmrs"]
    assert checked[0].name == "Light-GCN"  # the label stays the entry text
    bad_ones = {"nosuchmodel": "unknown model 'nosuchmodel'",
                "lightgcn:no_such_key=1": "no_such_key",
                "lightgcn:num_layers=two": "num_layers",
                "lightgcn:seed=3": "set by the suite's flags"}
    for entry, match in bad_ones.items():
        with pytest.raises(ConfigError, match=match):
            tuned.check_variants(runner, [tuned.parse_entry(entry)], 1)


def test_the_default_variants_are_every_model_fusion_and_plugin():
    entries = tuned.default_entries()
    others = [m for m in MODELS.names() if m != "brmrs"]
    assert entries[:len(others)] == others
    # brmrs's grid tunes the fusion: it appears once per fusion, never as a plain search
    assert [e for e in entries if e.startswith("brmrs")] == [
        f"brmrs:fusion={f}" for f in FUSIONS.names()]
    assert {"brmrs:fusion=mean", "brmrs:fusion=gate"} <= set(entries)
    for model in MODELS.names():
        assert (f"{model}:plugin=brmrs" in entries) == MODELS.get(model).supports_plugin
    assert "dragon:plugin=brmrs" in entries and "lightgcn:plugin=brmrs" not in entries
    assert len(entries) == len(set(entries))


def test_the_space_is_the_card_grid_minus_fixed_and_common_keys(project, tmp_path):
    runner = make_runner(project, tmp_path, theta="0.2")
    runner.settings = dataclasses.replace(runner.settings,
                                          model_overrides={"brmrs": {"pool_size": "5"}})
    variant = tuned.parse_entry("brmrs:fusion=concat")
    grid = card_grid("brmrs", runner.settings.paths)
    assert {"fusion", "theta", "pool_size", "num_layers"} <= set(grid)
    space = tuned.space_of(variant, runner)
    assert space == {k: d for k, d in grid.items() if k not in ("fusion", "theta", "pool_size")}
    ctx = tuned.TunedContext(runner, (1, 2), models=("brmrs:fusion=concat",), trials=4,
                             pruner="none")
    settings = tuned.search_settings(ctx, variant)
    # the search of `run.py search --space card ... fusion=concat theta=0.2 pool_size=5`
    assert settings.space == space and settings.trials == 4 and settings.seeds == (1, 2)
    assert (settings.sampler, settings.pruner) == ("tpe", "none")
    assert settings.out == tmp_path / "suite" / "brmrs_fusion=concat"
    assert settings.runner.settings.out == settings.out / "best"
    overrides = settings.runner.settings.overrides
    assert (overrides["fusion"], overrides["theta"], overrides["pool_size"]) == (
        "concat", "0.2", "5")
    assert settings.config({}, 1).model.fusion == "concat"


def test_a_grid_no_larger_than_the_budget_is_searched_whole(project, tmp_path):
    # lightgcn's card grid has 3 x 3 points: with 20 trials TPE would repeat points (each
    # repeat trains the same run again), so the grid sampler tries each point once
    runner = make_runner(project, tmp_path)
    grid = card_grid("lightgcn", runner.settings.paths)
    size = len(grid_points(grid))
    assert size == 9
    for trials, expected in ((20, ("grid", 9)), (9, ("grid", 9)), (8, ("tpe", 8))):
        ctx = tuned.TunedContext(runner, (1,), models=("lightgcn",), trials=trials,
                                 pruner="none")
        settings = tuned.search_settings(ctx, tuned.parse_entry("lightgcn"))
        assert (settings.sampler, settings.trials) == expected
    # a space with a range cannot be enumerated: TPE with the budget
    assert tuned.sampler_and_trials({"a": [1, 2], "b": Range(0.0, 1.0)}, 20) == ("tpe", 20)
    assert tuned.sampler_and_trials({}, 20) == ("tpe", 20)


# --- the suite end to end ------------------------------------------------------------------

VARIANTS = ("lightgcn", "concat", "brmrs:fusion=gate", "concat:plugin=brmrs",
            "bpr:reg_weight=0.01")


def run_tuned(project, out):
    return main(["suite", "tuned", "--dataset", "synthetic_tiny", "--out", str(out),
                 "--models", ",".join(VARIANTS), "--trials", "2", "--pruner", "none",
                 "--seeds", "1", "2", "--epochs", "2", "threads=1", "batch_size=128",
                 f"cache_dir={project / 'cache'}"], root=project)


def trial_folders(out):
    return {p: p.stat().st_mtime_ns for p in out.glob("*/trials/*/results.json")}


@pytest.mark.needs_extra("search", "plots")
def test_tuned_suite_end_to_end_and_a_rerun_trains_nothing(project, tmp_path, runs):
    out = tmp_path / "suite"
    assert run_tuned(project, out) == 0
    summary = json.loads((out / "suite.json").read_text())
    table = list(csv.DictReader((out / "table.csv").open()))
    assert [r["label"] for r in table] == list(VARIANTS)  # one row per variant, in order
    searched = [v for v in VARIANTS if v != "bpr:reg_weight=0.01"]
    # every search had the same budget: 2 trials, then the best point on seed 2
    assert len(runs) == 3 * len(searched) + 2
    for row in table:
        search = summary["searches"][row["label"]]
        assert row["trials"] == ("2" if row["label"] in searched else "0")
        assert row["pruned"] == "0" and row["n"] == "2"
        assert row["point"] == ((Path(search["folder"]) / "best.txt").read_text().strip()
                                if row["label"] in searched else "(nothing tuned)")
    assert summary["searches"]["brmrs:fusion=gate"]["space"][0] == "num_layers"
    assert "fusion" not in summary["searches"]["brmrs:fusion=gate"]["space"]
    assert summary["searches"]["bpr:reg_weight=0.01"]["space"] == []
    assert "Nothing left to tune, the fixed point on every seed: bpr:reg_weight=0.01" in \
        (out / "table.md").read_text()
    check_means(out, summary, table)
    check_cost(out, summary, table)
    check_types(out, summary, table)
    check_significance(summary, out)
    assert (out / "test_metrics.png").read_bytes()[:4] == b"\x89PNG"

    # the same command again: no trial and no run trains, the same table
    before, md = trial_folders(out), (out / "table.md").read_text()
    (out / "table.md").unlink()
    runs[:] = []
    assert run_tuned(project, out) == 0
    assert runs == [] and trial_folders(out) == before and len(before) == 2 * len(searched)
    assert (out / "table.md").read_text() == md


def check_means(out, summary, table):
    # a row's test and valid means are those of its best point's runs
    runs_of = [r for r in summary["runs"] if r["label"] == "concat"]
    results = [json.loads((Path(r["folder"]) / "results.json").read_text()) for r in runs_of]
    assert [r["seed"] for r in runs_of] == [1, 2]
    row = next(r for r in table if r["label"] == "concat")
    for split, column in (("test", "recall@20_mean"), ("valid", "valid_recall@20_mean")):
        assert float(row[column]) == pytest.approx(
            np.mean([res[split]["recall@20"] for res in results]), abs=1e-6)


def check_cost(out, summary, table):
    # the cost is the sum over trials of wall seconds x threads, in hours
    for label in ("lightgcn", "brmrs:fusion=gate"):
        folder = Path(summary["searches"][label]["folder"])
        assert folder.parent == out
        trials = json.loads((folder / "search.json").read_text())["trials"]
        threads = [json.loads((folder / "trials" / str(t["number"]) / "results.json")
                              .read_text())["timings"]["threads"] for t in trials]
        expected = sum(t["seconds"] * h for t, h in zip(trials, threads)) / 3600
        assert threads == [1, 1] and expected > 0
        assert summary["searches"][label]["cpu_core_hours"] == pytest.approx(expected)
        row = next(r for r in table if r["label"] == label)
        assert float(row["cpu_core_hours"]) == pytest.approx(expected, rel=1e-5)
    assert summary["searches"]["bpr:reg_weight=0.01"]["cpu_core_hours"] == 0.0
    assert "CPU-core hours (trial wall time x threads)" in (out / "table.md").read_text()


def check_types(out, summary, table):
    # recall per ground-truth type for every variant, one-branch models included
    runs_of = [r for r in summary["runs"] if r["label"] == "lightgcn"]
    analyses = [json.loads((Path(r["folder"]) / "analysis.json").read_text())
                for r in runs_of]
    by_type = [a["ground_truth"]["recall@20"]["fused"] for a in analyses]
    assert {"synergy", "redundant", "text_unique", "image_unique"} <= set(by_type[0])
    for row in table:
        assert {f"recall@20:{t}_mean" for t in by_type[0]} <= set(row)
        assert row["recall@20:synergy_mean"] != ""
    row = next(r for r in table if r["label"] == "lightgcn")
    mean = np.mean([b["synergy"] for b in by_type])
    assert float(row["recall@20:synergy_mean"]) == pytest.approx(mean, abs=1e-6)
    assert summary["recall_by_type"]["lightgcn"]["synergy"]["mean"] == pytest.approx(mean)


def check_significance(summary, out):
    valid = {label: s["valid"]["recall@20"]["mean"] for label, s in summary["summary"].items()}
    ref = max(("lightgcn", "concat", "bpr:reg_weight=0.01"), key=valid.get)
    assert summary["reference"] == {"label": ref, "chosen_on": "valid",
                                    "mean_valid": pytest.approx(valid[ref])}
    assert set(summary["significance"]) == {f"brmrs:fusion=gate vs {ref}",
                                            "concat:plugin=brmrs vs concat"}
    md = (out / "table.md").read_text()
    assert f"Reference of the brmrs paired tests: {ref}" in md and "chosen on valid" in md
    assert md.count("Paired tests: each test user's metric") == 1


# --- the reference and the options ---------------------------------------------------------

@pytest.mark.needs_extra("search", "plots")
def test_the_reference_is_chosen_on_valid_never_on_test(project, tmp_path, monkeypatch):
    # lightgcn is the best other on valid, bpr on test; the plug-in variant is best on both
    # but is never the reference
    scores = {"lightgcn": (0.5, 0.1), "bpr": (0.3, 0.9), "concat": (0.4, 0.2),
              "concat:plugin=brmrs": (0.9, 0.9), "brmrs": (0.6, 0.6),
              "brmrs:fusion=gate": (0.55, 0.5)}

    def fake_tune(ctx, variant):
        records = [RunRecord(variant, s, tmp_path / f"{variant.name}-{s}",
                             fake_results(*scores[variant.name])) for s in ctx.seeds]
        return tuned.Tuned(variant, records, tuned.SearchSummary("f", ["k"], {"k": 1}, 2, 0, 0,
                                                                 0.5))

    compared = []
    monkeypatch.setattr(tuned, "tune", fake_tune)
    monkeypatch.setattr("brmrs_pyg.experiments.suites.compare_records",
                        lambda a, b, metrics: compared.append((a[0].variant.name,
                                                               b[0].variant.name)) or [])
    ctx = tuned.TunedContext(make_runner(project, tmp_path), (1, 2), models=tuple(scores))
    summary = tuned.tuned_suite(ctx)
    assert compared == [("brmrs", "lightgcn"), ("brmrs:fusion=gate", "lightgcn"),
                        ("concat:plugin=brmrs", "concat")]
    assert summary["reference"]["label"] == "lightgcn"
    assert "Reference of the brmrs paired tests: lightgcn" in \
        (tmp_path / "suite" / "table.md").read_text()


def test_other_suites_refuse_the_tuned_options(project, tmp_path, capsys):
    assert run_suite(project, tmp_path, "ablation", "--trials", "3") == 2
    assert "--trials and --pruner apply to the tuned suite only" in capsys.readouterr().err
    assert run_suite(project, tmp_path, "main", "--pruner", "none") == 2
    assert "--trials and --pruner apply to the tuned suite only" in capsys.readouterr().err
    assert run_suite(project, tmp_path, "tuned", "--grid", "card") == 2
    assert "--grid applies to the main suite only" in capsys.readouterr().err
    assert not (tmp_path / "suite").exists()


def test_the_cost_reads_the_trials_of_the_search_folder_even_after_a_move(tmp_path):
    # search.json rows keep the folder a trial ran in; the search may have moved since
    for number, threads in ((0, 2), (1, 1)):
        trial = tmp_path / "moved" / "trials" / str(number)
        trial.mkdir(parents=True)
        (trial / "results.json").write_text(json.dumps({"timings": {"threads": threads}}))
    rows = [{"number": 0, "seconds": 1800.0, "folder": "/gone/trials/0"},
            {"number": 1, "seconds": 3600.0, "folder": "/gone/trials/1"},
            {"number": 2, "seconds": 999.0, "folder": "/gone/trials/2"}]  # no results: not run
    assert tuned.cpu_core_hours(rows, tmp_path / "moved") == pytest.approx(2.0)


@pytest.mark.needs_extra("plots")  # without matplotlib the command stops earlier, on that
def test_a_bad_variant_is_refused_before_anything_runs(project, tmp_path, capsys, runs):
    assert run_suite(project, tmp_path, "tuned", "--models", "lightgcn,brmrs:fusion") == 2
    assert "variant 'brmrs:fusion': expected model" in capsys.readouterr().err
    assert run_suite(project, tmp_path, "tuned", "--models", "lightgcn:nokey=1") == 2
    assert "nokey" in capsys.readouterr().err
    assert runs == []
    assert not (tmp_path / "suite").exists()
