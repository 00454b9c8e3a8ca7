"""The realtime server that ships inside the wheel.

``python -m supa_realtime.server serve --addr 127.0.0.1:54321`` (or the
``supa-realtime-server`` console script) runs the same server as the ``supa-realtime-server``
binary: in memory by default, postgres_changes and RLS-authorized private channels with
``--database-url``. ``--help`` lists every flag; each also reads an environment variable
(``JWT_SECRET``, ``DATABASE_URL``, ...). ``token --role authenticated --sub <id>`` prints a
JWT signed with the server's secret, for local testing.

With no subcommand, ``serve`` is assumed.
"""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence

from ._native import server_main

_SUBCOMMANDS = ("serve", "token", "help")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the server command line (``sys.argv[1:]`` by default); returns the exit status."""
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in _SUBCOMMANDS and args[0] not in ("-h", "--help", "-V", "--version")):
        args.insert(0, "serve")
    try:
        return int(server_main(["supa-realtime-server", *args]))
    except KeyboardInterrupt:
        # The server has shut down on the same signal already.
        return 130


if __name__ == "__main__":
    sys.exit(main())
