r"""Reward models: what post-training methods believe a recommendation is worth.

A reward model predicts the *observed* reward (the 1-5 rating) of recommending item y after a
history x, for every item at once: ``member_scores(inputs)`` maps left-padded windows ``(B, L)`` to
``(E, B, L, n_items)`` -- one prediction per ensemble member, for the next item after every
position. Methods use the member mean as R̂(x, y) and the member spread as its uncertainty.

Learned from public logs only (it lives on the training side of the boundary); how well it tracks
the *true* reward is for evaluation to find out (``metrics/reward_report.py``).

The learned model, :class:`RewardEnsemble`, is a bootstrapped ensemble of E shallow heads on the
frozen sequence backbone of π_ref. With h_t = encode(x)_t the backbone's state after position t and
e_y the item vector π_ref scores against (its tied item embedding), member m predicts::

    bilinear:  r̂_m(x_t, y) = a_m + b_{m,y} + g_m·h_t + (W_m h_t + c_m)·e_y
    mlp:       r̂_m(x_t, y) = a_m + b_{m,y} + g_m·h_t + (V_m gelu(U_m h_t + d_m) + c_m)·e_y

-- the biased matrix-factorisation predictor μ + b_i + b_u + q_iᵀp_u (Koren, Bell & Volinsky 2009,
"Matrix factorization techniques for recommender systems", eq. 4) with the user factor p_u and the
user bias b_u read off the sequence state h_t instead of a per-user table, so it scores any history,
also one it never saw. It is fitted by (bootstrap-weighted) squared error on the observed ratings of
the logged targets::

    L = Σ_m (1/N) Σ_t w_{m,t} (r̂_m(x_t, y_t) − r_t)²      (unrated and padded targets left out)

Members differ by their initialisation seed and by their bootstrap weights w_{m,t} (one weight per
training window, so a user's correlated clicks are resampled together): a deep ensemble
(Lakshminarayanan, Pritzel & Blundell 2017, "Simple and Scalable Predictive Uncertainty Estimation
using Deep Ensembles") made of bootstrap replicates (Efron 1979; the Poisson(1) weights are the
online bootstrap of Oza & Russell 2001, as in Osband et al. 2016, "Deep Exploration via Bootstrapped
DQN"). The member standard deviation is then an estimate of the model's uncertainty.

Because the backbone is frozen, h_t is computed once for every training target and the heads are
trained on those features alone -- a few seconds on a CPU for the quickstart world.

The baselines the ensemble has to beat are here too: :class:`GlobalMeanReward`,
:class:`UserMeanReward` and :class:`ItemMeanReward` (shrunk means with a pseudo-count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, knob
from ..errors import ConfigError, LogError
from ..models.device import DevicePref, autocast, pick_device
from ..models.policy import SequencePolicy, pad_history, trim_padding
from ..seeding import SeedTree
from .data import PostTrainData, Windows, reward_column
from .loop import Run, fit, param_group


@runtime_checkable
class RewardModel(Protocol):
    """Predicted observed reward of every item after every position of a batch of windows."""

    n_members: int
    n_items: int

    def member_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` (B, L) int64 item ids, PAD = -1 on the left -> (E, B, L, n_items) float32.

        Runs without gradients, on the device of ``inputs``.
        """
        ...


def next_item_scores(model: RewardModel, inputs: torch.Tensor) -> torch.Tensor:
    """Every member's prediction for every item after the LAST position of ``inputs`` (B, L):
    (E, B, n_items), equal to ``member_scores(inputs)[:, :, -1]``.

    Uses the model's ``last_scores`` when it has one (the learned ensemble and the table model do:
    they score one position instead of L, so memory is E * B * n_items, not E * B * L * n_items).
    """
    last = getattr(model, "last_scores", None)
    if last is not None:
        return last(inputs)
    return model.member_scores(inputs)[:, :, -1]


