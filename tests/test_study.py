"""Studies (experiments/study.py): parsing with one-line errors, hand-computed statistics, a run
that resumes after its process is killed, local and Ray giving the same table, and the shipped
studies at their small size."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from recsim_post import cli
from recsim_post.config import dumps_toml
from recsim_post.errors import ConfigError
from recsim_post.experiments.study import (
    family, load_study, run_study, selection_regret, study_agents, study_cells, summarise, t_interval,
)
from recsim_post.presets import preset_dir, preset_names

from .conftest import require

TINY_SET = {"catalog.n_items": 40, "catalog.n_genres": 4, "catalog.latent_dim": 8, "users.n_users": 40,
            "simulation.n_rounds": 8, "logging.slate_size": 5}
TINY_AGENT = {"model.dim": 8, "model.n_layers": 1, "model.n_heads": 1, "model.max_len": 8,
              "pretrain.epochs": 1, "finetune.epochs": 1, "reward_model.epochs": 1, "reward_model.members": 2}


def write_study(path: Path, **extra) -> Path:
    data = {"name": "tiny", "description": "a tiny study", "scenarios": ["quickstart"], "seeds": [0, 1],
            "agents": ["bc"], "reference": "bc", "eval_users": 40, "set": TINY_SET, "agent_set": TINY_AGENT,
            "grid": {"feedback.noise_std": [0.0, 1.0]},
            "variants": [{"agent": "exp-rsft", "method.lam": [0.3, 100.0]}]}
    data.update(extra)
    path.write_text(dumps_toml(data), encoding="utf-8")
    return path


def test_cells_and_recipes_of_a_study(tmp_path):
    cfg = load_study(write_study(tmp_path / "s.toml"))
    cells = study_cells(cfg)
    assert [c.name for c in cells] == [
        "cells/quickstart/feedback.noise_std=0.0/seed-0", "cells/quickstart/feedback.noise_std=0.0/seed-1",
        "cells/quickstart/feedback.noise_std=1.0/seed-0", "cells/quickstart/feedback.noise_std=1.0/seed-1"]
    assert cells[2].scenario.feedback.noise_std == 1.0 and cells[2].scenario.catalog.n_items == 40
    agents = study_agents(cfg)
    assert [a.name for a in agents] == ["bc", "exp-rsft[lam=0.3]", "exp-rsft[lam=100]"]
    assert agents[1].method.lam == 0.3 and agents[2].model.dim == 8 and agents[0].pretrain.epochs == 1


@pytest.mark.parametrize("extra, needle", [
    ({"nmae": "x"}, "unknown key 'nmae'; allowed keys:"),
    ({"kind": "magic"}, "kind = 'magic' is not allowed: must be one of story, tilt-bounds"),
    ({"seeds": [0, 0]}, "repeats a seed"),
    ({"seeds": [-1]}, "is not a seed"),
    ({"grid": {"feedback.noise_std": []}}, "has no values"),
    ({"reference": "dpo"}, "reference = 'dpo' is not among the study's recipes"),
    ({"variants": [{"agent": "exp-rsft"}]}, "sets no knob"),
    ({"variants": [{"agent": "exp-rsft", "method.lamb": [1.0]}]}, "unknown key 'method.lamb'"),
    ({"grid": {"feedback.noise_std": [-1.0]}}, "out of range"),
    ({"small": {"sedes": [0]}}, "unknown key 'small.sedes'"),
    ({"criteria": ["ndcg@10", "ope_wis"]}, "'ope_wis' is not an OPE criterion; allowed: ope_dr, ope_ips, ope_snips"),
    ({"criteria": ["ope_dr"], "ope_reward": "true"}, "ope_reward = 'true' is not allowed: must be a logged signal"),
    ({"ideal_tilt": "yes"}, "ideal_tilt = 'yes' must be true or false"),
])
def test_bad_studies_fail_in_one_line(tmp_path, extra, needle):
    path = write_study(tmp_path / "s.toml", **extra)
    with pytest.raises(ConfigError, match=None) as err:
        cfg = load_study(path)
        study_cells(cfg)
        study_agents(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_study_exits_2_and_writes_nothing(tmp_path, capsys):
    path = write_study(tmp_path / "s.toml", reference="ppo")
    out = tmp_path / "out"
    assert cli.main(["study", str(path), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "reference = 'ppo'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert cli.main(["study", "no-such-study", "--out", str(out), "-q"]) == 2
    assert "unknown study 'no-such-study'" in capsys.readouterr().err


def test_t_interval_by_hand():
    m, h, n = t_interval([1.0, 2.0, 3.0])
    # s = 1, t_{0.975, 2} = 4.303: half-width 4.303 / √3
    assert (m, n) == (2.0, 3) and h == pytest.approx(4.303 / math.sqrt(3.0))
    assert math.isnan(t_interval([5.0])[1]) and t_interval([5.0, float("nan")])[:1] == (5.0,)


def _long() -> pd.DataFrame:
    rows = []
    # seed 0: truth prefers a, ndcg prefers b; seed 1: both prefer a
    for seed, (va, vb, na, nb) in enumerate([(0.6, 0.4, 0.1, 0.2), (0.7, 0.5, 0.3, 0.2)]):
        rows += [
            {"scenario": "w", "seed": seed, "method": "bc", "kind": "trained", "true_value_norm": 0.5, "ndcg@10": 0.0},
            {"scenario": "w", "seed": seed, "method": "f[k=a]", "kind": "trained", "true_value_norm": va, "ndcg@10": na},
            {"scenario": "w", "seed": seed, "method": "f[k=b]", "kind": "trained", "true_value_norm": vb, "ndcg@10": nb},
        ]
    return pd.DataFrame(rows)


def test_family_is_the_recipe_with_every_knob_but_the_first():
    assert family("bc") == "bc" and family("exp-rsft[lam=0.3]") == "exp-rsft"
    assert family("exp-rsft[lam=0.3,normalize=user]") == "exp-rsft[normalize=user]"
    assert family("a[x=1,y=b,z=2]") == "a[y=b,z=2]"


def test_selection_regret_and_paired_summary_by_hand():
    long = _long()
    reg = selection_regret(long, ["scenario"], ["ndcg@10"])
    assert len(reg) == 1 and reg.loc[0, "family"] == "f"
    # regrets 0.2 (seed 0 picks b) and 0 (seed 1 picks a): mean 0.1, s = √0.02, t = 12.706
    assert reg.loc[0, "regret"] == pytest.approx(0.1)
    assert reg.loc[0, "regret_ci"] == pytest.approx(12.706 * math.sqrt(0.02) / math.sqrt(2))
    assert reg.loc[0, "picked"] == "f[k=a], f[k=b]"
    s = summarise(long, ["true_value_norm"], ["scenario"], "bc").set_index("method")
    assert s.loc["f[k=a]", "true_value_norm"] == pytest.approx(0.65)
    assert s.loc["f[k=a]", "d_true_value_norm"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2
    # differences -0.1 and 0.0: s = 0.1/√2, half-width 12.706 · s / √2
    assert s.loc["f[k=b]", "d_true_value_norm_ci"] == pytest.approx(12.706 * 0.05)
    assert math.isnan(s.loc["bc", "d_true_value_norm"])  # the reference has no difference to itself


@pytest.mark.slow
def test_study_runs_reports_and_resumes_after_kill_9(tmp_path, monkeypatch):
    """A study process killed with SIGKILL after its first cell loses no finished cell: the rerun
    recomputes only the rest, and the table equals an uninterrupted run's."""
    path = write_study(tmp_path / "s.toml", grid={"feedback.noise_std": [0.5]}, agents=["bc", "ipo"],
                       variants=[{"agent": "exp-rsft", "method.lam": [0.3]}], criteria=["ndcg@10", "ope_snips", "ope_dr"], ideal_tilt=True)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "recsim_post", "study", str(path), "--out", str(out), "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "cells/quickstart/feedback.noise_std=0.5/seed-0"
    deadline = time.time() + 600
    while not (first / "results.parquet").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (first / "results.parquet").exists()
    stamp = (first / "results.parquet").stat().st_mtime_ns
    assert cli.main(["study", str(path), "--out", str(out), "-q"]) == 0
    assert (first / "results.parquet").stat().st_mtime_ns == stamp  # kept, not recomputed
    resumed = pd.read_parquet(out / "results.parquet")
    fresh = tmp_path / "fresh"
    long = run_study(load_study(path), fresh)
    pd.testing.assert_frame_equal(resumed, long)
    # study 6's OPE criteria: every trained row estimated off-policy, the references not
    trained = resumed["kind"] == "trained"
    assert resumed.loc[trained, ["ope_ips", "ope_snips", "ope_dr"]].notna().all().all()
    assert resumed.loc[~trained, "ope_dr"].isna().all()
    # study 2's split: the exp-RSFT row against its ideal tilt, the others without one
    ex = resumed[resumed["method"] == "exp-rsft[lam=0.3]"].iloc[0]
    assert 0.0 <= ex["tilt_norm"] <= 1.0 and ex["noise_cost"] == pytest.approx(ex["tilt_norm"] - ex["tilt_noisy_norm"])
    assert ex["fit_gap"] == pytest.approx(ex["tilt_noisy_norm"] - ex["true_value_norm"])
    assert resumed.loc[resumed["method"] == "bc", "tilt_norm"].isna().all()
    assert "## Coverage and noise" in (out / "report.md").read_text()
    report = (out / "report.md").read_text()
    assert "Paired difference to **bc**" in report and "exp-rsft[lam=0.3]" in report
    for name in ("results.csv", "summary.csv", "values.png", "frontier.png", "reward_models.csv"):
        assert (out / name).is_file()
    # study 4's table: IPO fitted a reward model in each cell, reported beside the user / item means
    rms = pd.read_csv(out / "reward_models.csv")
    assert set(rms["seed"]) == {0, 1} and {"reward-model ensemble", "user mean", "item mean"} <= set(rms["model"])
    assert "## Reward models against user and item means" in report
    # --report-only: after a code change (a report step fixed, say) the finished cells are kept and
    # reported again; a plain rerun refuses to mix them with new ones, and nothing is recomputed
    from recsim_post import outputs

    monkeypatch.setattr(outputs, "code_fingerprint", lambda: "f" * 64)  # "another code version"
    with pytest.raises(outputs.OutputError, match="another code version"):
        run_study(load_study(path), out)
    (out / "report.md").unlink()
    again = run_study(load_study(path), out, report_only=True)
    pd.testing.assert_frame_equal(again, long)
    assert (first / "results.parquet").stat().st_mtime_ns == stamp
    assert "computed by another code version" in (out / "report.md").read_text()
    other = write_study(tmp_path / "other.toml", grid={"feedback.noise_std": [0.5]}, agents=["bc", "ipo"],
                        variants=[{"agent": "exp-rsft", "method.lam": [0.3]}], eval_users=30)
    with pytest.raises(outputs.OutputError, match="other settings"):  # settings must match even so
        run_study(load_study(other), out, report_only=True)
    with pytest.raises(ConfigError, match="not finished"):
        import shutil

        shutil.rmtree(first)
        run_study(load_study(path), out, report_only=True)
    with pytest.raises(ConfigError, match="holds no finished cells"):
        run_study(load_study(path), tmp_path / "nowhere", report_only=True)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_ray_and_a_process_pool_give_the_local_table(tmp_path):
    require("ray")
    # columns without kl_ref (as studies/reward-models.toml): no frontier to draw, and the report
    # is written all the same (the frontier once failed the whole report on such a study)
    path = write_study(tmp_path / "s.toml", grid={"feedback.noise_std": [0.5]}, variants=[],
                       columns=["true_value_norm", "matched_norm", "rm_value"])
    cfg = load_study(path)
    local = run_study(cfg, tmp_path / "local")
    assert (tmp_path / "local" / "report.md").is_file() and not (tmp_path / "local" / "frontier.png").exists()
    remote = run_study(cfg, tmp_path / "ray", backend="ray")
    pool = run_study(cfg, tmp_path / "pool", workers=2)
    pd.testing.assert_frame_equal(local, remote)
    pd.testing.assert_frame_equal(local, pool)


