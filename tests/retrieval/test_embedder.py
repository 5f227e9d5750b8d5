import numpy as np
import pytest

from retrieval.embed.embedder import WARM_QUERIES, content_budget, load_embedder, model_name
from retrieval.embed.hash_embedder import HashEmbedder
from retrieval.errors import ModelLoadError


def test_hash_embedder_is_deterministic_and_normalised():
    e = load_embedder("hash-32")
    a = e.embed(["the cat sat", "a dog ran", "the cat sat"])
    assert a.shape == (3, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(a[0], a[2])
    np.testing.assert_array_equal(e.embed_query("the cat sat"), a[0])
    assert e.model_id == "hash-32@v1" and content_budget(e) == e.max_tokens


def test_hash_embedder_spans_cover_words():
    e = HashEmbedder(16)
    text = "Hello, wörld!  x"
    assert [text[s:t] for s, t in e.token_spans(text)] == ["Hello", ",", "wörld", "!", "x"]


def test_model_id_roundtrip_reloads_same_model():
    e = load_embedder("hash-8")
    assert load_embedder(e.model_id).model_id == e.model_id
    assert model_name("all-MiniLM-L6-v2@abc") == "all-MiniLM-L6-v2"


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError) as ei:
        load_embedder(str(tmp_path / "nope") + "-model")
    assert "bundled MiniLM" in ei.value.hint


@pytest.mark.integration  # loads the bundled MiniLM
def test_minilm_spans_count_every_piece_without_padding(minilm):
    text = "word " * 400
    spans = minilm.token_spans(text)
    assert len(spans) == 400  # no truncation, no [PAD]
    assert all(text[s:t] == "word" for s, t in spans)
    assert minilm.max_tokens == 256 and content_budget(minilm) == 254


@pytest.mark.integration
def test_minilm_query_path_matches_bulk_path(minilm):
    texts = ["How do vaccines train the immune system?", "Mitochondria are the powerhouse of the cell. " * 30]
    bulk = minilm.embed(texts)  # torch, bf16 autocast
    fast = np.stack([minilm.embed_query(t) for t in texts])  # numpy BERT, fp32
    assert bulk.shape == (2, 384)
    cos = (bulk * fast).sum(1)
    assert cos.min() > 0.999, cos
    # semantic sanity: related texts are closer than unrelated ones
    q = minilm.embed_query("immune response to vaccination")
    assert q @ bulk[0] > q @ bulk[1]


@pytest.mark.integration
def test_small_batches_skip_torch_and_match_it(minilm):
    from retrieval.embed.embedder import TransformerEmbedder, bundled_model_dir

    fresh = TransformerEmbedder(bundled_model_dir(), "all-MiniLM-L6-v2", bf16=False, backend="torch")
    texts = ["a short text", "another, somewhat longer text about proteins and cells"]
    small = fresh.embed(texts)  # numpy path
    assert fresh._torch_model is None
    big = fresh.embed(texts * 10)  # > SMALL_BATCH: torch path
    assert fresh._torch_model is not None
    assert ((small * big[:2]).sum(1) > 0.9999).all()


@pytest.mark.integration
def test_onnx_backend_matches_torch_and_numpy(tmp_path, monkeypatch):
    """The hand-built ONNX graph is the same model: padded batches agree with torch and numpy BERT."""
    from retrieval.embed.embedder import TransformerEmbedder, bundled_model_dir

    monkeypatch.setenv("KNNRAG_CACHE", str(tmp_path))
    onnx_emb = TransformerEmbedder(bundled_model_dir(), "all-MiniLM-L6-v2", bf16=False, backend="onnx")
    torch_emb = TransformerEmbedder(bundled_model_dir(), "all-MiniLM-L6-v2", bf16=False, backend="torch")
    assert onnx_emb.model_id == torch_emb.model_id  # same weights, same identity
    texts = [("protein folding and chaperones " * (i % 7 + 1)) + str(i) for i in range(20)]  # varied lengths: padding
    texts.append("long " * 600)  # truncated at 256 pieces
    a = onnx_emb.embed(texts, batch_size=8)  # > SMALL_BATCH: onnxruntime
    assert onnx_emb._onnx_model is not None and onnx_emb._torch_model is None
    b = torch_emb.embed(texts, batch_size=8)
    c = np.stack([torch_emb.embed_query(t) for t in texts[:WARM_QUERIES]])  # numpy BERT
    assert a.shape == (21, 384)
    assert ((a * b).sum(1) > 0.9999).all(), (a * b).sum(1)
    assert ((a[:WARM_QUERIES] * c).sum(1) > 0.9999).all()
    assert list(tmp_path.joinpath("onnx").glob("*.onnx")), "the graph is cached"


