"""`knnrag generate` stops at a repeated sentence by default (the demo printed one sentence four
times until max_new_tokens); --allow-repeats lets it run."""
from __future__ import annotations

import pytest

from tests.support.tiny_lm import make_tiny_lm


@pytest.mark.parametrize("flags,want", [([], True), (["--allow-repeats"], False)])
def test_cli_generate_stops_on_a_repeated_sentence_unless_told(tmp_path, monkeypatch, capsys, flags, want):
    import lm.generate as gen
    from retrieval.cli.root import main

    seen = {}

    def fake(knnlm, prompt, cfg, **kw):
        seen.update(kw)
        return "x."

    monkeypatch.setattr(gen, "generate", fake)
    model = make_tiny_lm(tmp_path / "lm", "llama")
    assert main(["generate", "hello", "--model", str(model), *flags]) == 0
    assert seen["stop_on_repeat"] is want


def test_repeat_stopper_stops_at_the_first_repeated_sentence(tmp_path):
    import torch
    from transformers import AutoTokenizer

    from lm.generate import repeat_stopper

    tok = AutoTokenizer.from_pretrained(str(make_tiny_lm(tmp_path / "lm", "llama")))
    once = tok("The store keeps rows.\n\n", return_tensors="pt").input_ids
    twice = tok("The store keeps rows.\n\nThe store keeps rows.\n\n", return_tensors="pt").input_ids
    stop = repeat_stopper(tok, 0)
    assert not bool(stop(once, torch.zeros(1))[0])
    assert bool(stop(twice, torch.zeros(1))[0])
