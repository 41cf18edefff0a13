"""Nothing the user has is ever lost: safe output paths, ownership, locks, atomic replacement,
recovery after a kill, and resumable workspaces (recsim_post.outputs), at the library level."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recsim_post import outputs
from recsim_post.errors import OutputError
from recsim_post.outputs import MARKER, OutputFile, OutputFolder, Workspace, cell_key, resolve_output


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) with its content: the file system as a user sees it."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_folder(out: Path | str, command: str, files: dict[str, str], **kw) -> Path:  # noqa: ANN003
    target = OutputFolder(out, command, **kw)
    with target as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
    return target.target


# --------------------------------------------------------------------------------------------- #
# paths that must never be outputs
# --------------------------------------------------------------------------------------------- #


def test_never_the_current_folder_its_ancestors_home_or_root(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    for path, needle in [
        (".", "is the current folder"), ("./", "is the current folder"), (str(work), "is the current folder"),
        ("..", "is an ancestor of the current folder"), ("../..", "is an ancestor of the current folder"),
        ("/", "is the root folder"), ("~", "is an ancestor of the current folder"),
        ("sub/../.", "is the current folder"), ("", "is empty"),
    ]:
        with pytest.raises(OutputError, match=needle):
            resolve_output(path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="is your home folder"):
        resolve_output("~")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"lies under .*file, which is a file, not a folder"):
        resolve_output("file/out")
    assert resolve_output("new/out") == tmp_path / "new" / "out"


def test_a_symlink_is_resolved_to_the_folder_it_points_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert resolve_output("link") == tmp_path / "real"
    os.symlink(tmp_path, tmp_path / "here")  # a link to the current folder is the current folder
    with pytest.raises(OutputError, match="is the current folder"):
        resolve_output("here")


# --------------------------------------------------------------------------------------------- #
# one folder
# --------------------------------------------------------------------------------------------- #


def test_a_folder_is_written_with_its_marker_and_nothing_else_is_left(tmp_path):
    out = write_folder(tmp_path / "x" / "out", "demo", {"a.txt": "1", "sub/b.txt": "2"})
    assert tree(out).keys() == {MARKER, "a.txt", "sub/b.txt"}
    marker = json.loads((out / MARKER).read_text())
    assert marker["command"] == "demo" and set(marker["files"]) == {"a.txt", "sub/b.txt"}
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["out"]  # no temporaries, no lock file


def test_own_folder_is_replaced_foreign_files_never_without_overwrite(tmp_path):
    out = write_folder(tmp_path / "out", "demo", {"a.txt": "1"})
    write_folder(out, "demo", {"a.txt": "2"})  # its own, unchanged: replaced without --overwrite
    assert (out / "a.txt").read_text() == "2"
    (out / "mine.txt").write_text("the user's")
    with pytest.raises(OutputError, match=r"holds files added or changed since recsim-post demo wrote it \(mine.txt\)"):
        OutputFolder(out, "demo")
    assert (out / "mine.txt").read_text() == "the user's"
    (out / "mine.txt").unlink()
    (out / "a.txt").write_text("edited by the user")
    with pytest.raises(OutputError, match=r"added or changed .*\(a.txt\)"):
        OutputFolder(out, "demo")
    with pytest.raises(OutputError, match="was written by 'recsim-post demo', not by 'sweep'"):
        OutputFolder(out, "sweep")
    write_folder(out, "sweep", {"c.txt": "3"}, overwrite=True)
    assert tree(out).keys() == {MARKER, "c.txt"}


def test_a_folder_without_a_marker_and_a_git_repository(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match=r"holds files recsim-post did not write \(notes.txt\); pass --overwrite"):
        OutputFolder(plain, "demo")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "code.py").write_text("x")
    with pytest.raises(OutputError, match="is a git repository"):
        OutputFolder(repo, "demo", overwrite=True)
    assert (repo / "code.py").read_text() == "x"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        OutputFolder(tmp_path / "afile", "demo", overwrite=True)


def test_simulate_style_folders_refuse_even_their_own(tmp_path):
    out = write_folder(tmp_path / "logs", "simulate", {"a": "1"}, replace_own=False)
    with pytest.raises(OutputError, match="holds the results of an earlier 'recsim-post simulate'"):
        OutputFolder(out, "simulate", replace_own=False)
    write_folder(out, "simulate", {"a": "2"}, replace_own=False, overwrite=True)
    assert (out / "a").read_text() == "2"


def test_a_failure_leaves_the_old_folder_and_no_trace(tmp_path):
    out = write_folder(tmp_path / "out", "demo", {"a.txt": "old"})
    before = tree(tmp_path)
    with pytest.raises(RuntimeError), OutputFolder(out, "demo") as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")
    assert tree(tmp_path) == before
    with pytest.raises(KeyboardInterrupt), OutputFolder(tmp_path / "p" / "q" / "new", "demo") as tmp:
        raise KeyboardInterrupt
    assert not (tmp_path / "p").exists()  # the parents it made are gone too


def test_a_second_writer_is_refused_while_the_first_works(tmp_path):
    first = OutputFolder(tmp_path / "out", "demo")
    with first as tmp:
        (tmp / "a").write_text("1")
        with pytest.raises(OutputError, match=r"being written by another recsim-post run \(pid \d+\)"):
            OutputFolder(tmp_path / "out", "demo")
        with pytest.raises(OutputError, match="being written by another"):
            Workspace(tmp_path / "out", "sweep", {})
    assert (tmp_path / "out" / "a").read_text() == "1"
    write_folder(tmp_path / "out", "demo", {"a": "2"})  # free again once the first is done


def test_a_folder_changed_during_the_run_is_not_replaced(tmp_path):
    out = write_folder(tmp_path / "out", "demo", {"a": "1"})
    target = OutputFolder(out, "demo")
    with pytest.raises(OutputError, match=r"changed while this run was working.*new results are in .*out\.new"):
        with target as tmp:
            (tmp / "a").write_text("2")
            (out / "added-meanwhile.txt").write_text("the user's")
    assert (out / "added-meanwhile.txt").read_text() == "the user's" and (out / "a").read_text() == "1"
    assert (tmp_path / "out.new" / "a").read_text() == "2"


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replacement_is_correct_with_and_without_an_atomic_exchange(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    out = write_folder(tmp_path / "out", "demo", {"a": "1", "b": "1"})
    write_folder(out, "demo", {"a": "2"})
    assert tree(out).keys() == {MARKER, "a"} and (out / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_next_run_cleans_up_after_a_killed_one(tmp_path):
    out = write_folder(tmp_path / "out", "demo", {"a": "old"})
    said: list[str] = []
    # killed while building: a hidden -new- folder; killed during a replacement: an -old- copy
    (tmp_path / ".out.recsim-post-new-1-aa").mkdir()
    (tmp_path / ".out.recsim-post-new-1-aa" / "half").write_text("x")
    (tmp_path / ".out.recsim-post-old-1-bb").mkdir()
    write_folder(out, "demo", {"a": "new"}, say=said.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert len(said) == 2 and all("removed" in s for s in said)
    # killed between "old folder renamed aside" and "new folder renamed in": the old one comes back
    os.rename(out, tmp_path / ".out.recsim-post-old-2-cc")
    (tmp_path / ".out.recsim-post-new-2-dd").mkdir()
    said.clear()
    write_folder(tmp_path / "other", "demo", {"z": "1"})  # another output in the same folder: untouched
    assert (tmp_path / ".out.recsim-post-old-2-cc").is_dir()
    target = OutputFolder(out, "demo", say=said.append)
    assert (out / "a").read_text() == "new" and any("restored" in s for s in said)
    with target as tmp:
        (tmp / "a").write_text("newer")
    assert (out / "a").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out"]


# --------------------------------------------------------------------------------------------- #
# one file
# --------------------------------------------------------------------------------------------- #


def test_output_file(tmp_path):
    path = tmp_path / "p" / "policy.pt"
    with OutputFile(path) as tmp:
        tmp.write_text("1")
    assert path.read_text() == "1" and sorted(p.name for p in path.parent.iterdir()) == ["policy.pt"]
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        OutputFile(path)
    with pytest.raises(OutputError, match="is a folder: give a file name"):
        OutputFile(tmp_path / "p")
    with pytest.raises(RuntimeError), OutputFile(path, overwrite=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert path.read_text() == "1" and sorted(p.name for p in path.parent.iterdir()) == ["policy.pt"]
    first = OutputFile(path, overwrite=True)
    with first as tmp:
        with pytest.raises(OutputError, match="being written by another"):
            OutputFile(path, overwrite=True)
        tmp.write_text("2")
    assert path.read_text() == "2"
    (path.parent / ".policy.pt.recsim-post-9-ab.tmp").write_text("left by a kill")
    with OutputFile(path, overwrite=True) as tmp:
        tmp.write_text("3")
    assert sorted(p.name for p in path.parent.iterdir()) == ["policy.pt"]


# --------------------------------------------------------------------------------------------- #
# resumable workspaces
# --------------------------------------------------------------------------------------------- #


def test_workspace_resumes_and_never_mixes_grids(tmp_path):
    out = tmp_path / "ws"
    keys = {f"cells/c{i}": cell_key({"i": i}) for i in range(3)}
    said: list[str] = []
    with Workspace(out, "sweep", keys, say=said.append) as ws:
        for name in ("cells/c0", "cells/c1"):
            with ws.cell(name, {"n": name}) as tmp:
                (tmp / "r.txt").write_text(name)
        with pytest.raises(RuntimeError), ws.cell("cells/c2") as tmp:
            (tmp / "r.txt").write_text("half")
            raise RuntimeError("killed mid-cell")
    assert not (out / "cells" / "c2").exists() and not [p for p in out.iterdir() if p.name.startswith(".c2")]
    with Workspace(out, "sweep", keys, say=said.append) as ws:  # rerun: two cells done, one to go
        assert [ws.done(n) for n in keys] == [True, True, False]
        assert ws.info("cells/c1") == {"n": "cells/c1"}
        with ws.cell("cells/c2") as tmp:
            (tmp / "r.txt").write_text("c2")
        ws.write("summary.csv", lambda p: outputs.atomic_write(p, lambda fh: fh.write(b"s")))
        ws.finish()
    assert "resuming: 2 of 3 cells already finished" in said[-1]
    assert json.loads((out / MARKER).read_text())["state"] == "complete"
    # another grid: its finished cells are reported, never mixed in
    other = {**keys, "cells/c0": cell_key({"i": 99})}
    with pytest.raises(OutputError, match=r"holds 1 finished cell computed with other settings .*cells/c0: other settings"):
        Workspace(out, "sweep", other)
    with Workspace(out, "sweep", other, overwrite=True) as ws:  # --overwrite starts over
        assert not any(ws.done(n) for n in other)
    assert tree(out).keys() == {MARKER}


def test_workspace_refuses_foreign_and_changed_files_and_tolerates_a_killed_report(tmp_path):
    out = tmp_path / "ws"
    keys = {"c": cell_key({})}
    with Workspace(out, "compare", keys) as ws:
        with ws.cell("c") as tmp:
            (tmp / "r").write_text("1")
    (out / "c" / "r").write_text("edited")
    with pytest.raises(OutputError, match=r"added or changed .*\(c/r\)"):
        Workspace(out, "compare", keys)
    (out / "c" / "r").write_text("1")
    os.utime(out / "c" / "r", ns=(0, json.loads((out / "c" / outputs.CELL_MARKER).read_text())["files"]["r"][1]))
    ws = Workspace(out, "compare", keys)
    # killed while writing a report: listed as pending, its temporary left behind
    ws._mark("running", pending="results.csv")
    (out / "results.csv").write_text("partial?")
    (out / ".results.csv.recsim-post-1-ab.tmp").write_text("half")
    ws.__exit__(None, None, None)
    with Workspace(out, "compare", keys) as ws:
        assert ws.done("c")
    assert not (out / ".results.csv.recsim-post-1-ab.tmp").exists()


def test_a_workspace_that_finished_nothing_leaves_no_trace(tmp_path):
    with pytest.raises(RuntimeError), Workspace(tmp_path / "a" / "ws", "sweep", {"c": "k"}):
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()  # an empty folder the user made stays, empty
    with pytest.raises(RuntimeError), Workspace(tmp_path / "empty", "sweep", {"c": "k"}):
        raise RuntimeError
    assert (tmp_path / "empty").is_dir() and list((tmp_path / "empty").iterdir()) == []


def test_cell_keys_depend_on_settings_and_code(monkeypatch):
    a, b = cell_key({"x": 1}), cell_key({"x": 2})
    assert a != b and a == cell_key({"x": 1})
    monkeypatch.setattr(outputs, "code_fingerprint", lambda: "other-code")
    assert cell_key({"x": 1}) != a
