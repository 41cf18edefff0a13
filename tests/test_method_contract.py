"""One contract, run against every registered post-training method (with its own recipe's knobs).

On the tiny bandit world of tests/bandit.py, whose optimum is known -- half the items always rated
5, half always 1, clicked equally often so that behaviour cloning is indifferent -- every method must move probability
mass toward the good items relative to π_ref, within a bounded number of steps, deterministically,
without touching π_ref.
"""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recsim_post.posttrain.loop import TrainConfig
from recsim_post.posttrain.recipe import METHODS, load_agent, needs_reward_model, post_train, pretrain
from recsim_post.presets import preset_dir
from recsim_post.seeding import SeedTree

from .bandit import N_ITEMS, draw_bandit, good_mass, table_reward_model


def recipe_for(method: str):
    """The method's preset recipe (the first agents/*.toml using it), shrunk to a tiny model."""
    for path in sorted(preset_dir("agents").glob("*.toml")):
        agent = load_agent(path)
        if agent.method.name == method and agent.model.kind == "sasrec" and agent.generate == "item":
            break
    else:
        raise AssertionError(f"no preset recipe uses method {method!r}")
    small = TrainConfig(epochs=6, batch_size=16, lr=3e-3)
    return dataclasses.replace(
        agent,
        model=dataclasses.replace(agent.model, dim=16, n_layers=1, n_heads=1, max_len=8, dropout=0.0),
        pretrain=dataclasses.replace(small, epochs=3),
        finetune=small,
    )


@pytest.fixture(scope="module")
def world():
    """The bandit's clicks (60 users, 12 each), π_ref from the bc recipe, the table reward ensemble
    and the histories to measure mass on."""
    bandit = draw_bandit(60, 12)
    ref = pretrain(bandit.clicks, N_ITEMS, recipe_for("bc"), SeedTree(0), progress=False)
    return bandit.clicks, ref, table_reward_model(5, 0.1, seed=0), bandit.histories


ITEM_METHODS = sorted(m for m in METHODS if not getattr(METHODS[m], "TOKEN_ONLY", False))
"""The methods with an item-level version (GFlowGR's contract runs in tests/test_token_policy.py)."""


@pytest.mark.parametrize("method", ITEM_METHODS)
def test_method_contract(method, world):
    clicks, ref, rm, histories = world
    module = METHODS[method]
    assert module.CONFIG().name == method and callable(module.needs_reward_model)
    agent = recipe_for(method)
    before = {k: v.clone() for k, v in ref.model.state_dict().items()}
    rm_arg = rm if needs_reward_model(agent) else None
    a = post_train(ref, clicks, N_ITEMS, agent, SeedTree(3), progress=False, reward_model=rm_arg)
    b = post_train(ref, clicks, N_ITEMS, agent, SeedTree(3), progress=False, reward_model=rm_arg)
    # π_ref untouched; the copy trained; the same seed gives the same policy
    assert all(torch.equal(before[k], v) for k, v in ref.model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in a.model.state_dict().items())
    hist = np.random.default_rng(2).integers(0, N_ITEMS, (5, 8))
    np.testing.assert_array_equal(a.logits(hist), b.logits(hist))
    # mass moves toward the items with the higher reward -- except for BC, the control, which
    # imitates clicks that are spread evenly and so stays indifferent
    m_ref, m_new = good_mass(ref, histories), good_mass(a, histories)
    assert 0.3 < m_ref < 0.7, f"π_ref should be near-indifferent, got {m_ref:.3f}"
    if method == "bc":
        assert abs(m_new - m_ref) < 0.1, f"bc moved mass {m_ref:.3f} -> {m_new:.3f} without rewards"
    else:
        assert m_new > m_ref + 0.05, f"{method}: mass on good items {m_ref:.3f} -> {m_new:.3f}"
    assert a.history and all(np.isfinite(r["loss"]) for r in a.history)


# ---------------------------------------------------------------- the objective, stated

