//! Generates a random-weight GGUF model.
//!
//! `cargo run --release -p corral-gguf --example gguf_generate -- tinyllama q4_k_m out.gguf [seed] [arch]`

use corral_gguf::generate::{Arch, GenerateOptions, ModelShape, WeightType, generate_model};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: gguf_generate SHAPE WEIGHT_TYPE OUT.gguf [SEED] [ARCH]");
        eprintln!("  SHAPE: tiny | small | medium | tinyllama, optionally with :n_layer=4,...");
        eprintln!("  WEIGHT_TYPE: F32 | F16 | Q8_0 | Q6_K | Q5_K | Q4_K_M | Q4_K | Q4_0");
        eprintln!("  ARCH: llama (default) | llama3 | qwen2 | qwen3 | gemma2 | gemma3 | phi3");
        std::process::exit(2);
    }
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let shape = ModelShape::parse(&args[0])?;
        let weight_type = WeightType::parse(&args[1])?;
        let seed = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
        let arch = args.get(4).map(|s| Arch::parse(s)).transpose()?.unwrap_or_default();
        let opts = GenerateOptions {
            arch,
            shape,
            weight_type,
            seed,
            name: format!("corral-random-{}-{}", args[0], weight_type.name().to_lowercase()),
            ..Default::default()
        };
        let report = generate_model(args[2].as_ref(), &opts)?;
        println!("{report}");
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
