// The official `ollama` and `openai` npm clients against a real `corral serve` (the
// llama.cpp plugin, a generated tiny GGUF with random weights): what a Node application
// does with them, streaming and not, structured output, tool calls, embeddings, errors,
// and a stream the client aborts.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { Ollama } from "ollama";
import OpenAI from "openai";

import { startServer } from "./harness.js";

let server;
let ollama;
let openai;

before(async () => {
  server = await startServer();
  ollama = new Ollama({ host: server.url });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});

after(async () => {
  await server?.stop();
});

const OPTS = { num_predict: 12, temperature: 0, seed: 1 };
const WEATHER_TOOL = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};
// A random-weight model never decides to call a tool; structured output makes it.
const CALL_SCHEMA = {
  type: "object",
  properties: {
    name: { const: "get_weather" },
    arguments: { type: "object", properties: { city: { enum: ["Paris", "Oslo"] } }, required: ["city"] },
  },
  required: ["name", "arguments"],
};

async function collect(stream) {
  const parts = [];
  for await (const part of stream) parts.push(part);
  return parts;
}

describe("ollama", () => {
  test("list, show and ps", async () => {
    const { models } = await ollama.list();
    assert.ok(models.some((m) => m.name === "tiny:latest"), JSON.stringify(models));
    const shown = await ollama.show({ model: "tiny" });
    assert.equal(shown.model_info["general.architecture"], "llama");
    assert.ok(shown.capabilities.includes("completion"));
    await ollama.generate({ model: "tiny", prompt: "hi", options: { num_predict: 1 } });
    const ps = await ollama.ps();
    assert.ok(ps.models.some((m) => m.name === "tiny:latest" && m.context_length > 0), JSON.stringify(ps));
  });

  test("generate, streamed and not, gives the same text", async () => {
    const r = await ollama.generate({ model: "tiny", prompt: "Why is the sky blue?", options: OPTS });
    assert.equal(r.done, true);
    assert.equal(r.eval_count, 12);
    assert.equal(r.done_reason, "length");
    const parts = await collect(
      await ollama.generate({ model: "tiny", prompt: "Why is the sky blue?", options: OPTS, stream: true }),
    );
    assert.equal(parts.map((p) => p.response).join(""), r.response);
    assert.equal(parts.at(-1).done, true);
  });

  test("chat streams and keeps to a JSON schema", async () => {
    const messages = [{ role: "user", content: "Hello" }];
    const r = await ollama.chat({ model: "tiny", messages, options: OPTS });
    assert.equal(r.message.role, "assistant");
    const parts = await collect(await ollama.chat({ model: "tiny", messages, options: OPTS, stream: true }));
    assert.equal(parts.map((p) => p.message.content).join(""), r.message.content);
    const schema = {
      type: "object",
      properties: { sky: { enum: ["blue", "grey"] }, clouds: { type: "integer" } },
      required: ["sky", "clouds"],
    };
    const s = await ollama.chat({ model: "tiny", messages, format: schema, options: { num_predict: 200, seed: 3 } });
    const v = JSON.parse(s.message.content);
    assert.ok(["blue", "grey"].includes(v.sky), s.message.content);
    assert.ok(Number.isInteger(v.clouds), s.message.content);
  });

  test("tool calls come back as tool_calls", async () => {
    const r = await ollama.chat({
      model: "tiny",
      messages: [{ role: "user", content: "Weather in Paris?" }],
      tools: [WEATHER_TOOL],
      format: CALL_SCHEMA,
      options: { seed: 4, num_predict: 200 },
    });
    const calls = r.message.tool_calls;
    assert.ok(calls?.length, JSON.stringify(r.message));
    assert.equal(calls[0].function.name, "get_weather");
    assert.ok(["Paris", "Oslo"].includes(calls[0].function.arguments.city));
  });

  test("embed", async () => {
    const r = await ollama.embed({ model: "tiny", input: ["one text", "another text"] });
    assert.equal(r.embeddings.length, 2);
    assert.ok(r.embeddings[0].length > 0);
    assert.notDeepEqual(r.embeddings[0], r.embeddings[1]);
    const norm = Math.hypot(...r.embeddings[0]);
    assert.ok(Math.abs(norm - 1) < 1e-3, `normalised: ${norm}`);
  });

  test("errors carry the status and the server's message", async () => {
    await assert.rejects(ollama.generate({ model: "does-not-exist", prompt: "x" }), (e) => {
      assert.equal(e.status_code, 404);
      assert.match(e.message, /does-not-exist/);
      return true;
    });
    await assert.rejects(
      ollama.chat({ model: "tiny", messages: [{ role: "user", content: "x" }], tools: [{ type: "function", function: {} }] }),
      (e) => e.status_code === 400 && /tools\[0\]\.function\.name/.test(e.message),
    );
  });

  test("an aborted stream frees its slot and the server goes on", async () => {
    const client = new Ollama({ host: server.url });
    const stream = await client.generate({
      model: "tiny",
      prompt: "Tell a long story.",
      stream: true,
      options: { num_predict: -1, temperature: 0 },
    });
    let seen = 0;
    await assert.rejects(
      (async () => {
        for await (const _ of stream) {
          seen += 1;
          if (seen === 3) client.abort();
        }
      })(),
      (e) => e.name === "AbortError",
    );
    // Parts already received may still come out before the abort takes effect.
    assert.ok(seen >= 3, `${seen} parts`);
    const deadline = Date.now() + 10_000;
    let active;
    do {
      const ps = await ollama.ps();
      active = ps.models.find((m) => m.name === "tiny:latest")?.active_sequences;
      if (active === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    } while (Date.now() < deadline);
    assert.equal(active, 0, "the aborted request's sequence is freed");
    const r = await ollama.generate({ model: "tiny", prompt: "x", options: { num_predict: 2 } });
    assert.equal(r.eval_count, 2);
    assert.ok(server.alive());
  });
});

describe("openai", () => {
  test("models.list", async () => {
    const ids = [];
    for await (const m of openai.models.list()) ids.push(m.id);
    assert.ok(ids.includes("tiny:latest") || ids.includes("tiny"), JSON.stringify(ids));
  });

  test("chat completions, streamed and not, with usage", async () => {
    const messages = [{ role: "user", content: "Hi" }];
    const r = await openai.chat.completions.create({ model: "tiny", messages, max_tokens: 10, temperature: 0, seed: 2 });
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(r.choices[0].finish_reason, "length");
    assert.equal(r.usage.completion_tokens, 10);
    const stream = await openai.chat.completions.create({
      model: "tiny",
      messages,
      max_tokens: 10,
      temperature: 0,
      seed: 2,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = await collect(stream);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
    assert.equal(text, r.choices[0].message.content);
    assert.equal(chunks.at(-1).usage.completion_tokens, 10);
  });

  test("legacy completions", async () => {
    const r = await openai.completions.create({ model: "tiny", prompt: "Once", max_tokens: 5, temperature: 0 });
    assert.equal(r.usage.completion_tokens, 5);
    assert.equal(typeof r.choices[0].text, "string");
  });

  test("response_format json_schema", async () => {
    const schema = { type: "object", properties: { ok: { type: "boolean" } }, required: ["ok"] };
    const r = await openai.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "ok?" }],
      max_tokens: 50,
      response_format: { type: "json_schema", json_schema: { name: "r", schema } },
    });
    assert.equal(typeof JSON.parse(r.choices[0].message.content).ok, "boolean");
  });

  test("tool_choice forces a call; a tool that is not offered is a 400", async () => {
    const messages = [{ role: "user", content: "Weather in Oslo?" }];
    for (const tool_choice of ["required", { type: "function", function: { name: "get_weather" } }]) {
      const r = await openai.chat.completions.create({
        model: "tiny",
        messages,
        tools: [WEATHER_TOOL],
        tool_choice,
        max_tokens: 200,
        seed: 4,
      });
      assert.equal(r.choices[0].finish_reason, "tool_calls");
      const call = r.choices[0].message.tool_calls[0];
      assert.equal(call.function.name, "get_weather");
      assert.equal(typeof JSON.parse(call.function.arguments).city, "string");
    }
    await assert.rejects(
      openai.chat.completions.create({
        model: "tiny",
        messages,
        tools: [WEATHER_TOOL],
        tool_choice: { type: "function", function: { name: "nope" } },
        max_tokens: 5,
      }),
      (e) => e instanceof OpenAI.BadRequestError && /nope/.test(e.message),
    );
  });

  test("embeddings", async () => {
    const r = await openai.embeddings.create({ model: "tiny", input: ["a", "b", "c"] });
    assert.equal(r.data.length, 3);
    assert.deepEqual(r.data.map((d) => d.index), [0, 1, 2]);
    assert.ok(r.data[0].embedding.length > 0);
  });

  test("responses", async () => {
    const r = await openai.responses.create({ model: "tiny", input: "Hello there", max_output_tokens: 6 });
    assert.equal(typeof r.output_text, "string");
    const r2 = await openai.responses.create({
      model: "tiny",
      input: "And then?",
      previous_response_id: r.id,
      max_output_tokens: 4,
    });
    assert.equal(r2.previous_response_id, r.id);
  });

  test("errors map to the client's classes", async () => {
    await assert.rejects(
      openai.chat.completions.create({ model: "does-not-exist", messages: [{ role: "user", content: "x" }] }),
      (e) => e instanceof OpenAI.NotFoundError,
    );
    await assert.rejects(
      openai.chat.completions.create({ model: "tiny", messages: [] }),
      (e) => e instanceof OpenAI.BadRequestError,
    );
  });
});
