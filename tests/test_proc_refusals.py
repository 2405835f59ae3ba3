"""Updates the store refuses, on ``--runtime proc``: as on the sim (tests/test_own_nf.py).

A value the store cannot hold ends the run with its summary printed and written
(``state_error``), one line, exit 2; a refused update is final, its packet completes;
the store server carries refusals back for what they are.  Before, on proc: a Redis
refusal left ``state_error`` unset (exit 0), the default store server's refusals were
plain errors of the whole request (the packets stayed in the root's log for good, or
EO+C+NA stopped after 100 resends, no summary), and an object of the NF's own class
stopped the run (``cannot send a Seen``, exit 1, no summary)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("zmq")

from chc.cli import main  # noqa: E402
from test_own_nf import (  # noqa: E402,F401
    OBJECT_IN_STATE,
    REFUSED_UPDATES,
    SET_IN_STATE,
    _forget_own_modules,
    _spec,
    refused_updates_completed,
)

ROOT = Path(__file__).resolve().parent.parent
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
SENT = "None, bool, int (64 bits), float, str, bytes, and lists, tuples, dicts and sets of them (docs/nf-api.md)"


def _run(tmp_path: Path, capsys, source: tuple[str, str], *extra: str) -> tuple[int, str, dict]:
    """``chc run --runtime proc`` of the NF ``source`` (file name, text) in front of a NAT on
    300 packets: exit code, the last line on stderr, the summary written."""
    name, text = source
    (tmp_path / name).write_text(text)
    cls = {OBJECT_IN_STATE: "KeepsObjects", SET_IN_STATE: "KeepsSets", REFUSED_UPDATES: "Refused"}[text]
    spec = _spec(tmp_path, f"{name}:{cls}", "{}")
    rc = main(["run", str(spec), LAN, "-c", "300", "--no-progress", "--runtime", "proc", *extra,
               "--summary-json", str(tmp_path / "s.json"), "--state-json", str(tmp_path / "state.json")])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("chc: error:") <= 1, err
    return rc, (err.splitlines() or [""])[-1], json.loads((tmp_path / "s.json").read_text())


@pytest.mark.parametrize("model", ["EO", "EO+C", "EO+C+NA"])
def test_an_object_the_proc_runtime_cannot_send_to_its_store_keeps_the_summary(tmp_path, capsys, model):
    """It stopped the run: ``chc: error: proc runtime: heavy.0: TypeError: the proc runtime
    cannot send a Seen``, exit 1, no summary (EO+C+NA), or each packet an NF error left
    in the root's log for good, exit 0 (EO).  Now the wire refuses the op before its request
    goes, as Redis refuses what it cannot hold: the summary stands, one line, exit 2."""
    rc, line, summary = _run(tmp_path, capsys, ("objects_mine.py", OBJECT_IN_STATE), "--model", model)
    assert rc == 2, line
    assert line.startswith("chc: error: heavy.last['10.64.") and "holds a Seen inside its tuple (<" in line, line
    assert line.endswith(f"which the proc runtime cannot send to its store: it sends {SENT}"), line
    assert summary["state_error"] == line[len("chc: error: "):] and summary["state_digest"] == ""
    assert summary["runtime"] == "proc" and summary["packets_in"] == 300
    assert summary["nf_errors"] == 300 and "UnsendableValue: the proc runtime cannot send value (1, <" in \
        summary["errors"][0]
    assert summary["log"]["remaining"] == 0 and summary["log"]["deleted"] == 300
    # waited for (EO, EO+C): raised in process, the packet dropped; EO+C+NA: it went on
    assert summary["packets_out"] == (300 if model == "EO+C+NA" else 0)
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize("fronted", [False, True], ids=["direct", "store-server"])
@pytest.mark.parametrize("model", ["EO", "EO+C+NA"])
def test_a_value_redis_cannot_hold_on_proc_keeps_the_summary_and_exits_2(tmp_path, capsys, redis_urls, model,
                                                                          fronted):
    """Redis refused the frozenset and proc said nothing of it: no state_error, exit 0 (each
    process's client noted it, no one asked).  Now each instance reports it (at its end,
    and with recovery on with every batch's stats: a failed one's report dies with it); with
    ``--failover`` the store server in front of Redis carries the refusal back for what it
    is.  The sim's line and summary."""
    rc, line, summary = _run(tmp_path, capsys, ("sets_mine.py", SET_IN_STATE), "--model", model,
                             "--store", redis_urls[0], *(["--failover"] if fronted else []))
    assert rc == 2, line
    assert line.startswith("chc: error: heavy.ports['10.64.") and "holds a frozenset (frozenset({" in line, line
    assert "which the redis store cannot hold: its values are None, bool" in line
    assert summary["state_error"] == line[len("chc: error: "):] and summary["state_digest"] == ""
    assert summary["nf_errors"] == 300 and "UnstorableValue" in summary["errors"][0]
    assert summary["log"]["remaining"] == 0 and summary["log"]["deleted"] == 300
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize("model", ["EO", "EO+C", "EO+C+NA"])
def test_updates_the_store_server_refuses_let_their_packets_complete(tmp_path, capsys, model):
    """The default store server sent a refusal back as the whole request's error: the
    request's other ops were lost to the client, the refused update's packet stayed in the
    root's log for good (EO, EO+C: 300 remaining), and in EO+C+NA the request was sent again
    until ``store server: updates still refused after 100 tries`` stopped the run (exit 1, no
    summary).  Now as the sim's memory store: each refusal an NF error, every packet
    completes, exit 0."""
    rc, line, summary = _run(tmp_path, capsys, ("refused_mine.py", REFUSED_UPDATES), "--model", model)
    assert rc == 0, line
    refused_updates_completed(summary, model)
    if model != "EO+C+NA":
        assert "StoreError: tally: incr on a non-number value" in summary["errors"][0]


