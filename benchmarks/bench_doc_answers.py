"""Extractive answers on technical documentation: questions a new user asks of docs, most about defaults.

squad2-rhine (bench_answers.py) is prose with no headings, inline code or stated defaults; this is the
other kind of corpus. Two question sets with known answers, asked through lm.rag.answer (extractive,
the LM never loads), scored by SQuAD token F1 of the answer:
  - the AWS CLI's topic pages (`awscli/topics/*.rst` of the awscli package, 6 files, MIT-0/Apache-2.0
    text shipped in its wheel): 17 questions; "dev" were written first and used to shape the rules
    in lm.rag.spans (default_values, code_spans), "second" after, and then also used to refine them;
  - this project's own README / ARCHITECTURE / BENCHMARKS / docs: _shared_squad.PROJECT_QUESTIONS,
    never used to shape the rules ("answer holds the value": the expected string in the answer);
  - "which X" questions whose answer is a table row's or list item's key (KEYS_*), used to shape
    the row-key rule.

  python -m benchmarks doc_answers [--awscli DIR] [--store DIR] [--json OUT] [--quick]

The AWS store is built under .bench/aws-store; the project-docs store is bench_answers' .bench/store.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks._shared_squad import PROJECT_QUESTIONS, build_store, f1
from benchmarks.common import WORK, record

PEER = "the same extractive answers with the documentation cues off (lm.rag.extract.CUE_BONUS = 0), same store"

DEV = [
    ("What is the default value of max_concurrent_requests?", ["10"]),
    ("What return code means the command failed?", ["255"]),
    ("Where is the AWS config file located by default?", ["~/.aws/config"]),
    ("What is the default max_queue_size?", ["1000"]),
    ("What is the default multipart_threshold?", ["8MB"]),
    ("What is the default multipart_chunksize?", ["8MB"]),
    ("What are the valid values for addressing_style?", ["path, virtual, and auto", "auto"]),
    ("What is the default addressing_style?", ["auto"]),
]
SECOND = [
    ("Where is the shared credentials file located by default?", ["~/.aws/credentials"]),
    ("What is the default duration_seconds of the role session?", ["3600 seconds", "3600"]),
    ("What is the default value of sts_regional_endpoints?", ["legacy"]),
    ("What is the default case conflict setting?", ["ignore"]),
    ("What is the default value of parameter_validation?", ["True"]),
    ("Which algorithm is used to calculate checksums by default?", ["Cyclic Redundancy Check 32 (CRC32)", "CRC32"]),
    ("Which environment variable changes the location of the shared credentials file?", ["AWS_SHARED_CREDENTIALS_FILE"]),
    ("What is the default value of cli_follow_urlparam?", ["true"]),
    ("What is the minimum duration of a role session?", ["900 seconds", "900 seconds (15 minutes)"]),
]


# "which X" questions answered by a table row's or list item's key, written with the row-key rule and
# used to shape it (project docs and AWS CLI topics)
KEYS_PROJECT = [
    ("Which option sets the near-duplicate threshold?", ["--near-dup T", "--near-dup"]),
    ("Which flag skips files larger than N MB?", ["--max-file-mb N", "--max-file-mb"]),
    ("Which option tags every chunk of these files?", ["--tag T", "--tag"]),
    ("Which environment variable holds the MCP bearer token?", ["KNNRAG_MCP_TOKEN"]),
]
KEYS_AWSCLI = [
    ("What return code means the command failed?", ["255"]),
    ("Which environment variable sets the default region?", ["AWS_DEFAULT_REGION"]),
    ("Which option caps the bandwidth of S3 transfers?", ["max_bandwidth"]),
]


def _awscli_topics() -> Path | None:
    """awscli/topics of this Python's awscli, else of the Python behind the `aws` command on PATH."""
    import importlib.util
    import shutil
    import subprocess

    spec = importlib.util.find_spec("awscli")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent / "topics"
    if shutil.which("aws") is None:
        return None
    try:  # `aws` may be a pyenv shim: ask the interpreter it runs with where its awscli lives
        r = subprocess.run(["aws", "--version"], capture_output=True, text=True, timeout=60)
        py = f"python{r.stdout.split('Python/')[1].split('.')[0]}" if "Python/" in r.stdout else "python3"
        r = subprocess.run([py, "-c", "import awscli, os; print(os.path.dirname(awscli.__file__))"],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "PYENV_VERSION": ""})
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(r.stdout.strip()) / "topics" if r.returncode == 0 and r.stdout.strip() else None