OBJECTIVES: dict[str, tuple[str, ...]] = {
    "bc": ("L_BC", "log π(y_t | x_t)"),
    "linear-rsft": ("Σ_t w_t log π(y_t | x_t)", "w_t = r_t"),
    "exp-rsft": ("exp(r_t/λ) log π(y_t | x_t)", "exp((r_t − r_max)/λ)", "Z(x) = Σ_y π_ref(y|x) exp(R̂(x, y)/λ)"),
    "asft": ("A_t = r_t − V̂(x_t)", "min(exp(A_t / β), w_max)", "w_t log π(y_t | x_t)"),
    "dpo": ("L_DPO", "log σ(β · h)", "log π(y_w|x) − log π_ref(y_w|x)", "log π(y_l|x) − log π_ref(y_l|x)"),
    "ipo": ("L_IPO", "(h − 1/(2τ))²", "log π(y_w|x) − log π_ref(y_w|x)"),
    "cql": ("L_CQL", "α (logsumexp_a Q(x_t, a) − Q(x_t, y_t))", "½ (Q(x_t, y_t) − r_t)²"),
    "ppo": ("min(ρ A, clip(ρ, 1 − ε, 1 + ε) A)", "β_KL · E_x[ KL(π_θ(·|x) ‖ π_ref(·|x)) ]", "ρ = π_θ(y|x) / π_old(y|x)"),
    "grpo": ("min(ρ_i Â_i, clip(ρ_i, 1 − ε, 1 + ε) Â_i)", "β · D_KL", "ρ_i = π_θ(y_i|x) / π_old(y_i|x)"),
    "gflowgr": ("L = L_SFT + λ · L_GFN", "log Z(x) + Σ_l log P_F(c_l(y) | x, c_<l) − β log R(x, y)",
                "log F(s_{l−1}) + log P_F(c_l | x, c_<l) − log F(s_l)", "log F(s_{L'}) := β log R(x, y)"),
}
"""Per method, the terms of its loss that its module docstring must state (in a literal block that
defines L): the loss itself, its weights or margins, and the symbols of its knobs."""

KNOB_SYMBOLS = {"beta": "β", "lam": "λ", "tau": "τ", "alpha": "α", "w_max": "w_max", "r_max": "r_max",
                "clip_eps": "ε", "kl_coef": "β", "gfn_weight": "λ", "reward_exponent": "β"}
"""The symbol a config knob has in the formulas: a method with the knob must write it in its loss."""

_DEFINES_LOSS = re.compile(r'^\s*(?:normalize = "[\w-]+":\s*)?L(?:_[A-Z]+)?\s*=', re.M)


def stated_objective(doc: str | None) -> str:
    """The literal blocks of ``doc`` that define a loss ``L = ...``, each with the line ending in
    ``::`` that introduces it (it often says what the sum runs over), joined."""
    lines = (doc or "").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::"):
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith("    ")):
                j += 1
            blocks.append("\n".join(lines[i:j]))
            i = j
        else:
            i += 1
    return "\n".join(b for b in blocks if _DEFINES_LOSS.search(b))


def check_objective(method: str, module) -> None:  # noqa: ANN001 - a method module
    """The module docstring states the method's objective: a formula L = ... over the policy
    (π or its Q-values), holding the method's own terms and the symbol of each of its knobs."""
    objective = stated_objective(module.__doc__)
    assert objective, f"{method}: no literal block defines the loss (a line 'L = ...' after '::')"
    assert "π" in objective or "Q(" in objective, f"{method}: the stated loss never mentions the policy"
    missing = [term for term in OBJECTIVES[method] if term not in objective]
    assert not missing, f"{method}: the stated objective lacks {missing}"
    knobs = [f.name for f in dataclasses.fields(module.CONFIG) if f.name in KNOB_SYMBOLS]
    unwritten = [k for k in knobs if KNOB_SYMBOLS[k] not in objective]
    assert not unwritten, f"{method}: knobs {unwritten} do not appear in the stated objective"


def test_every_method_has_its_objective_listed():
    assert set(OBJECTIVES) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_docstring_states_its_objective(method):
    check_objective(method, METHODS[method])


def test_objective_check_refuses_a_docstring_without_the_formula():
    """Negative controls: prose without a formula, another method's formula, DPO's formula without
    its β, a bare "L = ..." sentence, no docstring, IPO's target margin without its τ. The former
    check ("L" or "=" anywhere in the docstring) accepted all but the first and the fifth."""
    dpo = METHODS["dpo"]
    first_paragraph = dpo.__doc__.split("\n\n")[0]  # "DPO: ... pairs mined by a reward-model ensemble."
    no_beta = dpo.__doc__.replace("log σ(β · h)", "log σ(h)")
    for doc in (first_paragraph, METHODS["bc"].__doc__, no_beta, "L = the loss of the method", None):
        with pytest.raises(AssertionError):
            check_objective("dpo", SimpleNamespace(__doc__=doc, CONFIG=dpo.CONFIG))
    ipo = METHODS["ipo"]
    relabelled = ipo.__doc__.replace("1/(2τ)", "1/(2β)")  # IPO's target margin without its knob τ
    with pytest.raises(AssertionError, match="lacks"):
        check_objective("ipo", SimpleNamespace(__doc__=relabelled, CONFIG=ipo.CONFIG))