def test_an_object_in_model_t_state_keeps_the_summary(tmp_path, capsys):
    """Model T: the instance's own state could not reach the coordinator (``cannot send a
    Seen``, exit 1, no summary).  Now the sim's line: what chc cannot digest, exit 2."""
    rc, line, summary = _run(tmp_path, capsys, ("objects_mine.py", OBJECT_IN_STATE), "--model", "T")
    assert rc == 2, line
    assert line.startswith("chc: error: heavy.last['10.64.") and "holds a Seen inside its tuple" in line, line
    assert "which chc cannot compare or store" in line
    assert summary["state_error"] == line[len("chc: error: "):] and summary["packets_out"] == 300
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize("seed", [0, 6])
def test_refused_updates_pass_chc_check_on_proc(tmp_path, capsys, seed):
    """The store server's record of a request with refused ops: the others applied, the
    refused ones unobserved and never applied, so the deletion of their packet (after its
    instance heard of the refusal, which the checker places at the root's last pull) is
    not early.  Seed 0 is EO, 6 EO+C with batches of 1: they diverged with '300 updates
    lost' and '300 packets never completed' (the store server refused each request
    whole), then, with refusals carried back, 'deleted from the root's log before its
    update' (the refused step taken for an applied one)."""
    (tmp_path / "refused_mine.py").write_text(REFUSED_UPDATES)
    spec = _spec(tmp_path, "refused_mine.py:Refused", "{}")
    (tmp_path / "plain.yaml").write_text("name: plain\n")
    rc = main(["check", str(spec), str(tmp_path / "plain.yaml"), LAN, "-c", "300", "--seed", str(seed),
               "--runtime", "proc"])
    out = capsys.readouterr().out
    assert rc == 0 and f"seed {seed}: PASS" in out, out


def test_a_deletion_after_its_packets_refused_update_is_not_early():
    """§5.4 log safety: an update the store refused is never applied; its step does not
    make its packet's deletion early (an applied one does)."""
    from chc.coe import Serialization, _premature
    from chc.core.store import ObjectKey, Op

    serial = Serialization()
    k = ObjectKey("heavy", "tally", None, False)
    serial.request([Op("incr", k, (1,), "heavy/0", 1, 0, (7, 1), 0x55, 0),
                    Op("incr", k, (1,), "heavy/0", 2, 0, (8, 1), 0x66, 0)], [1, None], refused={1})
    assert serial.refused == {1} and not serial.steps[1].observed
    assert _premature(serial, [(7, 0)]) == [(7, 0)]          # applied at step 0, deleted before it
    assert _premature(serial, [(8, 0)]) == []                # refused: nothing to wait for
