//! Embeds the sources that `corral plugin new` vendors into a new plugin crate (see
//! `src/cli/scaffold.rs`): corral-backend-api, which a plugin builds against, and the
//! conformance suite (corral-plugin-host) with the two crates it needs (corral-probe,
//! corral-gguf), which the plugin's own `cargo test` runs. None of them is on crates.io.
//! Writes `$OUT_DIR/vendored.rs`: `(crate, path in the crate, text)` for each crate's
//! `Cargo.toml`, `README.md` and every file under `src/`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

/// The vendored crates: name and directory in the repository.
const CRATES: &[(&str, &str)] = &[
    ("corral-backend-api", "backend-api"),
    ("corral-plugin-host", "plugin-host"),
    ("corral-probe", "probe"),
    ("corral-gguf", "gguf"),
];

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let repo = Path::new(&manifest_dir).parent().expect("host/ is inside the repository");
    let mut code = String::from(
        "/// The sources `corral plugin new` vendors: (crate, path in the crate, text).\n\
         pub(crate) const VENDORED: &[(&str, &str, &str)] = &[\n",
    );
    for (name, dir) in CRATES {
        let base = repo.join(dir);
        let src = base.join("src");
        println!("cargo:rerun-if-changed={}", src.display());
        let mut files = vec![base.join("Cargo.toml"), base.join("README.md")];
        files.retain(|f| f.is_file());
        let mut sources = Vec::new();
        walk(&src, &mut sources);
        sources.sort();
        files.extend(sources);
        for f in files {
            println!("cargo:rerun-if-changed={}", f.display());
            let rel =
                f.strip_prefix(&base).expect("under the crate").to_string_lossy().into_owned();
            let _ = writeln!(
                code,
                "    ({name:?}, {rel:?}, include_str!({:?})),",
                f.display().to_string()
            );
        }
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("vendored.rs");
    std::fs::write(&out, code).expect("write vendored.rs");
}
