//! Anthropic's Messages API and OpenAI's Responses API of `corral serve` end to end on
//! the example plugin (format `toy`): the real binary, real HTTP. The JSON and event
//! stream shapes, tools (forced through `tool_choice`, fed back as results), stop
//! sequences, token limits, `count_tokens`, `previous_response_id`, structured output
//! (`output_config` and `text.format`), the error shapes, and an API-key-protected
//! server that takes `x-api-key`.

use std::{path::PathBuf, time::Duration};

use corral_e2e::*;
use serde_json::{Value, json};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    plugins: PathBuf,
    model: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    example_plugin_dir(&plugins);
    let model = dir.path().join("a.toy");
    std::fs::write(&model, "toy weights a").unwrap();
    Env { plugins, model: model.to_string_lossy().into_owned(), _dir: dir }
}

fn start(e: &Env, vars: &[(&str, &str)]) -> Server {
    Server::start(&[e.plugins.as_path()], vars, &[])
}

fn post_with(s: &Server, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = client().post(format!("{}{path}", s.url)).json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    post_with(s, path, body, &[])
}

/// The events of a server-sent event stream: (event name, data).
fn sse(s: &Server, path: &str, body: &Value) -> Vec<(String, Value)> {
    let r = client().post(format!("{}{path}", s.url)).json(body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
                }
            }
            (name, data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn weather_tool() -> Value {
    json!({"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object",
                            "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                            "required": ["city"]}})
}

fn city_ok(v: &Value) -> bool {
    matches!(v.as_str(), Some("Paris" | "Oslo"))
}

#[test]
fn anthropic_messages_answer_and_stream_in_anthropic_shapes() {
    let e = env();
    let s = start(&e, &[]);
    let body = |stream: bool| {
        json!({"model": e.model, "max_tokens": 6, "stream": stream, "temperature": 0,
               "system": [{"type": "text", "text": "Be brief."}],
               "metadata": {"user_id": "u1"}, "some_future_field": {"x": 1},
               "messages": [{"role": "user", "content": "Hello"},
                            {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
                            {"role": "user", "content": [{"type": "text", "text": "More?"}]}]})
    };
    let (st, v) = post(&s, "/v1/messages", &body(false));
    assert_eq!(st, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"), "{v}");
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], e.model.as_str());
    assert_eq!(v["stop_reason"], "max_tokens", "{v}");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(v["usage"]["output_tokens"], 6, "{v}");
    let input_tokens = v["usage"]["input_tokens"].as_u64().unwrap();
    assert!(input_tokens > 0, "{v}");
    assert_eq!(v["content"][0]["type"], "text", "{v}");
    let text = v["content"][0]["text"].as_str().unwrap().to_string();

    // count_tokens counts the same prompt (max_tokens not needed).
    let mut count = body(false);
    count.as_object_mut().unwrap().remove("max_tokens");
    let (st, c) = post(&s, "/v1/messages/count_tokens", &count);
    assert_eq!(st, 200, "{c}");
    assert_eq!(c, json!({"input_tokens": input_tokens}));

    // Streamed: the documented event order, and the same text.
    let events = sse(&s, "/v1/messages", &body(true));
    let n = names(&events);
    assert_eq!(&n[..3], ["message_start", "ping", "content_block_start"], "{n:?}");
    assert_eq!(&n[n.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    assert!(n[3..n.len() - 3].iter().all(|n| *n == "content_block_delta"), "{n:?}");
    let start = &events[0].1["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["usage"]["input_tokens"], input_tokens);
    assert_eq!(events[2].1["content_block"], json!({"type": "text", "text": ""}));
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(streamed, text);
    assert!(events.iter().all(|(name, d)| d["type"] == json!(name)), "{events:?}");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"], json!({"stop_reason": "max_tokens", "stop_sequence": null}));
    assert_eq!(delta["usage"]["output_tokens"], 6);

    // Thinking asked of a model that does not think: answered without thinking.
    let mut thinking = body(false);
    thinking["thinking"] = json!({"type": "enabled", "budget_tokens": 4});
    let (st, v) = post(&s, "/v1/messages", &thinking);
    assert_eq!(st, 200, "{v}");
    assert!(v["content"].as_array().unwrap().iter().all(|b| b["type"] != "thinking"), "{v}");
}

#[test]
fn anthropic_stop_sequences_end_with_stop_sequence() {
    let e = env();
    let s = start(&e, &[]);
    let body = |stop: Option<&str>, stream: bool| {
        let mut b = json!({"model": e.model, "max_tokens": 24, "temperature": 0, "stream": stream,
                           "messages": [{"role": "user", "content": "Say something"}]});
        if let Some(stop) = stop {
            b["stop_sequences"] = json!([stop]);
        }
        b
    };
    let (st, v) = post(&s, "/v1/messages", &body(None, false));
    assert_eq!(st, 200, "{v}");
    let text = v["content"][0]["text"].as_str().unwrap().to_string();
    // Stop at the first plain character after the first few (greedy output repeats).
    let Some((at, stop)) = text.char_indices().skip(2).find(|(_, c)| c.is_ascii_alphanumeric())
    else {
        panic!("no plain character in {text:?}");
    };
    let stop = stop.to_string();
    let (st, v) = post(&s, "/v1/messages", &body(Some(&stop), false));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["stop_reason"], "stop_sequence", "{v}");
    assert_eq!(v["stop_sequence"], stop.as_str());
    let before = &text[..at];
    let got = v["content"].get(0).map_or("", |b| b["text"].as_str().unwrap_or_default());
    assert_eq!(got, before, "{v}");
    let events = sse(&s, "/v1/messages", &body(Some(&stop), true));
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"], json!({"stop_reason": "stop_sequence", "stop_sequence": stop}));
}

#[test]
fn anthropic_tools_come_back_as_tool_use_and_results_go_in() {
    let e = env();
    let s = start(&e, &[]);
    let body = |stream: bool, choice: Value| {
        json!({"model": e.model, "max_tokens": 200, "stream": stream,
               "tools": [weather_tool()], "tool_choice": choice,
               "messages": [{"role": "user", "content": "weather?"}]})
    };
    for choice in [json!({"type": "tool", "name": "get_weather"}), json!({"type": "any"})] {
        let (st, v) = post(&s, "/v1/messages", &body(false, choice));
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["stop_reason"], "tool_use", "{v}");
        let blocks = v["content"].as_array().unwrap();
        let call = blocks.iter().find(|b| b["type"] == "tool_use").unwrap_or_else(|| panic!("{v}"));
        assert!(call["id"].as_str().unwrap().starts_with("toolu_"), "{v}");
        assert_eq!(call["name"], "get_weather");
        assert!(city_ok(&call["input"]["city"]), "{v}");
    }
    // Streamed: a tool_use block whose input comes as input_json_delta.
    let events = sse(&s, "/v1/messages", &body(true, json!({"type": "any"})));
    let start = events
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .unwrap_or_else(|| panic!("{events:?}"));
    let index = start.1["index"].clone();
    assert_eq!(start.1["content_block"]["input"], json!({}));
    let json_text: String = events
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["index"] == index)
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_string()
        })
        .collect();
    let input: Value = serde_json::from_str(&json_text).unwrap();
    assert!(city_ok(&input["city"]), "{input}");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    // The call and its result fed back.
    let follow_up = json!({"model": e.model, "max_tokens": 4, "tools": [weather_tool()],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should call it.", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "text", "text": "and tomorrow?"}]}]});
    let (st, v) = post(&s, "/v1/messages", &follow_up);
    assert_eq!(st, 200, "{v}");
    let (st, c) = post(&s, "/v1/messages/count_tokens", &follow_up);
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["input_tokens"], v["usage"]["input_tokens"]);
    // output_config.format json_schema: the answer is JSON that matches.
    let (st, v) = post(
        &s,
        "/v1/messages",
        &json!({"model": e.model, "max_tokens": 100,
                "messages": [{"role": "user", "content": "weather?"}],
                "output_config": {"format": {"type": "json_schema", "schema":
                    {"type": "object", "properties": {"sky": {"enum": ["clear", "grey"]}},
                     "required": ["sky"]}}}}),
    );
    assert_eq!(st, 200, "{v}");
    let text = v["content"][0]["text"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(matches!(parsed["sky"].as_str(), Some("clear" | "grey")), "{parsed}");
    assert_eq!(v["stop_reason"], "end_turn", "{v}");
    // tool_choice naming a tool that is not offered.
    let (st, v) = post(&s, "/v1/messages", &body(false, json!({"type": "tool", "name": "nope"})));
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[test]
fn anthropic_errors_have_anthropic_shape() {
    let e = env();
    let s = start(&e, &[]);
    let ok = json!({"model": e.model, "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]});
    let check = |body: &Value, status: u16, kind: &str, says: &str| {
        let (st, v) = post(&s, "/v1/messages", body);
        assert_eq!(st, status, "{v}");
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    };
    let mut b = ok.clone();
    b.as_object_mut().unwrap().remove("max_tokens");
    check(&b, 400, "invalid_request_error", "max_tokens");
    let mut b = ok.clone();
    b["max_tokens"] = json!(0);
    check(&b, 400, "invalid_request_error", "max_tokens");
    let mut b = ok.clone();
    b["temperature"] = json!("hot");
    check(&b, 400, "invalid_request_error", "temperature");
    let mut b = ok.clone();
    b["temperature"] = json!(1.5);
    check(&b, 400, "invalid_request_error", "temperature");
    let mut b = ok.clone();
    b["messages"] = json!([{"role": "user", "content": [{"type": "document"}]}]);
    check(&b, 400, "invalid_request_error", "document");
    let mut b = ok.clone();
    b["messages"] = json!([]);
    check(&b, 400, "invalid_request_error", "at least one message");
    let mut b = ok.clone();
    b["stop_sequences"] = json!("END");
    check(&b, 400, "invalid_request_error", "stop_sequences");
    let mut b = ok.clone();
    b["model"] = json!("no-such-model");
    check(&b, 404, "not_found_error", "no-such-model");
    let (st, v) = post(&s, "/v1/messages/count_tokens", &json!({"model": e.model}));
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    // Errors made before the handler (a wrong method, invalid JSON) too.
    let r = client().get(format!("{}/v1/messages", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let v: Value = r.json().unwrap();
    assert_eq!(v["type"], "error", "{v}");
    let r = client()
        .post(format!("{}/v1/messages", s.url))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

#[test]
fn a_server_with_keys_takes_x_api_key_and_bearer() {
    let e = env();
    let s = start(&e, &[("CORRAL_API_KEYS", "sk-one,sk-two")]);
    let messages = json!({"model": e.model, "max_tokens": 2,
                          "messages": [{"role": "user", "content": "hi"}]});
    let (st, v) = post(&s, "/v1/messages", &messages);
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    let (st, v) = post_with(&s, "/v1/messages", &messages, &[("x-api-key", "sk-wrong")]);
    assert_eq!(st, 401, "{v}");
    let (st, v) = post_with(&s, "/v1/messages", &messages, &[("x-api-key", "sk-one")]);
    assert_eq!(st, 200, "{v}");
    let (st, v) = post_with(&s, "/v1/messages", &messages, &[("authorization", "Bearer sk-two")]);
    assert_eq!(st, 200, "{v}");
    let responses = json!({"model": e.model, "input": "hi", "max_output_tokens": 2});
    let (st, v) = post(&s, "/v1/responses", &responses);
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
    let (st, v) = post_with(&s, "/v1/responses", &responses, &[("x-api-key", "sk-two")]);
    assert_eq!(st, 200, "{v}");
}

#[test]
fn responses_answer_stream_and_continue_from_a_previous_response() {
    let e = env();
    let s = start(&e, &[]);
    let body = |stream: bool| {
        json!({"model": e.model, "max_output_tokens": 5, "stream": stream, "temperature": 0,
               "instructions": "Be brief.", "store": true, "some_future_field": 1,
               "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}]})
    };
    let (st, v) = post(&s, "/v1/responses", &body(false));
    assert_eq!(st, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("resp_"), "{v}");
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "incomplete", "{v}");
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(v["instructions"], "Be brief.");
    let usage = &v["usage"];
    assert_eq!(usage["output_tokens"], 5, "{v}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + 5),
        "{v}"
    );
    let output = v["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "{v}");
    assert_eq!(output[0]["type"], "message");
    assert_eq!(output[0]["role"], "assistant");
    assert_eq!(output[0]["content"][0]["type"], "output_text");
    let text = output[0]["content"][0]["text"].as_str().unwrap().to_string();

    // Streamed: the documented sequence, numbered from 0, and the same text.
    let events = sse(&s, "/v1/responses", &body(true));
    let n = names(&events);
    assert_eq!(
        &n[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ],
        "{n:?}"
    );
    assert_eq!(
        &n[n.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.incomplete"
        ],
        "{n:?}"
    );
    for (i, (name, d)) in events.iter().enumerate() {
        assert_eq!(d["type"], json!(name));
        assert_eq!(d["sequence_number"], json!(i), "{d}");
    }
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(events[events.len() - 4].1["text"], text.as_str());
    let last = &events.last().unwrap().1["response"];
    assert_eq!(last["output"][0]["content"][0]["text"], text.as_str());

    // A next turn continues the stored conversation: its prompt holds the first turn.
    let next = json!({"model": e.model, "max_output_tokens": 3, "input": "And then?",
                      "previous_response_id": id});
    let (st, v2) = post(&s, "/v1/responses", &next);
    assert_eq!(st, 200, "{v2}");
    assert_eq!(v2["previous_response_id"], id.as_str());
    let alone = json!({"model": e.model, "max_output_tokens": 3, "input": "And then?"});
    let (_, v3) = post(&s, "/v1/responses", &alone);
    assert!(
        v2["usage"]["input_tokens"].as_u64() > v3["usage"]["input_tokens"].as_u64(),
        "{v2} {v3}"
    );
    // GET returns the stored response; unknown ids are 404 in OpenAI's shape.
    let r = client().get(format!("{}/v1/responses/{id}", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().unwrap(), v);
    let (st, v) = post(
        &s,
        "/v1/responses",
        &json!({"model": e.model, "input": "x",
                                                      "previous_response_id": "resp_nope"}),
    );
    assert_eq!(st, 404, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("resp_nope"), "{v}");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert_eq!(v["error"]["code"], Value::Null, "{v}");
    // store: false keeps nothing.
    let (_, v) = post(
        &s,
        "/v1/responses",
        &json!({"model": e.model, "input": "x",
                                                   "max_output_tokens": 1, "store": false}),
    );
    let r = client().get(format!("{}/v1/responses/{}", s.url, v["id"].as_str().unwrap())).send();
    assert_eq!(r.unwrap().status().as_u16(), 404);
}

#[test]
fn responses_function_tools_and_structured_output() {
    let e = env();
    let s = start(&e, &[]);
    let tool = json!({"type": "function", "name": "get_weather", "description": "Weather",
                      "parameters": {"type": "object",
                                     "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                                     "required": ["city"]}});
    let body = |stream: bool| {
        json!({"model": e.model, "max_output_tokens": 200, "stream": stream,
               "tools": [tool], "tool_choice": "required", "input": "weather?"})
    };
    let (st, v) = post(&s, "/v1/responses", &body(false));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    let call = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert_eq!(call["name"], "get_weather");
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"), "{call}");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(city_ok(&args["city"]), "{call}");
    // Streamed: a function_call item with its argument events.
    let events = sse(&s, "/v1/responses", &body(true));
    let n = names(&events);
    let at = n.iter().position(|n| *n == "response.function_call_arguments.delta").unwrap();
    assert_eq!(n[at - 1], "response.output_item.added");
    assert_eq!(events[at - 1].1["item"]["type"], "function_call");
    assert_eq!(n[at + 1], "response.function_call_arguments.done");
    assert_eq!(n[at + 2], "response.output_item.done");
    assert_eq!(*n.last().unwrap(), "response.completed");
    let done_args: Value =
        serde_json::from_str(events[at + 1].1["arguments"].as_str().unwrap()).unwrap();
    assert!(city_ok(&done_args["city"]), "{done_args}");
    // The result fed back, continuing the stored response.
    let (st, v2) = post(
        &s,
        "/v1/responses",
        &json!({"model": e.model, "max_output_tokens": 3, "tools": [tool],
                "previous_response_id": v["id"],
                "input": [{"type": "function_call_output", "call_id": call["call_id"],
                           "output": "sunny"}]}),
    );
    assert_eq!(st, 200, "{v2}");
    // The same from the items alone.
    let (st, v3) = post(
        &s,
        "/v1/responses",
        &json!({"model": e.model, "max_output_tokens": 3, "tools": [tool],
                "input": [{"role": "user", "content": "weather?"},
                          {"type": "function_call", "call_id": "call_9", "name": "get_weather",
                           "arguments": "{\"city\":\"Paris\"}"},
                          {"type": "function_call_output", "call_id": "call_9",
                           "output": "sunny"}]}),
    );
    assert_eq!(st, 200, "{v3}");
    // text.format json_schema: the answer is JSON that matches.
    let (st, v) = post(
        &s,
        "/v1/responses",
        &json!({"model": e.model, "max_output_tokens": 100, "input": "weather?",
                "text": {"format": {"type": "json_schema", "name": "w", "strict": true,
                                    "schema": {"type": "object",
                                               "properties": {"sky": {"enum": ["clear", "grey"]}},
                                               "required": ["sky"]}}}}),
    );
    assert_eq!(st, 200, "{v}");
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(matches!(parsed["sky"].as_str(), Some("clear" | "grey")), "{parsed}");
    assert_eq!(v["text"]["format"]["type"], "json_schema");
    // Malformed known fields are 400 in OpenAI's shape.
    for bad in [
        json!({"model": e.model, "input": 5}),
        json!({"model": e.model, "input": "x", "tools": [{"type": "web_search"}]}),
        json!({"model": e.model, "input": "x", "tool_choice": "sometimes"}),
        json!({"model": e.model, "input": "x", "text": {"format": {"type": "xml"}}}),
        json!({"model": e.model, "input": "x", "max_output_tokens": "many"}),
        json!({"model": e.model, "input": [{"type": "function_call", "call_id": "c",
                                            "name": "f", "arguments": "nope"}]}),
    ] {
        let (st, v) = post(&s, "/v1/responses", &bad);
        assert_eq!(st, 400, "{bad} -> {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    let (st, v) = post(&s, "/v1/responses", &json!({"model": "no-such-model", "input": "x"}));
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["error"]["type"], "not_found_error", "{v}");
    assert_eq!(v["error"]["code"], "model_not_found", "{v}");
}

/// A final assistant message is a prefill (Anthropic's Messages API): the prompt ends
/// with its text, not with a closed turn and a new one, so the answer continues it;
/// `count_tokens` counts the same prompt.
#[test]
fn anthropic_prefills_are_continued() {
    let e = env();
    let s = start(&e, &[]);
    let user = json!({"role": "user", "content": "Count from 1 to 10."});
    let prefill = json!({"role": "assistant", "content": "1, 2, 3,"});
    let count = |messages: Value| {
        let (st, v) =
            post(&s, "/v1/messages/count_tokens", &json!({"model": e.model, "messages": messages}));
        assert_eq!(st, 200, "{v}");
        v["input_tokens"].as_u64().unwrap()
    };
    // The toy tokenizer takes a byte a token: the open turn plus the prefill's 8 bytes.
    let open = count(json!([user]));
    assert_eq!(count(json!([user, prefill])), open + 8);
    let (st, v) = post(
        &s,
        "/v1/messages",
        &json!({"model": e.model, "max_tokens": 4,
        "messages": [user, prefill]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["input_tokens"].as_u64(), Some(open + 8), "{v}");
}

/// A final assistant message is continued (a prefill) on Ollama's and OpenAI's chat
/// endpoints, as on Anthropic's: the prompt ends with its text, no new turn opened (the
/// toy engine's tokens are bytes, so the prompt is the user-only prompt plus the text).
#[test]
fn a_final_assistant_message_is_continued_on_every_chat_api() {
    let e = env();
    let user = json!({"role": "user", "content": "Count to five."});
    let prefill = json!({"role": "assistant", "content": "1, 2, 3,"});
    // A server per request: no prompt cache to take from the count.
    let count = |path: &str, messages: Value| -> u64 {
        let s = start(&e, &[]);
        let body = json!({"model": e.model, "messages": messages, "stream": false,
                          "max_tokens": 2, "options": {"num_predict": 2}});
        let (st, v) = post(&s, path, &body);
        assert_eq!(st, 200, "{path}: {v}");
        v["prompt_eval_count"].as_u64().or(v["usage"]["prompt_tokens"].as_u64()).unwrap()
    };
    for path in ["/api/chat", "/v1/chat/completions"] {
        let alone = count(path, json!([user]));
        let continued = count(path, json!([user, prefill]));
        assert_eq!(continued, alone + "1, 2, 3,".len() as u64, "{path}");
    }
}
