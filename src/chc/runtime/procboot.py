"""What the ``proc`` runtime's forkserver imports before its workers' modules.

A worker forked by the forkserver imports the coordinator's ``__main__`` again
(multiprocessing's rule, so that classes defined there unpickle).  When the
coordinator runs as ``python -m chc.cli``, that module is already imported in
the forkserver (preloaded, so workers start fast), and runpy warns about it on
every worker's stderr; the warning is harmless here (the module's
``__main__`` block does not run) and is silenced in the forkserver only.

The coordinator starts the forkserver with ``PYTHONSAFEPATH`` set (its working
directory stays off ``sys.path``, :meth:`ProcRuntime._context`); the forkserver's
environment, which every worker inherits, gets the user's value back here, so a
Python subprocess an NF starts runs as the user's would.

Workers log as the command does (``chc: WARNING: NF error ...``): without it a worker's
warnings reached stderr bare, through logging's last resort.  Set in the forkserver only
(the variable above is there only while the coordinator starts it): the coordinator
imports this module too, and a library's import configures no logging.
"""

from __future__ import annotations

import logging
import os
import warnings

from chc import LOG_FORMAT

SAFEPATH_WAS = "CHC_PYTHONSAFEPATH_WAS"     # the user's PYTHONSAFEPATH ("" = unset), while chc sets it

if SAFEPATH_WAS in os.environ:         # (the forkserver, booting)
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    was = os.environ.pop(SAFEPATH_WAS)
    if was:
        os.environ["PYTHONSAFEPATH"] = was
    else:
        os.environ.pop("PYTHONSAFEPATH", None)

warnings.filterwarnings("ignore", message=r"'[\w.]+' found in sys\.modules after import of package",
                        category=RuntimeWarning)
