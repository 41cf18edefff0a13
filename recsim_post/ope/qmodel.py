"""A personalised reward model q^(x, a) for DM, DR and Switch-DR, cross-fitted by user folds.

The item-mean q^ of qtable.py ignores the user. Because the logger shows items mostly to users
who like them, the mean reward of an item *where it was shown* over-states what the same item is
worth to a random user, and DM (and Switch-DR, which falls back on DM where weights are large)
inherits that selection bias. This q^ reads the user's public click history::

    q^(h, a) = alpha + b_a + g . s(h) + (W s(h) + c) . (e_a + P phi_a)

* s(h): the state of a small SASRec (models/sasrec.py) after the click history h (the last
  ``max_len`` clicks before the round, the same history the target policies read);
* e_a: that model's tied item embedding; b_a an item bias;
* phi_a: the PUBLIC item features (f0..f{k-1}, standardised, and a one-hot genre) and P a learned
  projection. Items the logger never shows (deficient support) have an untrained e_a and b_a; the
  content term P phi_a is what lets q^ say something about them (it is what DM and DR use there).

This is the biased matrix-factorisation predictor of posttrain/reward_model.py (its
:class:`~recsim_post.posttrain.reward_model.EnsembleHead` with one member), trained end to end with
its backbone by squared error on the logged rows (h_i, a_i, r_i)::

    L = (1/n) sum_i (q^(h_i, a_i) - r_i)^2

r_i is the reward the estimand defines (ope.bandit_data_from_logs): the same number IPS and DR read
at the logged row, nothing else. Histories, actions and item features are public.

Why cross-fitting by user folds. DR is unbiased with exact propensities whatever q^ is, *provided*
q^(x_i, .) does not depend on the row's own action and reward: then E[w_i (r_i - q^(x_i, a_i)) | x_i]
= sum_a pi(a | x_i) (r(x_i, a) - q^(x_i, a)) and the q^ terms cancel against DM's. Fitted in-sample
(``fit = "all"``) a flexible q^ memorises r_i and the correction shrinks towards zero, so DR drifts
to DM's bias. The item mean uses "past rounds only" (``past_q``): exact, since round t's q^ is fixed
before round t is drawn, but it needs one fit per round -- cheap for means, 30 trainings of a
network here, with almost no data in the first rounds. So this model is cross-fitted instead: users
are split into K random folds; the rows of fold k are scored by a model trained on the other folds
only. Every row of a user -- including the rows of later rounds, whose histories contain the
outcome of row i -- is then outside the data its q^ was trained on, and a model of the click
history (not a per-user table) can score users it never saw. What remains: other users' rows of
later rounds depend on row i through the shared trend (its exposure and click feed popularity, which
the logger follows), a dependence of order 1/n_users that we accept. The K models cost K fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..config import Config, knob
from ..errors import ConfigError, LogError
from ..models.device import DevicePref
from ..models.policy import build_model, pad_history
from ..models.sasrec import SASRecConfig
from ..posttrain.loop import Run, fit, param_group
from ..posttrain.reward_model import EnsembleHead
from ..seeding import SeedTree

PREDICT_CHUNK = 2048
"""Rows scored per forward pass when predicting q^ for every item."""


@dataclass(frozen=True)
class SequenceQConfig(Config):
    """The personalised q^ of DM / DR / Switch-DR: a small SASRec plus a bilinear item head."""

    dim: int = knob(32, "hidden width of the history encoder and the item vectors", ge=1, le=4096)
    n_layers: int = knob(1, "transformer blocks of the history encoder", ge=1, le=48)
    n_heads: int = knob(1, "attention heads (must divide dim)", ge=1, le=64)
    max_len: int = knob(20, "clicks of history the model reads", ge=1, le=4096)
    dropout: float = knob(0.1, "dropout on embeddings and residual branches", ge=0, lt=1)
    epochs: int = knob(5, "passes over the training rows of each fold", ge=1, le=100_000)
    batch_size: int = knob(256, "rows per optimiser step", ge=1, le=1_000_000)
    lr: float = knob(3e-3, "AdamW learning rate", gt=0, le=1)
    weight_decay: float = knob(1e-4, "AdamW decoupled weight decay", ge=0, le=1)
    folds: int = knob(2, "user folds K of the cross-fitting (each row scored by the model of the other K-1)", ge=2, le=100)
    features: bool = knob(True, "add the content term P phi_a from the public item features")
    device: DevicePref = knob("auto", "where to train: 'auto' (CUDA if present), 'cpu' or 'cuda'")

    def check(self) -> None:
        if self.dim % self.n_heads:
            raise ConfigError(f"n_heads = {self.n_heads} must divide dim = {self.dim}")


def item_features(items: pd.DataFrame, n_items: int) -> np.ndarray:
    """phi: (n_items, k + G) float32 -- the public features f0..f{k-1}, each standardised to mean 0
    and std 1 over the catalogue, then a one-hot genre (G = number of genres in the table)."""
    if "item_id" not in items.columns or len(items) != n_items:
        raise LogError(f"the public items table must have one row per item ({n_items}) and an item_id column")
    items = items.sort_values("item_id")
    if not np.array_equal(items["item_id"].to_numpy(), np.arange(n_items)):
        raise LogError("the public items table must list item ids 0..n_items-1 once each")
    fcols = sorted((c for c in items.columns if c[:1] == "f" and c[1:].isdigit()), key=lambda c: int(c[1:]))
    parts = []
    if fcols:
        f = items[fcols].to_numpy(np.float64)
        sd = f.std(axis=0)
        parts.append((f - f.mean(axis=0)) / np.where(sd > 0, sd, 1.0))
    if "genre" in items.columns:
        g = items["genre"].to_numpy(np.int64)
        parts.append(np.eye(int(g.max()) + 1)[g])
    if not parts:
        return np.zeros((n_items, 0), np.float32)
    return np.concatenate(parts, axis=1).astype(np.float32)


class SequenceQ(nn.Module):
    """q^(h, a) of the module docstring: ``forward(hist, items=None)`` -> (B,) or (B, n_items)."""

    def __init__(
        self, cfg: SequenceQConfig, n_items: int, phi: np.ndarray | None, init_bias: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.cfg, self.n_items = cfg, n_items
        mcfg = SASRecConfig(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, max_len=cfg.max_len, dropout=cfg.dropout)
        self.backbone = build_model(mcfg, n_items, generator)
        self.head = EnsembleHead(1, cfg.dim, n_items, "bilinear", init_bias=float(init_bias), generator=generator)
        use_phi = phi is not None and phi.shape[1] > 0
        self.register_buffer("phi", torch.as_tensor(phi if use_phi else np.zeros((n_items, 0), np.float32)))
        # drawn from the explicit generator (no global RNG), small like every other initial weight
        self.proj = nn.Parameter(torch.empty(self.phi.shape[1], cfg.dim).normal_(0.0, 0.02, generator=generator)) if use_phi else None
        self.register_buffer("eye", torch.eye(cfg.dim))

    def item_vectors(self) -> torch.Tensor:
        """(n_items, dim): e_a + P phi_a. The backbone's score is linear, so scoring the identity gives
        its item embedding (differentiably, unlike reward_model.item_vectors)."""
        e = self.backbone.score(self.eye).T
        return e if self.proj is None else e + self.phi @ self.proj

    def forward(self, hist: torch.Tensor, items: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        h = self.backbone.encode(hist, generator)[:, -1]
        return self.head(h, self.item_vectors(), items)[0]


def fit_sequence_q(
    hist: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    n_items: int,
    phi: np.ndarray | None,
    cfg: SequenceQConfig,
    seed: SeedTree,
) -> SequenceQ:
    """A :class:`SequenceQ` trained on the rows (hist, action, reward) by squared error (eval mode on return).

    Streams: ``seed.integer("init")`` the initial weights, ``"dropout"`` the dropout masks,
    ``seed.generator("batches")`` the batch order.
    """
    if len(action) == 0:
        raise LogError("the sequence reward model has no training rows")
    init = torch.Generator().manual_seed(seed.integer("init"))
    model = SequenceQ(cfg, n_items, phi if cfg.features else None, float(np.mean(reward)), init)
    x = torch.from_numpy(pad_history(hist, cfg.max_len))
    a = torch.from_numpy(np.asarray(action, np.int64))
    r = torch.from_numpy(np.asarray(reward, np.float32))
    order = seed.generator("batches")
    n = len(a)
    n_batches = max(1, math.ceil(n / cfg.batch_size))

    def batches(run: Run):  # noqa: ANN202
        for b in np.array_split(order.permutation(n), n_batches):
            bi = torch.from_numpy(b)
            yield x[bi].to(run.device), a[bi].to(run.device), r[bi].to(run.device)

    def loss(module: nn.Module, batch: tuple[torch.Tensor, ...], run: Run):  # noqa: ANN202
        h, act, rew = batch
        with run.autocast():
            q = module(h, act, run.dropout)
        return nn.functional.mse_loss(q.float(), rew), {}

    # AdamW decaying every parameter (biases too), as this model has always been trained
    fit(model, batches, loss, epochs=cfg.epochs, lr=cfg.lr, seed=seed,
        groups=[param_group(model.parameters(), weight_decay=cfg.weight_decay)],
        device=cfg.device, progress=False, desc="ope-q")
    return model


@torch.no_grad()
def predict_q(model: SequenceQ, hist: np.ndarray, chunk: int = PREDICT_CHUNK) -> np.ndarray:
    """q^(h_i, a) for every row and item: (n, n_items) float64."""
    device = next(model.parameters()).device
    x = pad_history(hist, model.cfg.max_len)
    out = np.empty((len(x), model.n_items))
    for lo in range(0, len(x), chunk):
        out[lo : lo + chunk] = model(torch.from_numpy(x[lo : lo + chunk]).to(device)).double().cpu().numpy()
    return out


def user_folds(users: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of every row, (n,) in [0, k): users are shuffled and dealt round-robin, so all the rows
    of one user share a fold and the folds differ in size by at most one user."""
    uniq, inv = np.unique(np.asarray(users), return_inverse=True)
    fold_of_user = np.empty(len(uniq), np.int64)
    fold_of_user[rng.permutation(len(uniq))] = np.arange(len(uniq)) % k
    return fold_of_user[inv]


