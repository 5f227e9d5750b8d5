"""`knnrag datastore verify DIR`: every file of a token datastore against the sha256 recorded at commit.

Opening already checks sizes, shapes, dtypes and value ids; this also reads every byte, so a
garbled key body of the right size (which changes every neighbour silently) is found.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DAMAGED = 2
NO_CHECKSUMS = "no checksums recorded (built by an older knnrag; append to it or rebuild to record them)"


def verify_datastore(path: str | Path) -> dict:
    """A report: {"path", "entries", "checksums", "problems", "ok"}. Damage is reported, not raised;
    a folder that is no datastore at all raises NotFoundError / CorruptStoreError as open() does."""
    from lm.datastore.manifest_check import live_files
    from lm.datastore.token_store import TokenStore
    from retrieval.errors import CorruptStoreError
    from retrieval.store.verify import digest

    p = Path(path)
    problems: list[str] = []
    try:
        store = TokenStore.open(p)
    except CorruptStoreError as e:
        if not (p / "manifest.json").is_file():
            raise
        return {"path": str(p), "entries": None, "checksums": "not checked", "problems": [e.message], "ok": False}
    m = store.manifest
    sums = m.get("checksums")
    state = NO_CHECKSUMS
    if sums is not None:
        for name in live_files(m):
            f = p / name
            if name not in sums:
                problems.append(f"{f} has no recorded checksum")
            elif not f.is_file():
                problems.append(f"{f} is missing")
            elif digest(f) != sums[name]:
                problems.append(f"{f} is altered (sha256 differs from the one recorded at commit)")
        state = "mismatch" if problems else f"ok ({len(sums)} files)"
    try:
        store.docs()
    except CorruptStoreError as e:
        problems.append(e.message)
    return {"path": str(p), "entries": store.count, "checksums": state, "problems": problems, "ok": not problems}


def register(dsub: argparse._SubParsersAction) -> None:
    """`datastore verify`, added to lm.cli's `datastore` sub-commands."""
    v = dsub.add_parser("verify", help="check every datastore file against the sha256 recorded when it was written (exit 2 on damage)")
    v.add_argument("dir", help="datastore folder")
    v.add_argument("--json", action="store_true", help="one JSON report on stdout")
    v.set_defaults(func=cmd_verify)


def cmd_verify(args) -> int:
    from retrieval.cli.output import emit_json

    rep = verify_datastore(args.dir)
    if args.json:
        emit_json(rep)
    else:
        sys.stdout.write(f"{rep['path']}: {'ok' if rep['ok'] else 'DAMAGED'}; {rep['entries']} entries, checksums {rep['checksums']}\n")
        for prob in rep["problems"]:
            sys.stdout.write(f"  problem: {prob}\n")
    if not rep["ok"]:
        sys.stderr.write("error: the datastore is damaged\nhint: rebuild it with `knnrag datastore build ... --out DIR`, or restore a backup\n")
    return 0 if rep["ok"] else DAMAGED
