"""``recsim-post evaluate --backend ray``: the exact pass over r* with the users in shards.

:func:`exact_sums` computes every number per user, chunk by chunk (:func:`chunk_users`: a size that
depends on the catalogue only); the only quantity summed across users inside the pass is each
policy's entropy-vs-temperature profile, one term per chunk. :func:`sharded_exact_sums` cuts the
users into contiguous shards **on chunk boundaries**, runs :func:`exact_sums` on each (in this
process, or as Ray tasks), and joins them with :func:`combine_sums`: per-user arrays concatenated in
user order, the profile re-added chunk by chunk in the unsharded order. Every chunk then holds the
same users as in the unsharded pass, so every policy scores the very same batches (a batched
matrix product may round differently for another batch) and the result is bit-identical to
``exact_sums`` over all the users, whatever the number of shards or the backend.

The truth (its per-user and catalogue arrays, without the sealed impressions) and the policies go
to the object store once (``ray.put``), shared by every shard's task; histories and beliefs must be
picklable callables (e.g. a ``HistoryIndex``'s ``gather``, not a method of an object holding the logs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from functools import partial
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..policy import Policy
from .ground_truth import BeliefFn, ExactSums, GroundTruth, Histories, chunk_users, combine_sums, exact_sums

BACKENDS = ("local", "ray")


def chunk_shards(n_users: int, shards: int, chunk: int) -> list[tuple[int, int]]:
    """Contiguous user ranges [lo, hi) of at most ``shards`` shards whose cuts fall on multiples of
    ``chunk`` (whole chunks, near-equal in number; no empty shard unless there are no users)."""
    if int(shards) < 1:
        raise ConfigError(f"shards = {shards} is out of range: must be >= 1")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be a positive number of users, got {chunk}")
    n_chunks = -(-int(n_users) // int(chunk))
    s = max(1, min(int(shards), n_chunks))
    cuts = [min(int(n_users), int(chunk) * (n_chunks * i // s)) for i in range(s + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def slim(truth: GroundTruth) -> GroundTruth:
    """The truth a shard needs (users, catalogue, logger, trend): without the sealed impressions and
    theta's history, which can outweigh everything else and which the exact pass never reads."""
    return dataclasses.replace(truth, impressions=None, theta_history=None)


def _shard_sums(truth: GroundTruth, users: np.ndarray, policies: Mapping[Hashable, Policy], belief: BeliefFn | None,
                histories: Histories | None, lo: int, hi: int, *, k: int, chunk: int, sharpness: bool,
                ref_of: Mapping[Hashable, Hashable] | None) -> ExactSums:
    """One shard's pass over ``users[lo:hi]`` (the body of a :func:`map_row_shards` task)."""
    return exact_sums(truth, users[lo:hi], policies, k, belief=belief, chunk=chunk, histories=histories,
                      sharpness=sharpness, ref_of=ref_of)


def ray_module():  # noqa: ANN201 - the ray module
    """Ray, or a one-line ConfigError naming the install."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'recsim-post[sweep]' (or pip install ray)") from None
    return ray


@contextlib.contextmanager
def ray_session() -> Iterator[tuple[Any, int]]:
    """(ray, the CPUs it sees): Ray as it is when it is up, else started here (quietly: its INFO lines
    would break a table on stdout) and shut down on the way out."""
    ray = ray_module()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray, max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()


def _threaded(fn: Callable[..., Any], threads: int, *args: Any) -> Any:
    """``fn(*args)`` on ``threads`` torch threads: a Ray task's torch runs on the driver's count, so
    its float32 products round as the driver's."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    return fn(*args)


def map_row_shards(fn: Callable[..., Any], n: int, step: int, shared: Sequence[Any], shards: int | None = None,
                   backend: str = "local") -> list[Any]:
    """``[fn(*shared, lo, hi) for each shard]`` over rows [0, n) cut into contiguous shards of whole
    ``step``-row chunks (:func:`chunk_shards`), in shard order: one after the other in this process
    ("local"; ``shards`` None = 1), or as Ray tasks ("ray"; None = one per CPU Ray sees), each
    ``shared`` object put in the object store once. ``fn`` must walk its rows in ``step`` chunks from
    ``lo``, so every chunk holds the rows of the unsharded pass and its numbers are the same."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend '{backend}' is not one of {', '.join(BACKENDS)}")
    if shards is not None and int(shards) < 1:
        raise ConfigError(f"shards = {shards} is out of range: must be >= 1")
    if backend == "local":
        return [fn(*shared, lo, hi) for lo, hi in chunk_shards(n, shards or 1, step)]
    import torch

    with ray_session() as (ray, cpus):
        task = ray.remote(num_cpus=1)(_threaded)
        refs = [ray.put(x) for x in shared]
        return list(ray.get([task.remote(fn, torch.get_num_threads(), *refs, lo, hi)
                             for lo, hi in chunk_shards(n, shards or cpus, step)]))


def sharded_exact_sums(
    truth: GroundTruth,
    users: np.ndarray,
    policies: Mapping[Hashable, Policy] | None = None,
    k: int = 10,
    belief: BeliefFn | None = None,
    chunk: int | None = None,
    histories: Histories | None = None,
    sharpness: bool = False,
    ref_of: Mapping[Hashable, Hashable] | None = None,
    shards: int | None = None,
    backend: str = "local",
) -> ExactSums:
    """:func:`exact_sums` with ``users`` in contiguous shards of whole chunks: bit-identical numbers.

    ``backend`` "local": the shards one after the other in this process; "ray": one Ray task each
    (``ray.init`` here unless Ray is up, shut down after only if started here). ``shards=None``: one
    per CPU Ray sees (local: 1).
    """
    users = np.asarray(users, np.int64)
    chunk = chunk_users(truth.n_items) if chunk is None else int(chunk)
    fn = partial(_shard_sums, k=k, chunk=chunk, sharpness=sharpness, ref_of=ref_of)
    # histories and beliefs can hold every user's clicks or a reward model: shared, put once on Ray
    shared = (slim(truth) if backend == "ray" else truth, users, dict(policies or {}), belief, histories)
    return combine_sums(map_row_shards(fn, len(users), chunk, shared, shards, backend))
