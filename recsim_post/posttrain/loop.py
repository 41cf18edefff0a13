"""The one training loop: any module, any batches, any loss closure, AdamW over parameter groups.

Every training in posttrain runs through :func:`fit` -- BC pre-training of π_ref, each method (via
:func:`train_copy`), CQL, PPO/GRPO and the reward-model ensemble. One step is::

    batch = prepare(module, batch)              # optional, once per batch, without gradients
    repeat inner_steps times:                   # PPO's several epochs on one sample
        loss, metrics = loss_fn(module, batch, run)
        loss.backward(); clip the global gradient norm; optimiser step

``module`` holds everything that trains: a policy, or an ``nn.ModuleDict`` of a policy and extra
heads (a critic, a GFlowNet's log Z(x)); frozen references stay outside it. Each optimiser group
has its own learning rate and weight decay (:func:`param_group`); by default
(:func:`decay_groups`) only matrices and embeddings are decayed.

A run is a pure function of (module, batches, loss, settings, seed): the batch order and the dropout
masks come from generators seeded by the SeedTree (handed to the batch source and the loss in
:class:`Run`), parameters are initialised by the caller, and nothing reads or writes torch's global
RNG. On CUDA a loss runs its forward pass under ``run.autocast()`` (bf16) and computes the loss in
float32.

The history is one row per epoch: ``epoch`` (1-based) and the mean over the epoch's optimiser steps
of ``loss`` and of every metric the loss closure reports. ``epochs = 0`` trains nothing and returns
``[]`` without reading the batches; a batch source that yields no batch raises LogError.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import Config, knob
from ..errors import ConfigError, LogError
from ..models.device import DevicePref, apply_threads, autocast, pick_device
from ..models.load import TrainedPolicy
from ..models.token import Scorer, is_token_model, target_scorer
from ..seeding import SeedTree
from .data import Batch, PostTrainData, Windows
from .sampled import Proposal, sampled_softmax_nll, target_counts

B = TypeVar("B")

Metrics = dict[str, torch.Tensor]


@dataclass(eq=False)
class Run:
    """What a run hands its batch source and its loss closure: the device and the seeded generators."""

    device: torch.device
    order: torch.Generator
    """CPU generator of the batch order (seeded from the run's ``order_stream``)."""
    dropout: torch.Generator
    """Generator of the dropout masks, on ``device`` (seeded from the stream ``"dropout"``)."""
    epoch: int = 0
    """The current epoch, from 0."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA, nothing on CPU: wrap the forward pass, not the loss."""
        return autocast(self.device)


BatchSource = Callable[[Run], Iterable[B]]
"""``batches(run) -> the epoch's batches``, called once per epoch; the batches live on ``run.device``
and their order is drawn from ``run.order``."""

LossClosure = Callable[[nn.Module, B, Run], tuple[torch.Tensor, Metrics]]
"""``loss_fn(module, batch, run) -> (scalar loss, {name: 0-dim tensor})``: forward and loss of one step."""

Prepare = Callable[[nn.Module, B], B]
"""``prepare(module, batch) -> batch``, run once per batch without gradients (on-policy methods
sample actions and record old log-probabilities there, in ``batch.extra``)."""

LossFn = Callable[[torch.Tensor, Batch], tuple[torch.Tensor, Metrics]]
"""A method's loss on a policy's outputs: ``loss_fn(logits (B, L, n_items), batch) -> (loss, metrics)``."""

LogpLossFn = Callable[[Scorer, Batch], tuple[torch.Tensor, Metrics]]
"""A method's loss on log-probabilities: ``loss_fn(logp, batch) -> (loss, metrics)`` where
``logp(items)`` is log π(items | x_t) after every position (items ``(B, L)`` or ``(B, L, K)``).
The seam for methods that read only log π(y|x): an item policy gathers it from its softmax, a
token policy sums its token log-probabilities (no softmax over the catalogue)."""

NllLossFn = Callable[[torch.Tensor, Batch], tuple[torch.Tensor, Metrics]]
"""A method's loss on the next-item NLL: ``loss_fn(nll (B, L), batch) -> (loss, metrics)`` with
``nll = −log π(y_t|x_t)`` (the sampled softmax's estimate) at real positions and 0 at padding."""


@dataclass(frozen=True)
class TrainConfig(Config):
    """Optimisation settings for one training stage (pre-training or fine-tuning)."""

    epochs: int = knob(10, "passes over the training windows", ge=0, le=100_000)
    batch_size: int = knob(128, "windows per optimiser step", ge=1, le=1_000_000)
    lr: float = knob(1e-3, "AdamW learning rate", gt=0.0, le=1.0)
    weight_decay: float = knob(0.0, "AdamW decoupled weight decay (matrices and embeddings only)", ge=0.0, le=1.0)
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0 = no clipping)", ge=0.0, le=1e6)
    device: DevicePref = knob("auto", "where to train: 'auto' (CUDA if present), 'cpu' or 'cuda'")
    loss: Literal["full", "sampled"] = knob(
        "full", "next-item cross-entropy over the whole catalogue ('full'), or a sampled softmax over `negatives` "
        "shared items with the logQ correction ('sampled': never builds the (B, L, n_items) logits; for catalogues "
        "of 10^5 items and more; bc, linear-rsft, exp-rsft and asft, whose losses read only −log π(y|x); "
        "recsim_post.posttrain.sampled)")
    negatives: int = knob(1024, "loss = 'sampled': negatives per batch, shared by every position", ge=1, le=1_000_000)
    proposal_power: float = knob(
        0.75, "loss = 'sampled': negatives are drawn from Q(j) ∝ (clicks on j + 1)^power (1 = unigram, 0 = uniform)",
        ge=0.0, le=1.0)
    sparse_embeddings: bool = knob(
        False, "loss = 'sampled': the item embedding's gradient holds only the rows a batch touches (inputs, targets, "
        "negatives) and a lazy Adam (torch.optim.SparseAdam) updates only those; AdamW the rest. For 10^6 items, where "
        "a dense step over the whole table is most of the time; needs weight_decay = 0")

    bucket_by_length: bool = knob(
        False, "batches of windows of similar length (shuffled windows, sorted by length within pools of 64 batches, "
        "batches served in random order): the trimmed batches compute less padding, so an epoch over logs of short "
        "histories is faster; which windows share a step changes, so the trained numbers do too")

    def check(self) -> None:
        if self.sparse_embeddings and self.loss != "sampled":
            raise ConfigError("sparse_embeddings = true needs loss = 'sampled': the full softmax reads every item's "
                              "vector, so its gradient is dense anyway")
        if self.sparse_embeddings and self.weight_decay:
            raise ConfigError(f"sparse_embeddings = true needs weight_decay = 0 (got {self.weight_decay!r}): the lazy "
                              "Adam of the embedding rows has no weight decay")


