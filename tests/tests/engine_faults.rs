//! Engine answers that are wrong rather than crashes: logits an engine computed as NaN
//! (broken weights, a bad quantization, an f16 overflow) end the request with a 500 that
//! says so, on every API, instead of a 200 of token 0 repeated. The faults come from the
//! example plugin's test triggers (lines of its toy model file).

use corral_e2e::*;
use serde_json::json;

/// A temporary directory with the example plugin under `plugins/` and toy models beside.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        example_plugin_dir(&dir.path().join("plugins"));
        Env { dir }
    }

    fn plugins(&self) -> std::path::PathBuf {
        self.dir.path().join("plugins")
    }

    /// A toy model file whose lines are the example plugin's triggers; its path.
    fn model(&self, name: &str, triggers: &str) -> String {
        let p = self.dir.path().join(format!("{name}.toy"));
        std::fs::write(&p, format!("toy weights {name}\n{triggers}\n")).unwrap();
        p.to_string_lossy().into_owned()
    }
}

#[test]
fn nan_logits_end_the_request_with_a_clear_500() {
    let e = Env::new();
    let (plugins, model) = (e.plugins(), |name: &str, triggers: &str| e.model(name, triggers));
    // The prompt's own decode computes NaN.
    let first = model("nan-first", "on_decode=1:nan");
    let s = Server::start(&[plugins.as_path()], &[], &[]);
    let body = |m: &str| {
        json!({"model": m, "prompt": "hello", "raw": true, "stream": false,
               "options": {"num_predict": 8, "temperature": 0}})
    };
    let (st, v) = post_json(&s.url, "/api/generate", &body(&first));
    assert_eq!(st, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains("NaN logits"), "{v}");
    let (st, v) = post_json(
        &s.url,
        "/v1/chat/completions",
        &json!({"model": model("nan-chat", "on_decode=1:nan"),
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    );
    assert_eq!(st, 500, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("NaN logits"), "{v}");
    // Mid-stream: the chunks already sent, then an error object.
    let later = model("nan-later", "on_decode=4:nan");
    let r = http_client()
        .post(format!("{}/api/generate", s.url))
        .json(&json!({"model": later, "prompt": "hello", "raw": true,
                      "options": {"num_predict": 20, "temperature": 0}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(last["error"].as_str().unwrap_or_default().contains("NaN logits"), "{text}");
    // The server and the models go on: the poisoned step was one decode call.
    let (st, v) = post_json(&s.url, "/api/generate", &body(&first));
    assert_eq!(st, 200, "{v}");
}

/// A model whose load hangs (until the engine timeout kills its worker) holds up no other
/// model's load: the second model answers at once, the hung one with its timeout error.
#[test]
fn a_load_that_hangs_holds_up_no_other_models_load() {
    let e = Env::new();
    let (plugins, model) = (e.plugins(), |name: &str, triggers: &str| e.model(name, triggers));
    let (hung, fine) = (model("hung", "on_load=hang"), model("fine", ""));
    let s = Server::start(&[plugins.as_path()], &[("CORRAL_ENGINE_TIMEOUT", "6s")], &[]);
    let body = |m: &str| {
        json!({"model": m, "prompt": "hello", "raw": true, "stream": false,
               "options": {"num_predict": 2, "temperature": 0}})
    };
    let url = s.url.clone();
    let hung_body = body(&hung);
    let waiting = std::thread::spawn(move || post_json(&url, "/api/generate", &hung_body));
    std::thread::sleep(std::time::Duration::from_millis(800));
    let t = std::time::Instant::now();
    let (st, v) = post_json(&s.url, "/api/generate", &body(&fine));
    let took = t.elapsed();
    assert_eq!(st, 200, "{v}");
    assert!(took.as_secs_f64() < 4.0, "the other model waited {took:?} for the hung load");
    let (st, v) = waiting.join().unwrap();
    assert_eq!(st, 500, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("hung"), "{v}");
    drop(s);

    // With room for one model, the other waits for the load in flight to end (it cannot
    // be evicted), without a 503 before it does, and then loads.
    let s = Server::start(
        &[plugins.as_path()],
        &[("CORRAL_ENGINE_TIMEOUT", "4s"), ("CORRAL_MAX_LOADED_MODELS", "1")],
        &[],
    );
    let url = s.url.clone();
    let hung_body = body(&hung);
    let waiting = std::thread::spawn(move || post_json(&url, "/api/generate", &hung_body));
    std::thread::sleep(std::time::Duration::from_millis(800));
    let (st, v) = post_json(&s.url, "/api/generate", &body(&fine));
    assert_eq!(st, 200, "{v}");
    assert_eq!(waiting.join().unwrap().0, 500);
}

/// A plugin whose init hangs costs `corral serve` the init timeout (here the engine
/// timeout, below the 60 s cap) once: the first request for a model of its format fails
/// with it, the next at once, naming the first failure, instead of waiting for it again.
#[test]
fn a_plugin_whose_init_hangs_is_waited_for_once() {
    let e = Env::new();
    let (dir, plugins) = (e.dir.path(), e.plugins());
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, "[backends.example]\nhang_init = true\n").unwrap();
    let model = dir.join("a.toy");
    std::fs::write(&model, "toy weights a\n").unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let t = std::time::Instant::now();
    let s = Server::start(
        &[plugins.as_path()],
        &[("CORRAL_ENGINE_TIMEOUT", "3s"), ("CORRAL_CONFIG", &cfg)],
        &["--backend", "example"],
    );
    let started = t.elapsed();
    assert!(started.as_secs_f64() < 20.0, "serve took {started:?} to start");
    let generate = || {
        let t = std::time::Instant::now();
        let (st, v) = post_json(
            &s.url,
            "/api/generate",
            &json!({"model": model.to_string_lossy(), "prompt": "hi", "stream": false}),
        );
        assert_ne!(st, 200, "{v}");
        (v["error"].as_str().unwrap_or_default().to_string(), t.elapsed())
    };
    let (first, _) = generate();
    assert!(first.contains("hung"), "{first}");
    let (again, took) = generate();
    assert!(again.contains("tried again a minute after") && again.contains("hung"), "{again}");
    assert!(took.as_secs_f64() < 2.0, "the request waited {took:?} for the hung init again");
}

/// A model that reports an absurd vocabulary (every logits row and the token table are
/// that wide) is refused at once, naming the number, not allocated until the load looks
/// hung or the worker runs out of memory.
#[test]
fn an_absurd_vocabulary_is_refused_at_load() {
    let e = Env::new();
    let (dir, plugins) = (e.dir.path(), e.plugins());
    let s = Server::start(&[plugins.as_path()], &[], &[]);
    for n in [268_435_456u64, 4_294_967_295] {
        let p = dir.join(format!("v{n}.toy"));
        std::fs::write(&p, format!("toy weights\nvocab={n}\n")).unwrap();
        let t = std::time::Instant::now();
        let (st, v) = post_json(
            &s.url,
            "/api/generate",
            &json!({"model": p.to_string_lossy(), "prompt": "hi", "stream": false}),
        );
        assert_eq!(st, 500, "{v}");
        assert!(v["error"].as_str().unwrap().contains("beyond any real model"), "{v}");
        assert!(t.elapsed().as_secs() < 10, "{n}: {:?}", t.elapsed());
    }
}
