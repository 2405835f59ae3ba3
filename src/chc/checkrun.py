"""``chc check``'s driver: seeds in parallel processes, verdicts, the report.

Seeds are the unit of confidence, so they run in ``--jobs`` worker processes
(forked after the chain, scenario and input are loaded, so each worker starts
with them in memory) and come back as plain JSON-able verdicts
(:meth:`chc.coe.SeedResult.as_json`), printed in seed order.

Verdicts: ``pass``; ``diverged`` (the first divergence is named);
``unrecoverable`` (a component crashed and nothing can recover it yet);
``error`` (the run raised: a bug, reported with where it was raised, and the
other seeds still run);
with ``--break``: ``not-exercised`` (the break found nothing to act on in that
seed) and ``uncaught`` (it acted and the checker saw nothing: a hole).
With ``--kill``, a ``pass`` whose kill was not made (``kills_not_made``) tested
no recovery: its line and the last line say so, counted apart (still exit 0).
Exit codes: 0 every seed passed; 1 a seed diverged, was unrecoverable or raised; 2 bad
input, or nothing was checked; 3 a ``--break`` run in which no seed caught it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import re
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import yaml

from . import ctrlc
from .backends import open_store
from .backends.redis import NamespaceInUse
from .capture import open_capture
from .cliargs import EXIT_INTERRUPTED
from .coe import (
    BREAKS,
    DURING,
    PROC_BREAKS,
    CheckResult,
    SeedResult,
    check_variant,
    draw_kill,
    kill_count,
    proc_refusal,
    variant,
)
from .core.store import StoreError
from .scenario import Scenario, ScenarioError, load_scenario
from .spec import Chain, load_spec


class NothingChecked(Exception):
    """The run would check nothing (an empty input): exit 2 with the reason."""


@dataclasses.dataclass
class Job:
    chain_path: str
    scenario_path: str
    capture_path: str
    packets: int | None
    chain: Chain
    scenario: Scenario
    records: list[tuple[int, bytes]]
    stores: list[str]
    breaks: tuple[str, ...]
    runtime: str = "sim"            # the physical run's runtime: sim, proc or ray
    kill: str = ""                  # proc, ray: "random" or VERTEX[I]@N, a SIGKILL per seed (draw_kill)
    ray_address: str = "auto"       # ray: the cluster to join
    checkpoint_ms: float | None = None  # proc, ray with kills: the store server's checkpoint interval
    truncated: str | None = None    # why the capture stopped early (cut short, corrupt), if it did
    namespace: str = "chc"          # Redis: the key namespace every seed starts fresh (--namespace)
    worker: int = 0                 # --jobs J: this worker's number k (its Redis database k); 0: none

    @classmethod
    def load(cls, chain: str, scenario: str, capture: str, packets: int | None, stores: list[str],
             breaks: tuple[str, ...], runtime: str = "sim", kill: str = "", ray_address: str = "auto",
             checkpoint_ms: float | None = None, namespace: str = "chc") -> Job:
        spec = load_spec(chain)
        sc = load_scenario(scenario)
        try:
            sc.check_targets(list(spec.vertices), spec)
        except ScenarioError as exc:
            raise ScenarioError(f"{scenario}: {exc}") from None
        if sc.store and stores != ["memory"] and sc.store not in stores:
            # (the pin wins: a --store that is not used would be a check of something else)
            raise ScenarioError(f"{scenario}: the scenario pins store: {sc.store}, so --store "
                                f"{', '.join(stores)} would not be used; drop one of them")
        if runtime in ("proc", "ray"):
            from .runtime.procscale import scenario_refusal
            refused = scenario_refusal(sc, scenario)     # (at once, before any seed)
            if refused:
                raise ScenarioError(refused)
        if kill:
            _check_kill(kill, spec, runtime)
            if kill == DURING and not _may_change(sc, spec):
                # (each seed drew no kill and passed as if its recovery had been tested)
                raise ValueError(f"--kill during: {scenario} makes no scaling change and no vertex of {chain} "
                                 "has a scaling: policy, so no seed has a change to kill during (it needs "
                                 "scale-out, scale-in, move or refine events); use --kill random or VERTEX[I]@N")
        if checkpoint_ms is not None:
            unused = _checkpoints_unused(sc, runtime, kill, stores)
            if unused:
                raise ValueError(f"--checkpoint-ms: {unused}")
        with open_capture(capture) as reader:
            records = list(itertools.islice(reader, packets) if packets else reader)
            cut = reader.stop_reason        # (a capture cut short: the check covers what was read)
        if not records:
            raise NothingChecked(f"{capture}: no packets to check (an empty capture checks nothing)")
        job = cls(chain, scenario, capture, packets, spec, sc, records, stores, breaks, runtime, kill, ray_address,
                  checkpoint_ms, cut, namespace)
        for url in stores:
            if url != "memory":
                job.open_store(url).close()      # unreachable, malformed or in use: a clear error now
        return job

    def open_store(self, url: str) -> Any:
        """A seed's store: ``url`` with the check's namespace made fresh.  A namespace another
        run holds stops the whole check in one line (ValueError) saying what to do with
        ``chc check`` (it was a seed's internal error when a worker's database was in use)."""
        try:
            return open_store(url, namespace=self.namespace)
        except NamespaceInUse as exc:
            hint = "give this check another namespace (chc check --namespace NAME)"
            if self.worker:
                hint += f"; with --jobs, worker k uses database k ({exc.url} is worker {self.worker}'s)"
            else:
                hint += " or database (redis://HOST:PORT/DB)"
            raise ValueError(str(exc.hinting(hint))) from None

    def run(self, seed: int) -> dict:
        started = time.perf_counter()
        v = variant(self.chain, self.scenario, seed, self.stores)
        if self.kill:
            from .runtime.procscale import ACTIONS
            changes = [e.vertex
                       for e in self.scenario.events_for(seed, list(self.chain.vertices), len(self.records))
                       if e.action in ACTIONS]
            if not changes:
                # §3 vertex managers decide their changes as the run goes: which vertex the
                # K-th one changes is not known ahead (a kill during a change K that never
                # comes is skipped and logged)
                changes = [name for _ in range(4) for name, x in self.chain.vertices.items()
                           if x.scaling is not None]
            v.kill = draw_kill(v, len(self.records), self.kill, self.chain.roots, changes)
        try:
            res = check_variant(self.chain, self.scenario, self.records, v, self.breaks, self.open_store,
                                self.runtime, self.ray_address, self.checkpoint_ms, self.namespace)
        except ValueError:
            raise                           # the variant cannot run here (bad input): the whole check stops
        except Exception as exc:            # a bug met in this seed: reported, and the hunt goes on
            out = _internal_error(v, exc)
        else:
            out = res.as_json()
        if out["verdict"] != "pass":
            _store_gone(v, seed, " ".join(filter(None, (out.get("unrecoverable"), *out.get("divergences", ())))))
        out["seconds"] = round(time.perf_counter() - started, 3)
        return out


_LOST = ("StoreLost", "StoreUnavailable", "the store is unreachable", "lost this run's state")


def _store_gone(v: Any, seed: int, failure: str) -> None:
    """A seed that failed because its Redis server went away (or restarted empty, or was
    flushed) says nothing of the chain: stop the whole check in one line (ValueError)
    instead of reporting a divergence or an internal error, and saving it as a regression.
    The sim's store crashes never reach Redis itself, so a server that answers now and
    kept no lost state is the seed's own failure."""
    if v.store == "memory" or not any(s in failure for s in _LOST):
        return
    from .backends.redis import redact
    where = f"{redact(v.store)}: the Redis server"
    if "lost this run's state" in failure:
        raise ValueError(f"{where} lost seed {seed}'s state during its run (restarted empty or flushed); "
                         "the check stops: a store outage is no verdict on the chain")
    try:
        # (open_store: a redis-cluster:// URL too; it takes no lease, deletes nothing, warns of nothing)
        probe = open_store(v.store, fresh=False, lease=False, attempts=2, backoff=0.05)
    except StoreError as exc:
        gone = str(exc)
    else:
        gone = probe.unreachable()
        probe.close()
    if gone:
        raise ValueError(f"{where} went away during seed {seed} ({gone}); the check stops: a store outage "
                         "is no verdict on the chain")


