//! AFL entry point of the `chat_template` target (see fuzz/README.md and fuzz/run.sh).

fn main() {
    corral_fuzz::afl_main(corral_fuzz::chat_template);
}
