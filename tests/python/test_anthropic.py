"""The official `anthropic` Python SDK against a real `corral serve` (Anthropic's
Messages API) with a generated tiny GGUF on the llama.cpp plugin: messages.create
streaming and not, tools (a forced call, its result fed back), the messages.stream
helper, count_tokens, stop sequences, structured output (output_config) and errors."""

import json

import anthropic
import jsonschema
import pytest


@pytest.fixture(scope="module")
def client(corral_env):
    return anthropic.Anthropic(base_url=corral_env["url"], api_key="unused", max_retries=0)


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                     "required": ["city"]},
}
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
# Greedy sampling, so that two requests give the same text (this SDK no longer has a
# temperature argument; the API still takes the field).
GREEDY = {"temperature": 0}


def test_create(client):
    m = client.messages.create(model="tiny", max_tokens=12, messages=MESSAGES, extra_body=GREEDY,
                               system="Answer briefly.", metadata={"user_id": "u1"})
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 12 and m.usage.input_tokens > 0
    assert m.content[0].type == "text" and m.content[0].text
    # count_tokens counts the same prompt.
    n = client.messages.count_tokens(model="tiny", messages=MESSAGES, system="Answer briefly.")
    assert n.input_tokens == m.usage.input_tokens


def test_create_streaming(client):
    m = client.messages.create(model="tiny", max_tokens=10, messages=MESSAGES, extra_body=GREEDY)
    events = list(client.messages.create(model="tiny", max_tokens=10, stream=True,
                                         messages=MESSAGES, extra_body=GREEDY))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == m.content[0].text
    delta = events[-2]
    assert delta.delta.stop_reason == "max_tokens" and delta.usage.output_tokens == 10


def test_stream_helper(client):
    with client.messages.stream(model="tiny", max_tokens=8, extra_body=GREEDY,
                                messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 8


def test_stop_sequences(client):
    m = client.messages.create(model="tiny", max_tokens=24, messages=MESSAGES, extra_body=GREEDY)
    text = m.content[0].text
    at = next((i for i, c in enumerate(text) if i >= 2 and c.isascii() and c.isalnum()), None)
    if at is None:
        pytest.skip(f"no plain character to stop at in {text!r}")
    stop = text[at]
    m2 = client.messages.create(model="tiny", max_tokens=24, messages=MESSAGES, extra_body=GREEDY,
                                stop_sequences=[stop])
    assert m2.stop_reason == "stop_sequence" and m2.stop_sequence == stop
    assert "".join(b.text for b in m2.content if b.type == "text") == text[:at]


def test_tools(client):
    m = client.messages.create(model="tiny", max_tokens=200, messages=[
        {"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"})
    assert m.stop_reason == "tool_use"
    calls = [b for b in m.content if b.type == "tool_use"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert calls[0].input["city"] in ("Paris", "Oslo") and calls[0].id.startswith("toolu_")
    # Streamed, through the helper: the tool_use block's input is assembled.
    with client.messages.stream(model="tiny", max_tokens=200, tools=[WEATHER_TOOL],
                                tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Weather?"}]) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert streamed and streamed[0].input["city"] in ("Paris", "Oslo")
    assert final.stop_reason == "tool_use"
    # The result fed back.
    r = client.messages.create(model="tiny", max_tokens=6, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": m.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,
                                      "content": "sunny"}]}])
    assert r.usage.input_tokens > m.usage.input_tokens


def test_structured_output(client):
    schema = {"type": "object", "properties": {"sky": {"enum": ["blue", "grey"]}},
              "required": ["sky"], "additionalProperties": False}
    m = client.messages.create(model="tiny", max_tokens=100, messages=MESSAGES,
                               output_config={"format": {"type": "json_schema", "schema": schema}})
    jsonschema.validate(json.loads(m.content[0].text), schema)


def test_errors(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="no-such-model", max_tokens=4, messages=MESSAGES)
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="tiny", max_tokens=4, messages=MESSAGES,
                                  extra_body={"temperature": 3})
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "temperature" in e.value.body["error"]["message"]


def test_models_list_in_anthropics_shape(client):
    """`/v1/models` serves both SDKs: Anthropic's reads its own fields from it."""
    models = list(client.models.list())
    tiny = next(m for m in models if m.id.startswith("tiny"))
    assert tiny.type == "model" and tiny.display_name == tiny.id
    assert tiny.created_at is not None
    one = client.models.retrieve(tiny.id)
    assert one.id == tiny.id and one.display_name == tiny.id
