//! AFL entry point of the `json_schema` target (see fuzz/README.md and fuzz/run.sh).

fn main() {
    corral_fuzz::afl_main(corral_fuzz::json_schema);
}
