"""Ollama parity as the official `ollama` and `openai` Python clients see it, against a
real `corral serve` with a generated tiny GGUF on the llama.cpp plugin: num_ctx reloads
the model (visible in ps), embed dimensions and truncate, think levels, show
capabilities, ps fields, and the vLLM/llama-server extensions sent through the OpenAI
SDK's extra_body."""

import datetime
import math

import httpx
import ollama
import openai
import pytest


@pytest.fixture(scope="module")
def oc(corral_env):
    return ollama.Client(host=corral_env["url"])


@pytest.fixture(scope="module")
def ai(corral_env):
    return openai.OpenAI(base_url=corral_env["url"] + "/v1", api_key="unused")


def _ps_entry(oc, name="tiny:latest"):
    for m in oc.ps().models:
        if m.model == name:
            return m
    return None


def test_num_ctx_reloads_and_ps_shows_it(oc):
    oc.generate(model="tiny", prompt="hi", options={"num_predict": 2})
    before = _ps_entry(oc)
    assert before is not None and before.context_length > 0
    try:
        r = oc.generate(model="tiny", prompt="hi", options={"num_predict": 2, "num_ctx": 256})
        assert r.done
        assert _ps_entry(oc).context_length == 256
        # The same num_ctx, or none, keeps the loaded model.
        r = oc.generate(model="tiny", prompt="hi", options={"num_predict": 2})
        assert r.load_duration == 0
        assert _ps_entry(oc).context_length == 256
        # Past the model's training context: the training context, as Ollama clamps
        # num_ctx; asking again keeps the model loaded with it.
        trained = oc.show("tiny").modelinfo["llama.context_length"]
        oc.generate(model="tiny", prompt="hi", options={"num_predict": 1, "num_ctx": 2_000_000_000})
        assert _ps_entry(oc).context_length == trained
        r = oc.generate(model="tiny", prompt="hi", options={"num_predict": 1, "num_ctx": 1 << 20})
        assert r.load_duration == 0
        assert _ps_entry(oc).context_length == trained
    finally:
        oc.generate(model="tiny", prompt="hi", options={"num_predict": 1,
                                                        "num_ctx": before.context_length})
    assert _ps_entry(oc).context_length == before.context_length


def test_ps_fields(oc):
    oc.generate(model="tiny", prompt="hi", options={"num_predict": 1}, keep_alive="7m")
    m = _ps_entry(oc)
    assert m.size_vram == 0  # the CPU plugin
    assert m.size > 0
    now = datetime.datetime.now(datetime.timezone.utc)
    left = (m.expires_at - now).total_seconds()
    assert 6 * 60 < left <= 7 * 60 + 5, left
    oc.generate(model="tiny", keep_alive=-1)
    assert _ps_entry(oc).expires_at.year > 2200
    oc.generate(model="tiny", keep_alive="5m")


def test_embed_dimensions_and_truncate(oc):
    full = oc.embed(model="tiny", input=["hello", "world"]).embeddings
    short = oc.embed(model="tiny", input=["hello", "world"], dimensions=8).embeddings
    assert len(short) == 2 and all(len(v) == 8 for v in short)
    for v, f in zip(short, full):
        assert abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4
        scale = v[0] / f[0]
        assert all(abs(a - b * scale) < 1e-4 for a, b in zip(v, f[:8]))
    with pytest.raises(ollama.ResponseError) as e:
        oc.embed(model="tiny", input="hello", dimensions=len(full[0]) + 1)
    assert e.value.status_code == 400 and "dimensions" in e.value.error
    long = "word " * 400
    ctx = _ps_entry(oc).context_length
    try:
        r = oc.embed(model="tiny", input=long, options={"num_ctx": 64})
        assert r.prompt_eval_count == 64
        with pytest.raises(ollama.ResponseError) as e:
            oc.embed(model="tiny", input=long, truncate=False, options={"num_ctx": 64})
        assert e.value.status_code == 400 and "context length 64" in e.value.error
    finally:
        oc.generate(model="tiny", prompt="hi", options={"num_predict": 1, "num_ctx": ctx})


def test_think_levels(oc, corral_env):
    # The tiny model's template does not think: any level is refused as Ollama does,
    # and a level that is not one is a 400 of its own.
    for think in (True, "low", "medium", "high"):
        with pytest.raises(ollama.ResponseError) as e:
            oc.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], think=think)
        assert e.value.status_code == 400 and "thinking" in e.value.error
    r = httpx.post(corral_env["url"] + "/api/chat",
                   json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                         "think": "extreme"})
    assert r.status_code == 400 and "think must be" in r.json()["error"]
    # A Go template with a <think> block reads the level as .ThinkLevel.
    r = oc.generate(model="tiny", prompt="hi", think="high",
                    template="{{ .Prompt }} effort={{ .ThinkLevel }}<think>",
                    options={"num_predict": 3, "seed": 1})
    assert r.done
    assert r.response == ""  # the prompt opened <think>: the output is thinking


def test_show_capabilities(oc):
    caps = oc.show("tiny").capabilities
    assert "completion" in caps
    assert "embedding" not in caps and "vision" not in caps


def test_unknown_fields_are_accepted(corral_env):
    url = corral_env["url"]
    r = httpx.post(url + "/api/generate",
                   json={"model": "tiny", "prompt": "hi", "stream": False, "newer": 1,
                         "options": {"num_predict": 2, "tmperature": 0}})
    assert r.status_code == 200, r.text
    assert r.headers["x-corral-ignored-fields"] == "newer, options.tmperature"
    r = httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "hi", "raw": "yes"})
    assert r.status_code == 400 and "raw" in r.json()["error"]


def test_openai_extra_body(ai, oc):
    msgs = [{"role": "user", "content": "Count to ten"}]
    extra = {"top_k": 1, "min_p": 0.1, "repetition_penalty": 1.1, "ignore_eos": True,
             "cache_prompt": True}
    r = ai.chat.completions.with_raw_response.create(
        model="tiny", messages=msgs, max_tokens=20, temperature=1.5, seed=3, extra_body=extra)
    assert r.headers.get("x-corral-ignored-fields") is None
    c = r.parse()
    # ignore_eos: exactly max_tokens; top_k 1: the greedy answer.
    assert c.usage.completion_tokens == 20
    assert c.choices[0].finish_reason == "length"
    greedy = ai.chat.completions.create(model="tiny", messages=msgs, max_tokens=20,
                                        temperature=0, extra_body={"ignore_eos": True,
                                                                   "repetition_penalty": 1.1})
    assert c.choices[0].message.content == greedy.choices[0].message.content
    t = ai.completions.create(model="tiny", prompt="Once", max_tokens=16, extra_body=extra)
    assert t.usage.completion_tokens == 16
    # An extension corral does not have is accepted and named.
    r = ai.completions.with_raw_response.create(model="tiny", prompt="Once", max_tokens=2,
                                                extra_body={"mirostat": 2, "top_k": 1})
    assert r.headers["x-corral-ignored-fields"] == "mirostat"
    with pytest.raises(openai.BadRequestError) as e:
        ai.completions.create(model="tiny", prompt="Once", max_tokens=2,
                              extra_body={"top_k": "one"})
    assert "top_k" in str(e.value)
