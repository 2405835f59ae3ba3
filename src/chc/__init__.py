"""chc: chains of stateful network functions with chain output equivalence (CHC, NSDI 2019)."""

__version__ = "0.1.0"

# How chc's warnings and errors read on stderr, from the command and from a proc worker alike
LOG_FORMAT = "chc: %(levelname)s: %(message)s"


def console() -> int:
    """The ``chc`` command: :func:`chc.cli.main`, and a Ctrl-C that comes while it is
    still being imported ends it as one after would (one line, exit 130), not with a
    traceback; once it has returned, a SIGTERM or SIGINT while the process exits ends it
    with the command's own exit code (:func:`chc.cli.finished`)."""
    import sys
    try:
        from .cli import finished, main
    except KeyboardInterrupt:
        print("chc: interrupted", file=sys.stderr)
        return 130
    code = main()
    finished(code)                      # (the report is out: a late signal changes nothing)
    return code