def _internal_error(v: Any, exc: Exception) -> dict:
    """A seed whose run raised: verdict ``error``, with where it was raised (a long hunt
    keeps going; ``--save-failures`` keeps the seed)."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    what = (f"internal error: {type(exc).__name__}: {exc} (at {os.path.basename(frame.filename)}:{frame.lineno}"
            f" in {frame.name}; please report it)")
    out = SeedResult(v, CheckResult([], [], None, None), "error", {}).as_json()
    out.update(first_divergence=what, divergences=[what])
    return out


def _check_kill(kill: str, chain: Chain, runtime: str) -> None:
    """``--kill``'s one-line errors before any seed runs (an instance index is checked
    again per seed, against the parallelism it draws)."""
    if runtime not in ("proc", "ray"):
        raise ValueError("--kill is for --runtime proc or ray (with sim, a scenario's crash events kill instances: "
                         "docs/recovery.md)")
    if not kill_count(kill) and kill != DURING:
        from .runtime.proc import parse_kill
        for k in kill.split(","):
            parse_kill(k, chain.with_room())


def _checkpoints_unused(sc: Scenario, runtime: str, kill: str, stores: list[str]) -> str:
    """Why no seed's store server would take the checkpoints ``--checkpoint-ms`` times (it
    takes them only when it can be killed and failed over), or "" (it was accepted
    silently, as chc run's was).  Random draws may kill it: not refused then."""
    from .runtime.storefailover import recoverable_url
    if runtime not in ("proc", "ray"):
        return ("it is for --runtime proc or ray, with a kill of the store server (with sim, a scenario's crash "
                "of the store takes checkpoint_ms)")
    if sc.packet_log != "local":
        return (f"with the scenario's packet_log: {sc.packet_log} the store server is not failed over, so it "
                "takes no checkpoints")
    if not any(recoverable_url(url) for url in ([sc.store] if sc.store else stores)):
        return ("the store server is not failed over on a sharded Redis or a Redis Cluster (store failover needs "
                "the memory store or one Redis server), so it takes no checkpoints")
    drawn = sc.random is not None and sc.random.events > 0 and "store" in (sc.random.vertices or ())
    crashed = any(e.action == "crash" and e.target == "store" for e in sc.events)
    killed = bool(kill_count(kill)) or kill == DURING or any(k.strip().startswith("store@")
                                                             for k in kill.split(",") if kill)
    if not (drawn or crashed or killed):
        return ("no seed kills the store server (--kill store@N, --kill random or during, which may draw it, or "
                "a scenario's crash of the store), so it takes no checkpoints")
    return ""


def _may_change(sc: Scenario, chain: Chain) -> bool:
    """Whether a seed of ``sc`` on ``chain`` can make a scaling change (what ``--kill
    during`` draws its kill in: :meth:`Job.run`)."""
    from .runtime.procscale import ACTIONS
    drawn = sc.random is not None and sc.random.events > 0 and bool(set(sc.random.actions) & set(ACTIONS))
    return drawn or any(e.action in ACTIONS for e in sc.events) or \
        any(v.scaling is not None for v in chain.vertices.values())


_JOB: Job | None = None         # the job of a forked worker
_REDIS_DATABASES = 16           # a Redis server's default number of databases (0 is left to the user)


def _run_in_worker(seed: int) -> dict:
    assert _JOB is not None
    try:
        return _JOB.run(seed)
    except ValueError as exc:
        return {"seed": seed, "error": str(exc)}


def _own_database(numbers: Any) -> None:
    """A worker's Redis seeds use a database of their own (worker k: database k, from
    ``numbers``, a queue of 1..J), so parallel seeds never share CHC's keys.  (Not the
    worker's multiprocessing identity: it keeps counting in a process that started
    other children before, and database 22 does not exist.)"""
    assert _JOB is not None
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's: it stops the pool
    k = numbers.get()
    _JOB.stores = [_with_db(url, k) for url in _JOB.stores]
    _JOB.worker = k


def _with_db(url: str, db: int) -> str:
    if url == "memory":
        return url
    return ",".join(f"{u.rstrip('/')}/{db}" for u in url.split(","))


def _has_db(url: str) -> bool:
    return any(u.split("://", 1)[-1].count("/") for u in url.split(",") if u != "memory")


@dataclasses.dataclass
class Report:
    job: Job
    results: list[dict]
    seconds: float
    jobs: int
    interrupted: bool = False       # Ctrl-C: the results are the seeds that finished before it
    asked: int = 0                  # seeds asked for

    def counts(self) -> Counter:
        return Counter(r["verdict"] for r in self.results)

    def passed_without_kill(self) -> list[dict]:
        """The seeds that passed although a kill they planned was not made (or found
        nothing to recover): ``--kill`` tested no recovery in them, or less than asked."""
        return [r for r in self.results if r["verdict"] == "pass" and r.get("kills_not_made")]

    def failures(self) -> list[dict]:
        return [r for r in self.results if r["verdict"] in ("diverged", "unrecoverable", "error")]

    def exit_code(self) -> int:
        c = self.counts()
        if c["diverged"] or c["unrecoverable"] or (c["error"] and not self.job.breaks):
            return 1                        # (with --break only a divergence is the break caught)
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.job.breaks or self.job.truncated:
            return 3                        # (a truncated capture: partial input, as chc run says)
        return 0

    def summary_line(self) -> str:
        c = self.counts()
        n = len(self.results)
        rate = n / self.seconds if self.seconds else 0.0
        bare = self.passed_without_kill()
        # (a pass whose kill was not made tested no recovery: counted apart, never as a plain pass)
        c["pass"] -= len(bare)
        parts = [f"{c[v]} {v}" for v in ("pass", "diverged", "unrecoverable", "error", "not-exercised", "uncaught")
                 if c[v]]
        if bare:
            parts.insert(1 if c["pass"] else 0, f"{len(bare)} pass without their kill")
        pace = f"({rate:.2f} seeds/s, {self.jobs} job{'s' if self.jobs != 1 else ''})"
        line = f"{n} seed{'s' if n != 1 else ''}: {', '.join(parts)} {pace}"
        if not self.job.breaks:
            # (all passed: the counts would say it twice)
            passed = f"{c['pass']} of {n} seeds passed" + (f" with their kill, {len(bare)} passed without it ("
                                                          f"{_not_made(bare)})" if bare else "")
            line = f"{passed} " + pace if c["pass"] + len(bare) == n else f"{passed}; " + line
        fails = self.failures()
        if fails and n > 1:
            line += f"; rerun a failure with --seed {fails[0]['seed']}"
        if self.job.breaks and not c["diverged"]:
            line += f"; the break ({', '.join(self.job.breaks)}) was never caught"
        if self.interrupted:
            line += f"; interrupted (Ctrl-C) after {n} of {self.asked} seeds"
        erring = [r["seed"] for r in self.results if r.get("nf_errors")]
        if erring:
            line += (f"; NF errors in {len(erring)} of {n} seeds" if n > 1 else "; NF errors") + \
                " (the seed's lines name them)"
        if self.job.truncated:
            line += (f"; PARTIAL: the capture stopped after {len(self.job.records):,} packets "
                     f"({self.job.truncated}), only those were checked")
        return line

    def as_json(self) -> dict:
        return {"chain": self.job.chain_path, "scenario": self.job.scenario_path,
                "capture": self.job.capture_path, "packets": len(self.job.records),
                "capture_truncated": self.job.truncated,
                "breaks": list(self.job.breaks), "jobs": self.jobs, "runtime": self.job.runtime,
                **({"kill": self.job.kill} if self.job.kill else {}),
                "seconds": round(self.seconds, 3),
                "seeds_per_second": round(len(self.results) / self.seconds, 3) if self.seconds else None,
                "verdicts": dict(self.counts()),
                # (counted in verdicts' pass too; each one's kills_not_made says which and why)
                **({"passed_without_kill": [r["seed"] for r in self.passed_without_kill()]} if self.job.kill else {}),
                "interrupted": self.interrupted, "results": self.results}


def _not_made(bare: list[dict]) -> str:
    """Which seeds passed without their kill and why, in short (each seed's line has it all)."""
    by: dict[str, list[int]] = {}
    for r in bare:
        by.setdefault(r["kills_not_made"][0]["reason"], []).append(r["seed"])
    said = []
    for reason, seeds in list(by.items())[:2]:
        names = ", ".join(map(str, seeds[:5])) + (", ..." if len(seeds) > 5 else "")
        said.append(f"seed{'s' if len(seeds) > 1 else ''} {names}: {reason}")
    more = len(by) - len(said)
    return "kill not made in " + "; ".join(said) + (f"; and {more} other reason{'s' if more > 1 else ''}"
                                                      if more else "")


def check_jobs(jobs: int, seeds: int, stores: list[str], runtime: str) -> None:
    """Refuse (ValueError) a ``--jobs`` these seeds cannot run with; before any store is
    opened, so that a refused check leaves nothing behind in a Redis database."""
    if jobs > 1 and runtime in ("proc", "ray"):
        raise ValueError(f"--jobs: with --runtime {runtime} seeds run one at a time (each seed is already "
                         "a process per root, instance and store)")
    if jobs > 1 and seeds > 1 and any(_has_db(url) for url in stores):
        raise ValueError("--jobs > 1 gives each worker its own Redis database (worker k: database k): "
                         "give the Redis URL without a /DB")
    if jobs > _REDIS_DATABASES - 1 and seeds > 1 and any(u != "memory" for u in stores):
        raise ValueError(f"--jobs {jobs}: with Redis, at most {_REDIS_DATABASES - 1} (worker k uses database k "
                         f"of a server's {_REDIS_DATABASES})")


def run_seeds(job: Job, seeds: list[int], jobs: int, say: Callable[[str], Any]) -> Report:
    """Run every seed (in ``jobs`` processes) and print each verdict as it is known."""
    global _JOB
    check_jobs(jobs, len(seeds), job.stores, job.runtime)
    started = time.perf_counter()
    results: list[dict] = []
    interrupted = False
    try:
        # Ctrl-C (chc.ctrlc): the first stops the check, the seed under way dropped (the proc
        # runtime's at its next wait, its workers killed); the second aborts, reporting nothing
        with ctrlc.flagged("chc: stopping: the seed under way is dropped, the seeds that finished are "
                           "reported (Ctrl-C again to abort)") as ctrl:
            if jobs > 1 and len(seeds) > 1:
                _JOB = job
                ctx = multiprocessing.get_context("fork")
                workers = min(jobs, len(seeds))
                numbers = ctx.SimpleQueue()
                for k in range(1, workers + 1):
                    numbers.put(k)
                with ctx.Pool(workers, initializer=_own_database, initargs=(numbers,)) as pool:
                    for r in pool.imap(_run_in_worker, seeds):
                        _take(r, results, say)
                        ctrl.poll()
            else:
                with _forkserver_kept(job.runtime):
                    for seed in seeds:
                        r = job.run(seed)
                        if ctrl.count > 1:
                            raise ctrlc.Aborted     # (its workers were killed: no verdict)
                        _take(r, results, say)
                        # (a Ctrl-C whose KeyboardInterrupt was lost where it landed, chc.ctrlc)
                        ctrl.poll()
    except ctrlc.Aborted:
        raise
    except KeyboardInterrupt:
        interrupted = True                  # what finished is kept: reported, written, saved
    finally:
        _JOB = None
    return Report(job, results, time.perf_counter() - started, jobs, interrupted, len(seeds))


def _forkserver_kept(runtime: str) -> Any:
    """proc: the forkserver kept from one seed to the next (a run stops it: each seed
    started it again), stopped at the end of the check."""
    if runtime != "proc":
        return contextlib.nullcontext()
    from .runtime.proc import forkserver_kept
    return forkserver_kept()


def _take(r: dict, results: list[dict], say: Callable[[str], Any]) -> None:
    if "error" in r:
        raise ValueError(r["error"])
    results.append(r)
    say(describe(r))


def describe(r: dict) -> str:
    """One seed's lines for the terminal."""
    verdict = r["verdict"].upper()
    missed = r.get("kills_not_made")
    if missed:
        # (the kill was the point of the seed: a pass without it tested no recovery, said on its first line)
        planned = r["kills_planned"]
        verdict += (" WITHOUT ITS KILL" if planned == 1 else " WITHOUT ALL ITS KILLS" if len(missed) >= planned
                    else f" WITHOUT {len(missed)} OF ITS {planned} KILLS")
        verdict += " (" + "; ".join(f"{m['process']} not killed: {m['reason']}" for m in missed) + ")"
    lines = [f"seed {r['seed']}: {verdict}  ({r['drawn']}; {r['seconds']:.1f} s)"]
    faults = {k: v for k, v in r["faults"].items() if not k.endswith(".sent") and v
              and not (missed and k == "not_killed")}
    if faults:
        lines += _fault_lines(faults)
    if r.get("events"):
        lines.append("    events: " + ", ".join(f"{k} {n}" for k, n in r["events"].items()))
    lines += _not_done_lines(r.get("not_done") or [])
    for name, did in r["breaks"].items():
        lines.append(f"    break {name}: {did or 'found nothing to act on (not exercised)'}")
    if r["unrecoverable"]:
        lines.append(f"    {r['unrecoverable']}")
    if r.get("nf_errors"):
        lines += _nf_error_lines(r["nf_errors"])
    if r["first_divergence"]:
        lines.append(f"    first divergence: {r['first_divergence']}")
        if r.get("likely_cause"):
            lines.append(f"    likely cause: {r['likely_cause']}")
        lines += [f"    also: {d}" for d in r["divergences"][1:3]]
    return "\n".join(lines)


SHOWN_NOT_DONE = 5      # events not carried out a seed's lines name (--json: not_done has every one)


def _not_done_lines(not_done: list[dict]) -> list[str]:
    """What the seed's run was asked and did not do, each with its reason (a PASS was
    read as "the clone was checked" beside a bare "clone-refused 1")."""
    lines = [f"    not done: {d['kind']} {d['target']}"
             + (f" at packet {d['packet']}" if d.get("packet") is not None else "")
             + (f": {d['reason']}" if d.get("reason") else "") for d in not_done[:SHOWN_NOT_DONE]]
    if len(not_done) > SHOWN_NOT_DONE:
        lines.append(f"    and {len(not_done) - SHOWN_NOT_DONE} more not done (--json: not_done)")
    return lines


SHOWN_KINDS = 3         # kinds of NF error a seed's lines show (--json has every one)
SHOWN_KILLS = 3         # kills a seed's faults show one by one (--json has every one)


def _fault_lines(faults: dict) -> list[str]:
    """A seed's faults: one line, or with more than :data:`SHOWN_KILLS` kills (a
    scenario's crashes and drawn ones: 5-7 failovers made a line of 1,500 characters) how
    many of each process were killed, the first ones each on its line with its
    failover, and the others by process and input packet."""
    line = "    faults: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in faults.items())
    killed = faults.get("killed", "").split("; ")
    failovers = faults.get("failover", "").split("; ")
    if len(killed) <= SHOWN_KILLS or len(failovers) != len(killed):     # (as _kill_faults pairs them)
        return [line]
    kinds = Counter("root" if k.startswith("root[") else "store server" if k.startswith("store (")
                    else "NF instance" for k in killed)
    each = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in kinds.most_common())
    lines = [f"    faults: {len(killed)} kills ({each}), each failed over (the first {SHOWN_KILLS} below; "
             "--json: faults has every one):"]
    shown = zip(killed[:SHOWN_KILLS], failovers[:SHOWN_KILLS], strict=True)
    lines += [f"      killed {k}; failover {f}" for k, f in shown]
    rest = [re.sub(r" at input packet (\d+).*", r" at \1", k) for k in killed[SHOWN_KILLS:]]
    lines.append(f"      and {len(rest)} more: {', '.join(rest)}")
    if faults.get("not_killed"):
        lines.append(f"      not killed: {faults['not_killed']}")
    return lines