# ---------------------------------------------------------------- parameter groups


def param_group(
    params: Iterable[nn.Parameter], lr: float | None = None, weight_decay: float = 0.0
) -> dict[str, Any]:
    """An optimiser parameter group (torch's own format) with its own ``lr`` (None: the run's) and
    ``weight_decay`` (as the optimiser reads it: decoupled for AdamW, an L2 term for Adam)."""
    group: dict[str, Any] = {"params": list(params), "weight_decay": weight_decay}
    if lr is not None:
        group["lr"] = lr
    return group


def decay_groups(module: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict[str, Any]]:
    """The default groups of ``module``'s trainable parameters: matrices and embeddings decayed by
    ``weight_decay``, vectors (LayerNorm gains, biases, scalars) not -- decaying those only fights
    the fit."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        param_group([p for p in params if p.ndim >= 2], lr, weight_decay),
        param_group([p for p in params if p.ndim < 2], lr, 0.0),
    ]


def check_groups(module: nn.Module, groups: Sequence[Mapping[str, Any]]) -> None:
    """Every group parameter belongs to ``module`` (so it is moved, clipped and switched between
    train and eval with it), and every trainable parameter of ``module`` is in a group (so none is
    silently left untrained). Raises ConfigError otherwise."""
    owned = {id(p): name for name, p in module.named_parameters()}
    grouped: set[int] = set()
    for i, group in enumerate(groups):
        for p in group["params"]:
            if id(p) not in owned:
                raise ConfigError(f"optimizer group {i} holds a parameter of shape {tuple(p.shape)} that is not in "
                                  "the trained module; put every trained head in the module (e.g. an nn.ModuleDict)")
            grouped.add(id(p))
    missing = [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in grouped]
    if missing:
        raise ConfigError(f"trainable parameters in no optimizer group: {', '.join(missing[:5])}; add them to a "
                          "group or freeze them (requires_grad_(False))")


class SparseRowsAdam:
    """AdamW over the dense parameter groups and SparseAdam (lazy Adam: moments and weights move only
    at the rows a step's gradient holds) over the parameters listed in ``sparse``; one optimiser to
    :func:`fit` (``zero_grad``, ``step``). Groups hold either sparse or dense parameters, never both."""

    def __init__(self, groups: Sequence[Mapping[str, Any]], lr: float, weight_decay: float = 0.0,
                 sparse: Sequence[nn.Parameter] = ()) -> None:
        ids = {id(p) for p in sparse}
        dense = [g for g in groups if not any(id(p) in ids for p in g["params"])]
        rows = [dict(g) for g in groups if any(id(p) in ids for p in g["params"])]
        if any(not all(id(p) in ids for p in g["params"]) or g.get("weight_decay") for g in rows):
            raise ValueError("a sparse group must hold only sparse parameters, without weight decay")
        for g in rows:
            g.pop("weight_decay", None)
        self.dense = torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay) if dense else None
        self.rows = torch.optim.SparseAdam(rows, lr=lr) if rows else None
        self.optimizers = [o for o in (self.dense, self.rows) if o is not None]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()


def sparse_rows(model: nn.Module) -> dict[str, Any]:
    """``sparse_embeddings``: switch ``model``'s item table to sparse gradients (lookups only; the
    caller switches it back after training) and return :func:`fit`'s ``groups`` and ``optimizer``
    for it: the table alone under a lazy Adam, the other parameters under AdamW."""
    table = model.item_emb.weight
    rest = [p for p in model.parameters() if p.requires_grad and p is not table]
    model.item_emb.sparse = True
    return dict(groups=[param_group([table]), param_group([p for p in rest if p.ndim >= 2]),
                        param_group([p for p in rest if p.ndim < 2])],
                optimizer=functools.partial(SparseRowsAdam, sparse=[table]))


def clip_gradients(params: Sequence[nn.Parameter], max_norm: float) -> None:
    """Clip the global gradient norm of ``params`` to ``max_norm``: torch's ``clip_grad_norm_``, which
    sparse gradients (``sparse_embeddings``) do not pass, so with one of those the norm is computed here
    (a sparse gradient coalesced first: a row drawn twice is one row)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(g.is_sparse for g in grads):
        nn.utils.clip_grad_norm_(params, max_norm)
        return
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    sq = sum(((p.grad.values() if p.grad.is_sparse else p.grad).float() ** 2).sum()
             for p in params if p.grad is not None)
    coef = torch.clamp(max_norm / (torch.sqrt(sq) + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.dtype))


