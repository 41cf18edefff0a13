"""Issue 12, "pre-train once": the pi_ref cache of `recsim-post train` (LOGS/cache/) and several
recipes in one call (`--agent a b c`). A cached pi_ref gives byte-identical policies; any change
of what pi_ref depends on misses; a bad cache file is replaced with a one-line note; bad input
exits 2 with nothing written."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from recsim_post import cli
from recsim_post.config import dumps_toml, to_dict
from recsim_post.outputs import CACHE_MARKER, OutputFolder, foreign
from recsim_post.posttrain import recipe
from recsim_post.posttrain.recipe import pretrain_key, reward_model_key
from recsim_post.posttrain.ref_cache import ENTRY, RefCache, public_hashes
from recsim_post.seeding import SeedTree

from .conftest import run_cli, tiny_scenario
from .test_safe_outputs import tree
from .test_story import small_agent

run = run_cli


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Tiny logs (seeds 0 and 1) and small recipes: bc, exp-rsft and ipo (a reward model) sharing
    one pi_ref, and exp-rsft with 2 pre-training epochs."""
    root = tmp_path_factory.mktemp("ref-cache")
    scenario = root / "tiny.toml"
    scenario.write_text(dumps_toml(to_dict(tiny_scenario())))
    files = {}
    for name in ("bc", "exp-rsft", "ipo"):
        files[name] = root / f"{name}.toml"
        files[name].write_text(dumps_toml(to_dict(small_agent(name, 1))))
    longer = small_agent("exp-rsft", 1)
    longer = dataclasses.replace(longer, pretrain=dataclasses.replace(longer.pretrain, epochs=2))
    files["exp-rsft-2"] = root / "exp-rsft-2.toml"
    files["exp-rsft-2"].write_text(dumps_toml(to_dict(longer)))
    for seed in (0, 1):
        files[f"logs{seed}"] = root / f"logs{seed}"
        assert cli.main(["simulate", "--scenario", str(scenario), "--seed", str(seed), "--out",
                         str(files[f"logs{seed}"]), "-q"]) == 0
    return files


def logs_copy(made: dict[str, Path], tmp_path: Path, seed: int = 0) -> Path:
    """A private copy of the seed's log folder (its marker still valid: times are kept)."""
    dest = tmp_path / f"logs{seed}"
    shutil.copytree(made[f"logs{seed}"], dest)
    return dest


@pytest.fixture
def count(monkeypatch) -> dict[str, int]:
    """How often pi_ref is pre-trained and a reward model fitted."""
    calls = {"pretrain": 0, "fit_reward": 0}
    for name in calls:
        real = getattr(recipe, name)

        def counted(*a, _real=real, _name=name, **k):  # noqa: ANN002, ANN003
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(recipe, name, counted)
    return calls


def entries(logs: Path) -> list[Path]:
    return sorted((logs / "cache").glob("pi_ref-*.pt"))


def lines_with(err: str, needle: str) -> list[str]:
    return [line for line in err.splitlines() if needle in line]


def same_policy(a: Path, b: Path) -> None:
    """Byte-identical files, and (belt and braces) equal logits on a few histories."""
    from recsim_post.models.load import load_policy

    assert a.read_bytes() == b.read_bytes()
    pa, pb = load_policy(a), load_policy(b)
    hist = torch.randint(0, pa.n_items, (6, 12), generator=torch.Generator().manual_seed(0)).numpy()
    assert (pa.logits(hist) == pb.logits(hist)).all()


# --------------------------------------------------------------------------------------------- #
# the cache
# --------------------------------------------------------------------------------------------- #


