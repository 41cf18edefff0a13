"""torchgfn's TB and DB losses on a toy prefix trie, for tests/test_gflownet.py's parity test.

Runs under the separate torchgfn venv (``RECSIM_POST_GFN_PYTHON``, built by .ci/run): it imports
neither recsim_post nor anything of the main venv. Usage::

    python compute.py IN.npz OUT.npz

IN holds the trie (``codes`` (n_items, L'), ``k`` tokens), per context c the per-node logits
``logits[c]`` (n_nodes, K) and log-flows ``log_flow[c]`` (n_nodes,), ``log_r[c]`` (n_items,),
``log_z[c]``, the trajectories' contexts ``ctx`` and items ``items``, and the reward exponent
``beta``. Nodes are numbered as the test's ``Trie`` numbers them (the root 0, then each new prefix
in item order, level by level along each item's path).

The trie becomes a torchgfn ``DiscreteEnv``: a state is a node id, actions are the K tokens plus
exit, an internal node allows the tokens of its children, a leaf allows only exit, and P_B = 1
(``pb=None, constant_pb=True``: the trie is a tree). Per context, the logits table is the forward
policy (a ``DiscretePolicyEstimator``, masked log-softmax done by torchgfn), log Z(x) a parameter,
and the log F table a ``ScalarEstimator`` whose leaves hold β log R (our log F(terminal) := β log R).
Each trajectory is built by stepping the env with the item's tokens and an exit. Losses are taken
with ``recalculate_all_logprobs=True`` and ``reduction="none"``.

OUT: ``tb_per`` (B,), ``tb_mean``, ``db_per`` (B, L') the squared residual of each token edge,
``db_exit`` (B,) the residual of each trajectory's exit edge, ``db_sum`` (all transitions),
``version``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from gfn import __version__
from gfn.actions import Actions
from gfn.containers import Trajectories
from gfn.env import DiscreteEnv
from gfn.estimators import DiscretePolicyEstimator, ScalarEstimator
from gfn.gflownet import DBGFlowNet, TBGFlowNet
from gfn.preprocessors import IdentityPreprocessor
from gfn.states import DiscreteStates

torch.set_default_dtype(torch.float64)  # compare to 1e-6 with room to spare


def build_trie(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(path (n_items, L'+1) node ids, child (n_nodes, k) node or -1, parent_token (n_nodes,))."""
    n, steps = codes.shape
    index: dict[tuple, int] = {(): 0}
    path = np.zeros((n, steps + 1), np.int64)
    for y in range(n):
        for level in range(1, steps + 1):
            path[y, level] = index.setdefault(tuple(codes[y, :level]), len(index))
    child = np.full((len(index), k), -1, np.int64)
    parent_token = np.full(len(index), -1, np.int64)
    for y in range(n):
        for level in range(steps):
            child[path[y, level], codes[y, level]] = path[y, level + 1]
            parent_token[path[y, level + 1]] = codes[y, level]
    return path, child, parent_token


class TrieEnv(DiscreteEnv):
    """States: node ids (shape (1,)); actions 0..K-1 the tokens, K the exit."""

    def __init__(self, child: np.ndarray, parent_token: np.ndarray, leaf_log_reward: np.ndarray) -> None:
        self.child = torch.as_tensor(child)
        self.parent = torch.full((len(child),), -1, dtype=torch.long)
        for node, row in enumerate(child):
            for c in row[row >= 0]:
                self.parent[c] = node
        self.parent_token = torch.as_tensor(parent_token)
        self.is_leaf = (self.child < 0).all(dim=1)
        self.leaf_log_reward = torch.as_tensor(leaf_log_reward)
        k = child.shape[1]
        super().__init__(n_actions=k + 1, s0=torch.zeros((1,), dtype=torch.long), state_shape=(1,),
                         sf=torch.full((1,), -1, dtype=torch.long))

    def make_states_class(self) -> type[DiscreteStates]:
        env = self

        class TrieStates(DiscreteStates):
            state_shape = (1,)
            s0 = env.s0
            sf = env.sf
            n_actions = env.n_actions
            make_random_states = env.make_random_states

            def _compute_forward_masks(self) -> torch.Tensor:
                node = self.tensor[..., 0].clamp(min=0)
                masks = torch.zeros((*self.batch_shape, self.n_actions), dtype=torch.bool)
                masks[..., :-1] = env.child[node] >= 0
                masks[..., -1] = env.is_leaf[node]  # a leaf's only action is exit
                return masks

            def _compute_backward_masks(self) -> torch.Tensor:
                node = self.tensor[..., 0].clamp(min=0)
                masks = torch.zeros((*self.batch_shape, self.n_actions - 1), dtype=torch.bool)
                token = env.parent_token[node]
                has = token >= 0
                masks[has, token[has]] = True  # one parent: the tree's P_B = 1
                return masks

        return TrieStates

    def step(self, states: DiscreteStates, actions: Actions) -> DiscreteStates:
        nxt = self.child[states.tensor[:, 0], actions.tensor[:, 0]]
        return self.States(nxt[:, None])

    def backward_step(self, states: DiscreteStates, actions: Actions) -> DiscreteStates:
        return self.States(self.parent[states.tensor[:, 0]][:, None])

    def log_reward(self, states: DiscreteStates) -> torch.Tensor:
        return self.leaf_log_reward[states.tensor[:, 0].clamp(min=0)]