@pytest.mark.integration
def test_many_queries_move_to_onnxruntime_whatever_the_bulk_backend(tmp_path, monkeypatch):
    """A one-shot search stays on numpy (no 0.3 s session load); a process that keeps asking (a
    server) moves to onnxruntime, with the same vectors, even where bulk embedding uses torch."""
    from retrieval.embed.embedder import TransformerEmbedder, bundled_model_dir

    monkeypatch.setenv("KNNRAG_CACHE", str(tmp_path))
    emb = TransformerEmbedder(bundled_model_dir(), "all-MiniLM-L6-v2", bf16=True, backend="torch")
    qs = [f"question {i} about protein folding" for i in range(WARM_QUERIES + 2)]
    first = [emb.embed_query(q) for q in qs[:WARM_QUERIES]]
    assert emb._onnx_query_model is None and emb._torch_model is None  # numpy so far
    later = [emb.embed_query(q) for q in qs]
    assert emb._onnx_query_model is not None and emb._torch_model is None
    cos = (np.stack(first) * np.stack(later[:WARM_QUERIES])).sum(1)
    assert (cos > 0.9999).all(), cos


def test_unknown_backend_is_a_clear_error():
    from retrieval.embed.embedder import load_embedder
    from retrieval.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="backend"):
        load_embedder(None, backend="tensorrt")


@pytest.mark.integration  # loads the bundled MiniLM
def test_token_budget_batches_cover_every_row_once(minilm):
    texts = [("word " * n).strip() for n in (3, 300, 40, 7, 120, 120, 1, 60, 250, 15) * 3]
    lens = [len(x) for x in minilm._encode_ids(texts)]
    seen, prev_T = [], None
    for idx, x, m in minilm._batches(texts, 64, 512):
        B, T = x.shape
        assert B == 1 or B * T <= 512  # a row longer than the budget goes alone
        assert T == max(lens[i] for i in idx) and (m.sum(1) == [lens[i] for i in idx]).all()
        assert prev_T is None or T <= prev_T  # longest first
        prev_T = T
        seen += list(idx)
    assert sorted(seen) == list(range(len(texts)))


@pytest.mark.integration
@pytest.mark.parametrize("how", ["read-only file system", "cache path is a file"])
def test_onnx_graph_in_memory_when_the_cache_is_not_writable(tmp_path, monkeypatch, how):
    """Docker with a read-only root file system (or a root-owned cache): the first search or index
    crashed with OSError: Read-only file system: '.../onnx'. Now the graph is built in memory."""
    import errno

    from retrieval.embed import onnx_bert
    from retrieval.embed.embedder import TransformerEmbedder, bundled_model_dir

    if how == "read-only file system":
        monkeypatch.setenv("KNNRAG_CACHE", str(tmp_path))

        def read_only(*a, **kw):
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "onnx"))

        monkeypatch.setattr(onnx_bert.tempfile, "mkstemp", read_only)
    else:
        (tmp_path / "cache").write_text("not a folder")
        monkeypatch.setenv("KNNRAG_CACHE", str(tmp_path / "cache"))
    emb = TransformerEmbedder(bundled_model_dir(), "all-MiniLM-L6-v2", bf16=False, backend="onnx")
    texts = [f"rivers and mountains number {i}" for i in range(12)]
    a = emb.embed(texts)  # <= SMALL_BATCH: numpy BERT
    q = [emb.embed_query(t) for t in texts[:WARM_QUERIES + 1]][-1]  # a server's queries: onnxruntime, in-memory graph
    assert emb._onnx_query_model is not None and not list(tmp_path.rglob("*.onnx"))
    ref = TransformerEmbedder(bundled_model_dir(), "all-MiniLM-L6-v2", bf16=False, backend="torch").embed(texts[:2])
    assert ((a[:2] * ref).sum(1) > 0.9999).all() and float(q @ a[WARM_QUERIES]) > 0.9999
