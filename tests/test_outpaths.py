"""Output paths a new user got wrong (a directory, a folder that does not exist):
one line and exit 2 before any work, as ``chc trace gen -o DIR`` already did,
never a traceback, a lost run or a ``.partial`` file left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chc.outfiles import OutputPathError, Outputs, check_writable


def _partials(*dirs: Path) -> list[str]:
    return [n for d in dirs for n in os.listdir(d) if n.endswith(".partial")]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


# -- outfiles: the atomic outputs themselves ---------------------------------------

def test_outputs_refuse_a_directory_without_a_temporary_file(tmp_path):
    """``--summary-json /tmp`` made ``/.tmp.XXXX.partial`` and failed at the rename,
    leaving the file in ``/``."""
    target = tmp_path / "d"
    target.mkdir()
    out = Outputs()
    with pytest.raises(OutputPathError, match=rf"^{target}: cannot write \(Is a directory\)$"):
        out.open(str(target))
    assert _partials(tmp_path, target) == []


def test_outputs_refuse_a_missing_folder_in_one_line(tmp_path):
    with pytest.raises(OutputPathError, match=rf"^{tmp_path}/nx/x.pcap: cannot write \(no such directory "
                                              rf"{tmp_path}/nx\)$"):
        Outputs().open(str(tmp_path / "nx" / "x.pcap"))


def test_a_failed_commit_leaves_no_partial_file(tmp_path):
    """The final name turned into a directory while the command ran: the rename fails,
    and the temporary files not renamed are removed (they were left behind)."""
    out = Outputs()
    out.open(str(tmp_path / "a.json")).write(b"a")
    out.open(str(tmp_path / "b.json")).write(b"b")
    (tmp_path / "a.json").mkdir()
    with pytest.raises(OutputPathError, match=r"a.json: cannot write \("):
        out.commit()
    assert _partials(tmp_path) == [] and not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("kind, make, says", [
    ("file", "dir", "Is a directory"),
    ("file", "slash", "Is a directory"),
    ("file", "missing", "no such directory"),
    ("file", "under-a-file", "Not a directory"),
    ("append", "missing", "no such directory"),
    ("dir", "file", "Not a directory"),
    ("dir", "missing", "no such directory"),
])
def test_check_writable_names_why(tmp_path, kind, make, says):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    path = {"dir": tmp_path / "d", "slash": f"{tmp_path}/new/", "missing": tmp_path / "nx" / "o",
            "under-a-file": tmp_path / "f" / "o", "file": tmp_path / "f"}[make]
    with pytest.raises(OutputPathError, match=says):
        check_writable(str(path), kind)
    assert sorted(os.listdir(tmp_path)) == ["d", "f"]       # nothing created


@pytest.mark.parametrize("kind, path", [("file", "new.json"), ("file", "f"), ("append", "f"), ("dir", "d"),
                                        ("dir", "new/"), ("file", "-")])
def test_check_writable_passes_what_can_be_written(tmp_path, monkeypatch, kind, path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    check_writable(path, kind)
    assert sorted(os.listdir(tmp_path)) == ["d", "f"]
