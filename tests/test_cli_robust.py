"""Issue 18: a day-one user's mishaps (lost input, a killed machine, a silent
partial result) and what users of tcpdump / tshark / tcpreplay expect."""

from __future__ import annotations

from pathlib import Path

import pytest

from chc.cli import main
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