def test_a_cached_pi_ref_gives_a_byte_identical_policy(made, tmp_path, capsys, count):
    logs = logs_copy(made, tmp_path)
    agent = str(made["exp-rsft"])
    code, out, err = run(capsys, "train", "--logs", str(logs), "--agent", agent, "--out", str(tmp_path / "a.pt"))
    assert code == 0 and count["pretrain"] == 1, err
    assert len(entries(logs)) == 1 and (logs / "cache" / CACHE_MARKER).is_file()
    assert len(lines_with(err, "cached pi_ref in")) == 1 and not lines_with(err, "reusing")
    cache_before = tree(logs / "cache")

    code, out, err = run(capsys, "train", "--logs", str(logs), "--agent", agent, "--out", str(tmp_path / "b.pt"))
    assert code == 0 and count["pretrain"] == 1, err  # not pre-trained again
    (hit,) = lines_with(err, "reusing pi_ref from")
    assert hit.startswith("· reusing pi_ref from ") and str(entries(logs)[0]) in hit and "pre-trained 20" in hit
    same_policy(tmp_path / "a.pt", tmp_path / "b.pt")

    # --no-cache: pre-trains again, the same policy, and neither reads nor writes the cache
    code, out, err = run(capsys, "train", "--logs", str(logs), "--agent", agent, "--out", str(tmp_path / "c.pt"),
                         "--no-cache")
    assert code == 0 and count["pretrain"] == 2 and "cache" not in err, err
    same_policy(tmp_path / "a.pt", tmp_path / "c.pt")
    assert tree(logs / "cache") == cache_before


def test_what_pi_ref_depends_on_is_in_the_key(made, tmp_path, capsys, count):
    """Pre-training epochs, the seed and the logs' content each miss; the method and fine-tuning
    do not (recipes share pi_ref)."""
    logs = logs_copy(made, tmp_path)
    base = ["train", "--logs", str(logs), "-q"]
    assert run(capsys, *base, "--agent", str(made["exp-rsft"]), "--out", str(tmp_path / "a.pt"))[0] == 0
    assert count["pretrain"] == 1 and len(entries(logs)) == 1
    assert run(capsys, *base, "--agent", str(made["bc"]), "--out", str(tmp_path / "b.pt"))[0] == 0
    assert count["pretrain"] == 1  # another method, the same pi_ref
    assert run(capsys, *base, "--agent", str(made["exp-rsft-2"]), "--out", str(tmp_path / "c.pt"))[0] == 0
    assert count["pretrain"] == 2 and len(entries(logs)) == 2  # [pretrain] epochs
    assert run(capsys, *base, "--agent", str(made["exp-rsft"]), "--seed", "5", "--out", str(tmp_path / "d.pt"))[0] == 0
    assert count["pretrain"] == 3 and len(entries(logs)) == 3  # the training seed
    # other logs with this folder's cache entries in their cache folder: every one misses
    other = logs_copy(made, tmp_path, seed=1)
    shutil.copytree(logs / "cache", other / "cache")
    code, _, err = run(capsys, "train", "--logs", str(other), "--agent", str(made["exp-rsft"]), "--seed", "0",
                       "--out", str(tmp_path / "e.pt"))
    assert code == 0 and count["pretrain"] == 4 and not lines_with(err, "reusing"), err
    assert len(entries(other)) == 4


def test_key_components_unit(made):
    """The key, computed without training: each input that pi_ref depends on changes it."""
    from recsim_post.logs.check import read_manifest

    hashes = public_hashes(read_manifest(made["logs0"]))
    assert hashes and not any(name.startswith("sealed/") for name in hashes)
    agent = small_agent("exp-rsft", 1)
    cache = RefCache("unused", hashes, 60, SeedTree(0).child("training"))
    key = cache.key(agent)
    assert cache.key(agent) == key and len(key) == 24
    assert cache.key(small_agent("ipo", 1)) == key  # another method, the same pi_ref
    assert cache.key(dataclasses.replace(agent, finetune=dataclasses.replace(agent.finetune, epochs=9))) == key
    changed = [
        RefCache("unused", {**hashes, "interactions.parquet": "0" * 64}, 60, SeedTree(0).child("training")).key(agent),
        RefCache("unused", hashes, 60, SeedTree(1).child("training")).key(agent),
        cache.key(dataclasses.replace(agent, pretrain=dataclasses.replace(agent.pretrain, lr=1e-2))),
        cache.key(dataclasses.replace(agent, model=dataclasses.replace(agent.model, dim=32))),
    ]
    assert len({key, *changed}) == 1 + len(changed)
    assert pretrain_key(agent) == pretrain_key(small_agent("ipo", 1))
    ipo = small_agent("ipo", 1)
    assert reward_model_key(ipo) != reward_model_key(dataclasses.replace(ipo, reward="click"))


