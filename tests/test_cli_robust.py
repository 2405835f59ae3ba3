"""Issue 18: a day-one user's mishaps (lost input, a killed machine, a silent
partial result) and what users of tcpdump / tshark / tcpreplay expect."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from chc.capture import LINKTYPE_ETHERNET, CaptureWriter, open_capture
from chc.cli import main
from chc.feed import Feed
from chc.spec import MAX_PARALLELISM, SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
CHAIN = str(ROOT / "examples/paper_chain.yaml")
HTTP = str(ROOT / "traces/zeek/http_get.pcap")


# -- item 2: one parallelism limit everywhere ---------------------------------------

def test_spec_parallelism_above_the_limit_is_refused_naming_it():
    spec = {"vertices": {"a": {"nf": "pass", "parallelism": MAX_PARALLELISM + 1}}}
    with pytest.raises(SpecError, match=rf"vertices\.a\.parallelism: .*{MAX_PARALLELISM}"):
        parse_spec(spec)
    spec["vertices"]["a"]["parallelism"] = MAX_PARALLELISM
    assert parse_spec(spec).vertices["a"].parallelism == MAX_PARALLELISM


def test_cli_parallelism_above_the_limit_is_exit_2_naming_it(capsys):
    # Before the fix any count ran (100,000 until the kernel killed it); one past
    # the limit shows the defect without endangering the machine.
    with pytest.raises(SystemExit) as exc:
        main(["run", CHAIN, HTTP, "--parallelism", str(MAX_PARALLELISM + 1), "--no-progress", "-q"])
    assert exc.value.code == 2
    assert str(MAX_PARALLELISM) in capsys.readouterr().err


def test_with_parallelism_refuses_above_the_limit():
    chain = load_spec(CHAIN)
    with pytest.raises(SpecError, match=str(MAX_PARALLELISM)):
        chain.with_parallelism(MAX_PARALLELISM + 1)
    with pytest.raises(SpecError, match=str(MAX_PARALLELISM)):
        chain.with_parallelism({"nat": 10**6})


# -- item 7: spec errors say what is wrong and where ---------------------------------

def test_vertex_without_nf_names_the_missing_key():
    with pytest.raises(SpecError) as err:
        parse_spec({"vertices": {"a": {"parallelism": 2}}})
    assert "vertices.a.nf" in str(err.value) and "missing" in str(err.value)
    assert "None" not in str(err.value)


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("vertices:\n  a: {nf: pass\nedges: []\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}:3:")          # path:line:column, 1-based as editors count
    assert "\n" not in msg


# -- helpers -------------------------------------------------------------------------

LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
SMB = str(ROOT / "traces/zeek/smb_smb2.pcap")
CHC = [sys.executable, "-m", "chc.cli"]


def summary_of(tmp_path: Path, *args: str, code: int = 0) -> dict:
    out = tmp_path / "summary.json"
    assert main(["run", *args, "--summary-json", str(out), "--no-progress", "-q"]) == code
    return json.loads(out.read_text())


def records(path) -> list[tuple[int, bytes]]:
    with open_capture(path) as reader:
        return list(reader)


def write_pcap(path: Path, recs, linktype: int = LINKTYPE_ETHERNET) -> Path:
    with CaptureWriter(path, linktype=linktype) as w:
        w.write_many(recs)
    return path


def chc(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CHC, *args], capture_output=True, timeout=300, **kw)


# -- item 1: an output never destroys an input; outputs appear whole or not at all ----

@pytest.mark.parametrize("flag", ["--out", "--summary-json", "--state-json"])
def test_output_that_is_the_input_capture_is_refused(tmp_path, capsys, flag):
    capture = tmp_path / "s.pcap"
    shutil.copy(SMB, capture)
    before = capture.read_bytes()
    assert main(["run", CHAIN, str(capture), flag, str(capture), "--no-progress", "-q"]) == 2
    assert capture.read_bytes() == before               # was cut to 77 of 1,178 packets
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "capture" in err


def test_output_through_a_link_or_other_spelling_is_refused(tmp_path):
    capture = tmp_path / "s.pcap"
    shutil.copy(SMB, capture)
    (tmp_path / "hard.pcap").hardlink_to(capture)
    (tmp_path / "soft.pcap").symlink_to(capture)
    for alias in ("hard.pcap", "soft.pcap", "./sub/../s.pcap"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert main(["run", CHAIN, str(capture), "--out", str(tmp_path / alias), "--no-progress", "-q"]) == 2
    spec = tmp_path / "chain.yaml"
    shutil.copy(CHAIN, spec)
    assert main(["run", str(spec), SMB, "--summary-json", str(spec), "--no-progress", "-q"]) == 2
    assert spec.read_text() == Path(CHAIN).read_text()
    both = str(tmp_path / "x.json")
    assert main(["run", CHAIN, SMB, "--summary-json", both, "--state-json", both, "--no-progress", "-q"]) == 2


def test_failed_run_leaves_earlier_outputs_untouched_and_no_temporary(tmp_path, monkeypatch):
    out, js = tmp_path / "out.pcap", tmp_path / "summary.json"
    out.write_bytes(b"earlier output")
    js.write_text("earlier summary")
    real = CaptureWriter.write_many

    def disk_full(self, recs):
        real(self, recs)
        self._flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(CaptureWriter, "write_many", disk_full)
    with pytest.raises(OSError):
        main(["run", CHAIN, LAN, "--out", str(out), "--summary-json", str(js), "--no-progress", "-q"])
    assert out.read_bytes() == b"earlier output"        # was half-written before the fix
    assert js.read_text() == "earlier summary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pcap", "summary.json"]


def test_outputs_are_written_whole_with_the_usual_permissions(tmp_path):
    out = tmp_path / "o.pcap.gz"
    s = summary_of(tmp_path, CHAIN, SMB, "--out", str(out))
    assert len(records(out)) == s["packets_out"] == 1178
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.pcap.gz", "summary.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- item 3: a closed stdout is not an error ------------------------------------------

@pytest.mark.parametrize("args", [
    ["check", CHAIN, str(ROOT / "examples/scenarios/parallel.yaml"), HTTP, "--seeds", "3"],
    ["run", CHAIN, HTTP, "--no-progress"],
    ["run", CHAIN, SMB, "--no-progress", "--out", "-"],
])
def test_closed_stdout_stops_quietly(args):
    proc = subprocess.Popen([*CHC, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()             # `| head -0`: the reader is gone before chc writes
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 141), err.decode()      # was 1 with a BrokenPipeError traceback
    assert b"Traceback" not in err and b"BrokenPipe" not in err


# -- item 4: a capture that stops early is never a silent success --------------------

def _corrupt_after(tmp_path: Path, good: int) -> tuple[Path, int, int]:
    """lan-2012 with a corrupt record after ``good`` records; (path, offset, total)."""
    recs = records(LAN)
    path = write_pcap(tmp_path / "corrupt.pcap", recs[:good])
    offset = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(struct.pack("<IIII", 1, 0, 10**7, 10**7))    # claims 10 MB captured
        for ts, data in recs[good:]:
            fh.write(struct.pack("<IIII", ts // 10**9, ts % 10**9 // 1000, len(data), len(data)) + data)
    return path, offset, len(recs)


def test_corrupt_record_is_partial_exit_3_with_reason_and_offset(tmp_path):
    path, offset, total = _corrupt_after(tmp_path, 1000)
    s = summary_of(tmp_path, CHAIN, str(path), code=3)     # was exit 0, truncated: false
    assert s["packets_in"] == 1000 and total - 1000 == 61781
    cap = s["capture"]
    assert cap["truncated"] is True and cap["offset"] == offset
    assert "corrupt" in cap["reason"] and "10000000" in cap["reason"]
    assert s["partial"] is True and str(f"{offset:,}") in s["partial_reasons"][0]
    res = chc("run", CHAIN, str(path), "--no-progress", "-q")
    assert res.returncode == 3 and res.stdout == b""
    assert f"corrupt data after 1000 packets at byte {offset:,}" in res.stderr.decode()
    s = summary_of(tmp_path, CHAIN, str(path), "--allow-partial")
    assert s["partial"] is True and s["capture"]["truncated"] is True


def test_truncated_last_record_is_partial_too(tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(Path(SMB).read_bytes()[:-10])
    s = summary_of(tmp_path, CHAIN, str(cut), code=3)
    assert s["capture"]["reason"] == "last record truncated" and s["packets_in"] == 1177
    whole = summary_of(tmp_path, CHAIN, SMB)
    assert whole["partial"] is False and whole["capture"]["truncated"] is False
    assert whole["capture"]["offset"] is None and whole["partial_reasons"] == []


# -- item 5: Ctrl-C reports what was processed ----------------------------------------

def _wait_until_reading(proc: subprocess.Popen, pipe) -> None:
    """Until the child has read everything in ``pipe`` and waits for more."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0")
        wchan = Path(f"/proc/{proc.pid}/wchan").read_text() if Path(f"/proc/{proc.pid}/wchan").exists() else ""
        if int.from_bytes(left, sys.byteorder) == 0 and "pipe" in wchan:
            return
        time.sleep(0.05)
    raise AssertionError(f"chc did not wait for input (wchan {wchan!r})")


