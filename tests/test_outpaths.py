"""Output paths a new user got wrong (a directory, a folder that does not exist):
one line and exit 2 before any work, as ``chc trace gen -o DIR`` already did,
never a traceback, a lost run or a ``.partial`` file left behind."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from chc import cli
from chc.cli import main
from chc.outfiles import OutputPathError, Outputs, check_writable

ROOT = Path(__file__).resolve().parent.parent
CHAIN = str(ROOT / "examples/paper_chain.yaml")
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
SCENARIO = str(ROOT / "examples/scenarios/parallel.yaml")


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


# -- every command: checked before any work ----------------------------------------

# (command line, with {path} the output under test; the output is given last)
COMMANDS = {
    "run --out": ["run", CHAIN, LAN, "--out", "{path}.pcap"],
    "run --summary-json": ["run", CHAIN, LAN, "--out", "{keep}", "--summary-json", "{path}"],
    "run --state-json": ["run", CHAIN, LAN, "--state-json", "{path}"],
    "serve --summary-json": ["serve", CHAIN, "--capture", LAN, "--duration", "3", "--summary-json", "{path}"],
    "serve --state-json": ["serve", CHAIN, "--capture", LAN, "--duration", "3", "--state-json", "{path}"],
    "check --json": ["check", CHAIN, SCENARIO, LAN, "--json", "{path}"],
    "check --save-failures": ["check", CHAIN, SCENARIO, LAN, "--save-failures", "{path}"],
    "bench --json": ["bench", "--quick", "--no-redis", "--json", "{path}"],
    "trace gen -o": ["trace", "gen", "--packets", "10", "-o", "{path}.pcap"],
    "trace scan --truth": ["trace", "scan", "-o", "{keep}", "--truth", "{path}"],
    "trace trojan -o": ["trace", "trojan", "--truth", "{keep}.json", "-o", "{path}.pcap"],
}


@pytest.mark.parametrize("bad", ["directory", "missing folder"])
@pytest.mark.parametrize("which", list(COMMANDS))
def test_a_bad_output_path_is_refused_before_any_work(tmp_path, monkeypatch, capsys, which, bad):
    """Every output option of every command is checked before the command runs: a
    missing folder was found after the whole capture (every seed, the whole --duration)
    and the other outputs were thrown away; a directory was a traceback."""
    started = []
    monkeypatch.setattr(cli, "COMMANDS", {name: lambda args, name=name: started.append(name) or 0
                                          for name in cli.COMMANDS})
    if bad == "missing folder" and which.startswith("bench"):
        pytest.skip("the bench family makes missing folders (test_bench_outputs_make_missing_folders...)")
    path = str(tmp_path / "nx" / "o") if bad == "missing folder" else str(tmp_path / "d")
    argv = [a.format(path=path, keep=tmp_path / "keep.pcap") for a in COMMANDS[which]]
    if bad == "directory":
        os.mkdir(argv[-1])
    assert main(argv) == 2
    why = "Is a directory" if bad == "directory" else f"no such directory {tmp_path}/nx"
    assert _one_line(capsys) == f"chc: error: {argv[-1]}: cannot write ({why})"
    assert started == [] and not (tmp_path / "keep.pcap").exists()


@pytest.mark.parametrize("flag, name", [("--out", "d.pcap"), ("--summary-json", "d"), ("--state-json", "d")])
def test_chc_run_into_a_directory_is_one_line_and_leaves_nothing(tmp_path, capsys, flag, name):
    """The reports: ``--summary-json /tmp`` was ``IsADirectoryError`` (a traceback,
    exit 1) with ``/.tmp.XXXX.partial`` left in ``/``."""
    target = tmp_path / name
    target.mkdir()
    assert main(["run", CHAIN, LAN, "-c", "20", "-q", flag, str(target)]) == 2
    assert _one_line(capsys) == f"chc: error: {target}: cannot write (Is a directory)"
    assert _partials(tmp_path, target) == [] and os.listdir(target) == []


def test_chc_run_into_a_missing_folder_is_one_line(tmp_path, capsys):
    """``--out /nonexistent/dir/x.pcap`` was ``FileNotFoundError`` from outfiles, exit 1."""
    out = tmp_path / "nx" / "x.pcap"
    assert main(["run", CHAIN, LAN, "-c", "20", "-q", "--out", str(out)]) == 2
    assert _one_line(capsys) == f"chc: error: {out}: cannot write (no such directory {tmp_path}/nx)"
    assert os.listdir(tmp_path) == []


def test_chc_run_still_writes_into_the_current_folder(tmp_path, monkeypatch):
    """A bare file name's folder is the current one (dirname says "")."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", CHAIN, LAN, "-c", "20", "-q", "--out", "o.pcap", "--summary-json", "s.json"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["o.pcap", "s.json"]


