"""The LangChain VectorStore adapter over DocStore."""
from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding

from retrieval.errors import InvalidInputError
from retrieval.integrations.langchain import EmbedderEmbeddings, KnnragVectorStore
from retrieval.store.docstore import DocStore

TEXTS = ["rivers flow into the ocean", "mountains are tall and cold", "the ocean is deep and blue",
         "deserts are hot and dry", "forests are full of trees"]


@pytest.fixture()
def vs(tmp_path):
    v = KnnragVectorStore(DocStore.open(tmp_path / "s", embedder="hash-64"), collection="lc")
    yield v
    v.store.close()


def test_add_search_get_delete(vs):
    ids = vs.add_texts(TEXTS, metadatas=[{"source": f"t{i}.txt", "n": i} for i in range(5)])
    assert len(ids) == 5 and all(isinstance(i, str) for i in ids)
    docs = vs.similarity_search("ocean deep", k=2)
    assert isinstance(docs[0], Document) and docs[0].page_content == "the ocean is deep and blue"
    assert docs[0].id in ids and docs[0].metadata["source"] == "t2.txt" and docs[0].metadata["n"] == 2
    scored = vs.similarity_search_with_score("ocean deep", k=3)
    assert len(scored) == 3 and scored[0][1] >= scored[1][1] >= scored[2][1]
    assert [d.page_content for d in vs.get_by_ids([ids[3], ids[0]])] == [TEXTS[3], TEXTS[0]]
    assert vs.delete([ids[2]]) is True
    assert vs.get_by_ids([ids[2]]) == []
    assert "the ocean is deep and blue" not in [d.page_content for d in vs.similarity_search("ocean deep", k=5)]
    assert vs.similarity_search("ocean", k=5, filter={"n": 0})[0].page_content == TEXTS[0]
    with pytest.raises(InvalidInputError):
        vs.delete(None)


def test_add_documents_with_ids_and_upsert(vs):
    ids = vs.add_documents([Document(page_content="first rivers text", id="a"), Document(page_content="second text", id="b")])
    assert ids == ["a", "b"]
    vs.add_documents([Document(page_content="replaced rivers text", id="a")])
    assert [d.page_content for d in vs.get_by_ids(["a"])] == ["replaced rivers text"]


def test_retriever_and_mmr_and_vector_search(vs):
    vs.add_texts(TEXTS + ["rivers flow into the ocean"], metadatas=[{"kind": "text"}] * 6)
    retriever = vs.as_retriever(search_kwargs={"k": 2})
    docs = retriever.invoke("rivers ocean")
    assert len(docs) == 2 and docs[0].page_content == "rivers flow into the ocean"
    mmr = vs.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 6, "lambda_mult": 0.2}).invoke("rivers ocean")
    assert len({d.page_content for d in mmr}) == 2
    thr = vs.as_retriever(search_type="similarity_score_threshold", search_kwargs={"k": 3, "score_threshold": 0.01})
    assert thr.invoke("rivers ocean")
    emb = vs.embeddings
    assert isinstance(emb, EmbedderEmbeddings)
    by_vec = vs.similarity_search_by_vector(emb.embed_query("mountains tall cold"), k=1)
    assert by_vec[0].page_content == "mountains are tall and cold"


def test_from_texts_with_langchain_embeddings(tmp_path):
    emb = DeterministicFakeEmbedding(size=32)
    vs = KnnragVectorStore.from_texts(TEXTS, emb, metadatas=[{"i": i} for i in range(5)], store_path=str(tmp_path / "s"),
                                      mode="dense")
    docs = vs.similarity_search(TEXTS[1], k=1)  # the fake embeds identical texts identically
    assert docs[0].page_content == TEXTS[1]
    st = vs.store.stats("default")
    assert st["dim"] == 32 and st["embedder"].startswith("langchain:DeterministicFakeEmbedding")
    vs.store.close()
    again = KnnragVectorStore.open(str(tmp_path / "s"), embedding=emb, mode="bm25")
    assert again.similarity_search("deserts", k=1)[0].page_content == TEXTS[3]
    again.store.close()
    with pytest.raises(InvalidInputError):
        KnnragVectorStore.from_texts(TEXTS, emb)
