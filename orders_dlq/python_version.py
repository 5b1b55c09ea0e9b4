"""Stop at once, in one sentence, on a Python older than the toolkit needs.

Every script imports this module before anything else of ours, so an old interpreter gets a clear
message and exit code 2 instead of an ImportError from deep inside (datetime.UTC is 3.11+). Keep
this file free of newer syntax (no annotations, walrus, match, f-string tricks): it has to run on
the old Python it is refusing.
"""

import sys

MINIMUM = (3, 11)
EXIT_USAGE = 2


def problem(version_info=None):
    """The sentence to print for `version_info` (default: this interpreter), or None when it is new enough."""
    version = tuple(version_info if version_info is not None else sys.version_info)
    if version[:2] >= MINIMUM:
        return None
    wanted = "%d.%d" % MINIMUM[:2]  # noqa: UP031  (this file must parse on any Python)
    found = "%d.%d" % tuple(version[:2])  # noqa: UP031
    return ("orders-dlq needs Python " + wanted + " or newer, but this is Python " + found + ": "
            "install a newer Python and recreate the virtualenv (see README.md).")


def require(version_info=None, stderr=None):
    message = problem(version_info)
    if message is not None:
        (stderr or sys.stderr).write(message + "\n")
        raise SystemExit(EXIT_USAGE)


require()