def test_key_includes_the_code(made, monkeypatch):
    from recsim_post.posttrain import ref_cache

    cache = RefCache("unused", {"interactions.parquet": "1" * 64}, 60, SeedTree(0))
    agent = small_agent("bc", 1)
    key = cache.key(agent)
    monkeypatch.setattr(ref_cache, "code_fingerprint", lambda: "another-version")
    assert cache.key(agent) != key


@pytest.mark.parametrize("damage", ["garbage", "truncated", "another-key"])
def test_a_bad_cache_file_is_replaced_with_one_note(made, tmp_path, capsys, count, damage):
    logs = logs_copy(made, tmp_path)
    agent = str(made["exp-rsft"])
    assert run(capsys, "train", "--logs", str(logs), "--agent", agent, "--out", str(tmp_path / "a.pt"), "-q")[0] == 0
    (entry,) = entries(logs)
    good = entry.read_bytes()
    if damage == "garbage":
        entry.write_bytes(b"not a torch file")
    elif damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    else:  # a well-formed entry under another key's name
        assert run(capsys, "train", "--logs", str(logs), "--agent", str(made["exp-rsft-2"]),
                   "--out", str(tmp_path / "x.pt"), "-q")[0] == 0
        other = next(p for p in entries(logs) if p != entry)
        entry.write_bytes(other.read_bytes())
    before = count["pretrain"]
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", agent, "--out", str(tmp_path / "b.pt"))
    assert code == 0 and "Traceback" not in err, err
    (note,) = lines_with(err, "ignoring the cached pi_ref")
    assert str(entry) in note and "pre-training it again and replacing the file" in note
    assert count["pretrain"] == before + 1
    same_policy(tmp_path / "a.pt", tmp_path / "b.pt")
    # replaced: the next run reuses it
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", agent, "--out", str(tmp_path / "c.pt"))
    assert code == 0 and lines_with(err, "reusing pi_ref") and count["pretrain"] == before + 1
    assert not [p for p in (logs / "cache").iterdir() if p.name.endswith(".tmp")]


def test_an_unwritable_cache_is_noted_and_training_goes_on(made, tmp_path, capsys):
    logs = logs_copy(made, tmp_path)
    (logs / "cache").write_text("a file where the cache folder would go")
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", str(made["bc"]), "--out", str(tmp_path / "a.pt"))
    assert code == 0 and (tmp_path / "a.pt").is_file(), err
    (note,) = lines_with(err, "cannot write the pi_ref cache")
    assert "going on without it" in note


def test_an_interrupted_cache_write_leaves_no_half_file(made, tmp_path, capsys, monkeypatch):
    import os

    logs = logs_copy(made, tmp_path)
    real = os.replace

    def interrupted(src, dst, *a, **k):  # noqa: ANN001, ANN002, ANN003
        if Path(dst).name.startswith("pi_ref-"):
            raise KeyboardInterrupt
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", interrupted)
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", str(made["bc"]), "--out", str(tmp_path / "a.pt"))
    assert code == 130
    assert not entries(logs) and not [p for p in (logs / "cache").iterdir() if p.name != CACHE_MARKER]
    assert not (tmp_path / "a.pt").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".a.pt")]


def test_the_cache_is_recsim_posts_own_for_ownership_checks(made, tmp_path, capsys):
    """A log folder with a cache is still simulate's (and a demo folder still the demo's), and
    simulate --out LOGS --overwrite replaces it; a user's file in the cache folder is not hidden."""
    logs = logs_copy(made, tmp_path)
    assert run(capsys, "train", "--logs", str(logs), "--agent", str(made["bc"]), "--out", str(tmp_path / "a.pt"), "-q")[0] == 0
    assert entries(logs) and foreign(logs, "simulate") is None
    code, _, err = run(capsys, "simulate", "--scenario", str(made["bc"].parent / "tiny.toml"), "--out", str(logs), "-q")
    assert code == 2 and "holds the results of an earlier 'recsim-post simulate'" in err  # not "files added"
    assert run(capsys, "simulate", "--scenario", str(made["bc"].parent / "tiny.toml"), "--out", str(logs),
               "--overwrite", "-q")[0] == 0
    assert not (logs / "cache").exists()

    demo = OutputFolder(tmp_path / "demo", "demo")
    with demo as tmp:
        (tmp / "results.csv").write_text("x")
    (tmp_path / "demo" / "logs" / "cache").mkdir(parents=True)
    (tmp_path / "demo" / "logs" / "cache" / CACHE_MARKER).write_text("{}")
    (tmp_path / "demo" / "logs" / "cache" / f"pi_ref-{'a' * 24}.pt").write_bytes(b"x")
    assert foreign(tmp_path / "demo", "demo") is None
    (tmp_path / "demo" / "logs" / "cache" / "notes.txt").write_text("mine")
    assert "logs/cache/notes.txt" in foreign(tmp_path / "demo", "demo")


