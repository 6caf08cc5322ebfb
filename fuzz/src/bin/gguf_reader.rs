//! AFL entry point of the `gguf_reader` target (see fuzz/README.md and fuzz/run.sh).

fn main() {
    corral_fuzz::afl_main(corral_fuzz::gguf_reader);
}
