"""chc: chains of stateful network functions with chain output equivalence (CHC, NSDI 2019)."""

__version__ = "0.1.0"


def console() -> int:
    """The ``chc`` command: :func:`chc.cli.main`, and a Ctrl-C that comes while it is
    still being imported ends it as one after would (one line, exit 130), not with a
    traceback."""
    import sys
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("chc: interrupted", file=sys.stderr)
        return 130
    return main()
