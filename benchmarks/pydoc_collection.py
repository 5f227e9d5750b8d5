"""A third BM25 check collection with nothing hand-labelled: this Python's standard library.

Each function or method with a docstring of at least two paragraphs becomes a record: title =
its qualified name, text = its signature and the docstring without its first line; the first
line is the pseudo-query, judged relevant to its own record only (the "first line of a docstring
for its function" of issue 14). Only a sanity check of tokeniser choices: the queries were never
written as queries, and titles here are identifiers.

usage: python -m benchmarks.pydoc_collection OUT_DIR   (writes OUT_DIR/{corpus,queries}.jsonl, qrels/test.tsv)
then:  python -m benchmarks bm25_variants --pydoc OUT_DIR
A data builder, not a benchmark (no `bench_` prefix): it records nothing.
"""
from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

MODULES = ("argparse asyncio base64 calendar collections configparser contextlib csv datetime decimal difflib "
           "email.message email.utils fractions functools gzip hashlib heapq html.parser http.client http.server "
           "inspect ipaddress itertools json logging mailbox multiprocessing.pool os pathlib pickle pprint queue "
           "random re shutil socket sqlite3 ssl statistics string subprocess tarfile tempfile textwrap threading "
           "tkinter.ttk turtle typing unittest urllib.parse urllib.request uuid xml.dom.minidom xml.etree.ElementTree "
           "zipfile").split()


def _members(mod):
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj):
            for mname, m in vars(obj).items():
                if not mname.startswith("_") and inspect.isfunction(m):
                    yield f"{mod.__name__}.{name}.{mname}", m
        elif inspect.isfunction(obj):
            yield f"{mod.__name__}.{name}", obj


def build(out: Path) -> int:
    recs, qs = [], []
    seen = set()
    for modname in MODULES:
        try:
            mod = importlib.import_module(modname)
        except Exception:  # a module this Python lacks (tkinter without Tk)
            continue
        for qual, fn in _members(mod):
            doc = inspect.getdoc(fn) or ""
            first, _, rest = doc.partition("\n")
            rest = rest.strip()
            if len(first.split()) < 4 or len(rest.split()) < 12 or first in seen:
                continue
            seen.add(first)
            try:
                sig = f"{fn.__name__}{inspect.signature(fn)}"
            except (TypeError, ValueError):
                sig = fn.__name__
            rid = f"d{len(recs)}"
            recs.append({"_id": rid, "title": qual, "text": f"{sig}\n{rest}"})
            qs.append({"_id": f"q{len(qs)}", "text": first})
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                            + "".join(f"{q['_id']}\t{r['_id']}\t1\n" for q, r in zip(qs, recs)))
    return len(recs)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    print(f"{build(Path(args[0]))} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
