"""The official `ollama` and `openai` Python clients against a real `corral serve` with a
generated tiny GGUF on the llama.cpp plugin: generate, chat (streaming and not),
embeddings, list, show, structured output and tool calls."""

import json

import jsonschema
import ollama
import openai
import pytest


@pytest.fixture(scope="module")
def oc(corral_env):
    return ollama.Client(host=corral_env["url"])


@pytest.fixture(scope="module")
def ai(corral_env):
    return openai.OpenAI(base_url=corral_env["url"] + "/v1", api_key="unused")


OPTS = {"num_predict": 12, "temperature": 0, "seed": 1}


def test_list_and_show(oc, corral_env):
    names = [m.model for m in oc.list().models]
    assert "tiny:latest" in names
    info = oc.show("tiny")
    assert info.details.format == "gguf"
    assert info.modelinfo["general.architecture"] == "llama"
    assert "FROM" in info.modelfile


def test_generate(oc):
    r = oc.generate(model="tiny", prompt="Why is the sky blue?", options=OPTS)
    assert r.done and r.done_reason == "length"
    assert r.eval_count == 12
    assert r.prompt_eval_count > 0 and r.total_duration > 0
    assert isinstance(r.context, list) and len(r.context) > 12
    streamed = "".join(c.response for c in oc.generate(model="tiny", prompt="Why is the sky blue?",
                                                        options=OPTS, stream=True))
    assert streamed == r.response