# ---------------------------------------------------------------- the loop


def fit(
    module: nn.Module,
    batches: BatchSource[B],
    loss_fn: LossClosure[B],
    *,
    epochs: int,
    lr: float,
    seed: SeedTree,
    groups: Sequence[Mapping[str, Any]] | None = None,
    weight_decay: float = 0.0,
    grad_clip: float = 0.0,
    device: DevicePref = "auto",
    prepare: Prepare[B] | None = None,
    inner_steps: int = 1,
    progress: bool = True,
    desc: str = "train",
    order_stream: str = "batch_order",
    optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
) -> list[dict[str, float]]:
    """Train ``module`` in place; return one metrics row per epoch. The module ends in eval mode.

    ``groups`` are the optimiser's parameter groups (:func:`param_group`; a group without its own
    ``lr`` uses ``lr``); None means :func:`decay_groups` of ``module`` with ``weight_decay`` (which
    is only for that default). ``grad_clip`` > 0 clips the global gradient norm of all of
    ``module``'s parameters. ``optimizer(groups, lr=lr, weight_decay=0.0)`` builds the optimiser.

    Streams of ``seed``: ``order_stream`` the batch order (``run.order``), ``"dropout"`` the dropout
    masks (``run.dropout``). Torch's CPU threads: ``RECSIM_POST_THREADS`` when set
    (:func:`~recsim_post.models.device.apply_threads`).
    """
    if inner_steps < 1:
        raise ConfigError(f"inner_steps = {inner_steps} is out of range: must be >= 1")
    if groups is not None and weight_decay:
        raise ConfigError("weight_decay is the decay of the default groups; with explicit groups set it per group")
    apply_threads()  # before the early return too: a bad RECSIM_POST_THREADS fails every run alike
    if epochs == 0:
        module.eval()
        return []
    device = pick_device(device)
    module.to(device)
    groups = decay_groups(module, weight_decay) if groups is None else groups
    check_groups(module, groups)
    opt = optimizer(groups, lr=lr, weight_decay=0.0)
    trained = [p for p in module.parameters() if p.requires_grad]
    run = Run(
        device,
        order=torch.Generator().manual_seed(seed.integer(order_stream)),
        dropout=torch.Generator(device=device).manual_seed(seed.integer("dropout")),
    )

    history: list[dict[str, float]] = []
    with tqdm(total=None, desc=desc, disable=not progress, leave=False) as bar:
        for epoch in range(epochs):
            run.epoch = epoch
            module.train()
            epoch_batches = batches(run)
            if bar.total is None and isinstance(epoch_batches, Sized):
                bar.total = epochs * len(epoch_batches)
            sums: dict[str, torch.Tensor] = {}
            steps = 0
            for batch in epoch_batches:
                if prepare is not None:
                    with torch.no_grad():
                        batch = prepare(module, batch)
                for _ in range(inner_steps):
                    loss, metrics = loss_fn(module, batch, run)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip > 0:
                        clip_gradients(trained, grad_clip)
                    opt.step()
                    for name, value in {"loss": loss, **metrics}.items():
                        sums[name] = sums.get(name, 0.0) + torch.as_tensor(value).detach().float()
                    steps += 1
                bar.update(1)
            if steps == 0:
                raise LogError(f"{desc}: the batch source yielded no batch in epoch {epoch + 1}")
            if bar.total is None:  # an unsized source: its length is known after one epoch
                bar.total = epochs * bar.n
            # One host sync per epoch, not per step.
            row = {"epoch": epoch + 1, **{k: float(v) / steps for k, v in sums.items()}}
            history.append(row)
            bar.set_postfix(epoch=epoch + 1, loss=f"{row['loss']:.4f}")
    module.eval()
    return history


