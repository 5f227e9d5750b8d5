"""kNN-LM on text unlike its datastore: never worse than the base LM by more than 1%.

Two datastores built with the bundled SmolLM2 and the defaults (5% held out, calibrated):
  wiki   WikiText-2 train articles (~N tokens, --store-tokens)
  small  one project document (ARCHITECTURE.md): a held-out slice of a few hundred tokens, the
         case where the best-mean lambda over-trusts kNN
Each is evaluated on texts of >= 1,000 tokens: WikiText-2 test (like the wiki store), this project's
docs, a standard-library module and a site-packages README (unlike both). For every pair:
  base   the base LM
  ours   the calibration as recorded now: lambda bounded by its standard error, and the distance gate
  peer   the same calibration as before this change: the best-mean lambda, no distance gate
The target is max(ours / base) <= 1.01 on unlike text; the in-domain gain is reported too.

  python -m benchmarks knnlm_unlike [--quick] [--store-tokens 20000] [--test-tokens 1200]
"""
from __future__ import annotations

import argparse
import json
import sysconfig
from dataclasses import replace
from pathlib import Path

from benchmarks._shared_knnlm import wiki_articles
from benchmarks.common import ROOT, WORK, data_dir, record

PEER = "the previous calibration of the same datastore (best-mean lambda, no distance gate)"


def _prefix(tok, text: str, n: int) -> str:
    return tok.decode(tok(text[: n * 10], add_special_tokens=False)["input_ids"][:n])


def _texts(tok, n: int) -> dict[str, str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    readme = next((p for p in sorted(site.glob("*.dist-info/METADATA")) if p.stat().st_size > 20_000), None)
    return {
        "wiki-test (like wiki)": _prefix(tok, (data_dir("wikitext-2") / "wiki.test.raw").read_text(encoding="utf-8"), n),
        "project docs": _prefix(tok, "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").rglob("*.md"))), n),
        "stdlib code": _prefix(tok, (stdlib / "json" / "decoder.py").read_text(encoding="utf-8") +
                               (stdlib / "argparse.py").read_text(encoding="utf-8"), n),
        "package README": _prefix(tok, readme.read_text(encoding="utf-8") if readme else "", n),
    }


def _build(lm, name: str, files: list[Path], out: Path) -> Path:
    from lm.datastore.build import BuildConfig, build_datastore

    if not (out / "manifest.json").is_file():
        build_datastore(lm, [str(f) for f in files], out, BuildConfig(), progress=False, lm_spec=None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 4k-token wiki store and 1,000-token texts")
    ap.add_argument("--store-tokens", type=int, default=20_000)
    ap.add_argument("--test-tokens", type=int, default=1200)
    ap.add_argument("--recalibrate", action="store_true", help="calibrate the (cached) datastores again with this code first")
    a = ap.parse_args(argv)
    if a.quick:
        a.store_tokens, a.test_tokens = 4000, 1000
    from lm.knnlm import KNNLM
    from lm.models import load_lm

    lm = load_lm(None)
    tok = lm.tokenizer
    work = WORK / "knnlm_unlike"
    src = work / f"wiki-{a.store_tokens}"
    src.mkdir(parents=True, exist_ok=True)
    arts, used, files = wiki_articles(data_dir("wikitext-2") / "wiki.train.tokens"), 0, []
    for i, art in enumerate(arts):
        if used >= a.store_tokens:
            break
        f = src / f"{i:05d}.txt"
        f.write_text(art, encoding="utf-8")
        files.append(f)
        used += len(tok(art, add_special_tokens=False)["input_ids"])
    stores = {"wiki": _build(lm, "wiki", files, work / f"ds-wiki-{a.store_tokens}"),
              "small": _build(lm, "small", [ROOT / "ARCHITECTURE.md"], work / "ds-small")}
    if a.recalibrate:
        from lm.datastore.calibrate import calibrate_store
        from lm.datastore.token_store import TokenStore

        for path in stores.values():
            calibrate_store(lm, TokenStore.open(path))
    texts = _texts(tok, a.test_tokens)
    rows, worst_ours, worst_peer, gain_ours, gain_peer = [], 0.0, 0.0, None, None
    for sname, path in stores.items():
        knn = KNNLM.load(lm, path)
        cal = knn.calibration
        peer_cfg = replace(knn.config, lambda_=cal.lambda_unshrunk if cal and cal.lambda_unshrunk is not None else knn.config.lambda_,
                           distance_gate=None)
        for tname, text in texts.items():
            ours = knn.perplexity(text)
            peer = knn.perplexity(text, config=peer_cfg) if peer_cfg.mixes else ours
            base = ours.base_ppl
            o, p = (ours.knn_ppl or base) / base, (peer.knn_ppl or base) / base
            rows.append({"store": sname, "text": tname, "tokens": ours.tokens, "base": round(base, 3),
                         "ours": round(ours.knn_ppl or base, 3), "peer": round(peer.knn_ppl or base, 3),
                         "lambda": knn.config.lambda_, "peer_lambda": peer_cfg.lambda_})
            print(json.dumps(rows[-1]), flush=True)
            if sname == "wiki" and tname.startswith("wiki"):
                gain_ours, gain_peer = 1 - o, 1 - p
            else:
                worst_ours, worst_peer = max(worst_ours, o), max(worst_peer, p)
    record("knnlm_unlike", "kNN-LM / base perplexity, worst unlike text (>= 1,000 tokens)", round(worst_ours, 4),
           round(worst_peer, 4), "x base ppl", peer_name=PEER, higher_is_better=False, goal="<= 1.01", quick=a.quick,
           extra={"rows": rows})
    if gain_ours is not None:
        record("knnlm_unlike", "kNN-LM gain on text like the datastore (WikiText-2 test)", round(gain_ours, 4),
               round(gain_peer or 0.0, 4), "fraction of base ppl", peer_name=PEER, goal="kept", quick=a.quick)
    print(f"worst unlike ratio: ours {worst_ours:.4f}, peer {worst_peer:.4f}; wiki gain ours {gain_ours}, peer {gain_peer}")
    return 0 if worst_ours <= 1.01 else 1


if __name__ == "__main__":
    raise SystemExit(main())
