"""Whether a local process is still running: shared by the devnet's process bookkeeping and the
lease history's kernel reservations."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int | None) -> bool:
    """True if ``pid`` runs on this machine (a zombie, exited but not yet reaped, counts as gone).

    >>> process_alive(os.getpid()), process_alive(None)
    (True, False)
    """
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
