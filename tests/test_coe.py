"""The COE checker (chc check): it passes correct physical chains, and it has the
power to catch broken mechanisms (the --break switches) at the right place."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from chc.capture import CaptureWriter, open_capture
from chc.cli import main
from chc.coe import check, check_variant, variant
from chc.runtime.pacing import Pacer
from chc.scenario import ScenarioError, load_scenario, parse_scenario
from chc.spec import load_spec
from chc.trace.trojan import plant_trojans

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "examples/paper_chain.yaml"
R4_CHAIN = ROOT / "examples/r4_chain.yaml"
PARALLEL = ROOT / "examples/scenarios/parallel.yaml"
R4 = ROOT / "examples/scenarios/r4.yaml"
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
REGRESSIONS = ROOT / "tests/regressions/coe_seeds.yaml"


@pytest.fixture(scope="module")
def lan_slice(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("coe") / "lan6k.pcap"
    with CaptureWriter(path) as w:
        w.write_many(itertools.islice(open_capture(LAN), 6000))
    return path


@pytest.fixture(scope="module")
def r4_capture(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("r4") / "r4.pcap"
    truth = plant_trojans(LAN, path, count=3, gap=20)
    # Keep it small: the three planted sequences with some background around them.
    last = max(i["last_index"] for i in truth["instances"]) + 50
    short = path.with_name("r4-short.pcap")
    with CaptureWriter(short) as w:
        w.write_many(itertools.islice(open_capture(path), last))
    return short, truth


def run_check(capsys, *args: str) -> tuple[int, str, dict]:
    """``chc check ARGS``; the last argument, when a .json path, is read back."""
    out_json = Path(args[-1]) if args[-1].endswith(".json") else None
    code = main(["check", *args])
    text = capsys.readouterr().out
    data = json.loads(out_json.read_text()) if out_json else {}
    return code, text, data


def test_parallel_scenario_passes(capsys, lan_slice, tmp_path):
    code, text, data = run_check(capsys, str(PAPER), str(PARALLEL), str(lan_slice), "--seeds", "3",
                                 "--json", str(tmp_path / "r.json"))
    assert code == 0, text
    assert [r["ok"] for r in data["results"]] == [True, True, True]
    assert "3 of 3 seeds passed" in text


def test_traditional_nfs_in_parallel_are_caught(lan_slice):
    """Model T with three NAT instances: each has its own port pool, so two
    connections leave with the same external port. The checker must say so."""
    records = list(open_capture(lan_slice))
    res = check(load_spec(PAPER).with_parallelism(3), records, model="T", pacer=Pacer("multiplier", 1))
    assert not res.ok
    assert res.first.what == "output"
    assert any("nat.ports" in n for n in res.notes)


def test_break_no_clocks_is_reported_at_the_trojan_alert(capsys, r4_capture, tmp_path):
    capture, truth = r4_capture
    code, text, data = run_check(capsys, str(R4_CHAIN), str(R4), str(capture), "--seed", "0",
                                 "--json", str(tmp_path / "r.json"))
    assert code == 0, text                       # with clocks: equivalent
    code, text, data = run_check(capsys, str(R4_CHAIN), str(R4), str(capture), "--seed", "0",
                                 "--break", "no-clocks", "--json", str(tmp_path / "r.json"))
    assert code == 1
    first = data["results"][0]["divergences"][0]
    host, clock = truth["instances"][0]["host"], truth["instances"][0]["alert_clock"]
    assert first.startswith(f"alert trojan on {host} by trojan at clock {clock}: reference raised")


def test_break_drop_update_is_reported_at_the_object(lan_slice):
    chain, sc = load_spec(PAPER), load_scenario(PARALLEL)
    records = list(open_capture(lan_slice))
    v = variant(chain, sc, 0, ["memory"])
    res, fault = check_variant(chain, sc, records, v, ("drop-update",))
    assert not res.ok
    # "dropped incr on nat.packets[None] at clock 3000" -> the divergence names nat.packets[None]
    obj = fault.split(" on ", 1)[1].split(" at clock")[0]
    assert any(d.what == "state" and d.where == obj for d in res.divergences), (fault, res.divergences)


def test_same_seed_same_result(lan_slice):
    chain, sc = load_spec(PAPER), load_scenario(PARALLEL)
    records = list(open_capture(lan_slice))
    runs = [check_variant(chain, sc, records, variant(chain, sc, 5, ["memory"]), ("drop-update",))
            for _ in range(2)]
    assert [str(d) for d in runs[0][0].divergences] == [str(d) for d in runs[1][0].divergences]
    assert runs[0][0].physical.outputs == runs[1][0].physical.outputs


def test_kept_failing_seeds_now_pass():
    """Seeds that once failed, kept as regression cases (tests/regressions/)."""
    cases = yaml.safe_load(REGRESSIONS.read_text()) or []
    assert cases, "the regression list is empty"
    for case in cases:
        chain = load_spec(ROOT / case["chain"])
        sc = load_scenario(ROOT / case["scenario"])
        records = list(itertools.islice(open_capture(ROOT / case["capture"]), case.get("packets") or None))
        res, _ = check_variant(chain, sc, records, variant(chain, sc, case["seed"], ["memory"]),
                               tuple(case.get("breaks") or ()))
        assert res.ok, f"{case['why']}: {res.first}"


@pytest.mark.parametrize("raw, field", [
    ({"parallelism": 0}, "parallelism"),
    ({"model": "X"}, "model"),
    ({"delays": {"nat": "gauss:1"}}, "delays.nat"),
    ({"pacing": {"warp": 9}}, "pacing.warp"),
    ({"events": [{"at": {"packets": 5}, "do": "explode"}]}, "events[0].do"),
    ({"events": [{"at": {"packets": 5}, "do": "slow", "target": "nat"}]}, "events[0]: needs delay"),
    ({"events": [{"at": {"hours": 1}, "do": "speed-up", "target": "nat"}]}, "events[0].at"),
    ({"colour": 1}, "colour"),
])
def test_scenario_errors_name_the_field(raw, field):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(raw)
    assert field in str(err.value)


def test_events_slow_and_speed_up_are_deterministic(lan_slice):
    sc = parse_scenario({"pacing": {"multiplier": 1}, "events": [
        {"at": {"packets": 1000}, "do": "slow", "target": "nat", "delay": "uniform:200:400"},
        {"at": {"packets": 4000}, "do": "speed-up", "target": "nat"}]})
    chain = load_spec(PAPER)
    records = list(open_capture(lan_slice))
    results = []
    # Equivalent at any batch size; identical when rerun with the same one.  (With
    # several instances sharing the port pool, the store's serialization, hence
    # which port a connection gets, may differ between batch sizes: both are valid.)
    for batch in (7, 64, 7):
        v = variant(chain, sc, 3, ["memory"])
        v.batch_size = batch
        res, _ = check_variant(chain, sc, records, v)
        assert res.ok, res.first
        results.append(res.physical.outputs)
    assert results[0] == results[2]


def test_bad_target_in_event_is_a_clear_error(capsys, lan_slice, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("events: [{at: {packets: 10}, do: slow, target: 'ghost[0]', delay: 'const:5'}]\n")
    assert main(["check", str(PAPER), str(bad), str(lan_slice), "--seed", "0"]) == 2
    assert "ghost" in capsys.readouterr().err