def _nf_error_lines(errors: dict) -> list[str]:
    """A seed's NF errors: how many in each run, then each kind (type and the NF's line
    that raised it) with its count and first occurrence, the most frequent first."""
    phys, logical = errors["physical"], errors["logical"]
    both = (f"{phys:,} in both runs" if phys == logical
            else f"{phys:,} in the physical run, {logical:,} in the logical chain")
    lines = [f"    NF errors: {both} (each packet dropped, or an update refused)"]
    kinds = errors["kinds"]
    for k in kinds[:SHOWN_KINDS]:
        at = f" at {k['at']}" if k["at"] else ""
        lines.append(f"      {k['count']:,} x {k['error']}{at}, first: {k['first']}")
    if len(kinds) > SHOWN_KINDS:
        more = len(kinds) - SHOWN_KINDS
        lines.append(f"      and {more} more kind{'s' if more > 1 else ''} (--json: nf_errors)")
    if phys != logical and errors["physical_first"]:
        lines.append("      the physical run's first: " + "; ".join(errors["physical_first"][:SHOWN_KINDS]))
    return lines


def list_breaks() -> str:
    width = max(len(n) for n in BREAKS)
    def runtimes(b: Any) -> str:
        return "proc" if b.proc_only else "sim, proc" if b.name in PROC_BREAKS else "sim"

    return "\n".join(f"{b.name:<{width}}  {b.what} (caught as: {b.caught_as}; runs on: {runtimes(b)})"
                     for b in BREAKS.values())


