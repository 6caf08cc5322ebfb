//! A store laid out by hand exactly as Ollama lays it out lists and opens read-only.

use std::path::Path;

use corral_registry::{Digest, ModelName, Store, StoreOptions, modelfile};

fn blob(root: &Path, bytes: &[u8]) -> (String, usize) {
    let d = Digest::of_bytes(bytes);
    std::fs::write(root.join("blobs").join(format!("sha256-{}", d.hex())), bytes).unwrap();
    (d.to_string(), bytes.len())
}

#[test]
fn ollama_store_lists_and_opens_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("models");
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    let mdir = root.join("manifests/registry.ollama.ai/library/tinyllama");
    std::fs::create_dir_all(&mdir).unwrap();
    let (model, msize) = blob(&root, b"GGUF\x03\0\0\0weights");
    let (tmpl, tsize) = blob(&root, b"<|user|>\n{{ .Prompt }}</s>\n<|assistant|>\n");
    let (sys, ssize) = blob(&root, b"You are a helpful assistant.");
    let (params, psize) = blob(&root, br#"{"stop":["<|system|>","<|user|>"],"temperature":0.2}"#);
    let (lic, lsize) = blob(&root, b"Apache 2.0");
    let (cfg, csize) = blob(
        &root,
        br#"{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"1B","file_type":"Q4_0","architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{cfg}","size":{csize}}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{model}","size":{msize}}},{{"mediaType":"application/vnd.ollama.image.template","digest":"{tmpl}","size":{tsize}}},{{"mediaType":"application/vnd.ollama.image.system","digest":"{sys}","size":{ssize}}},{{"mediaType":"application/vnd.ollama.image.params","digest":"{params}","size":{psize}}},{{"mediaType":"application/vnd.ollama.image.license","digest":"{lic}","size":{lsize}}}]}}"#
    );
    std::fs::write(mdir.join("latest"), &manifest).unwrap();
    // Another namespace, and a stray file that is not a valid name.
    let udir = root.join("manifests/registry.ollama.ai/someone/custom");
    std::fs::create_dir_all(&udir).unwrap();
    std::fs::write(udir.join("q4"), &manifest).unwrap();
    std::fs::write(udir.join(".bad name"), &manifest).unwrap();

    let before = snapshot(&root);
    let store = Store::open(&root, StoreOptions { read_only: true }).unwrap();
    let list = store.list().unwrap();
    let names: Vec<String> = list.iter().map(|m| m.name.to_string()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"tinyllama:latest".to_string()));
    assert!(names.contains(&"someone/custom:q4".to_string()));
    assert_eq!(list[0].digest, Digest::of_bytes(manifest.as_bytes()));

    let r = store.get(&ModelName::parse("tinyllama").unwrap()).unwrap();
    assert_eq!(std::fs::read(&r.model_path).unwrap(), b"GGUF\x03\0\0\0weights");
    assert_eq!(r.system.as_deref(), Some("You are a helpful assistant."));
    assert_eq!(r.params["temperature"], serde_json::json!(0.2));
    assert_eq!(r.license, vec!["Apache 2.0".to_string()]);
    assert_eq!(r.config.model_family, "llama");
    assert!(r.template.as_deref().unwrap().contains("{{ .Prompt }}"));
    let mf = modelfile::to_modelfile(&r);
    assert!(mf.contains("PARAMETER stop \"<|user|>\""), "{mf}");
    modelfile::parse(&mf).unwrap();

    // Nothing was written to the Ollama store.
    assert!(store.prune().is_err());
    assert!(store.remove(&ModelName::parse("tinyllama").unwrap()).is_err());
    assert_eq!(snapshot(&root), before);
}

fn snapshot(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            v.push(p.display().to_string());
        }
    }
    v.sort();
    v
}
