"""A BERT encoder as an ONNX graph built straight from the safetensors weights, run by onnxruntime.

Why: bulk embedding is the whole cost of indexing. On this AVX2 CPU (no bf16) torch fp32 is the
only torch option, and onnxruntime with its fused BERT kernels (com.microsoft Attention,
SkipLayerNormalization, BiasGelu) embeds the same chunks about twice as fast. We build the graph
by hand instead of tracing torch: `torch.onnx.export` of transformers-5 BERT gave wrong outputs
here, and a hand-built graph needs neither torch nor an exporter. The graph is the same math as
`numpy_bert.NumpyBert` (tests check cosine >= 0.9999 against it and against torch), so the
model id, and every index built with it, stays the same.

The serialized graph is cached under $KNNRAG_CACHE/onnx/, written atomically (in memory when the cache is
read-only).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

GRAPH_VERSION = 1  # bump when the graph changes: the cache file name carries it


def supports(model_dir: Path) -> bool:
    """BERT with exact GELU and absolute positions: the architecture this graph implements."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (cfg.get("model_type") == "bert" and cfg.get("hidden_act", "gelu") == "gelu"
            and cfg.get("position_embedding_type", "absolute") == "absolute")


def build_graph(model_dir: Path) -> bytes:
    """Serialized ONNX model: (input_ids (B, T) int64, attention_mask (B, T) int64) -> hidden (B, T, C)."""
    from onnx import ModelProto, TensorProto, helper

    from retrieval.embed.numpy_bert import load_weights

    cfg, raw = load_weights(model_dir)
    w = {k: v.astype(np.float32) for k, v in raw.items()}
    n_layer, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    eps = float(cfg.get("layer_norm_eps", 1e-12))

    model = ModelProto()  # filled in place: helper.make_graph/make_model would copy ~90 MB of weights twice
    nodes = []

    def const(name: str, arr: np.ndarray) -> str:
        t = model.graph.initializer.add()
        t.name = name
        t.data_type = TensorProto.INT64 if arr.dtype == np.int64 else TensorProto.FLOAT
        t.dims.extend(arr.shape)
        t.raw_data = np.ascontiguousarray(arr).tobytes()
        return name

    def node(op: str, ins: list[str], out: str, domain: str = "", **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, domain=domain, **attrs))
        return out

    # embeddings: word + position + token type 0, then LayerNorm
    word = node("Gather", [const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"], "word")  # (B, T, C)
    T = node("Shape", ["input_ids"], "T", start=1, end=2)  # (1,)
    pos = node("Slice", [const("pos_emb", w["embeddings.position_embeddings.weight"]), const("zero_1d", np.zeros(1, np.int64)),
                         T, const("axis0_1d", np.zeros(1, np.int64))], "pos")  # (T, C)
    x = node("Add", [word, pos], "emb_wp")  # (B, T, C)
    x = node("Add", [x, const("type_emb0", w["embeddings.token_type_embeddings.weight"][0])], "emb_wpt")  # (B, T, C)
    x = node("LayerNormalization", [x, const("emb_ln_w", w["embeddings.LayerNorm.weight"]),
                                    const("emb_ln_b", w["embeddings.LayerNorm.bias"])], "emb", axis=-1, epsilon=eps)
    mask = node("Cast", ["attention_mask"], "mask_i32", to=TensorProto.INT32)  # (B, T) raw 1/0 mask

    for i in range(n_layer):
        p = f"encoder.layer.{i}."
        qkv_w = np.concatenate([w[p + f"attention.self.{n}.weight"].T for n in ("query", "key", "value")], axis=1)  # (C, 3C)
        qkv_b = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])  # (3C,)
        a = node("Attention", [x, const(f"l{i}_qkv_w", qkv_w), const(f"l{i}_qkv_b", qkv_b), mask],
                 f"l{i}_att", domain="com.microsoft", num_heads=n_head)  # (B, T, C)
        a = node("MatMul", [a, const(f"l{i}_ao_w", w[p + "attention.output.dense.weight"].T)], f"l{i}_ao")  # (B, T, C)
        # x + (a + bias), then LayerNorm, in one kernel
        x = node("SkipLayerNormalization", [a, x, const(f"l{i}_ln1_w", w[p + "attention.output.LayerNorm.weight"]),
                                            const(f"l{i}_ln1_b", w[p + "attention.output.LayerNorm.bias"]),
                                            const(f"l{i}_ao_b", w[p + "attention.output.dense.bias"])],
                 f"l{i}_x1", domain="com.microsoft", epsilon=eps)  # (B, T, C)
        h = node("MatMul", [x, const(f"l{i}_fi_w", w[p + "intermediate.dense.weight"].T)], f"l{i}_fi")  # (B, T, 4C)
        h = node("BiasGelu", [h, const(f"l{i}_fi_b", w[p + "intermediate.dense.bias"])], f"l{i}_gelu",
                 domain="com.microsoft")  # (B, T, 4C) exact erf GELU
        h = node("MatMul", [h, const(f"l{i}_fo_w", w[p + "output.dense.weight"].T)], f"l{i}_fo")  # (B, T, C)
        x = node("SkipLayerNormalization", [h, x, const(f"l{i}_ln2_w", w[p + "output.LayerNorm.weight"]),
                                            const(f"l{i}_ln2_b", w[p + "output.LayerNorm.bias"]),
                                            const(f"l{i}_fo_b", w[p + "output.dense.bias"])],
                 f"l{i}_x2", domain="com.microsoft", epsilon=eps)  # (B, T, C)
    nodes.append(helper.make_node("Identity", [x], ["hidden"], name="hidden"))

    C = int(cfg["hidden_size"])
    g = model.graph
    g.name = "knnrag_bert"
    g.node.extend(nodes)
    g.input.extend([helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"]),
                    helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"])])
    g.output.extend([helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["B", "T", C])])
    model.opset_import.extend([helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.producer_name = "knnrag"
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    return model.SerializeToString()


def cached_graph(model_dir: Path, model_id: str, cache_dir: Path) -> Path | bytes:
    """The graph for this exact model (id = name@weights hash): the cached file, built on first use.

    A cache that cannot be written (a read-only root file system, a root-owned cache in a container
    running as another user) is no error: the graph is built in memory and returned as bytes, and
    costs that build again in the next process. Docker images build it at image build time.
    """
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in model_id)
    path = Path(cache_dir) / f"{safe}.v{GRAPH_VERSION}.onnx"
    if path.is_file():
        return path
    data = build_graph(model_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".onnx")
    except OSError as e:
        log.warning("cannot cache the ONNX graph in %s (%s); using it from memory, built again in each process",
                    path.parent, e.strerror or e)
        return data
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # concurrent builders each write whole files; the last one wins
    except OSError as e:  # e.g. the disk filled up: the graph in memory still works
        Path(tmp).unlink(missing_ok=True)
        log.warning("cannot cache the ONNX graph at %s (%s); using it from memory", path, e.strerror or e)
        return data
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class OnnxBert:
    """An onnxruntime session over the cached graph; `hidden` returns the last hidden state."""

    def __init__(self, graph: Path | bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # warnings and below would go to stdout/stderr noise
        model = graph if isinstance(graph, bytes) else str(graph)  # bytes: a graph that could not be cached
        self.session = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])

    def hidden(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(["hidden"], {"input_ids": input_ids.astype(np.int64, copy=False),
                                             "attention_mask": attention_mask.astype(np.int64, copy=False)})[0]  # (B, T, C)
