"""State handles: how an instance holds one declared state object.

Theory of operation
-------------------
An NF declares state objects (:mod:`chc.nf`); an instance runtime binds each
declaration to a *handle* with the operations of Table 2 (§4.3): ``get``,
``set``, ``incr``/``decr``, ``push``/``pop``, ``cas`` (compare-and-update) and
``delete``.  Every handle keeps the same signatures, so NF code is the same in
every state model:

* :class:`LocalObject` is model ``T``, the paper's traditional NF: the object
  lives in a dict inside the instance (one dict entry per key of the object's
  scope; key ``None`` for scope ``global``).

The externalized models (``EO``, ``EO+C``, ``EO+C+NA``) use the handles of
:mod:`chc.core.client`, which have the same methods and offload operations to
the store.  Besides Table 2, ``incr_least(keys)`` picks and increments the
least counter atomically (the load balancer's choice; a custom store op).

No I/O happens here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from typing import Any

from ..nf import VALUE_OPS, Access, StateObject, least_loaded

_MISSING = object()


class LocalObject:
    """Model T: one state object family in a local dict (Table 2 operations)."""

    __slots__ = ("decl", "config", "values", "_init", "_init_mutable", "recorder", "_blind")

    def __init__(self, decl: StateObject, config: Any) -> None:
        self.decl = decl
        self.config = config
        self.values: dict[Hashable, Any] = {}
        # COE checker: called with (object, key, op, result) for the ops whose
        # result depends on the order the store serializes them in (pop, cas,
        # incr_least), so the reference run can follow the same serialization.
        self.recorder: Any = None
        self._init = self._fresh()
        self._init_mutable = isinstance(self._init, (deque, dict, set))
        # Table 1: a write-mostly object's updates are blind (non-blocking in the
        # externalized models, their results never waited for), so its incr returns
        # None in every model: an NF that used the new value would act in T and not
        # in EO (the same NF, other alerts).
        self._blind = decl.access is Access.WRITE_MOSTLY

    def _fresh(self) -> Any:
        v = self.decl.initial(self.config)
        # Lists are popped at the head (the NAT's free-port pool): a deque keeps
        # that O(1) where list.pop(0) moves the whole pool.
        return deque(v) if self.decl.kind == "list" else v

    def _initial_value(self) -> Any:
        """The value of an absent key: the shared initial value, or a fresh copy
        when it is mutable."""
        return self._fresh() if self._init_mutable else self._init

    def _slot(self, key: Hashable) -> Any:
        v = self.values.get(key, _MISSING)
        if v is _MISSING:
            v = self.values[key] = self._fresh()
        return v

    # -- Table 2 ------------------------------------------------------------------
    def get(self, key: Hashable = None) -> Any:
        v = self.values.get(key, _MISSING)
        if v is _MISSING:
            return self._initial_value()
        return v

    def set(self, value: Any, key: Hashable = None) -> None:
        self.values[key] = value

    def incr(self, by: int = 1, key: Hashable = None) -> int | None:
        v = self.values[key] = self.values.get(key, self._init) + by
        return None if self._blind else v

    def decr(self, by: int = 1, key: Hashable = None) -> int | None:
        return self.incr(-by, key)

    def push(self, value: Any, key: Hashable = None) -> None:
        self._slot(key).append(value)

    def pop(self, key: Hashable = None) -> Any:
        """Remove and return the head of a list object (None when empty)."""
        lst = self._slot(key)
        v = lst.popleft() if lst else None
        if self.recorder is not None:
            self.recorder(self.decl.name, key, "pop", v)
        return v

    def cas(self, expected: Any, new: Any, key: Hashable = None) -> bool:
        """Compare-and-update: set ``new`` iff the current value equals ``expected``."""
        ok = self.get(key) == expected
        if ok:
            self.values[key] = new
        if self.recorder is not None:
            self.recorder(self.decl.name, key, "cas", ok)
        return ok

    def delete(self, key: Hashable = None) -> None:
        self.values.pop(key, None)

    def apply(self, op: str, *args: Any, key: Hashable = None) -> Any:
        """Run the registered value operation ``op`` on the value (atomic)."""
        new, result = VALUE_OPS[op].fn(self.get(key), *args)
        self.values[key] = new
        if self.recorder is not None:
            self.recorder(self.decl.name, key, "apply", (new, result))
        return result

    def incr_least(self, keys: list, weights: list | tuple | None = None) -> int | None:
        """Index of the least counter among ``keys``, incremented by one (first on
        ties), as one atomic operation; the store runs it as a custom op.  With
        ``weights``: the least ``counter / weight`` among positive weights
        (:func:`chc.nf.least_loaded`); None, nothing incremented, when none is."""
        loads = [self.get(k) for k in keys]
        best = least_loaded(loads, weights)
        if best is None:
            return None
        self.incr(1, keys[best])
        if self.recorder is not None:
            self.recorder(self.decl.name, None, "incr_least", best)
        return best

    # -- introspection (COE checker, digest) ----------------------------------------
    def items(self) -> Iterator[tuple[Hashable, Any]]:
        """Keys whose value differs from the initial value, with their values."""
        init = self._init
        for k, v in self.values.items():
            if v != init:
                yield k, list(v) if isinstance(v, deque) else v
