"""Entry point of an isolated method run: ``python -m qsmbench._child REQUEST.json``.

Started by :func:`qsmbench.runner.run_job`.  Before the heavy imports (numpy, scipy, the method
plugins) it ties its life to its parent's (:func:`qsmbench.isolate.die_with_parent`) and
registers the stack dump that a timeout triggers (SIGUSR1), so even a run that times out
during start-up is killed cleanly.
"""

import faulthandler
import json
import os
import signal
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m qsmbench._child REQUEST.json (started by qsmbench.runner.run_job)", file=sys.stderr)
        return 2
    os.environ["QSMBENCH_ISOLATED"] = "1"  # command plugins leave the limits to the parent (qsmbench.plugins)
    faulthandler.enable(all_threads=True)  # a crash in compiled code prints the Python stacks
    if hasattr(signal, "SIGUSR1"):  # sent on a timeout, just before the kill: shows where it hung
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    from qsmbench.isolate import die_with_parent

    with open(argv[0]) as fh:
        die_with_parent(int(json.load(fh)["parent_pid"]))
    from qsmbench.runner import child_main

    return child_main(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
