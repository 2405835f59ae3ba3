"""Chain spec validation: every bad field is named; good specs compile."""

from __future__ import annotations

import copy

import pytest

from chc.nfs import NAT, LoadBalancer, PortScanDetector, TrojanDetector
from chc.spec import SpecError, load_spec, parse_spec

GOOD = {
    "name": "t",
    "vertices": {
        "nat": {"nf": "nat", "config": {"external_ip": "198.51.100.1", "internal": ["10.0.0.0/8"]}},
        "scan": {"nf": "portscan", "parallelism": 2},
        "lb": {"nf": "lb", "config": {"vip": "10.1.1.1", "backends": ["10.2.0.1", "10.2.0.2"]}},
        "troj": {"nf": "trojan"},
    },
    "edges": ["nat -> scan", ["scan", "lb"]],
    "offpath": [{"from": "nat", "to": "troj", "tap": "input"}],
}


def test_paper_chain_compiles():
    chain = load_spec("examples/paper_chain.yaml")
    assert chain.entry == "nat"
    assert list(chain.vertices) == ["nat", "trojan", "portscan", "lb"]
    v = chain.vertices
    assert v["nat"].nf is NAT and v["portscan"].nf is PortScanDetector
    assert v["lb"].nf is LoadBalancer and v["trojan"].nf is TrojanDetector
    assert v["nat"].successors == ["portscan"] and v["nat"].taps_in == ["trojan"]
    assert v["trojan"].offpath and not v["lb"].successors


def test_good_spec_and_parallelism_override():
    chain = parse_spec(copy.deepcopy(GOOD))
    assert chain.vertices["scan"].parallelism == 2
    assert {v.parallelism for v in chain.with_parallelism(3).vertices.values()} == {3}
    assert chain.with_parallelism({"lb": 4}).vertices["lb"].parallelism == 4


def test_partition_scopes_follow_declarations():
    # §4.1: the splitter partitions on the coarsest non-global declared scope.
    assert NAT.partition_scope().name == "5-tuple"
    assert PortScanDetector.partition_scope().name == "host-pair"      # overridden, see portscan.py
    assert TrojanDetector.partition_scope().name == "src-ip"
    assert [s.name for s in NAT.scopes()] == ["5-tuple", "global"]


