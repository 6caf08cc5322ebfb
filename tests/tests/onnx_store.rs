//! ONNX models in the store: `corral create NAME -f Modelfile` with `FROM` a directory
//! stores each file as a layer of its own (`application/vnd.corral.onnx.file`, its path in
//! the `org.opencontainers.image.title` annotation); `corral run NAME` routes it to the
//! ONNX backend and gives llama.cpp's greedy text on the same weights.

use corral_e2e::*;

#[test]
fn onnx_directory_is_stored_as_layers_and_runs() {
    let Some(python) = onnx_python() else {
        eprintln!("SKIP: no Python with onnx, onnxruntime, numpy, tokenizers and gguf");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(llama) = llama_cpp_plugin_dir(&dir.path().join("p1")) else { return };
    let lib = onnxruntime_library(&python);
    let Some(onnx) = onnx_plugin_dir(&dir.path().join("p2"), lib.as_deref()) else { return };
    let gguf = dir.path().join("tiny.gguf");
    generate_model(&gguf, "tiny", "f32");
    let model_dir = dir.path().join("onnx-model");
    gen_onnx(&python, "gen_llama.py", &[gguf.as_os_str(), model_dir.as_os_str()]);
    let store = dir.path().join("store");
    let modelfile = dir.path().join("Modelfile");
    std::fs::write(&modelfile, format!("FROM {}\nPARAMETER temperature 0\n", model_dir.display()))
        .unwrap();

    let cmd = |plugins: &[&std::path::Path]| {
        let mut c = corral(plugins);
        c.env("CORRAL_MODELS", &store);
        c
    };
    let mut c = cmd(&[]);
    c.args(["create", "tiny-onnx", "-f"]).arg(&modelfile);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    let manifest = std::fs::read_to_string(
        store.join("manifests/registry.ollama.ai/library/tiny-onnx/latest"),
    )
    .unwrap();
    assert!(manifest.contains("application/vnd.corral.onnx.file"), "{manifest}");
    assert!(manifest.contains("\"org.opencontainers.image.title\":\"model.onnx\""), "{manifest}");

    let args = ["--raw", "--temperature", "0", "--repeat-penalty", "1", "--num-predict", "16"];
    let mut c = cmd(&[&onnx, &llama]);
    c.arg("run").args(args).arg("tiny-onnx").arg("Hello there");
    let (out, from_store, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    let mut c = cmd(&[&onnx, &llama]);
    c.arg("run").args(args).arg(&gguf).arg("Hello there");
    let (out, from_gguf, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(from_store, from_gguf, "ONNX from the store vs llama.cpp on the same weights");

    // A directory without a model is refused at create time, naming the problem.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "no model here").unwrap();
    std::fs::write(&modelfile, format!("FROM {}\n", empty.display())).unwrap();
    let mut c = cmd(&[]);
    c.args(["create", "broken", "-f"]).arg(&modelfile);
    let (out, _, stderr) = run(c);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("without a .onnx model"), "{stderr}");
}
