"""The load balancer's changeable backend pool: a cross-flow read-heavy object whose
store callbacks must refresh every instance's cached copy (§4.3 Table 1, issue 12 R3)."""

from __future__ import annotations

import re

import pytest

from chc.backends.memory import MemoryStore
from chc.coe import Observers, check_runtime
from chc.nf import ConfigError, build_config, least_loaded
from chc.nfs.lb import LoadBalancer
from chc.packet import ip_bytes
from chc.reference import logical_run
from chc.runtime.sim import SimRuntime
from chc.scenario import Event, ScenarioError, parse_scenario
from chc.spec import parse_spec
from frames import ACK, SYN, tcp

VIP = "192.0.2.10"
B = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
NEW = "10.1.0.4"


def chain(parallelism: int = 3, **cfg):
    return parse_spec({"name": "lb-only", "vertices": {"lb": {
        "nf": "lb", "parallelism": parallelism, "config": {"vip": VIP, "backends": B, **cfg}}}})


def connections(n: int) -> list[tuple[int, bytes]]:
    """n connections from distinct clients, each a SYN and then one ACK."""
    out = []
    for i in range(n):
        client = f"198.51.{100 + i // 250}.{i % 250 + 1}"
        out.append(tcp(client, VIP, 40000 + i, 80, SYN))
        out.append(tcp(client, VIP, 40000 + i, 80, ACK))
    return [(i * 1000, f) for i, f in enumerate(out)]


def backend_of_syns(outputs: list[bytes]) -> list[str]:
    from chc.packet import Packet, ip_str
    return [ip_str(p.dst) for p in (Packet(f, 0, 0) for f in outputs) if p.flags == SYN]


# -- the choice ------------------------------------------------------------------------------

def test_weighted_least_loaded_is_exact_and_first_on_ties():
    assert least_loaded([3, 1, 1]) == 1
    assert least_loaded([0, 0, 0], [1, 3, 0]) == 0
    assert least_loaded([1, 0, 0], [1, 3, 0]) == 1
    assert least_loaded([1, 3, 0], [1, 3, 0]) == 0          # 1/1 == 3/3: the first
    assert least_loaded([0, 5, 0], [0, 1, 0]) == 1          # weight 0 never chosen
    assert least_loaded([0, 0], [0, 0]) is None


def test_weights_split_connections_in_proportion_and_equal_weights_keep_the_old_choice():
    def run(weights):
        rt = SimRuntime(chain(1, weights=weights) if weights else chain(1), model="EO+C+NA", store=MemoryStore())
        out = []
        rt.run(connections(40), emit=lambda ps: out.extend(bytes(p.data) for p in ps))
        return backend_of_syns(out)
    weighted = run([1, 3, 0])
    assert weighted.count(B[0]) == 10 and weighted.count(B[1]) == 30 and B[2] not in weighted
    plain = run(None)
    assert run([2, 2, 2]) == plain == [B[i % 3] for i in range(40)]


@pytest.mark.parametrize("cfg, field", [
    ({"weights": [1, 2]}, "weights"), ({"weights": [0, 0, 0]}, "weights"), ({"weights": [1, -1, 1]}, "weights"),
    ({"weights": "1,2,3"}, "weights"), ({"backends": []}, "backends")])
def test_bad_weights_name_the_field(cfg, field):
    with pytest.raises(ValueError, match=field) as exc:
        build_config(LoadBalancer, {"vip": VIP, "backends": B, **cfg}, "config")
    assert "\n" not in str(exc.value)


# -- the operator's change ------------------------------------------------------------------

def control(params: dict, pool=None):
    cfg = build_config(LoadBalancer, {"vip": VIP, "backends": B}, "config")
    cur = pool or (cfg.backend_addrs, cfg.backend_weights)
    return LoadBalancer.control("set-backends", params, lambda name: cur, cfg)["pool"]


def test_set_backends_drains_left_out_backends_and_appends_new_ones():
    addrs, weights = control({"backends": [B[1], NEW], "weights": [2, 1]})
    assert addrs == tuple(ip_bytes(a) for a in B + [NEW])     # indices never reused
    assert weights == (0, 2, 0, 1)
    assert control({"weights": [1, 3, 0]})[1] == (1, 3, 0)


@pytest.mark.parametrize("params, field", [
    ({"weights": [1, 2]}, "weights"), ({"weights": [0, 0, 0]}, "weights"),
    ({"backends": ["nope"]}, "backends[0]"), ({"backends": [B[0]], "weights": [1, 1]}, "weights"),
    ({"backend": [B[0]]}, "backend"), ({}, "backends")])
def test_bad_control_params_name_the_field(params, field):
    with pytest.raises(ConfigError, match=f"^{re.escape(field)}:"):
        control(params)


def test_a_bad_control_is_refused_when_the_scenario_meets_the_chain():
    sc = parse_scenario({"events": [{"at": {"packets": 5}, "do": "set-backends", "target": "lb",
                                     "weights": [1, 1]}]})
    with pytest.raises(ValueError, match="weights"):
        SimRuntime(chain(), model="EO+C+NA", events=sc.events)
    with pytest.raises(ScenarioError, match="target"):
        parse_scenario({"events": [{"at": {"packets": 5}, "do": "set-backends", "weights": [1]}]})


# -- end to end: the callback path -------------------------------------------------------------

DRAIN = Event("set-backends", "lb", {"backends": [B[0], NEW], "weights": [1, 1]}, at_packet=60)


def run_with_change(model: str, callbacks: bool, recorder=None):
    c = chain(3)
    rt = SimRuntime(c, model=model, store=MemoryStore(), batch_size=8, events=[DRAIN], recorder=recorder)
    for insts in rt.instances.values():
        for inst in insts:
            if inst.client is not None:
                inst.client.callbacks = callbacks
    return c, rt


@pytest.mark.parametrize("model", ["EO+C", "EO+C+NA"])
def test_a_change_at_the_store_reaches_every_cached_copy(model):
    """Connections opened after the operator drained .2 and .3 and added .4 go to .1
    and .4 only, on every instance; with the callbacks switched off the instances
    keep their stale copies and this fails, and so does the COE check."""
    records = connections(80)
    for callbacks in (True, False):
        c, rt = run_with_change(model, callbacks)
        out = []
        rt.run(records, emit=lambda ps, out=out: out.extend(bytes(p.data) for p in ps))
        assert [e["packet"] for e in rt.events_log if e.get("control")] == [60]
        after = backend_of_syns(out)[30:]
        cached = sum(len(i.client.callback_caches) for i in rt.instances["lb"])
        assert cached == 3                              # every instance holds a copy
        if callbacks:
            assert set(after) == {B[0], NEW}
            assert (after.count(B[0]), after.count(NEW)) == (20, 30)   # .4 catches up with .1's 10 first
        else:
            assert set(after) & {B[1], B[2]}, "stale caches should still pick drained backends"
        obs = Observers()
        c2, rt2 = run_with_change(model, callbacks, obs.serial)
        result = check_runtime(c2, rt2, records, obs)
        assert result.ok is callbacks, result.divergences[:1]


def test_model_t_instances_each_get_the_change_and_the_reference_agrees():
    records = connections(80)
    c = chain(1)
    rt = SimRuntime(c, model="T", events=[DRAIN])
    out = []
    rt.run(records, emit=lambda ps: out.extend(bytes(p.data) for p in ps))
    ref = logical_run(c, records, controls=[(60, "lb", "set-backends", DRAIN.params)])
    assert [f for _, f in ref.outputs] == out
    assert set(backend_of_syns(out)[30:]) == {B[0], NEW}
