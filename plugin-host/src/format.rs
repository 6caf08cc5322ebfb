//! The one rule that names a model file's format, for the CLI, the server and the
//! conformance suite alike.

use std::path::Path;

/// The format of the model at `path`:
///
/// 1. `gguf` when the file starts with GGUF's magic bytes;
/// 2. else `declared` (a store model's config `model_format`) when it names another one;
/// 3. else `onnx` for a directory or a `.onnx` file;
/// 4. else the file's extension when `plugin_declares` says some plugin runs that format
///    (the example plugin's `toy`);
/// 5. else `gguf` (the loader then says what is wrong with the file).
pub fn sniff(
    path: &Path,
    declared: Option<&str>,
    plugin_declares: &dyn Fn(&str) -> bool,
) -> String {
    let is_gguf = std::fs::File::open(path)
        .and_then(|mut f| corral_gguf::reader::starts_with_magic(&mut f))
        .unwrap_or(false);
    if is_gguf {
        return "gguf".into();
    }
    if let Some(d) = declared.filter(|d| !d.is_empty() && *d != "gguf") {
        return d.to_string();
    }
    if path.is_dir() || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        return "onnx".into();
    }
    if let Some(ext) = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase)
        && plugin_declares(&ext)
    {
        return ext;
    }
    "gguf".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_then_declared_then_path_then_plugin_extension() {
        let dir = tempfile::tempdir().unwrap();
        let none = |_: &str| false;
        let toy = |f: &str| f == "toy";
        let g = dir.path().join("m.bin");
        std::fs::write(&g, b"GGUF\x03\0\0\0").unwrap();
        assert_eq!(sniff(&g, Some("onnx"), &none), "gguf");
        let o = dir.path().join("m.onnx");
        std::fs::write(&o, b"\x08\x07").unwrap();
        assert_eq!(sniff(&o, None, &none), "onnx");
        assert_eq!(sniff(dir.path(), None, &none), "onnx");
        assert_eq!(sniff(&o, Some("safetensors"), &none), "safetensors");
        let t = dir.path().join("m.toy");
        std::fs::write(&t, b"toy model").unwrap();
        assert_eq!(sniff(&t, None, &toy), "toy");
        assert_eq!(sniff(&t, None, &none), "gguf");
    }
}