def never_load():
    raise RuntimeError("extractive answers must not load the LM")


def ask_all(store, collection: str, questions: list[tuple[str, list[str]]]) -> dict:
    from lm.rag.answer import RagConfig, answer

    rows, secs = [], []
    for q, golds in questions:
        t = time.perf_counter()
        r = answer(q, store=store, knnlm=never_load, collection=collection, config=RagConfig())
        secs.append(time.perf_counter() - t)
        rows.append({"question": q, "answer": r.answer[:120], "grounded": r.grounded,
                     "f1": round(f1(r.answer, golds) if r.grounded else 0.0, 3),
                     "holds_value": r.grounded and any(g.lower() in r.answer.lower() for g in golds)})
    return {"n": len(rows), "f1": round(statistics.fmean(x["f1"] for x in rows), 3),
            "holds_value": sum(x["holds_value"] for x in rows), "answered": sum(x["grounded"] for x in rows),
            "median_s": round(statistics.median(secs), 2), "rows": rows}


def both(store, collection: str, sets: dict[str, list], peer: dict) -> dict:
    """Each question set answered as shipped, then (into `peer`) with the documentation cues' bonus off."""
    from lm.rag import extract

    ours = {name: ask_all(store, collection, qs) for name, qs in sets.items()}
    shipped = extract.CUE_BONUS
    extract.CUE_BONUS = 0.0
    try:
        peer.update({name: ask_all(store, collection, qs) for name, qs in sets.items()})
    finally:
        extract.CUE_BONUS = shipped
    return ours


def _record(report: dict, peer: dict, quick: bool) -> None:
    for name, what in (("awscli_dev", "AWS CLI topics, dev questions"), ("awscli_second", "AWS CLI topics, second questions"),
                       ("project_docs", "this project's docs, 12 questions")):
        if name in report:
            record("doc_answers", f"extractive answer token F1 on documentation: {what}", report[name]["f1"],
                   peer[name]["f1"], "F1", peer_name="cue bonus off", extra={"n": report[name]["n"],
                   "holds_value": report[name]["holds_value"], "peer_holds_value": peer[name]["holds_value"]}, quick=quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--awscli", default=None, help="the awscli/topics folder (found in this machine's Pythons by default)")
    ap.add_argument("--store", default=str(WORK / "store"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="the AWS CLI sets only (no squad2-rhine / CACM store build)")
    args = ap.parse_args(argv)
    from retrieval.store.docstore import DocStore

    report: dict = {}
    peer: dict = {}
    topics = Path(args.awscli) if args.awscli else _awscli_topics()
    if topics is not None and topics.is_dir():
        with DocStore.open(WORK / "aws-store") as s:
            s.index_paths([str(topics)])  # incremental: unchanged files are skipped
            sets = {"awscli_dev": DEV, "awscli_second": SECOND, "awscli_keys": KEYS_AWSCLI}
            report.update(both(s, "default", sets, peer))
    else:
        print("no awscli/topics folder found (pass --awscli DIR): skipping those sets", file=sys.stderr)
    if not args.quick:
        build_store(Path(args.store))
        with DocStore.open(Path(args.store), read_only=True) as s:
            sets = {"project_docs": [(q, [want]) for q, want in PROJECT_QUESTIONS], "project_keys": KEYS_PROJECT}
            report.update(both(s, "projdocs", sets, peer))
    _record(report, peer, args.quick)
    out = json.dumps(report, indent=1)
    print(out)
    if args.json:
        Path(args.json).write_text(out)
    for name, part in report.items():
        print(f"{name}: F1 {part['f1']}, answer holds the value {part['holds_value']}/{part['n']}, "
              f"answered {part['answered']}/{part['n']}, {part['median_s']} s median", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