def test_ctrl_c_prints_and_writes_the_partial_summary(tmp_path):
    recs = records(SMB)[:300]
    head = write_pcap(tmp_path / "head.pcap", recs).read_bytes()
    js, out = tmp_path / "s.json", tmp_path / "o.pcap"
    proc = subprocess.Popen([*CHC, "run", CHAIN, "-", "--no-progress", "--summary-json", str(js),
                             "--out", str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdin.write(head)          # like tcpdump -w - that has sent 300 packets so far
    proc.stdin.flush()
    _wait_until_reading(proc, proc.stdin)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    text = stdout.decode()
    assert text.startswith("PARTIAL: interrupted after 300 packets read")    # was: no summary
    assert "300 packets in" in text and "state digest" in text
    s = json.loads(js.read_text())
    assert s["partial"] is True and s["packets_in"] == 300
    assert s["packets_out"] + s["dropped"] == 300 and len(records(out)) == s["packets_out"]
    assert b"Traceback" not in stderr


def test_interrupt_flag_stops_the_feed_between_records(tmp_path):
    with open_capture(SMB) as reader:
        feed = Feed(reader)
        taken = []
        for rec in feed:
            taken.append(rec)
            if len(taken) == 10:
                feed.interrupt()    # what the SIGINT handler does outside a read
        assert len(taken) == 10 and feed.stopped_by == "interrupt"
        with pytest.raises(KeyboardInterrupt):
            feed.interrupt()        # a second Ctrl-C aborts
