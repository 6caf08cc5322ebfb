//! Generates a random-weight llama GGUF.
//!
//! `cargo run --release -p corral-gguf --example gguf_generate -- tinyllama q4_0 out.gguf [seed]`

use corral_gguf::generate::{GenerateOptions, ModelShape, WeightType, generate_llama};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: gguf_generate SHAPE WEIGHT_TYPE OUT.gguf [SEED]");
        eprintln!("  SHAPE: tiny | small | medium | tinyllama, optionally with :n_layer=4,...");
        eprintln!("  WEIGHT_TYPE: F32 | F16 | Q8_0 | Q4_0");
        std::process::exit(2);
    }
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let shape = ModelShape::parse(&args[0])?;
        let weight_type = WeightType::parse(&args[1])?;
        let seed = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
        let opts = GenerateOptions {
            shape,
            weight_type,
            seed,
            name: format!("corral-random-{}-{}", args[0], weight_type.name().to_lowercase()),
            chat_template: None,
        };
        let report = generate_llama(args[2].as_ref(), &opts)?;
        println!("{report}");
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
