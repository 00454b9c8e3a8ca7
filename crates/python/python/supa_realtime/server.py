"""The realtime server that ships inside the wheel.

``python -m supa_realtime.server serve --addr 127.0.0.1:54321`` (or the
``supa-realtime-server`` console script) runs the same server as the ``supa-realtime-server``
binary: in memory by default, postgres_changes and RLS-authorized private channels with
``--database-url``. ``--help`` lists every flag; each also reads an environment variable
(``JWT_SECRET``, ``DATABASE_URL``, ...). ``token --role authenticated --sub <id>`` prints a
JWT signed with the server's secret, for local testing; ``cleanup-postgres`` drops the
replication slot and publication a database no longer needs.

With no subcommand, ``serve`` is assumed.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional, Sequence

from ._native import server_main

_SUBCOMMANDS = ("serve", "token", "cleanup-postgres", "help")
_LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING,
           "info": logging.INFO, "debug": logging.DEBUG, "trace": 5}


def _log_level(args: List[str]) -> int:
    level = os.environ.get("LOG_LEVEL", "info")
    for i, arg in enumerate(args):
        if arg == "--log-level" and i + 1 < len(args):
            level = args[i + 1]
        elif arg.startswith("--log-level="):
            level = arg.split("=", 1)[1]
    # A tracing filter such as "supa_realtime_server=debug" keeps its last level.
    return _LEVELS.get(level.rsplit("=", 1)[-1].strip().lower(), logging.INFO)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the server command line (``sys.argv[1:]`` by default); returns the exit status."""
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in _SUBCOMMANDS and args[0] not in ("-h", "--help", "-V", "--version")):
        args.insert(0, "serve")
    # Importing the package bridged the Rust `tracing` logs to Python's `logging` (loggers
    # `supa_realtime.server.*`), so the server's own stderr logger is not installed: print
    # them on stderr here, unless the embedding program configured logging itself.
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=_log_level(args),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    try:
        return int(server_main(["supa-realtime-server", *args]))
    except KeyboardInterrupt:
        # The server has shut down on the same signal already.
        return 130


if __name__ == "__main__":
    sys.exit(main())