@dataclass(frozen=True)
class SequenceQRows:
    """The fitted q^ models and which one scores each row: q^ of any rows, chunk by chunk
    (:meth:`rows`), without the (n, n_items) matrix."""

    models: tuple[SequenceQ | None, ...]  # None for a fold without rows
    fold: np.ndarray  # (n,) int64: row i is scored by models[fold[i]]
    hist: np.ndarray  # (n, L) the rows' click histories
    n_items: int

    def __len__(self) -> int:
        return len(self.fold)

    def rows(self, sl: slice) -> np.ndarray:
        """q^(h_i, a) for the rows ``sl`` and every item: (rows, n_items) float64."""
        fold, hist = self.fold[sl], self.hist[sl]
        out = np.empty((len(fold), self.n_items))
        for k, model in enumerate(self.models):
            held = fold == k
            if model is not None and held.any():
                out[held] = predict_q(model, hist[held])
        return out


def sequence_q_rows(
    hist: np.ndarray,
    user: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    n_items: int,
    phi: np.ndarray | None,
    cfg: SequenceQConfig = SequenceQConfig(),
    seed: SeedTree = SeedTree(0),
    fit: Literal["crossfit", "all"] = "crossfit",
) -> SequenceQRows:
    """Fit :func:`sequence_q`'s models (cross-fitted by user folds, or one in-sample for "all") and
    return them as a :class:`SequenceQRows`."""
    if fit == "all":
        model = fit_sequence_q(hist, action, reward, n_items, phi, cfg, seed.child("all"))
        return SequenceQRows((model,), np.zeros(len(action), np.int64), hist, n_items)
    if fit != "crossfit":
        raise ConfigError(f"q_fit = {fit!r} is not allowed for the sequence q^: must be 'crossfit' or 'all'")
    fold = user_folds(user, cfg.folds, seed.generator("folds"))
    if len(np.unique(fold)) < 2:
        raise LogError(f"cross-fitting needs users in at least two folds; the logs have {len(np.unique(user))} user(s)")
    models: list[SequenceQ | None] = []
    for k in range(cfg.folds):
        train = fold != k
        if train.all():  # a fold without rows scores nothing
            models.append(None)
            continue
        models.append(fit_sequence_q(hist[train], action[train], reward[train], n_items, phi, cfg, seed.child(f"fold-{k}")))
    return SequenceQRows(tuple(models), fold, hist, n_items)


def sequence_q(*args: Any, **kwargs: Any) -> np.ndarray:
    """q^ on every logged row, (n, n_items): cross-fitted by user folds (default) or in-sample ("all");
    the arguments of :func:`sequence_q_rows`, whose rows it returns all at once."""
    return sequence_q_rows(*args, **kwargs).rows(slice(None))


__all__ = [
    "SequenceQ", "SequenceQConfig", "SequenceQRows", "fit_sequence_q", "item_features", "predict_q", "sequence_q",
    "sequence_q_rows", "user_folds",
]