# ---------------------------------------------------------------- sequence policies on windows


def window_batches(windows: Windows, batch_size: int, bucket: bool = False) -> BatchSource[Batch]:
    """The batch source of a sequence model: shuffled windows (``bucket``: of similar length,
    :meth:`Windows.batches`), all-padding columns trimmed, on the run's device."""

    def batches(run: Run) -> Iterable[Batch]:
        return (batch.trim().to(run.device) for batch in windows.batches(batch_size, run.order, bucket=bucket))

    return batches


def train_copy(
    policy_ref: TrainedPolicy,
    data: PostTrainData,
    loss_fn: LossFn | LogpLossFn | NllLossFn,
    cfg: TrainConfig,
    seed: SeedTree,
    progress: bool,
    stage: str,
    prepare: Prepare[Batch] | None = None,
    inner_steps: int = 1,
    on: Literal["logits", "logp", "nll", "sampled"] = "logits",
) -> TrainedPolicy:
    """The plumbing most methods share: copy π_ref, cut the clicks into windows and :func:`fit` the
    copy to ``loss_fn``, recording the per-epoch metrics in its history. ``policy_ref`` is left
    untouched.

    ``on = "logits"``: ``loss_fn(logits (B, L, n_items), batch)`` (item policies only);
    ``on = "logp"``: ``loss_fn(logp, batch)`` with the :data:`LogpLossFn` scorer, for any policy;
    ``on = "sampled"`` (``cfg.loss = "sampled"``): ``loss_fn(nll (B, L), batch)`` with nll the sampled
    softmax's −log π(y_t|x_t) at real positions and 0 at padding (:func:`sampled_nll`);
    ``on = "nll"``: ``loss_fn(nll (B, L), batch)`` for a loss that reads only the targets' −log π(y_t|x_t)
    (the weighted-SFT family): the exact −log π from the :data:`LogpLossFn` scorer under ``cfg.loss =
    "full"`` (any policy), the sampled softmax's estimate under ``"sampled"``."""
    if data.n_items != policy_ref.n_items:
        raise ConfigError(f"n_items = {data.n_items} does not match the policy's catalogue of {policy_ref.n_items}")
    if on not in ("logp", "nll") and is_token_model(policy_ref.model):
        raise ConfigError(f"method {stage!r} trains on item logits over the whole catalogue and has no token-level "
                          "version: use it with generate = 'item'")
    if cfg.loss == "sampled" and on not in ("sampled", "nll"):
        raise ConfigError(f"loss = 'sampled' does not fit method {stage!r}: the sampled softmax replaces the targets' "
                          "−log π(y|x) only (methods bc, linear-rsft, exp-rsft, asft); use loss = 'full'")
    if on == "nll":
        on = "sampled" if cfg.loss == "sampled" else "logp"
        nll_fn = loss_fn
        if on == "logp":
            loss_fn = lambda logp, batch: nll_fn(-logp(batch.targets), batch)  # noqa: E731
    elif on == "sampled" and cfg.loss != "sampled":
        raise ValueError(f"on = 'sampled' needs loss = 'sampled', not {cfg.loss!r}")
    policy = policy_ref.clone()
    windows = data.windows(policy.max_len)
    if cfg.epochs and len(windows) == 0:
        raise LogError("no training windows: every user in the clicks has fewer than two clicks")

    def logits_loss(model: nn.Module, batch: Batch, run: Run) -> tuple[torch.Tensor, Metrics]:
        with run.autocast():
            logits = model(batch.inputs, generator=run.dropout)
        return loss_fn(logits.float(), batch)

    def logp_loss(model: nn.Module, batch: Batch, run: Run) -> tuple[torch.Tensor, Metrics]:
        return loss_fn(target_scorer(model, batch.inputs, run.dropout), batch)

    if on == "sampled":
        closure = sampled_nll(loss_fn, windows, policy.n_items, cfg, seed)
    else:
        closure = logits_loss if on == "logits" else logp_loss
    sparse = sparse_rows(policy.model) if cfg.sparse_embeddings else {}
    try:
        history = fit(
            policy.model, window_batches(windows, cfg.batch_size, cfg.bucket_by_length), closure,
            epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, device=cfg.device,
            seed=seed, prepare=prepare, inner_steps=inner_steps, progress=progress, desc=stage, **sparse,
        )
    finally:
        policy.model.item_emb.sparse = False  # a trained policy scores the whole catalogue as usual
    policy.history.extend({"stage": stage, **row} for row in history)
    return policy


