#!/usr/bin/env python3
"""Writes the text seed corpora under fuzz/seeds/ from real inputs in the repository.

- gotemplate: the Ollama Go templates of generation/src/gotemplate.rs's tests, plus a
  few that reach every action and function the translator knows (and refuses).
- chat_template: the Hugging Face Jinja templates of generation/src/template/tests.rs,
  ChatML from generation/src/template.rs, well-known model templates, and llama.cpp's
  models/templates/*.jinja when the llama-cpp-sys-2 crate source in ~/.cargo has them.
- modelfile: the Modelfile of registry/src/modelfile.rs's tests and a few variants.
- json_schema, names_digests, oci_manifest: the schemas, names, digests and manifests of
  the crates' tests (see each list below).

GGUF seeds come from `cargo run --manifest-path fuzz/Cargo.toml --bin gen_seeds`.
Run from anywhere: python3 fuzz/make_seeds.py
"""

import glob
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEEDS = os.path.join(HERE, "seeds")
MAX_SEED = 64 * 1024


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_SEED:
        return
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def unescape(s):
    """A Rust "..." string literal body to its value."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        n = s[i + 1]
        i += 2
        if n == "\n":  # line continuation: skip leading white space
            while i < len(s) and s[i] in " \t\n":
                i += 1
        elif n == "u":
            j = s.index("}", i)
            out.append(chr(int(s[i + 1 : j], 16)))
            i = j + 1
        else:
            out.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}[n])
    return "".join(out)


def rust_consts(path):
    """Every `const NAME: &str = ...;` of a Rust file, as (NAME, value)."""
    src = open(path, encoding="utf-8").read()
    found = []
    for m in re.finditer(r'const ([A-Z0-9_]+): &str =\s*r(#+)"(.*?)"\2;', src, re.S):
        found.append((m.group(1), m.group(3)))
    for m in re.finditer(r'const ([A-Z0-9_]+): &str =\s*"((?:[^"\\]|\\.)*)"', src, re.S):
        found.append((m.group(1), unescape(m.group(2))))
    return found


def concat_const(path, name):
    """A `const NAME: &str = "..." "..."` built from several literals (with `\\` joins)."""
    src = open(path, encoding="utf-8").read()
    m = re.search(r"const " + name + r': &str = "((?:[^"\\]|\\.)*)";', src, re.S)
    return unescape(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------
# gotemplate

for name, value in rust_consts(os.path.join(ROOT, "generation/src/gotemplate.rs")):
    if name in ("PRINT_JSON", "COLLATE"):  # pieces of the translator, not templates
        continue
    write("gotemplate", name.lower() + ".tmpl", value)

write(
    "gotemplate",
    "every_action.tmpl",
    """{{- /* every action the translator knows */ -}}
{{- $n := 0 }}{{ $last := -1 }}{{ $x := "s" }}
{{- range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $last = $i }}{{ end }}{{ end -}}
{{ with index .Messages 0 }}{{ .Content | printf "%q" }}{{ else }}none{{ end }}
{{ with .Tools }}t{{ else with .System }}{{ . }}{{ else }}n{{ end }}
{{ json (slice .Messages 1) }} {{ print "a" 1 }} {{ println $x }} {{ html "<a>" }} {{ urlquery "a b" }}
{{ range .Messages }}{{ if eq .Role "assistant" }}{{ break }}{{ end }}{{ if not .Content }}{{ continue }}{{ end }}{{ .Content }}{{ end }}
{{ range $k, $v := (index .Tools 0).Function.Parameters.Properties }}{{ $k }}={{ $v.type }}{{ end }}
{{ if and .System (or .Tools (not .Prompt)) }}{{ len .Messages }}{{ else if ne .Prompt "" }}p{{ end }}
{{ if lt 1 2 }}{{ if le 1 1 }}{{ if gt 2 1 }}{{ if ge 2 2 }}ok{{ end }}{{ end }}{{ end }}{{ end }}
{{ range .ToolCalls }}{{ .Function.Name }}{{ .Function.Arguments }}{{ else }}no calls{{ end }}
{{ currentDate }} {{ $.System }} {{ .Think }} {{ .IsThinkSet }} {{ .Thinking }} {{ .Response }}""",
)
write("gotemplate", "legacy_prompt.tmpl", "{{ .System }}\n\nUSER: {{ .Prompt }}\nASSISTANT: ")
write("gotemplate", "refused_define.tmpl", '{{ define "x" }}x{{ end }}{{ template "x" . }}')
write("gotemplate", "jinja_passthrough.tmpl", "{% for m in messages %}{{ m.content }}{% endfor %}")
write("gotemplate", "plain_text.tmpl", "no actions at all")

# ---------------------------------------------------------------------------------------
# chat_template

for name, value in rust_consts(os.path.join(ROOT, "generation/src/template/tests.rs")):
    write("chat_template", name.lower() + ".jinja", value)
chatml = concat_const(os.path.join(ROOT, "generation/src/template.rs"), "CHATML_TEMPLATE")
if chatml:
    write("chat_template", "chatml.jinja", chatml)

# Well-known templates as their models publish them.
write(
    "chat_template",
    "llama2.jinja",
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}",
)
write(
    "chat_template",
    "zephyr.jinja",
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
)
write(
    "chat_template",
    "phi3.jinja",
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}",
)
write(
    "chat_template",
    "features.jinja",
    """{%- macro render(m, depth=0) -%}{{ m.role | upper }}: {{ m.content | trim }}{%- endmacro -%}
{%- set ns = namespace(n=0, last='') -%}
{%- for m in messages if m.role != 'tool' -%}
  {%- if loop.first %}{{ bos_token }}{% endif -%}
  {%- if m.content is string and m.content.startswith('Thanks') %}{% continue %}{% endif -%}
  {%- set ns.n = ns.n + 1 %}{% set ns.last = m.role -%}
  {{ render(m) }}{{ '\\n' }}
  {%- if m.tool_calls is defined and m.tool_calls %}{% for c in m.tool_calls %}{{ c.function | tojson(indent=2, sort_keys=true) }}{% endfor %}{% endif -%}
  {%- if loop.index > 8 %}{% break %}{% endif -%}
{%- endfor -%}
{%- if tools %}{{ tools | tojson(separators=[',', ':']) }}{% for k, v in tools[0].function.parameters.properties.items() %}{{ k }}{% endfor %}{% endif -%}
{{ ns.n }} {{ ns.last }} {{ messages[-1].content[:5] }} {{ messages | length }} {{ strftime_now('%Y-%m-%d %A %-d %b') }}
{{ 'a,b'.split(',') | join('|') }} {{ none }} {{ true }} {{ enable_thinking is defined }} {{ messages[0].get('role') }}
{%- if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}""",
)
for path in sorted(
    glob.glob(
        os.path.expanduser(
            "~/.cargo/registry/src/*/llama-cpp-sys-2-*/llama.cpp/models/templates/*.jinja"
        )
    )
):
    data = open(path, "rb").read()
    write("chat_template", "llama.cpp-" + os.path.basename(path), data)

# ---------------------------------------------------------------------------------------
# modelfile

for name, value in rust_consts(os.path.join(ROOT, "registry/src/modelfile.rs")):
    write("modelfile", name.lower() + ".modelfile", value)
write(
    "modelfile",
    "every_parameter.modelfile",
    "FROM llama3:latest\n"
    + "".join(
        f"PARAMETER {k} {v}\n"
        for k, v in [
            ("num_keep", 4), ("seed", 42), ("num_predict", -1), ("top_k", 40),
            ("repeat_last_n", 64), ("mirostat", 0), ("num_ctx", 4096), ("num_batch", 512),
            ("num_gpu", 99), ("main_gpu", 0), ("num_thread", 8), ("temperature", 0.7),
            ("top_p", 0.9), ("min_p", 0.05), ("typical_p", 1.0), ("repeat_penalty", 1.1),
            ("presence_penalty", 0), ("frequency_penalty", 0), ("mirostat_tau", 5.0),
            ("mirostat_eta", 0.1), ("tfs_z", 1), ("penalize_newline", "true"),
            ("numa", "false"), ("use_mmap", "true"), ("use_mlock", "false"),
            ("low_vram", "false"), ("f16_kv", "true"), ("vocab_only", "false"),
            ("logits_all", "false"), ("stop", '"<|eot_id|>"'), ("stop", "User:"),
        ]
    ),
)
write(
    "modelfile",
    "quoting.modelfile",
    '# comment\r\nfrom ./model.gguf\r\nSYSTEM "a \\"quoted\\" \\\\ value\\n\\t"\r\n'
    'TEMPLATE """{{ .System }}\nUSER: {{ .Prompt }}\nASSISTANT: """\n'
    'MESSAGE user """multi\nline"""\nMESSAGE assistant Hello there\n'
    "MESSAGE system   tabs\tand spaces   \nADAPTER ./lora.gguf\nLICENSE \"\"\"MIT\"\"\"\n",
)
write("modelfile", "onnx_dir.modelfile", "FROM ./phi3-onnx/\nPARAMETER temperature 0\n")

# ---------------------------------------------------------------------------------------
# json_schema: a format, a newline, a document (the target's input format)

E3 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
schemas = {
    "object": (
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 5},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "bc", 12]}},
                "ok": {"type": ["boolean", "null"]},
            },
            "required": ["name", "age"],
        },
        '{"name":"bob","age":-12,"tags":["a",12],"ok":null}',
    ),
    "sampled": (
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "age": {"type": "integer", "minimum": 0},
                "score": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
                "kind": {"enum": ["cat", "dog", 3, None]},
                "nested": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
            },
            "required": ["name", "age", "kind", "nested"],
        },
        '{"name":"x\\"y","age":3,"score":-1.5e3,"kind":"dog","nested":{"ok":true}}',
    ),
    "anyof_array": (
        {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]}, "minItems": 1, "maxItems": 4},
        '[1,"ab",-3]',
    ),
    "refs": (
        {
            "$defs": {"p": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"type": ["string", "null"], "maxLength": 6}},
            "required": ["a", "b"],
        },
        '{"a":{"x":0.25},"b":null}',
    ),
    "recursive_ref": (
        {
            "definitions": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#/definitions/node"}, {"type": "null"}]}}}},
            "$ref": "#/definitions/node",
        },
        '{"v":1,"next":{"v":2,"next":null}}',
    ),
    "one_of_all_of": (
        {"oneOf": [{"const": "a"}, {"allOf": [{"type": "number", "minimum": 0}]}], "nullable": True, "title": "t", "description": "d"},
        "12.5",
    ),
    "free_object": ({"type": "object", "additionalProperties": {"type": "boolean"}}, '{"k":true,"j":false}'),
    "string_bounds": ({"type": "string", "minLength": 2, "maxLength": 3, "format": "date"}, '"\\u00e9ab"'),
    "integer": ({"type": "integer"}, "-12"),
    "json": ("json", '{"a":[1,2.5e3,{"b":null}],"c":true}'),
    "empty_format": ("", ""),
    "bad_pattern": ({"type": "string", "pattern": "a+"}, '"aa"'),
}
for name, (schema, doc) in schemas.items():
    write("json_schema", name + ".json", json.dumps(schema, separators=(",", ":")) + "\n" + doc)

# ---------------------------------------------------------------------------------------
# names_digests

names = {
    "short": "llama3",
    "tag": "llama3.2:1b",
    "namespace": "jmorgan/tiny:q4_0",
    "host_port": "localhost:5000/ns/m:1.0",
    "pinned": f"llama3.2:1b@sha256:{E3}",
    "full_pinned": f"registry.ollama.ai/library/llama3:latest@sha256:{E3}",
    "digest": f"sha256:{E3}",
    "blob_file": f"sha256-{E3}",
    "parts": "localhost:5000\nns\nmodel\nq4_K_M",
    "traversal": "../../etc/passwd:..",
    "long": "h" * 80 + ":" + "t" * 80,
}
for name, value in names.items():
    write("names_digests", name + ".txt", value)

# ---------------------------------------------------------------------------------------
# oci_manifest

D = f"sha256:{E3}"
layer = lambda mt, **kw: dict({"mediaType": mt, "digest": D, "size": 0}, **kw)
manifests = {
    "ollama": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": layer("application/vnd.docker.container.image.v1+json"),
        "layers": [
            layer("application/vnd.ollama.image.model", size=4_000_000_000, **{"from": "/x"}),
            layer("application/vnd.ollama.image.template", size=100),
            layer("application/vnd.ollama.image.system", size=10),
            layer("application/vnd.ollama.image.params", size=30),
            layer("application/vnd.ollama.image.license", size=1000),
        ],
    },
    "oci_onnx": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": layer("application/vnd.docker.container.image.v1+json"),
        "layers": [
            layer("application/vnd.corral.onnx.file", size=5, annotations={"org.opencontainers.image.title": "model.onnx"}),
            layer("application/vnd.corral.onnx.file", size=5, annotations={"org.opencontainers.image.title": "tok/tokenizer.json"}),
            layer("application/vnd.corral.link", size=99),
        ],
    },
    "no_media_type": {"schemaVersion": 2, "config": layer("x"), "layers": []},
    "config_blob": {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "8B",
        "file_type": "Q4_0",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [D]},
    },
    "layer": layer("application/vnd.ollama.image.adapter", size=1, annotations={}),
}
for name, value in manifests.items():
    write("oci_manifest", name + ".json", json.dumps(value, separators=(",", ":")))
