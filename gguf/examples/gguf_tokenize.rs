//! Tokenizes text with the GPT-2 style vocabulary of a GGUF file (the reference
//! encoder), printing the ids; `--special` also parses special-token strings.
//!
//! `cargo run -p corral-gguf --example gguf_tokenize -- model.gguf "Hello world" [--special]`

use corral_gguf::bpe::Bpe;
use corral_gguf::reader::GgufFile;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: gguf_tokenize FILE.gguf TEXT [--special]");
        std::process::exit(2);
    }
    let bpe = match GgufFile::open(&args[0]).and_then(|f| Bpe::from_gguf(&f)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {}: {e}", args[0]);
            std::process::exit(1);
        }
    };
    let ids = if args.iter().any(|a| a == "--special") {
        bpe.encode_with_special(&args[1])
    } else {
        bpe.encode(&args[1])
    };
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    println!("{}", ids.join(" "));
}