def _bad(mutate) -> str:
    spec = copy.deepcopy(GOOD)
    mutate(spec)
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    return str(err.value)


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s["vertices"]["nat"].update(nf="natt"), "vertices.nat.nf"),
    (lambda s: s["vertices"]["nat"].update(parallelism=0), "vertices.nat.parallelism"),
    (lambda s: s["vertices"]["nat"].update(parallelism="2"), "vertices.nat.parallelism"),
    (lambda s: s["vertices"]["nat"].update(color="red"), "vertices.nat.color"),
    (lambda s: s["vertices"]["nat"]["config"].update(external_ip="1.2.3"), "vertices.nat.config.external_ip"),
    (lambda s: s["vertices"]["nat"]["config"].pop("external_ip"), "vertices.nat.config.external_ip"),
    (lambda s: s["vertices"]["nat"]["config"].update(port_range=[10, 5]), "vertices.nat.config.port_range"),
    (lambda s: s["vertices"]["nat"]["config"].update(internal=["10.0.0.0/33"]), "vertices.nat.config.internal[0]"),
    (lambda s: s["vertices"]["nat"]["config"].update(bogus=1), "vertices.nat.config.bogus"),
    (lambda s: s["vertices"]["scan"].update(config={"theta0": 1.5}), "vertices.scan.config.theta0"),
    (lambda s: s["vertices"]["lb"]["config"].update(backends=[]), "vertices.lb.config.backends"),
    (lambda s: s["vertices"]["lb"]["config"].update(backends=["10.2.0.1", "nope"]), "vertices.lb.config.backends[1]"),
    (lambda s: s["vertices"]["troj"].update(config={"ssh_ports": [0]}), "vertices.troj.config.ssh_ports"),
    (lambda s: s["edges"].append("lb -> ghost"), "edges[2]"),
    (lambda s: s["edges"].append("lb -> nat"), "cycle nat -> scan -> lb -> nat"),
    (lambda s: s["edges"].append("nat -> nat"), "edges[2]"),
    (lambda s: s["edges"].append(42), "edges[2]"),
    (lambda s: s["edges"].pop(0), "need a 'match' each"),
    (lambda s: s["vertices"]["lb"].update(match="other"), "only entry vertices"),
    (lambda s: s["vertices"]["nat"].update(match={"ports": [0]}), "vertices.nat.match.ports"),
    (lambda s: s.update(roots=0), "roots:"),
    (lambda s: s["offpath"][0].update(tap="sideways"), "offpath[0].tap"),
    (lambda s: s.update(input={"malformed": "explode"}), "input.malformed"),
    (lambda s: s.update(extra=1), "extra: unknown top-level field"),
    (lambda s: s.update(vertices={}), "vertices:"),
])
def test_bad_field_is_named(mutate, field):
    assert field in _bad(mutate)


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("vertices: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml:\d+:\d+: not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="missing.yaml"):
        load_spec(tmp_path / "missing.yaml")
    # a key given twice: PyYAML kept the last silently (a new user's two vertices ``a``)
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: x\nvertices:\n  a: {nf: pass}\n  a: {nf: nat}\n")
    with pytest.raises(SpecError, match=r"dup.yaml:4:3: not valid YAML \(duplicate key 'a', first at line 3\)"):
        load_spec(dup)
    (tmp_path / "twice.yaml").write_text("name: x\nname: y\nvertices: {a: {nf: pass}}\n")
    with pytest.raises(SpecError, match="duplicate key 'name'"):
        load_spec(tmp_path / "twice.yaml")
    # YAML merge keys still work, and a merged key may be overridden (a review's finding)
    (tmp_path / "merge.yaml").write_text("name: x\nbase: &b {nf: pass, parallelism: 1}\n"
                                         "vertices:\n  a: {<<: *b, parallelism: 2}\n")
    from chc.spec import read_yaml
    assert read_yaml(tmp_path / "merge.yaml", SpecError)["vertices"]["a"] == {"nf": "pass", "parallelism": 2}
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="list.yaml: the spec must be a mapping"):
        load_spec(listy)


def test_an_nf_config_may_refuse_values_with_either_form_of_config_error():
    """A new user's ``raise ConfigError('msg')`` in ``__post_init__`` failed on the exception's
    own signature ("__init__() takes exactly 3 positional arguments"); both forms, a plain
    ValueError and a ``validate()`` hook give one line naming where."""
    import dataclasses

    from chc.nf import NF, ConfigError, build_config

    def nf_with(check):
        @dataclasses.dataclass
        class Config:
            limit: int = 1

            def __post_init__(self):
                check(self)

        return type("Own", (NF,), {"kind": "own", "Config": Config})

    def plain(cfg):
        raise ConfigError("limit must be >= 1")

    def named(cfg):
        raise ConfigError("limit", "must be >= 1")

    def value(cfg):
        raise ValueError("limit must be >= 1")

    for check, text in ((plain, "v.config: limit must be >= 1"), (named, "v.config.limit: must be >= 1"),
                        (value, "v.config: limit must be >= 1")):
        with pytest.raises(ConfigError) as info:
            build_config(nf_with(check), {"limit": 0}, "v.config")
        assert str(info.value) == text

    @dataclasses.dataclass
    class Checked:
        limit: int = 1

        def validate(self):
            if self.limit < 1:
                raise ConfigError("must be positive")

    with pytest.raises(ConfigError) as info:
        build_config(type("Own2", (NF,), {"kind": "own2", "Config": Checked}), {"limit": 0}, "v.config")
    assert str(info.value) == "v.config: must be positive"
