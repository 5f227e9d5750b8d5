"""What `answer()` needs of the store, the kNN-LM and the LM: structural types, so any object with
these methods answers (DocStore, a test double, a future remote store) and nothing is `Any` at the
package boundary. Checked by mypy; nothing here runs."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from retrieval.types import Hit


class AnswerStore(Protocol):
    """The document store: hybrid search, chunks by id, and the collection (its tokenizer and
    snapshot for the term statistics) with its embedder (the passages' MiniLM features)."""

    def search(self, query: str, request: Any = None, **settings: Any) -> list[Hit]: ...

    def get(self, ids: Sequence[str], *, collection: str = "default") -> list[Hit]: ...

    def collection(self, name: str = "default") -> Any: ...

    def embedder_for(self, c: Any) -> Any: ...


class AnswerLM(Protocol):
    """The LM that writes a generated answer: its tokenizer measures the prompt."""

    tokenizer: Any
    model_id: str
    max_length: int


class AnswerKNNLM(Protocol):
    """The kNN-LM that generates (lm.knnlm.KNNLM); only called in generate mode."""

    lm: Any

    @property
    def has_datastore(self) -> bool: ...

    def generate(self, prompt: str, *, max_new_tokens: int = 64, lambda_: float | None = None,
                 temperature: float | None = None, do_sample: bool = False, top_p: float | None = None,
                 chat: bool | None = None, on_token: Callable[[str], None] | None = None, seed: int | None = None,
                 stop_on_repeat: bool = True) -> str: ...


KNNLMSource = AnswerKNNLM | Callable[[], AnswerKNNLM]  # a model, or a loader called only when needed
