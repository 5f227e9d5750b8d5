"""Parsers that misbehave inside the sandboxed worker (tests/retrieval/test_documents_sandbox.py)."""
from __future__ import annotations

import os
import time


def sleeps(data: bytes, options: dict) -> dict:
    time.sleep(float(options.get("sleep", 3600)))
    return {"text": "never", "blocks": [], "units": []}


def hogs(data: bytes, options: dict) -> dict:
    hog = [bytearray(64 << 20) for _ in range(64)]  # 4 GiB, far past the limit
    return {"text": str(len(hog))}


def crashes(data: bytes, options: dict) -> dict:
    os.abort()
    return {}


def echoes(data: bytes, options: dict) -> dict:
    text = data.decode()
    return {"text": text, "blocks": [[0, len(text), "para", 0, ""]], "unit": "page", "units": [[0, 1]], "notes": {"pages": 1},
            "pid": os.getpid()}