# --------------------------------------------------------------------------------------------- #
# several recipes in one call
# --------------------------------------------------------------------------------------------- #


def test_several_agents_share_pi_ref_and_reward_model(made, tmp_path, capsys, count):
    logs = logs_copy(made, tmp_path)
    names = ("bc", "exp-rsft", "ipo")
    out = tmp_path / "policies"
    code, stdout, err = run(capsys, "train", "--logs", str(logs), "--agent", *(str(made[n]) for n in names),
                            "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["bc.pt", "exp-rsft.pt", "ipo.pt"]  # no marker, no temporaries
    assert stdout.splitlines() == [f"wrote {out / n}.pt" for n in names]
    assert count == {"pretrain": 1, "fit_reward": 1}
    assert len(entries(logs)) == 1
    # each is the policy a call of its own gives (from the cache: no pre-training)
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", str(made["ipo"]), "--out", str(tmp_path / "ipo.pt"))
    assert code == 0 and count["pretrain"] == 1 and lines_with(err, "reusing pi_ref")
    same_policy(out / "ipo.pt", tmp_path / "ipo.pt")
    # default: LOGS/policies/NAME.pt; a second call refuses existing files unless --overwrite
    argv = ("train", "--logs", str(logs), "--agent", str(made["bc"]), str(made["exp-rsft"]), "-q")
    assert run(capsys, *argv)[0] == 0
    assert sorted(p.name for p in (logs / "policies").iterdir()) == ["bc.pt", "exp-rsft.pt"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "already exists; pass --overwrite" in err
    assert run(capsys, *argv, "--overwrite")[0] == 0
    same_policy(out / "exp-rsft.pt", logs / "policies" / "exp-rsft.pt")


def refused(capsys, root: Path, *argv: str, needle: str) -> None:
    before = tree(root)
    code, _, err = run(capsys, *argv)
    assert code == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("recsim-post: error: ") and "Traceback" not in err, err
    assert needle in err, (needle, err)
    assert tree(root) == before


def test_bad_input_exits_2_with_nothing_written(made, tmp_path, capsys, count):
    logs = logs_copy(made, tmp_path)
    a, b = str(made["bc"]), str(made["exp-rsft"])
    base = ("train", "--logs", str(logs), "-q", "--agent")
    refused(capsys, tmp_path, *base, a, "no-such-agent", needle="unknown agent 'no-such-agent'")
    refused(capsys, tmp_path, *base, a, b, a, needle=f"--agent names {a} twice")
    refused(capsys, tmp_path, *base, "bc", "bc", needle="--agent names bc twice")
    refused(capsys, tmp_path, *base, "bc", a, needle="are both named 'bc'")
    (tmp_path / "a-file").write_text("x")
    refused(capsys, tmp_path, *base, a, b, "--out", str(tmp_path / "a-file"), needle="is a file: with several recipes")
    refused(capsys, tmp_path, *base, a, b, "--out", str(tmp_path / "both.pt"), needle="reads as a policy file")
    refused(capsys, tmp_path, *base, a, b, "--out", str(tmp_path / "a-file" / "x"), needle="which is a file, not a folder")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "exp-rsft.pt").write_bytes(b"the user's")
    refused(capsys, tmp_path, *base, a, b, "--out", str(tmp_path / "out"), needle="exp-rsft.pt already exists; pass --overwrite")
    assert count["pretrain"] == 0


def test_a_failure_in_one_recipe_writes_none(made, tmp_path, capsys, monkeypatch):
    logs = logs_copy(made, tmp_path)
    real = recipe.post_train

    def second_fails(ref, clicks, n_items, cfg, *a, **k):  # noqa: ANN001, ANN002, ANN003
        if cfg.name == "exp-rsft":
            raise OSError(28, "No space left on device")
        return real(ref, clicks, n_items, cfg, *a, **k)

    monkeypatch.setattr(recipe, "post_train", second_fails)
    out = tmp_path / "new" / "policies"
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", str(made["bc"]), str(made["exp-rsft"]),
                       "--out", str(out), "-q")
    assert code == 1 and err == "recsim-post: error: No space left on device\n"
    assert not (tmp_path / "new").exists()  # no policy, no temporary, not even the folders it made
    assert len(entries(logs)) == 1  # the pi_ref it pre-trained is kept for the next call