def test_reward_model_summary_by_hand():
    from recsim_post.experiments.study import summarise_reward_models

    rows = []
    for seed, (ens, user, item) in enumerate([(0.7, 0.6, 0.3), (0.5, 0.55, 0.2)]):
        for model, v in (("reward-model ensemble", ens), ("user mean", user), ("item mean", item),
                         ("user + item mean", user - 0.01)):
            rows.append({"scenario": "w", "seed": seed, "model": model, "spearman_true": v})
    out = summarise_reward_models(pd.DataFrame(rows), ["scenario"]).set_index("model")
    assert out.loc["reward-model ensemble", "spearman_true"] == pytest.approx(0.6)
    # margins over the best mean per cell: 0.7 - 0.6 and 0.5 - 0.55
    assert out.loc["reward-model ensemble", "margin_spearman_true"] == pytest.approx(0.025)
    assert math.isnan(out.loc["user mean", "margin_spearman_true"])


def test_shipped_studies_parse_at_both_sizes():
    names = preset_names("studies")
    assert {"lambda", "theory-bounds", "dropz", "asft-vs-rlhf", "model-selection", "reward-models"} <= set(names)
    for name in names:
        for small in (False, True):
            cfg = load_study(name, small=small)
            if cfg.kind == "story":
                assert study_cells(cfg) and study_agents(cfg)
    assert (preset_dir("studies") / "lambda.toml").is_file()


@pytest.mark.slow
def test_theory_bounds_study_small_holds_its_bounds(tmp_path):
    long = run_study(load_study("theory-bounds", small=True), tmp_path / "t")
    assert (long["viol1"] <= long["delta"]).all() and (long["viol2"] <= long["delta"]).all()
    assert "within δ everywhere" in (tmp_path / "t" / "report.md").read_text()


def test_equal_kl_interpolates_inside_each_family_only():
    from recsim_post.experiments.study import equal_kl

    summary = pd.DataFrame({
        "scenario": ["w"] * 3, "method": ["f[a]", "f[b]", "g"], "kind": ["trained"] * 3, "family": ["f", "f", "g"],
        "kl_ref": [0.01, 1.0, 0.5], "true_value_norm": [0.2, 0.6, 0.9]})
    out = equal_kl(summary, ["scenario"], targets=(0.1, 3.0)).set_index("family")
    # log 0.1 is halfway between log 0.01 and log 1: 0.4; 3.0 is outside f's range; g has one point
    assert out.loc["f", "KL=0.1"] == pytest.approx(0.4) and math.isnan(out.loc["f", "KL=3"])
    assert "g" not in out.index
