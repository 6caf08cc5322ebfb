//! Compares the tensors of two GGUF files by name: types, dimensions and data bytes,
//! and lists the metadata keys whose values differ. Exits 1 when a tensor differs.
//!
//! `cargo run -p corral-gguf --example gguf_compare -- ours.gguf theirs.gguf [--keys]`
//!
//! `scripts/check_quantize.sh` uses it to check the generator's Q4_K_M files against
//! `llama-quantize`'s.

use std::process::ExitCode;

use corral_gguf::reader::GgufFile;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: gguf_compare A.gguf B.gguf [--keys]");
        return ExitCode::from(2);
    }
    let open = |p: &str| GgufFile::open(p).map_err(|e| format!("{p}: {e}"));
    let (a, b) = match (open(&args[0]), open(&args[1])) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut same_type, mut same_bytes, mut problems) = (0usize, 0usize, Vec::new());
    let mut by_type = std::collections::BTreeMap::<String, usize>::new();
    for t in a.tensors() {
        let Some(u) = b.tensor(&t.name) else {
            problems.push(format!("{}: only in {}", t.name, args[0]));
            continue;
        };
        if t.ggml_type != u.ggml_type || t.dims != u.dims {
            problems.push(format!(
                "{}: {} {:?} vs {} {:?}",
                t.name, t.ggml_type, t.dims, u.ggml_type, u.dims
            ));
            continue;
        }
        same_type += 1;
        *by_type.entry(t.ggml_type.name().to_string()).or_default() += 1;
        match (a.read_tensor_bytes(t), b.read_tensor_bytes(u)) {
            (Ok(x), Ok(y)) if x == y => same_bytes += 1,
            (Ok(x), Ok(y)) => {
                let first = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(0);
                problems
                    .push(format!("{}: {} data differs from byte {first}", t.name, t.ggml_type));
            }
            (Err(e), _) | (_, Err(e)) => problems.push(format!("{}: {e}", t.name)),
        }
    }
    for u in b.tensors() {
        if a.tensor(&u.name).is_none() {
            problems.push(format!("{}: only in {}", u.name, args[1]));
        }
    }
    let types: Vec<String> = by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "{} vs {}: {} tensors; types and shapes match: {same_type}; data identical: \
         {same_bytes} ({})",
        args[0],
        args[1],
        a.tensors().len(),
        types.join(", ")
    );
    if args.iter().any(|a| a == "--keys") {
        for (k, v) in a.metadata() {
            match b.get(k) {
                Some(w) if w == v => {}
                Some(w) => println!("  key {k}: {} vs {}", v.display_short(), w.display_short()),
                None => println!("  key {k}: only in {}", args[0]),
            }
        }
        for (k, _) in b.metadata() {
            if a.get(k).is_none() {
                println!("  key {k}: only in {}", args[1]);
            }
        }
    }
    for p in &problems {
        println!("  DIFFERS {p}");
    }
    if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
