//! Prints a GGUF file's summary, metadata and tensors.
//!
//! `cargo run -p corral-gguf --example gguf_inspect -- model.gguf`

use corral_gguf::reader::GgufFile;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: gguf_inspect FILE.gguf");
        std::process::exit(2);
    };
    let f = match GgufFile::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            std::process::exit(1);
        }
    };
    let s = f.summary();
    println!(
        "{path}: GGUF v{}, {} ({}), {} parameters, {}, context {}, {} tensors",
        s.version,
        s.architecture.as_deref().unwrap_or("?"),
        s.name.as_deref().unwrap_or("unnamed"),
        s.parameter_count_short(),
        s.quantization,
        s.context_length.map_or("?".into(), |c| c.to_string()),
        s.tensor_count
    );
    for (k, v) in f.metadata() {
        println!("  {k} = {}", v.display_short());
    }
    for t in f.tensors().iter().take(12) {
        println!("  {} {:?} {} @{} ({} bytes)", t.name, t.dims, t.ggml_type, t.offset, t.size);
    }
    if f.tensors().len() > 12 {
        println!("  ... {} more tensors", f.tensors().len() - 12);
    }
}