def ensemble_mean_scores(model: RewardModel, inputs: torch.Tensor) -> torch.Tensor:
    """The member mean R̂ of every item after every position: (B, L, n_items), equal (to float
    rounding) to ``member_scores(inputs).mean(0)``.

    Uses the model's ``mean_scores`` when it has one: the learned ensemble's prediction is linear in
    its user factor, so the mean over members costs one (B, L, dim) x (dim, n_items) product instead
    of E of them.
    """
    mean = getattr(model, "mean_scores", None)
    if mean is not None:
        return mean(inputs)
    return model.member_scores(inputs).mean(dim=0)


def candidate_member_scores(model: RewardModel, inputs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Every member's prediction for K candidate items after each position: ``candidates``
    (B, L, K) -> (E, B, L, K), equal (to float rounding) to ``member_scores(inputs)`` gathered at
    the candidates. Uses the model's ``candidate_scores`` when it has one (K items scored, not all)."""
    cand = getattr(model, "candidate_scores", None)
    if cand is not None:
        return cand(inputs, candidates)
    return gather_candidates(model.member_scores(inputs), candidates)


def gather_candidates(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Member scores ``(E, B, L, V)`` at ``candidates`` ``(B, L, K)``: ``(E, B, L, K)``."""
    return scores.gather(-1, candidates.unsqueeze(0).expand(scores.shape[0], *candidates.shape))


def check_reward_model(method: str, data: PostTrainData) -> RewardModel:
    """``data.reward_model`` (of a PostTrainData), or a one-line ConfigError saying why it is
    missing or does not fit the catalogue."""
    rm = data.reward_model
    if rm is None:
        raise ConfigError(f"{method} needs a reward model, but data.reward_model is None; fit one on the training clicks")
    if rm.n_items != data.n_items:
        raise ConfigError(f"{method}: the reward model covers {rm.n_items} items, but the catalogue has {data.n_items}")
    return rm


def mean_std(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble mean and (population) standard deviation over members: (E, ...) -> (...), (...)."""
    mean = scores.mean(dim=0)
    # by hand: torch's std over a leading dim is ~30x slower than this on CPU for large catalogues
    return mean, (scores - mean).square().mean(dim=0).sqrt()


class TableRewardModel:
    """R̂(x, y) = table[y] for every history x: a known reward, for tests and tiny bandit worlds.

    ``member_noise`` gives each of ``n_members`` members a fixed offset per item (drawn from
    ``generator``), so the ensemble has a spread to build confidence intervals from.
    """

    def __init__(
        self,
        table: torch.Tensor,
        n_members: int = 5,
        member_noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        table = torch.as_tensor(table, dtype=torch.float32)
        noise = torch.randn((n_members, len(table)), generator=generator) if member_noise > 0 else torch.zeros(n_members, len(table))
        self.members = table[None, :] + member_noise * noise
        self.n_members, self.n_items = n_members, len(table)

    @torch.no_grad()
    def member_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        B, L = inputs.shape
        m = self.members.to(inputs.device)
        return m[:, None, None, :].expand(self.n_members, B, L, self.n_items)

    @torch.no_grad()
    def last_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """``member_scores(inputs)[:, :, -1]``: (E, B, n_items)."""
        m = self.members.to(inputs.device)
        return m[:, None, :].expand(self.n_members, inputs.shape[0], self.n_items)


# ---------------------------------------------------------------- the learned ensemble


@dataclass(frozen=True)
class RewardModelConfig(Config):
    """A bootstrapped ensemble of shallow heads on π_ref's frozen backbone (see the module docstring)."""

    members: int = knob(5, "ensemble members E (their spread is the uncertainty)", ge=2, le=256)
    head: Literal["bilinear", "mlp"] = knob(
        "bilinear", "'bilinear': p = W h + c; 'mlp': p = V gelu(U h + d) + c (the user factor dotted with e_y)"
    )
    hidden: int = knob(64, "hidden width of the 'mlp' head (unused by 'bilinear')", ge=1, le=65_536)
    bootstrap: bool = knob(True, "resample the training windows per member (False: members differ by seed only)")
    resampling: Literal["poisson", "multinomial"] = knob(
        "poisson", "bootstrap weights per window: 'poisson' = Poisson(1), 'multinomial' = counts of N draws of N"
    )
    epochs: int = knob(30, "passes over the rated training targets", ge=1, le=100_000)
    batch_size: int = knob(512, "rated targets per optimiser step", ge=1, le=10_000_000)
    lr: float = knob(3e-3, "AdamW learning rate of the heads", gt=0.0, le=1.0)
    weight_decay: float = knob(
        1e-2, "AdamW decoupled weight decay on the head matrices and item biases (shrinks b_y toward a)", ge=0.0, le=1.0
    )
    init_std: float = knob(0.02, "std of the random initial head matrices (members' init seeds differ)", ge=0.0, le=1.0)
    device: DevicePref = knob("auto", "where to train: 'auto' (CUDA if present), 'cpu' or 'cuda'")


class EnsembleHead(nn.Module):
    """E members' heads, stacked: parameters carry a leading member dimension.

    ``forward(h, item_vecs, items=None)``: ``h`` ``(..., dim)`` backbone states, ``item_vecs``
    ``(n_items, dim)``; returns ``(E, ..., n_items)`` (every item) or, with ``items`` ``(...)``,
    ``(E, ...)`` (the prediction for that item only: what training needs).
    """

    def __init__(
        self,
        n_members: int,
        dim: int,
        n_items: int,
        kind: Literal["bilinear", "mlp"] = "bilinear",
        hidden: int = 64,
        init_std: float = 0.02,
        init_bias: torch.Tensor | float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("bilinear", "mlp"):
            raise ConfigError(f"head = {kind!r} is not allowed: must be one of 'bilinear', 'mlp'")
        self.kind, self.n_members, self.dim, self.n_items = kind, n_members, dim, n_items
        E = n_members

        def normal(*shape: int, std: float) -> nn.Parameter:
            # Drawn on CPU from the explicit generator: no global RNG, same values on every device.
            return nn.Parameter(torch.empty(shape).normal_(0.0, std, generator=generator) if std > 0 else torch.zeros(shape))

        if kind == "bilinear":
            self.W = normal(E, dim, dim, std=init_std)
        else:
            self.U = normal(E, hidden, dim, std=1.0 / math.sqrt(dim))
            self.d = nn.Parameter(torch.zeros(E, hidden))
            self.V = normal(E, dim, hidden, std=init_std)
        self.c = nn.Parameter(torch.zeros(E, dim))
        self.g = nn.Parameter(torch.zeros(E, dim))
        self.b = nn.Parameter(torch.zeros(E, n_items))
        self.a = nn.Parameter(torch.zeros(E) + torch.as_tensor(init_bias, dtype=torch.float32))

    def _per_member(self, p: torch.Tensor, extra_dims: int) -> torch.Tensor:
        """(E, k) -> (E, 1, ..., 1, k) broadcastable against (E, ..., k)."""
        return p.view(p.shape[0], *([1] * extra_dims), p.shape[-1])

    def user_factor(self, h: torch.Tensor) -> torch.Tensor:
        """p_m(h): ``(..., dim)`` -> ``(E, ..., dim)``."""
        extra = h.dim() - 1
        if self.kind == "bilinear":
            p = torch.einsum("eij,...j->e...i", self.W, h)
        else:
            z = F.gelu(torch.einsum("ekj,...j->e...k", self.U, h) + self._per_member(self.d, extra))
            p = torch.einsum("eik,e...k->e...i", self.V, z)
        return p + self._per_member(self.c, extra)

    def _parts(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per member: the user factor ``(E, ..., dim)``, a_m ``(E, 1, ..., 1)`` and g_m·h ``(E, ...)``."""
        return self.user_factor(h), self.a.view(-1, *([1] * (h.dim() - 1))), torch.einsum("ej,...j->e...", self.g, h)

    def forward(self, h: torch.Tensor, item_vecs: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        p, a, user_bias = self._parts(h)
        if items is None:
            scores = p @ item_vecs.T  # (E, ..., n_items)
            return scores + self._per_member(self.b, h.dim() - 1) + (a + user_bias).unsqueeze(-1)
        e = item_vecs[items]  # (..., dim)
        b = self.b[:, items]  # (E, ...)
        return (p * e).sum(-1) + b + a + user_bias

    def mean_forward(self, h: torch.Tensor, item_vecs: torch.Tensor) -> torch.Tensor:
        """The member mean of ``forward(h, item_vecs)``, ``(..., n_items)``: by linearity in the
        user factor, one product with the item vectors instead of E."""
        p, a, user_bias = self._parts(h)
        return p.mean(dim=0) @ item_vecs.T + self.b.mean(dim=0) + (a + user_bias).mean(dim=0).unsqueeze(-1)

    def candidate_forward(self, h: torch.Tensor, item_vecs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``forward(h, item_vecs)`` at K candidates per state: ``h`` (..., dim), ``candidates``
        (..., K) -> (E, ..., K), without scoring the rest of the catalogue."""
        p, a, user_bias = self._parts(h)
        dots = (p.unsqueeze(-2) * item_vecs[candidates].unsqueeze(0)).sum(-1)  # (E, ..., K)
        return dots + self.b[:, candidates] + (a + user_bias).unsqueeze(-1)


def reward_mse_loss(
    pred: torch.Tensor,
    ratings: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bootstrap-weighted squared error of every member, summed over members::

        L = Σ_m (1/N) Σ_t w_{m,t} (pred_{m,t} − r_t)²

    over the N positions t with ``mask`` and a finite rating. Summing (not averaging) over members
    gives each member the gradient it would get if trained alone. ``pred`` ``(E, ...)``;
    ``ratings`` ``(...)`` (NaN = unrated); ``mask`` ``(...)`` bool or None (all); ``weights``
    ``(E, ...)`` or None (all 1).

    Metrics (0-dim detached tensors): ``mse`` (unweighted, mean over members), ``ensemble_mse``
    (of the member mean), ``spread`` (mean member std), ``bias`` (mean of member mean − rating),
    ``n`` (rated positions).
    """
    r = ratings.float()
    valid = torch.isfinite(r)
    if mask is not None:
        valid = valid & mask
    r = torch.nan_to_num(r)  # before any arithmetic: no NaN reaches the graph
    v = valid.float()
    n = v.sum()
    sq = (pred.float() - r) ** 2 * v
    w = sq if weights is None else weights.float() * sq
    loss = w.sum() / n.clamp(min=1.0)
    with torch.no_grad():
        mean, std = mean_std(pred.float())
        metrics = {
            "mse": sq.sum() / (n.clamp(min=1.0) * pred.shape[0]),
            "ensemble_mse": (((mean - r) ** 2) * v).sum() / n.clamp(min=1.0),
            "spread": (std * v).sum() / n.clamp(min=1.0),
            "bias": ((mean - r) * v).sum() / n.clamp(min=1.0),
            "n": n,
        }
    return loss, metrics


def bootstrap_weights(
    n_windows: int, n_members: int, resampling: Literal["poisson", "multinomial"], generator: torch.Generator
) -> torch.Tensor:
    """``(E, n_windows)`` float32 resampling weights, mean 1 per window.

    'poisson': independent Poisson(1) counts (the online bootstrap); 'multinomial': the counts of
    ``n_windows`` draws with replacement among the windows (Efron's bootstrap).
    """
    if resampling == "poisson":
        return torch.poisson(torch.ones(n_members, n_windows), generator=generator)
    if resampling == "multinomial":
        draws = torch.randint(0, n_windows, (n_members, n_windows), generator=generator)
        counts = torch.zeros(n_members, n_windows)
        return counts.scatter_add_(1, draws, torch.ones_like(counts))
    raise ConfigError(f"resampling = {resampling!r} is not allowed: must be one of 'poisson', 'multinomial'")


class RewardEnsemble:
    """The learned :class:`RewardModel`: E heads on π_ref's frozen backbone (built by :func:`fit_reward_model`).

    ``member_scores(inputs)`` scores every item after every position, ``(E, B, L, n_items)``;
    ``predict(hist, items)`` scores given (history, item) pairs from numpy, ``(mean, std)``.
    ``history`` holds one metrics dict per training epoch.
    """

    def __init__(
        self, backbone: nn.Module, head: EnsembleHead, item_vecs: torch.Tensor, max_len: int, batch_size: int = 1024,
        reward: str = "rating",
    ) -> None:
        self.reward = reward  # the feedback signal it predicts (recsim_post.signals)
        self.backbone = backbone.eval().requires_grad_(False)
        self.head = head.eval().requires_grad_(False)
        self.item_vecs = item_vecs.detach()
        self.n_members, self.n_items = head.n_members, head.n_items
        self.max_len, self.batch_size = max_len, batch_size
        self.history: list[dict[str, float]] = []

    @property
    def device(self) -> torch.device:
        return self.item_vecs.device

    def to(self, device: torch.device | str) -> "RewardEnsemble":
        """Move backbone and heads to ``device`` (in place) and return self."""
        self.backbone.to(device)
        self.head.to(device)
        self.item_vecs = self.item_vecs.to(device)
        return self

    def _states(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.device != self.device:
            self.to(inputs.device)
        with autocast(inputs.device):
            h = self.backbone.encode(inputs)
        return h.float()

    @torch.no_grad()
    def member_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` (B, L) int64, PAD = -1 on the left -> (E, B, L, n_items) float32 predicted ratings."""
        return self.head(self._states(inputs), self.item_vecs)

    @torch.no_grad()
    def last_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """``member_scores(inputs)[:, :, -1]`` without scoring the other positions: (E, B, n_items)."""
        return self.head(self._states(trim_padding(inputs))[:, -1], self.item_vecs)

    @torch.no_grad()
    def mean_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """``member_scores(inputs).mean(0)`` in one product with the item vectors: (B, L, n_items)."""
        return self.head.mean_forward(self._states(inputs), self.item_vecs)

    @torch.no_grad()
    def candidate_scores(self, inputs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``member_scores(inputs)`` at ``candidates`` (B, L, K) only: (E, B, L, K)."""
        return self.head.candidate_forward(self._states(inputs), self.item_vecs, candidates.to(self.device))

    @torch.no_grad()
    def predict(self, hist: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted rating of ``items[b]`` after history ``hist[b]`` (last column = most recent,
        PAD = -1; truncated / left-padded to ``max_len``): member mean and population std, ``(B,)`` each."""
        hist = pad_history(hist, self.max_len)
        items = np.asarray(items, dtype=np.int64)
        if items.shape != (hist.shape[0],):
            raise ValueError(f"items must have shape ({hist.shape[0]},), got {items.shape}")
        if (hist.size and hist.max() >= self.n_items) or (items.size and (items.min() < 0 or items.max() >= self.n_items)):
            raise ValueError(f"item ids must lie in [0, {self.n_items})")
        mean = np.empty(len(items), dtype=np.float32)
        std = np.empty(len(items), dtype=np.float32)
        for lo in range(0, len(items), self.batch_size):
            x = torch.tensor(trim_padding(hist[lo : lo + self.batch_size])).to(self.device)
            y = torch.tensor(items[lo : lo + self.batch_size]).to(self.device)
            m, s = mean_std(self.head(self._states(x)[:, -1], self.item_vecs, y))
            mean[lo : lo + len(y)], std[lo : lo + len(y)] = m.cpu().numpy(), s.cpu().numpy()
        return mean, std


def item_vectors(model: nn.Module) -> torch.Tensor:
    """``(n_items, dim)``: the vectors e_y a sequence model scores its states against.

    The model's ``score`` is linear (a logit is <h, e_y>), so scoring the identity gives Eᵀ.
    """
    dim = model.cfg.dim
    eye = torch.eye(dim, device=next(model.parameters()).device)
    with torch.no_grad():
        return model.score(eye).T.float().contiguous()


@torch.no_grad()
def target_states(
    backbone: nn.Module, windows: Windows, device: torch.device, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """The frozen backbone's state h_t at every *rated* target of ``windows``, with its target item,
    rating and window index: ``{"h": (N, dim), "items": (N,), "ratings": (N,), "window": (N,)}``."""
    hs, items, ratings, window = [], [], [], []
    for lo, batch in zip(range(0, len(windows), batch_size), windows.batches(batch_size, shuffle=False)):
        keep = batch.mask & torch.isfinite(batch.rewards)
        batch = batch.trim().to(device)
        with autocast(device):
            h = backbone.encode(batch.inputs).float()
        keep = keep[:, keep.shape[1] - h.shape[1] :].to(device)  # trim dropped leading columns
        rows = torch.arange(lo, lo + len(keep), device=device)[:, None].expand_as(keep)
        hs.append(h[keep])
        items.append(batch.targets[keep])
        ratings.append(batch.rewards[keep].float())
        window.append(rows[keep])
    return {k: torch.cat(v) for k, v in (("h", hs), ("items", items), ("ratings", ratings), ("window", window))}


def fit_reward_model(
    policy_ref: SequencePolicy, data: PostTrainData, cfg: RewardModelConfig, seed: SeedTree, progress: bool = True
) -> RewardEnsemble:
    """A :class:`RewardEnsemble` on a frozen copy of π_ref's backbone, fitted to the observed ratings
    of ``data.clicks`` (cut into π_ref's windows). ``policy_ref`` is left untouched.

    Streams: ``seed.integer("init")`` the heads' initial values, ``"bootstrap"`` the resampling
    weights, ``"order"`` the order of the targets. The same seed gives the same ensemble (on CPU).
    """
    if data.n_items != policy_ref.n_items:
        raise ConfigError(f"n_items = {data.n_items} does not match the policy's catalogue of {policy_ref.n_items}")
    device = pick_device(cfg.device)
    backbone = policy_ref.clone().model.to(device).eval().requires_grad_(False)
    item_vecs = item_vectors(backbone)
    windows = data.windows(policy_ref.max_len)
    feats = target_states(backbone, windows, device)
    n = len(feats["ratings"])
    if n == 0:
        raise LogError("no rated training targets: the reward model needs clicks with a finite rating after a user's first")

    # Bootstrap weights per window and member, spread to that window's targets.
    if cfg.bootstrap:
        rng = torch.Generator().manual_seed(seed.integer("bootstrap"))
        w_win = bootstrap_weights(len(windows), cfg.members, cfg.resampling, rng)
    else:
        w_win = torch.ones(cfg.members, len(windows))
    w = w_win.to(device)[:, feats["window"]]  # (E, N)
    r = feats["ratings"]
    # a_m starts at the member's (weighted) mean training rating, so early predictions are sensible.
    init_bias = ((w * r).sum(1) / w.sum(1).clamp(min=1e-6)).cpu()
    head = EnsembleHead(
        cfg.members, item_vecs.shape[1], policy_ref.n_items, cfg.head, cfg.hidden, cfg.init_std, init_bias,
        torch.Generator().manual_seed(seed.integer("init")),
    ).to(device)
    # Decay the matrices and the item biases b (a ridge that shrinks rare items toward a_m);
    # not a, c, d or g.
    decayed = [p for name, p in head.named_parameters() if p.dim() >= 3 or name == "b"]
    plain = [p for name, p in head.named_parameters() if not (p.dim() >= 3 or name == "b")]
    groups = [param_group(decayed, weight_decay=cfg.weight_decay), param_group(plain)]

    def batches(run: Run) -> tuple[torch.Tensor, ...]:  # indices of the rated targets, shuffled
        return torch.randperm(n, generator=run.order).to(run.device).split(cfg.batch_size)

    def loss_fn(model: EnsembleHead, idx: torch.Tensor, run: Run) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = model(feats["h"][idx], item_vecs, feats["items"][idx])
        return reward_mse_loss(pred, r[idx], None, w[:, idx])

    history = fit(
        head, batches, loss_fn, groups=groups, epochs=cfg.epochs, lr=cfg.lr, device=cfg.device, seed=seed,
        order_stream="order", progress=progress, desc="reward model",
    )
    ensemble = RewardEnsemble(backbone, head, item_vecs, policy_ref.max_len, reward=data.reward)  # freezes the heads
    ensemble.history = history
    return ensemble


# ---------------------------------------------------------------- baselines


def _ratings(clicks: pd.DataFrame, key: str, reward: str = "rating") -> tuple[np.ndarray, np.ndarray]:
    """(keys, rewards) of the clicks whose ``reward`` signal was observed (finite)."""
    r = reward_column(clicks, reward).astype(np.float64)
    if key not in clicks.columns:
        raise LogError(f"clicks frame lacks columns: {key}")
    ok = np.isfinite(r)
    return clicks[key].to_numpy(np.int64)[ok], r[ok]


class GlobalMeanReward:
    """R̂(u, y) = μ, the mean observed rating of the clicks it was fitted on (NaN ratings skipped)."""

    def __init__(self, mean: float) -> None:
        self.mean = float(mean)

    @classmethod
    def fit(cls, clicks: pd.DataFrame, reward: str = "rating") -> "GlobalMeanReward":
        _, r = _ratings(clicks, "item_id", reward)
        if len(r) == 0:
            raise LogError("no rated clicks to fit a mean rating on")
        return cls(r.mean())

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.full(len(np.asarray(items)), self.mean)


class _ShrunkMean:
    """R̂ = (Σ_j r_j + k μ) / (n + k) over the n rated clicks of a key (a user or an item): the
    posterior mean under a prior worth k pseudo-ratings at the global mean μ; unseen keys get μ."""

    key: str = ""

    def __init__(self, means: np.ndarray, counts: np.ndarray, global_mean: float, pseudo_count: float) -> None:
        self.means, self.counts = means, counts
        self.global_mean, self.pseudo_count = float(global_mean), float(pseudo_count)

    @classmethod
    def fit(cls, clicks: pd.DataFrame, pseudo_count: float = 0.0, reward: str = "rating"):  # noqa: ANN206
        """Fit on a clicks frame (``user_id`` / ``item_id`` and the ``reward`` signal's column; NaN
        skipped). ``pseudo_count`` k >= 0: 0 is the raw mean, larger values shrink harder toward μ."""
        if not (pseudo_count >= 0 and math.isfinite(pseudo_count)):
            raise ConfigError(f"pseudo_count = {pseudo_count!r} is out of range: must be >= 0 and finite")
        keys, r = _ratings(clicks, cls.key, reward)
        if len(r) == 0:
            raise LogError("no rated clicks to fit a mean rating on")
        if keys.min() < 0:
            raise LogError(f"{cls.key} must be >= 0")
        mu = r.mean()
        counts = np.bincount(keys).astype(np.float64)
        sums = np.bincount(keys, weights=r)
        denom = counts + pseudo_count
        means = np.where(denom > 0, (sums + pseudo_count * mu) / np.where(denom > 0, denom, 1.0), mu)
        return cls(means, counts, mu, pseudo_count)

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.int64)
        seen = (keys >= 0) & (keys < len(self.means))
        out = np.full(keys.shape, self.global_mean)
        out[seen] = self.means[keys[seen]]
        return out


class UserMeanReward(_ShrunkMean):
    """R̂(u, y) = the user's shrunk mean rating (Σ_j r_uj + k μ) / (n_u + k); μ for unseen users."""

    key = "user_id"

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self._lookup(users)


class ItemMeanReward(_ShrunkMean):
    """R̂(u, y) = the item's shrunk mean rating (Σ_j r_jy + k μ) / (n_y + k); μ for unseen items."""

    key = "item_id"

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self._lookup(items)


__all__ = [
    "EnsembleHead",
    "GlobalMeanReward",
    "ItemMeanReward",
    "RewardEnsemble",
    "RewardModel",
    "RewardModelConfig",
    "TableRewardModel",
    "UserMeanReward",
    "bootstrap_weights",
    "fit_reward_model",
    "item_vectors",
    "mean_std",
    "candidate_member_scores",
    "ensemble_mean_scores",
    "gather_candidates",
    "next_item_scores",
    "reward_mse_loss",
    "target_states",
]
