//! Tokenizes text with the vocabulary of a GGUF file (the reference encoders: GPT-2
//! style BPE or SentencePiece), printing the ids; `--special` also parses special-token
//! strings.
//!
//! `cargo run -p corral-gguf --example gguf_tokenize -- model.gguf "Hello world" [--special]`

use corral_gguf::bpe::Bpe;
use corral_gguf::reader::GgufFile;
use corral_gguf::spm::Spm;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: gguf_tokenize FILE.gguf TEXT [--special]");
        std::process::exit(2);
    }
    let special = args.iter().any(|a| a == "--special");
    let ids = GgufFile::open(&args[0]).and_then(|f| {
        if f.get_str("tokenizer.ggml.model") == Some("llama") {
            let spm = Spm::from_gguf(&f)?;
            Ok(if special { spm.encode_with_special(&args[1]) } else { spm.encode(&args[1]) })
        } else {
            let bpe = Bpe::from_gguf(&f)?;
            Ok(if special { bpe.encode_with_special(&args[1]) } else { bpe.encode(&args[1]) })
        }
    });
    match ids {
        Ok(ids) => {
            let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
            println!("{}", ids.join(" "));
        }
        Err(e) => {
            eprintln!("error: {}: {e}", args[0]);
            std::process::exit(1);
        }
    }
}