def sampled_nll(
    loss_fn: NllLossFn, windows: Windows, n_items: int, cfg: TrainConfig, seed: SeedTree
) -> LossClosure[Batch]:
    """The loss closure of ``on = "sampled"``: the model's hidden states at the batch's real positions
    only, scored against their targets and ``cfg.negatives`` shared negatives (no ``(B, L, n_items)``
    logits, no outputs at padding), then ``loss_fn(nll (B, L), batch)``.

    Negatives are drawn from ``Q(j) ∝ (clicks on j + 1)^proposal_power`` over the windows' targets
    (:class:`~recsim_post.posttrain.sampled.Proposal`), from a CPU generator seeded by the stream
    ``"negatives"`` of ``seed``: the batch order and dropout masks are those of a full-softmax run."""
    proposal = Proposal(target_counts(windows.targets, windows.mask, n_items), cfg.proposal_power)
    draws = torch.Generator().manual_seed(seed.integer("negatives"))
    log_q = proposal.log_q.float()

    def loss(model: nn.Module, batch: Batch, run: Run) -> tuple[torch.Tensor, Metrics]:
        nonlocal log_q
        log_q = log_q.to(run.device)  # once: a no-op after the first step
        negatives = proposal.draw(cfg.negatives, draws).to(run.device)
        with run.autocast():
            h = model.encode(batch.inputs, generator=run.dropout)[batch.mask]
            nll = sampled_softmax_nll(h, batch.targets[batch.mask], negatives, log_q, model.item_vectors)
        full = torch.zeros(batch.mask.shape, device=nll.device).masked_scatter(batch.mask, nll)
        return loss_fn(full, batch)

    return loss


__all__ = [
    "BatchSource", "SparseRowsAdam", "clip_gradients", "sparse_rows", "LogpLossFn", "LossClosure", "LossFn", "Prepare", "Run", "TrainConfig", "check_groups", "decay_groups",
    "NllLossFn", "fit", "param_group", "sampled_nll", "train_copy", "window_batches",
]
