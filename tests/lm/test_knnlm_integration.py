"""A few checks on the real bundled SmolLM2-135M-Instruct (slow on CPU: run with -m integration)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

TEXT = ("The Zorblatt Institute of Applied Gastronomy was founded in 1873 by Amelia Quillfeather, who "
        "believed that soup could be studied with the rigour of astronomy. Its first director, Tobias "
        "Wrenfield, catalogued four hundred and twelve varieties of barley broth before the institute "
        "moved to the town of Lower Mossbury in 1901.")


@pytest.fixture(scope="module")
def smol():
    from lm.models import load_lm

    return load_lm()  # the bundled GGUF, dequantised once and cached as safetensors


@pytest.fixture(scope="module")
def store(smol, tmp_path_factory):
    from lm.datastore.build import BuildConfig, build_datastore

    d = tmp_path_factory.mktemp("smol")
    (d / "doc.txt").write_text(TEXT)
    rep = build_datastore(smol, [str(d / "doc.txt")], d / "ds", BuildConfig(), progress=False)
    assert rep.entries_total == len(smol.tokenizer(TEXT, add_special_tokens=False)["input_ids"]) - 1
    return d / "ds"


def test_default_model_identity(smol):
    assert smol.model_id.startswith("SmolLM2-135M-Instruct@")
    assert smol.key_layer == "model.layers.29.mlp" and smol.key_dim == 576 and smol.max_length >= 2048
    assert smol.tokenizer.chat_template


def test_memorised_text_collapses_and_lambda_zero_is_base(smol, store):
    from lm.knnlm import KNNLM, KNNConfig

    knn = KNNLM.load(smol, store, KNNConfig(k=8, lambda_=0.5, temperature=10.0))
    r = knn.perplexity(TEXT)
    assert r.knn_ppl < 0.5 * r.base_ppl and r.knn_ppl < 2.5
    sc = knn.score_tokens(TEXT, [KNNConfig(k=8, lambda_=0.0)])
    from lm.knnlm import mix_nll

    np.testing.assert_array_equal(mix_nll(sc.base_lp, sc.retrievals[0], 8, 10.0, 0.0), -sc.base_lp)


def test_explain_and_generate(smol, store):
    from lm.knnlm import KNNLM, KNNConfig

    knn = KNNLM.load(smol, store, KNNConfig(k=4, lambda_=0.0))
    ctx = "The Zorblatt Institute of Applied Gastronomy was founded in"
    ex = knn.next_tokens(ctx, top=3)
    ids = smol.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    n_ctx = len(smol.tokenizer(ctx, add_special_tokens=False)["input_ids"])
    assert ex["knn"][0]["id"] == ids[n_ctx]  # the memorised continuation wins under kNN
    assert ex["neighbours"][0]["distance"] < 1.0 and "Zorblatt" in ex["neighbours"][0]["snippet"]
    prompt = "Name a soup."
    got = knn.generate(prompt, max_new_tokens=8)  # lambda 0: identical to plain generate() with the chat template
    ids = smol.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    plain = smol.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert got == smol.tokenizer.decode(plain[0, ids.shape[1]:], skip_special_tokens=True)
