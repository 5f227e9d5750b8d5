"""BENCHMARKS.md is generated from benchmarks/results/ and cannot drift from it."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report

ROOT = Path(__file__).resolve().parent.parent


def test_committed_benchmarks_md_is_what_the_results_give():
    assert (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8") == report.render(ROOT / "benchmarks" / "results"), \
        "BENCHMARKS.md is stale: run `python -m benchmarks report` and commit it"


def test_results_lines_carry_the_record_fields():
    need = {"benchmark", "target", "ours", "peer", "ratio", "unit", "date", "commit", "machine", "quick", "command"}
    files = sorted((ROOT / "benchmarks" / "results").glob("*.jsonl"))
    assert files
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert need <= row.keys(), (path.name, need - row.keys())
            assert row["benchmark"] == path.stem
            if row["peer"]:
                assert abs(row["ratio"] - row["ours"] / row["peer"]) < 1e-9


def _row(target, ours, date, quick=False, machine="box"):
    return {"benchmark": "demo", "target": target, "ours": ours, "peer": 2.0, "peer_name": "p", "ratio": ours / 2.0,
            "unit": "ms", "higher_is_better": False, "goal": "", "date": date, "commit": "abc1234", "machine": machine,
            "quick": quick, "command": "python -m benchmarks demo", "extra": {}}


def test_latest_full_run_per_target_and_its_history(tmp_path):
    rows = [_row("a", 1.0, "2026-01-02"), _row("a", 3.0, "2026-01-01"), _row("a", 9.0, "2026-01-09", quick=True),
            _row("a", 4.0, "2026-01-02"), _row("b", 5.0, "2026-01-01", machine="other")]
    (tmp_path / "demo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "demo.md").write_text("A note on demo.\n")
    text = report.render(tmp_path)
    table = [ln for ln in text.splitlines() if ln.startswith("| demo |")]
    assert len(table) == 2
    assert "| **4** |" in table[0] and "| 3 |" in table[0]  # last line of the latest date; quick run ignored
    assert "| **5** |" in table[1] and "| M2 |" in table[1] and "| 1 |" in table[1]
    assert "- M1: box" in text and "## demo\n\nA note on demo." in text
    assert report.render(tmp_path) == text  # deterministic


def test_check_flags_a_stale_file(tmp_path):
    (tmp_path / "demo.jsonl").write_text(json.dumps(_row("a", 1.0, "2026-01-02")) + "\n")
    out = tmp_path / "B.md"
    assert report.main(["--results", str(tmp_path), "--out", str(out), "--check"]) == 1
    assert report.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    assert report.main(["--results", str(tmp_path), "--out", str(out), "--check"]) == 0
