"""Score policies: exact ground truth next to offline metrics on held-out logs.

The evaluator is the one place where public logs and the sealed truth meet:

* ground truth: every evaluation user's public click history at the end of logging (time T) is
  fed to the policy, and its softmax is scored exactly against r*(u, ., T) (see ground_truth.py);
* offline metrics: leave-last-out -- the policy sees a user's clicks before the last one and is
  ranked on the last (NDCG@k, HR@k, MRR over the full catalogue, history excluded);
* closed loop (when :attr:`Evaluator.closed_loop` is set): the policy is deployed for H more rounds
  on a copy of the world at T and earns the summed r* of what users click (see rollout.py).

Reference rows anchor the table: the uniform policy, a popularity baseline (click counts in the
training split), the logging policy at T and the oracle (ranks by the true reward).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Hashable, Mapping

import numpy as np
import pandas as pd
import torch

from ..logs.public import HistoryIndex, PublicLogs, split_leave_last_out
from ..metrics.offline import metrics_from_ranks, target_ranks
from ..metrics.reward_report import reward_model_report
from ..policy import HISTORY_LEN, Context, Policy, check_policy
from ..posttrain.reward_model import next_item_scores
from ..seeding import SeedTree
from ..truth.ground_truth import BUDGET_BYTES, ExactSums, GroundTruth, References, chunk_users, exact_sums, references
from ..truth.references import reference_policies
from ..truth.sharded import sharded_exact_sums
from ..truth.sharpness import TAU_GRID, Tempered, matching_tau, nll_profile
from ..truth.rollout import ClosedLoop
from .report import SMALL_K, ResultRow


TUNE_CLICKS = 50_000
"""At most this many held-out clicks calibrate ``tau_nll`` (every k-th test user, k = ⌈n / 50,000⌉):
the likelihood at 49 temperatures costs 49 passes over the catalogue per click, most of
``evaluate`` at 10^6 users, while the grid's argmin is settled long before (its step is 19 % in τ)."""


