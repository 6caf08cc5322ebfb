"""The official clients against a server that requires an API key: they work with the
key (ollama-python with an Authorization header, the OpenAI SDK with `api_key`, an
Anthropic-style `x-api-key` request) and get 401 without it."""

import pathlib
import shutil
import subprocess
import tempfile

import httpx
import ollama
import openai
import pytest

from conftest import Server, _find_bin, _plugin_dir

KEY = "corral-test-key-7f3a"


@pytest.fixture(scope="module")
def keyed():
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="corral-py-keys-"))
    bin_path = _find_bin()
    plugins = _plugin_dir(bin_path, tmp)
    model = tmp / "tiny.gguf"
    subprocess.run([str(bin_path), "model", "generate", str(model), "--shape", "tiny", "--type", "f32"],
                   check=True, capture_output=True)
    server = Server(bin_path, plugins, tmp / "models", env_extra={"CORRAL_API_KEYS": KEY})
    client = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"})
    digest = client.create_blob(model)
    for _ in client.create(model="tiny", files={"tiny.gguf": digest}, stream=True):
        pass
    yield server
    server.stop()
    assert KEY not in "".join(server.log), "the key reached the server's log"
    shutil.rmtree(tmp, ignore_errors=True)


def test_ollama_client_with_and_without_the_key(keyed):
    ok = ollama.Client(host=keyed.url, headers={"Authorization": f"Bearer {KEY}"})
    r = ok.generate(model="tiny", prompt="hi", options={"num_predict": 3, "temperature": 0})
    assert r.done
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=keyed.url).generate(model="tiny", prompt="hi")
    assert e.value.status_code == 401


def test_openai_client_with_and_without_the_key(keyed):
    ok = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY)
    r = ok.chat.completions.create(model="tiny", max_tokens=3,
                                   messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message is not None
    bad = openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny", max_tokens=3,
                                    messages=[{"role": "user", "content": "hi"}])


def test_x_api_key_header_as_anthropic_clients_send_it(keyed):
    r = httpx.get(keyed.url + "/api/tags", headers={"x-api-key": KEY})
    assert r.status_code == 200
    r = httpx.get(keyed.url + "/api/tags")
    assert r.status_code == 401
    assert "API key" in r.json()["error"]
    assert httpx.get(keyed.url + "/api/version").status_code == 200
