"""The official `openai` Python SDK's Responses API against a real `corral serve` with a
generated tiny GGUF on the llama.cpp plugin: responses.create streaming and not,
function tools, text.format json_schema and previous_response_id."""

import json

import jsonschema
import openai
import pytest


@pytest.fixture(scope="module")
def ai(corral_env):
    return openai.OpenAI(base_url=corral_env["url"] + "/v1", api_key="unused", max_retries=0)


WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                   "required": ["city"]},
}


def test_create(ai):
    r = ai.responses.create(model="tiny", input="Why is the sky blue?", instructions="Be brief.",
                            max_output_tokens=12, temperature=0)
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.output_text
    assert r.usage.output_tokens == 12
    assert r.usage.total_tokens == r.usage.input_tokens + 12
    assert ai.responses.retrieve(r.id).output_text == r.output_text


def test_create_streaming(ai):
    r = ai.responses.create(model="tiny", input="Why is the sky blue?", max_output_tokens=10,
                            temperature=0)
    events = list(ai.responses.create(model="tiny", input="Why is the sky blue?",
                                      max_output_tokens=10, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text
    assert events[-1].response.output_text == text


def test_function_tools(ai):
    r = ai.responses.create(model="tiny", input="Weather in Oslo?", tools=[WEATHER_TOOL],
                            tool_choice="required", max_output_tokens=200)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["city"] in ("Paris", "Oslo")
    # Streamed: the arguments events.
    events = list(ai.responses.create(model="tiny", input="Weather?", tools=[WEATHER_TOOL],
                                      tool_choice={"type": "function", "name": "get_weather"},
                                      max_output_tokens=200, stream=True))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and json.loads(done[0].arguments)["city"] in ("Paris", "Oslo")
    assert events[-1].type == "response.completed"
    # The result fed back, continuing the stored response.
    r2 = ai.responses.create(model="tiny", previous_response_id=r.id, tools=[WEATHER_TOOL],
                             max_output_tokens=4, input=[{"type": "function_call_output",
                                                          "call_id": calls[0].call_id,
                                                          "output": "sunny"}])
    assert r2.previous_response_id == r.id
    assert r2.usage.input_tokens > r.usage.input_tokens


def test_json_schema(ai):
    schema = {"type": "object", "properties": {"sky": {"enum": ["blue", "grey"]},
                                               "clouds": {"type": "integer"}},
              "required": ["sky", "clouds"], "additionalProperties": False}
    r = ai.responses.create(model="tiny", input="Describe the sky.", max_output_tokens=200,
                            text={"format": {"type": "json_schema", "name": "sky",
                                             "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(r.output_text), schema)


def test_previous_response_id(ai):
    r1 = ai.responses.create(model="tiny", input="Hello there", max_output_tokens=6)
    r2 = ai.responses.create(model="tiny", input="And then?", previous_response_id=r1.id,
                             max_output_tokens=4)
    alone = ai.responses.create(model="tiny", input="And then?", max_output_tokens=4)
    assert r2.usage.input_tokens > alone.usage.input_tokens
    with pytest.raises(openai.NotFoundError):
        ai.responses.create(model="tiny", input="x", previous_response_id="resp_nope")


def test_input_items_and_delete(ai):
    """The SDK's `input_items.list` and `delete` on a kept response."""
    first = ai.responses.create(model="tiny", input="Why is the sky blue?", instructions="Be brief.",
                                max_output_tokens=4, temperature=0)
    second = ai.responses.create(model="tiny", previous_response_id=first.id, input="And red?",
                                 max_output_tokens=4, temperature=0)
    items = list(ai.responses.input_items.list(second.id))  # newest first, by pages
    texts = [c.text for it in items if it.type == "message" for c in it.content]
    assert "Why is the sky blue?" in texts and texts[0] == "And red?", texts
    oldest = list(ai.responses.input_items.list(second.id, order="asc", limit=1))
    assert [it.id for it in oldest] == [it.id for it in reversed(items)]
    # The earlier answer is among them, as the assistant's output text.
    assert any(it.role == "assistant" for it in items if it.type == "message")
    ai.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        ai.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        ai.responses.delete(second.id)
