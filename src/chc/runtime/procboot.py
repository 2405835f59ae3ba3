"""What the ``proc`` runtime's forkserver imports before its workers' modules.

A worker forked by the forkserver imports the coordinator's ``__main__`` again
(multiprocessing's rule, so that classes defined there unpickle).  When the
coordinator runs as ``python -m chc.cli``, that module is already imported in
the forkserver (preloaded, so workers start fast), and runpy warns about it on
every worker's stderr; the warning is harmless here (the module's
``__main__`` block does not run) and is silenced in the forkserver only.
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r"'[\w.]+' found in sys\.modules after import of package",
                        category=RuntimeWarning)