# -- chc bench: as the other commands ----------------------------------------------

def test_bench_outputs_make_missing_folders_but_refuse_what_cannot_be_written(tmp_path, capsys, monkeypatch):
    """The bench family writes under folders it makes (every bench script and the docs'
    `--json out/...`); what cannot be written is still refused before the bench runs."""
    from chc.bench import runner

    out = tmp_path / "nx" / "r.json"
    assert main(["bench", "--quick", "--no-redis", "--sections", "store", "--entries", "300",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["meta"]["quick"] is True
    capsys.readouterr()
    monkeypatch.setattr(runner, "_config", lambda args: pytest.fail("the bench started"))
    (tmp_path / "file").write_text("x")
    for bad, why in ((tmp_path / "file" / "r.json", f"{tmp_path}/file: Not a directory"),
                     (tmp_path / "nx", "Is a directory")):
        assert main(["bench", "--quick", "--no-redis", "--sections", "store", "--json", str(bad)]) == 2
        assert _one_line(capsys) == f"chc: error: {bad}: cannot write ({why})"


def test_bench_png_without_matplotlib_is_refused_before_creating_anything(tmp_path, monkeypatch, capsys):
    """``--png /nonexistent/x`` made the folders, then measured, then said matplotlib
    was missing: no plots, and folders nobody asked for."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # (import matplotlib: ImportError)
    from chc.bench import runner

    monkeypatch.setattr(runner, "_config", lambda args: pytest.fail("the bench started"))
    png = tmp_path / "plots"
    assert main(["bench", "--quick", "--no-redis", "--sections", "store", "--png", str(png)]) == 2
    assert "needs matplotlib" in _one_line(capsys)
    assert not png.exists()


def test_bench_no_redis_with_redis_is_refused(monkeypatch, capsys):
    """--no-redis --redis URL ran on memory only and said nothing of the URL."""
    from chc.bench import runner

    monkeypatch.setattr(runner, "_config", lambda args: pytest.fail("the bench started"))
    assert main(["bench", "--quick", "--no-redis", "--redis", "redis://127.0.0.1:1", "--sections", "store"]) == 2
    assert _one_line(capsys) == "chc: error: --no-redis and --redis: give one of them"


def test_bench_help_says_what_png_creates(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "-h"])
    assert "into DIR, made if missing" in " ".join(capsys.readouterr().out.split())


def test_special_files_and_links_are_written_through_not_replaced(tmp_path):
    """A review's finding: outputs renamed into place replaced a FIFO with a regular file and a
    symbolic link with a file (and as root would have replaced /dev/null or /dev/stdout).  A
    FIFO or a device is written in place, a link through to its target."""
    import stat
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    target = tmp_path / "real.pcap"
    link = tmp_path / "link.pcap"
    link.symlink_to(target)
    # (a machine whose /dev/null is already a regular file, as a CI machine's once was,
    # cannot show it kept: the FIFO and the link still do)
    device = stat.S_ISCHR(os.stat(os.devnull).st_mode)
    try:
        assert main(["run", CHAIN, LAN, "-c", "20", "-q", "--no-progress", "--summary-json", str(fifo),
                     "--out", str(link), "--state-json", os.devnull]) == 0
    finally:
        reader.join(10)
        if reader.is_alive():       # (a run that never opened the FIFO: unblock the reader)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and b'"packets_in": 20' in got[0]
    assert link.is_symlink() and target.stat().st_size > 24
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode) or not device