@dataclass(frozen=True)
class ModelBelief:
    """A reward model's R̂(h_u, i) for every item after each user's history at T: a picklable
    callable (the reward model and the clicks' index, not the evaluator), for shards on Ray."""

    reward_model: Any
    index: HistoryIndex
    n_items: int

    def __call__(self, users: np.ndarray) -> np.ndarray:
        """(B, n_items) float64: the members' mean, scored at the last position only, in sub-batches
        that keep the members' (E, rows, n_items) scores within the byte budget. The mean is taken in
        float64 (a float32 mean of E members is off by up to half an ulp, ~3e-8 relative, per item)."""
        rm = self.reward_model
        max_len = int(getattr(rm, "max_len", HISTORY_LEN))
        hist = self.index.gather(users, HISTORY_LEN)[:, -max_len:]
        out = np.empty((len(users), self.n_items))
        # the head holds about three (E, rows, n_items) float32 arrays at once (scores, + item bias, + user bias)
        step = max(1, BUDGET_BYTES // (3 * 4 * max(int(getattr(rm, "n_members", 1)), 1) * self.n_items))
        with torch.no_grad():
            for lo in range(0, len(users), step):
                scores = next_item_scores(rm, torch.from_numpy(hist[lo : lo + step]))
                out[lo : lo + step] = scores.mean(dim=0, dtype=torch.float64).cpu().numpy()
        return out


@dataclass
class Evaluator:
    """Ground truth and held-out data for one log folder, prepared once for many policies."""

    truth: GroundTruth
    clicks: pd.DataFrame  # all public clicks, in history order
    users: np.ndarray  # users scored by ground truth
    refs: References
    test_users: np.ndarray
    test_targets: np.ndarray
    before_test: pd.DataFrame  # clicks with each user's held-out last click removed
    train: pd.DataFrame
    k: int = 10
    reward_model: Any = None
    """Optional reward model (posttrain.reward_model.RewardModel): adds its believed value per row."""
    closed_loop: ClosedLoop | None = None
    """Optional closed-loop rollouts from the world at T: adds the ``closed_loop`` value per row."""
    sharpness: bool = True
    """Add each row's entropy, greedy value, KL to its π_ref and temperature-matched values
    (truth/sharpness.py); False skips them (one pass over r* instead of two)."""
    backend: str = "local"
    """Where the exact passes run: "local" (this process) or "ray" (the users in shards on Ray tasks,
    truth/sharded.py); the numbers are the same, bit for bit."""
    shards: int | None = None
    """Shards of the exact passes (whole chunks of users); None: unsharded locally, one per CPU on Ray."""

    @classmethod
    def prepare(
        cls,
        logs: PublicLogs,
        truth: GroundTruth,
        k: int = 10,
        max_users: int | None = 5000,
        seed: SeedTree | None = None,
        backend: str = "local",
        shards: int | None = None,
    ) -> "Evaluator":
        """Split the clicks and compute the reference values (sampling at most ``max_users``);
        ``backend`` and ``shards``: where the exact passes run (:attr:`backend`)."""
        clicks = logs.clicks()
        split = split_leave_last_out(clicks)
        users = np.arange(truth.n_users)
        if max_users is not None and len(users) > max_users:
            rng = (seed or SeedTree(0)).generator("evaluation-users")
            users = np.sort(rng.choice(users, max_users, replace=False))
        key = ["user_id", "timestamp", "position"]
        keep = ~clicks.set_index(key).index.isin(split.test.set_index(key).index)
        return cls(
            truth=truth,
            clicks=clicks,
            users=users,
            refs=(references(truth, users, k) if backend == "local" and shards is None
                  else sharded_exact_sums(truth, users, k=k, shards=shards, backend=backend).references()),
            test_users=split.test["user_id"].to_numpy(np.int64),
            test_targets=split.test["item_id"].to_numpy(np.int64),
            before_test=clicks[keep].reset_index(drop=True),
            train=split.train,
            k=k,
            backend=backend,
            shards=shards,
        )

    @cached_property
    def _clicks_index(self) -> HistoryIndex:
        """Every user's clicks at T, grouped once: histories of any chunk of users are one gather."""
        return HistoryIndex.build(self.clicks)

    @cached_property
    def _before_test_index(self) -> HistoryIndex:
        return HistoryIndex.build(self.before_test)

    def _hist_at_t(self, users: np.ndarray) -> np.ndarray:
        return self._clicks_index.gather(users, HISTORY_LEN)

    def _offline(self, policy: Policy, tune: bool = False) -> dict[str, float]:
        """NDCG / HR at k and at 5, MRR on the held-out last clicks, streamed over chunks of test users;
        with ``tune``, also ``tau_nll``: the temperature of :data:`sharpness.TAU_GRID` that maximises
        the held-out clicks' log-likelihood under the full softmax (what a team would calibrate on),
        over at most :data:`TUNE_CLICKS` of them (every k-th test user beyond that)."""
        n = len(self.test_users)
        small = min(SMALL_K, self.k)
        if n == 0:
            nan = float("nan")
            return {f"ndcg@{self.k}": nan, f"hr@{self.k}": nan, "mrr": nan, f"ndcg@{small}": nan,
                    f"hr@{small}": nan, "tau_nll": nan}
        ranks = np.empty(n, np.int64)
        nll = np.zeros(len(TAU_GRID))
        stride = -(-n // TUNE_CLICKS)  # 1 up to TUNE_CLICKS test users: every one
        step = chunk_users(self.truth.n_items)
        for lo in range(0, n, step):
            users = self.test_users[lo : lo + step]
            hist = self._before_test_index.gather(users, HISTORY_LEN)
            logits = policy.logits(hist, Context(users))
            targets = self.test_targets[lo : lo + step]
            ranks[lo : lo + step] = target_ranks(logits, targets, exclude=hist)
            if tune:
                pick = slice(None) if stride == 1 else slice((-lo) % stride, None, stride)  # rows lo + j with lo + j ≡ 0 (mod stride)
                nll += nll_profile(logits[pick], targets[pick]).sum(axis=0)
        out = {**metrics_from_ranks(ranks, k=self.k), **metrics_from_ranks(ranks, k=small)}
        out["tau_nll"] = float(TAU_GRID[int(np.argmin(nll))]) if tune and np.isfinite(nll).any() else float("nan")
        return out

    def _belief(self, users: np.ndarray) -> np.ndarray:
        """The reward model's R̂(h_u, i) for every item after each user's history at T (:class:`ModelBelief`)."""
        return ModelBelief(self.reward_model, self._clicks_index, self.truth.n_items)(users)

    def _exact(self, policies: Mapping[Hashable, Policy], ref_of: Mapping[Hashable, Hashable] | None = None,
               belief: bool = True) -> ExactSums:
        """One pass over r* for the references and every policy, each given the histories at T."""
        belief_fn = None
        if belief and self.reward_model is not None:
            belief_fn = ModelBelief(self.reward_model, self._clicks_index, self.truth.n_items)
        return self._sums(policies, belief=belief_fn, sharpness=self.sharpness and belief, ref_of=ref_of)

    def _sums(self, policies: Mapping[Hashable, Policy], **kwargs: Any) -> ExactSums:
        """:func:`exact_sums` over :attr:`users` with their histories at T; with :attr:`backend` "ray"
        or :attr:`shards`, the users in shards of whole chunks (truth/sharded.py): the same numbers."""
        if self.backend == "local" and self.shards is None:
            return exact_sums(self.truth, self.users, policies, self.refs.k, histories=self._hist_at_t, **kwargs)
        hist = partial(self._clicks_index.gather, max_len=HISTORY_LEN)  # picklable: the index, not the evaluator
        return sharded_exact_sums(self.truth, self.users, policies, self.refs.k, histories=hist,
                                  shards=self.shards, backend=self.backend, **kwargs)

    def _closed(self, policy: Policy) -> float | None:
        if self.closed_loop is None:
            return None
        return self.closed_loop.run(policy).mean

    def rows(self, policies: Mapping[str, Policy] | None = None, references: bool = True,
             pi_refs: Mapping[str, Policy] | None = None) -> list[ResultRow]:
        """The reference rows (unless ``references`` is False), then one row per trained policy, with
        one pass over r* (and over the reward model's beliefs) shared by all of them.

        ``pi_refs`` maps a trained policy's name to the π_ref it was post-trained from: its row then
        gets KL(π ‖ π_ref) and the value at π_ref's entropy (truth/sharpness.py); with
        :attr:`sharpness` a second pass scores each trained policy at its matched and its
        likelihood-tuned temperature.

        A policy gets the same numbers here as alone (:meth:`policy_row`): the chunks depend on the
        catalogue size only.
        """
        policies = {name: check_policy(p, self.truth.n_items, f"policy {name!r}") for name, p in (policies or {}).items()}
        n = self.truth.n_items
        refs_p = reference_policies(n, self.train, self.truth.logger, self.truth.trend, self.truth) if references else {}
        scored: dict[tuple[str, str], Policy] = {}  # (kind, method) -> policy
        if references:
            scored[("reference", "popularity")] = refs_p["popularity"]
            scored[("reference", "logging policy")] = refs_p["logging policy"]
        for name, policy in policies.items():
            scored[("trained", name)] = policy
        ref_of: dict[Hashable, Hashable] = {}
        if self.sharpness:
            ids: dict[int, tuple[str, str]] = {}
            for name, ref in (pi_refs or {}).items():
                if name in policies:
                    key = ids.setdefault(id(ref), ("pi_ref", str(len(ids))))
                    scored[key] = ref
                    ref_of[("trained", name)] = key
        sums = self._exact(scored, ref_of)
        refs = self.refs
        offline = {key: self._offline(p, tune=self.sharpness and key[0] == "trained")
                   for key, p in scored.items() if key[0] != "pi_ref"}
        tempered = self._tempered(scored, sums, ref_of, offline) if self.sharpness else {}

        def row(kind: str, name: str) -> ResultRow:
            key = (kind, name)
            policy = scored[key]
            v = sums.policy(key, refs)
            m = offline[key]
            small = min(SMALL_K, self.k)
            extra: dict[str, Any] = {}
            if self.sharpness:
                top1 = float(sums.top1[key].mean())
                extra = dict(entropy=float(sums.entropy[key].mean()),
                             kl_ref=float(sums.kl[key].mean()) if key in sums.kl else None,
                             top1_value=top1, top1_norm=refs.normalise(top1, top1).value_norm,
                             **tempered.get(key, {}))
            return ResultRow(
                name, kind, float(v.value), float(v.value_norm), float(v.topk_value), float(v.topk_norm),  # type: ignore[arg-type]
                m[f"ndcg@{self.k}"], m[f"hr@{self.k}"], m["mrr"],
                sums.believed(key) if self.reward_model is not None else None,
                self._closed(policy), ndcg_small=m[f"ndcg@{small}"], hr_small=m[f"hr@{small}"], small_k=small,
                **extra,
            )

        out = []
        if references:
            believed = self.reward_model is not None
            sharp: dict[str, Any] = {}
            if self.sharpness:  # uniform: maximal entropy; its greedy pick is a random item
                sharp = dict(entropy=float(np.log(n)), top1_value=refs.uniform, top1_norm=0.0)
            out.append(
                # uniform's top-k is a random k items (every score ties): its value is the mean
                ResultRow("uniform", "reference", refs.uniform, 0.0, refs.uniform, 0.0,
                          rm_value=float(sums.uniform_belief.mean()) if believed else None,
                          closed_loop=self._closed(refs_p["uniform"]), **sharp)
            )
            out.append(row("reference", "popularity"))
            out.append(row("reference", "logging policy"))
            # The oracle samples argmax r* (a point mass) and shows the k best items; offline, it ranks
            # held-out clicks by their true reward -- which is not what users clicked on. Its belief is
            # the reward model's view of that point mass.
            m = self._offline(refs_p["oracle"])
            small = min(SMALL_K, self.k)
            if self.sharpness:  # a point mass on argmax r* (ties share it: their entropy is tiny)
                sharp = dict(entropy=None, top1_value=refs.oracle, top1_norm=1.0)
            out.append(
                ResultRow("oracle", "reference", refs.oracle, 1.0, refs.oracle_topk, 1.0,
                          m[f"ndcg@{self.k}"], m[f"hr@{self.k}"], m["mrr"],
                          float(sums.oracle_belief.mean()) if believed else None,
                          self._closed(refs_p["oracle"]), ndcg_small=m[f"ndcg@{small}"], hr_small=m[f"hr@{small}"],
                          small_k=small, **sharp)
            )
        out += [row("trained", name) for name in policies]
        return out

    def _tempered(self, scored: Mapping[tuple[str, str], Policy], sums: ExactSums,
                  ref_of: Mapping[Hashable, Hashable], offline: Mapping[tuple[str, str], dict[str, float]],
                  ) -> dict[tuple[str, str], dict[str, float | None]]:
        """Each trained policy's ground truth at two temperatures picked without the truth: the one
        matching its π_ref's mean entropy (only with a π_ref) and the held-out-likelihood one; one
        more pass over r* for all of them."""
        out: dict[tuple[str, str], dict[str, float | None]] = {}
        extra: dict[Hashable, Policy] = {}
        for key, policy in scored.items():
            if key[0] != "trained":
                continue
            row: dict[str, float | None] = {"tau_nll": offline[key]["tau_nll"]}
            if key in ref_of:
                target = float(sums.entropy[ref_of[key]].mean())
                row["tau_matched"] = matching_tau(sums.entropy_profile[key], target)
            for col in ("tau_matched", "tau_nll"):
                tau = row.get(col)
                if tau is not None and np.isfinite(tau):
                    extra[(col, key)] = Tempered(policy, float(tau))
            out[key] = row
        if extra:
            again = self._exact(extra, belief=False)
            for (col, key) in extra:
                v = again.policy((col, key), self.refs)
                out[key]["matched_norm" if col == "tau_matched" else "nll_tuned_norm"] = float(v.value_norm)
        return out

    def reference_rows(self) -> list[ResultRow]:
        """uniform, popularity (train-split click counts), the logging policy at T, the oracle."""
        return self.rows()

    def reward_report(self, reward_model: Any, max_len: int) -> pd.DataFrame:
        """The reward model against simple baselines on the held-out clicks (validation + test),
        on observed ratings and on the true reward (see reward_report.py)."""
        key = ["user_id", "timestamp", "position"]
        train_keys = pd.MultiIndex.from_frame(self.train[key])
        heldout = self.clicks[~pd.MultiIndex.from_frame(self.clicks[key]).isin(train_keys)]
        heldout = heldout.reset_index(drop=True)
        return reward_model_report(
            self.clicks, self.train, heldout, self.truth.impression_rewards(heldout), reward_model, max_len,
            reward=getattr(reward_model, "reward", "rating"),
        )

    def values(self, policies: Mapping[str, Policy]) -> dict[str, float]:
        """Each policy's normalised ground truth (``true_value_norm``) alone: one pass over r*, no
        offline metrics, sharpness or beliefs (e.g. ideal policies that read the truth)."""
        sums = self._sums(policies)
        return {name: float(sums.policy(name, self.refs).value_norm) for name in policies}

    def policy_row(self, method: str, policy: Policy, pi_ref: Policy | None = None) -> ResultRow:
        """Ground truth, offline metrics (and the closed-loop value) of a trained policy; to score
        several, :meth:`rows` shares one pass over r* between them."""
        return self.rows({method: policy}, references=False, pi_refs={method: pi_ref} if pi_ref is not None else None)[0]