class Table(nn.Module):
    """Lookup of a per-node table: node ids (N, 1) -> rows (N, width)."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        t = torch.as_tensor(table)
        self.table = nn.Parameter(t if t.ndim == 2 else t[:, None])
        self.input_dim = 1
        self.output_dim = self.table.shape[1]

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.table[nodes[..., 0].long().clamp(min=0)]


def trajectories(env: TrieEnv, codes: np.ndarray, log_rewards: torch.Tensor) -> Trajectories:
    """Step the env with each item's tokens then exit, as torchgfn's sampler records a batch."""
    n, steps = codes.shape
    states = env.reset(batch_shape=(n,))
    all_states, all_actions = [states], []
    for t in range(steps + 1):
        a = torch.full((n, 1), env.n_actions - 1, dtype=torch.long) if t == steps else torch.as_tensor(codes[:, t : t + 1])
        actions = env.actions_from_tensor(a)
        states = env._step(states, actions)
        all_states.append(states)
        all_actions.append(actions)
    return Trajectories(
        env=env, states=env.States.stack(all_states), actions=env.Actions.stack(all_actions),
        terminating_idx=torch.full((n,), steps + 1, dtype=torch.long), log_rewards=log_rewards,
    )


def main(src: str, dst: str) -> None:
    data = np.load(src)
    codes, k, beta = data["codes"].astype(np.int64), int(data["k"]), float(data["beta"])
    ctx, items = data["ctx"], data["items"]
    path, child, parent_token = build_trie(codes, k)
    leaves = path[:, -1]
    b, steps = len(items), codes.shape[1]
    tb_per, db_per, db_exit = np.zeros(b), np.zeros((b, steps)), np.zeros(b)
    db_sum = 0.0
    for c in np.unique(ctx):
        rows = np.nonzero(ctx == c)[0]
        leaf_log_r = np.zeros(len(child))
        leaf_log_r[leaves] = beta * data["log_r"][c]
        env = TrieEnv(child, parent_token, leaf_log_r)
        pre = IdentityPreprocessor(output_dim=1)
        # the exit action's logit: masked at internal nodes, the only valid action at a leaf, so
        # its value never matters (log P_F(exit | leaf) = 0)
        logits = np.concatenate([data["logits"][c], np.zeros((len(child), 1))], axis=1)
        pf = DiscretePolicyEstimator(Table(logits), n_actions=k + 1, preprocessor=pre)
        log_r = torch.as_tensor(beta * data["log_r"][c][items[rows]])
        traj = trajectories(env, codes[items[rows]], log_r)

        tb = TBGFlowNet(pf=pf, pb=None, logZ=nn.Parameter(torch.tensor(float(data["log_z"][c]))), constant_pb=True)
        tb_per[rows] = tb.loss(env, traj, recalculate_all_logprobs=True, reduction="none").detach().numpy()

        flow = data["log_flow"][c].copy()
        flow[leaves] = beta * data["log_r"][c]  # log F(terminal) := β log R
        log_f = ScalarEstimator(Table(flow), preprocessor=pre)
        db = DBGFlowNet(pf=pf, pb=None, logF=log_f, constant_pb=True)
        transitions = db.to_training_samples(traj)
        scores = db.get_scores(env, transitions, recalculate_all_logprobs=True).detach().numpy()
        losses = db.loss(env, transitions, recalculate_all_logprobs=True, reduction="none").detach().numpy()
        assert np.allclose(losses, scores**2)
        db_sum += float(losses.sum())
        # each transition is an edge (node -> next node); the exit edge ends in the sink (-1)
        edge = {}
        for s, s2, v in zip(transitions.states.tensor[:, 0].tolist(), transitions.next_states.tensor[:, 0].tolist(),
                            scores.tolist()):
            edge[(s, s2)] = v
        for r in rows:
            p = path[items[r]]
            db_per[r] = [edge[(int(p[l]), int(p[l + 1]))] ** 2 for l in range(steps)]
            db_exit[r] = edge[(int(p[-1]), -1)]
    np.savez(dst, tb_per=tb_per, tb_mean=tb_per.mean(), db_per=db_per, db_exit=db_exit, db_sum=db_sum,
             version=np.array(__version__))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
