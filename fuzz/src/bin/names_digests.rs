//! AFL entry point of the `names_digests` target (see fuzz/README.md and fuzz/run.sh).

fn main() {
    corral_fuzz::afl_main(corral_fuzz::names_digests);
}
