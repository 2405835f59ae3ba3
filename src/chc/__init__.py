"""chc: chains of stateful network functions with chain output equivalence (CHC, NSDI 2019)."""

__version__ = "0.1.0"
