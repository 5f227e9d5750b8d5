"""The answer benchmarks' stores: what benchmarks/fit_answers.py and bench_answers.py both build."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from benchmarks.common import ROOT, data_dir


def build_answer_stores(path: Path, spec: dict) -> None:
    """The collections of benchmarks/data/questions/corpora.json, built once under `path` (the fit and the
    benchmark answer from the same stores)."""
    from retrieval.store.docstore import DocStore

    with DocStore.open(path) as s:
        have = {c["name"] for c in s.list_collections()}
        for name, c in spec["stores"].items():
            if name in have:
                continue
            if "paths" in c:
                s.index_paths([str(ROOT / p) for p in c["paths"]], collection=name, exclude=c.get("exclude", []))
            elif "packages" in c:
                out = path.parent / name
                out.mkdir(parents=True, exist_ok=True)
                for pkg in c["packages"]:
                    md = metadata.metadata(pkg)
                    ext = ".md" if "markdown" in (md.get("Description-Content-Type") or "") else ".rst"  # type: ignore[attr-defined]
                    (out / f"{pkg}{ext}").write_text(md.get_payload() or "", encoding="utf-8")  # type: ignore[attr-defined]
                s.index_paths([str(out)], collection=name)
            elif "first" in c:
                lines = (data_dir(c["data"]) / c["file"]).read_text(encoding="utf-8").splitlines()[:c["first"]]
                tmp = path.parent / f"{name}.jsonl"
                tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
                s.index_paths([str(tmp)], collection=name)
            else:
                s.index_paths([str(data_dir(c["data"]) / c.get("file", ""))], collection=name)
