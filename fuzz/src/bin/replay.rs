//! Runs files through a target, each on a thread with the server's stack size, and says
//! how long each took: for looking at what AFL found.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --release --bin replay -- TARGET FILE...`

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((name, files)) = args.split_first() else {
        eprintln!("usage: replay TARGET FILE...");
        std::process::exit(2);
    };
    let Some(target) = corral_fuzz::target(name) else {
        let known: Vec<&str> = corral_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("unknown target {name:?}; known: {}", known.join(", "));
        std::process::exit(2);
    };
    for file in files {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{file}: {e}");
                std::process::exit(2);
            }
        };
        println!("{file}: {} bytes ...", data.len());
        let run = target.run;
        let took = corral_fuzz::on_server_stack(|| run(&data));
        println!("{file}: ok in {took:?}");
    }
}
