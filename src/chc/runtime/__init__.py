"""Runtimes that drive the core state machines: ``sim`` (deterministic, one process)."""