def _prompt_tokens_evaluated(url):
    """The server's count of prompt tokens run through the engine (after prefix reuse)."""
    import urllib.request
    with urllib.request.urlopen(url + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("corral_prompt_tokens_total "):
                return float(line.split()[1])
    raise AssertionError("no corral_prompt_tokens_total in /metrics")


def test_chat(oc, corral_env):
    msgs = [{"role": "user", "content": "Hello there"}]
    r = oc.chat(model="tiny", messages=msgs, options=OPTS)
    assert r.message.role == "assistant"
    assert r.eval_count == 12
    parts = list(oc.chat(model="tiny", messages=msgs, options=OPTS, stream=True))
    assert parts[-1].done and parts[-1].done_reason == "length"
    assert "".join(p.message.content for p in parts) == r.message.content
    # The next turn reuses the first turn's KV cache.
    msgs2 = msgs + [{"role": "assistant", "content": r.message.content},
                    {"role": "user", "content": "And then?"}]
    before = _prompt_tokens_evaluated(corral_env["url"])
    r2 = oc.chat(model="tiny", messages=msgs2, options=OPTS)
    # prompt_eval_count is the whole prompt (as Ollama's); the engine ran only the new part.
    assert r2.prompt_eval_count > r.prompt_eval_count
    assert _prompt_tokens_evaluated(corral_env["url"]) - before < r.prompt_eval_count + 12


def test_embeddings(oc):
    r = oc.embed(model="tiny", input=["hello", "world"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) > 0
    norm = sum(x * x for x in r.embeddings[0])
    assert abs(norm - 1) < 1e-3
    old = oc.embeddings(model="tiny", prompt="hello")
    assert len(old.embedding) == len(r.embeddings[0])


def test_structured_output(oc):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"]}
    for seed in range(5):
        r = oc.chat(model="tiny", messages=[{"role": "user", "content": "A city as JSON"}],
                    format=schema, options={"temperature": 1, "seed": seed, "num_predict": 300})
        jsonschema.validate(json.loads(r.message.content), schema)


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# A random-weight model never decides to call a tool; structured output makes it.
CALL_SCHEMA = {"type": "object", "properties": {
    "name": {"const": "get_weather"},
    "arguments": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                  "required": ["city"]}},
    "required": ["name", "arguments"]}


def test_tool_calls(oc):
    r = oc.chat(model="tiny", messages=[{"role": "user", "content": "Weather in Paris?"}],
                tools=[WEATHER_TOOL], format=CALL_SCHEMA, options={"seed": 4, "num_predict": 200})
    calls = r.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert calls[0].function.arguments["city"] in ("Paris", "Oslo")
    streamed = [c for part in oc.chat(model="tiny", messages=[{"role": "user", "content": "Weather?"}],
                                      tools=[WEATHER_TOOL], format=CALL_SCHEMA, stream=True,
                                      options={"seed": 4, "num_predict": 200})
                for c in (part.message.tool_calls or [])]
    assert [c.function.name for c in streamed] == ["get_weather"]


def test_errors(oc):
    with pytest.raises(ollama.ResponseError) as e:
        oc.generate(model="does-not-exist", prompt="x")
    assert e.value.status_code == 404


def test_openai_chat(ai):
    r = ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                   max_tokens=10, temperature=0, seed=2)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 10
    chunks = list(ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=10, temperature=0, seed=2, stream=True,
                                             stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 10


def test_openai_json_schema(ai):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = ai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "ok?"}], max_tokens=50,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_openai_tool_calls(ai):
    r = ai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER_TOOL],
        max_tokens=200, seed=4,
        response_format={"type": "json_schema", "json_schema": {"name": "call", "schema": CALL_SCHEMA}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")


def test_openai_tool_choice(ai):
    """tool_choice "required" and a named function force the call (no response_format
    needed); a name not among the tools, an unknown choice and malformed tools are 400s."""
    msgs = [{"role": "user", "content": "Weather in Oslo?"}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = ai.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER_TOOL],
                                       tool_choice=choice, max_tokens=200, seed=4)
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments)["city"], str)
    bad = [
        dict(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
        dict(tools=[WEATHER_TOOL], tool_choice="sometimes"),
        dict(tool_choice="required"),
        dict(tools=["get_weather"]),
        dict(tools=[{"type": "function", "function": {"description": "no name"}}]),
        dict(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
    ]
    for kwargs in bad:
        with pytest.raises(openai.BadRequestError):
            ai.chat.completions.create(model="tiny", messages=msgs, max_tokens=5, **kwargs)


def test_malformed_tools_are_refused(oc):
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model="tiny", messages=[{"role": "user", "content": "x"}],
                tools=[{"type": "function", "function": {"parameters": {}}}])
    assert e.value.status_code == 400 and "tools[0].function.name" in str(e.value)


def test_logprobs(oc, ai):
    r = ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                   max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    g = oc.generate(model="tiny", prompt="Hi", logprobs=True, top_logprobs=1,
                    options={"num_predict": 6, "temperature": 0})
    assert len(g.logprobs) == g.eval_count


def test_openai_logit_bias(oc, ai):
    # The greedy first token of the answer, by id (`context` ends with it), banned through
    # the SDK's logit_bias: the answer changes; out-of-range ids are the SDK's 400.
    g = oc.generate(model="tiny", prompt="Hi", options={"num_predict": 1, "temperature": 0})
    first = g.context[-1]
    ask = dict(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    plain = ai.chat.completions.create(**ask).choices[0].message.content
    banned = ai.chat.completions.create(**ask, logit_bias={str(first): -100}).choices[0].message.content
    assert banned != plain
    with pytest.raises(openai.BadRequestError):
        ai.chat.completions.create(**ask, logit_bias={"4000000000": 5})


def test_openai_completion_of_token_ids(oc, ai):
    # The tokens of a templated prompt (`context` less the answer's token) give the answer.
    g = oc.generate(model="tiny", prompt="Hi", options={"num_predict": 1, "temperature": 0})
    r = ai.completions.create(model="tiny", prompt=g.context[:-1], max_tokens=1, temperature=0)
    assert r.choices[0].text == g.response
    assert r.usage.prompt_tokens == len(g.context) - 1


def test_openai_embeddings_and_models(ai):
    r = ai.embeddings.create(model="tiny", input=["a", "b"])
    assert len(r.data) == 2 and len(r.data[0].embedding) > 0
    ids = [m.id for m in ai.models.list().data]
    assert "tiny:latest" in ids
    with pytest.raises(openai.NotFoundError):
        ai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