def save_failures(path: str, job: Job, failures: list[dict]) -> None:
    """Append failing seeds as regression entries the test suite loads
    (tests/test_coe.py): plain YAML, paths relative to the working directory."""
    def rel(p: str) -> str:
        full = os.path.abspath(p)
        here = os.getcwd()
        return os.path.relpath(full, here) if full.startswith(here + os.sep) else full

    entries = []
    for r in failures:
        entry = {"chain": rel(job.chain_path), "scenario": rel(job.scenario_path),
                 "capture": rel(job.capture_path), "packets": job.packets, "seed": r["seed"],
                 "breaks": list(job.breaks)}
        # What the seed ran on, so that it reruns there (a Redis seed reran on the memory
        # store): the kind of store, never its URL (credentials, another machine's host)
        store = r["variant"]["store"]
        if store != "memory":
            entry["store"] = "redis-cluster" if store.startswith("redis-cluster") else "redis"
        if job.runtime != "sim":
            entry["runtime"] = job.runtime
        if job.kill:
            entry["kill"] = job.kill
        entry["expect"] = "diverged" if job.breaks else "pass"
        entry["why"] = f"{r['verdict']}: {r['unrecoverable'] or r['first_divergence']}"
        entries.append(entry)
    text = yaml.dump(entries, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=100)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


class _NoAliases(yaml.SafeDumper):
    """Plain YAML: no anchors or aliases (a list shared by two entries is written twice)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


__all__ = ["BREAKS", "Job", "NothingChecked", "Report", "check_jobs", "describe", "list_breaks", "proc_refusal",
           "run_seeds", "save_failures"]