@pytest.mark.slow
def test_a_token_recipe_from_the_cache_is_byte_identical(made, tmp_path, capsys, count):
    """A token recipe's pi_ref (its semantic IDs part of the key) round-trips exactly too."""
    logs = logs_copy(made, tmp_path)
    agent = small_agent("sft-token", 1)
    agent = dataclasses.replace(agent, token_head=dataclasses.replace(agent.token_head, hidden=16))
    path = tmp_path / "sft-token.toml"
    path.write_text(dumps_toml(to_dict(agent)))
    argv = ("train", "--logs", str(logs), "--agent", str(path), "-q")
    assert run(capsys, *argv, "--out", str(tmp_path / "a.pt"))[0] == 0 and count["pretrain"] == 1
    assert run(capsys, *argv, "--out", str(tmp_path / "b.pt"))[0] == 0 and count["pretrain"] == 1
    same_policy(tmp_path / "a.pt", tmp_path / "b.pt")
    # other semantic IDs (tokenize writes LOGS/semantic_ids.parquet, read from then on): a miss
    assert run(capsys, "tokenize", "--logs", str(logs), "--levels", "2", "-q")[0] == 0
    assert run(capsys, *argv, "--out", str(tmp_path / "c.pt"))[0] == 0 and count["pretrain"] == 2
    assert len(entries(logs)) == 2


def test_the_cache_keeps_its_most_recently_used_entries_and_deletes_nothing_else(tmp_path):
    import os

    from recsim_post.models.policy import SequencePolicy, build_model

    notes: list[str] = []
    cache = RefCache(tmp_path / "cache", {"clicks.parquet": "0" * 64}, 20, SeedTree(0), say=notes.append,
                     max_entries=2)
    agents = [small_agent("bc", epochs) for epochs in (1, 2, 3, 4)]
    untrained = lambda a: lambda: SequencePolicy(build_model(a.model, 20), 20)  # noqa: E731 - no training needed
    foreign = ["pi_ref-notahash.pt", f"pi_ref-{'a' * 24}.pt.bak", "mine.pt", f"PI_REF-{'b' * 24}.pt"]
    for name in foreign:
        (tmp_path / "cache").mkdir(exist_ok=True)
        (tmp_path / "cache" / name).write_text("not a cache entry")
        os.utime(tmp_path / "cache" / name, ns=(1, 1))  # older than anything: still never evicted

    def age(agent, t: int) -> None:  # noqa: ANN001 - file times, not sleeps: whole-second file systems
        os.utime(cache.path(agent), ns=(t * 10**9, t * 10**9))

    cache(agents[0], untrained(agents[0]))
    age(agents[0], 100)
    cache(agents[1], untrained(agents[1]))
    age(agents[1], 200)
    assert cache(agents[0], untrained(agents[0])) is not None and cache.hits == 1  # a hit: agents[0] used now
    assert cache.path(agents[0]).stat().st_mtime > 200
    cache(agents[2], untrained(agents[2]))  # a third entry: the least recently used (agents[1]) goes
    kept = lambda: {p.name for p in (tmp_path / "cache").iterdir() if ENTRY.fullmatch(p.name)}  # noqa: E731
    assert kept() == {cache.path(agents[0]).name, cache.path(agents[2]).name}
    age(agents[0], 300)
    age(agents[2], 400)  # used after agents[0]: it stays when the next write evicts
    assert lines_with("\n".join(notes), "removed 1 least recently used pi_ref cache entry")
    cache(agents[3], untrained(agents[3]))
    assert kept() == {cache.path(agents[3]).name, cache.path(agents[2]).name}
    for name in foreign:
        assert (tmp_path / "cache" / name).read_text() == "not a cache entry"
    assert (tmp_path / "cache" / CACHE_MARKER).is_file()
