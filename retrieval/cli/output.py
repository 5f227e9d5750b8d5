"""What a command prints: the one JSON document of --json, on stdout; everything else goes to stderr."""
from __future__ import annotations

import json
import sys


def emit_json(obj: object) -> None:
    """The one JSON document a --json command prints on stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
