//! `corral plugin new`: a plugin crate that builds into a loadable plugin on its own,
//! outside this repository, and whose `cargo test` runs the backend conformance suite on
//! the library it builds. No corral crate is on crates.io, so the crate gets vendored
//! copies (under `vendor/`) of what this `corral` was built with, their sources embedded
//! in the binary by `build.rs`: `corral-backend-api` (the plugin's one dependency) and the
//! suite, `corral-plugin-host`, with the crates it needs (`corral-probe`, `corral-gguf`),
//! as a dev-dependency. The lock file this `corral` was built with comes along, so every
//! dependency resolves to a tested version (and offline, from cargo's cache).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use corral_backend_api::{ABI_MAJOR, ABI_MINOR};

include!(concat!(env!("OUT_DIR"), "/vendored.rs"));

const ROOT_TOML: &str = include_str!("../../../Cargo.toml");
const LOCK: &str = include_str!("../../../Cargo.lock");
const ENGINE: &str = include_str!("../../../plugins/example/src/lib.rs");
const FAULTS: &str = include_str!("../../../plugins/example/src/faults.rs");

/// A `[workspace.dependencies]` line of the repository's root Cargo.toml; corral's own
/// crates point at their vendored copies (siblings under `vendor/`).
fn workspace_dep(name: &str) -> Result<String> {
    if VENDORED.iter().any(|(krate, _, _)| *krate == name) {
        return Ok(format!("{name} = {{ path = \"../{name}\" }}"));
    }
    ROOT_TOML
        .lines()
        .find(|l| l.starts_with(&format!("{name} = ")))
        .map(str::to_string)
        .with_context(|| format!("{name} is missing from corral's own workspace dependencies"))
}

/// A vendored crate's Cargo.toml made standalone: workspace-inherited keys spelled out,
/// corral's crates as sibling paths, and only what building it as a dependency reads
/// (`[package]`, `[lib]`, `[features]`, `[dependencies]`): no dev-dependencies, lints,
/// tests or benches.
fn vendored_toml(original: &str) -> Result<String> {
    const KEPT: [&str; 4] = ["[package]", "[lib]", "[features]", "[dependencies]"];
    let version = ROOT_TOML
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .context("corral's workspace has no version")?;
    let mut out = String::new();
    let mut dropping = false;
    for line in original.lines() {
        if line.starts_with('[') {
            dropping = !KEPT.contains(&line.trim());
        }
        if dropping {
            continue;
        }
        let t = line.trim();
        let inherited = t
            .strip_suffix(".workspace = true")
            .or_else(|| t.strip_suffix(" = { workspace = true }"));
        if let Some(key) = inherited {
            match key {
                "version" => out.push_str(&format!("version = {version}")),
                "edition" => out.push_str("edition = \"2024\""),
                "license" => out.push_str("license = \"MIT OR Apache-2.0\""),
                "rust-version" => {}
                _ => out.push_str(&workspace_dep(key)?),
            }
        } else if t.contains("workspace = true") {
            bail!("cannot vendor the Cargo.toml line {t:?}");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out.push_str("\n# Vendored by `corral plugin new` from the corral host it came with.\n");
    Ok(out)
}

/// Whether `name` can be a plugin and crate name.
fn valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Names a new plugin may not take: Rust's built-in crates (a crate of that name
/// shadows them), and the in-tree plugins' (`--backend cpu` and `plugin remove cpu`
/// would name both).
const RESERVED_NAMES: [&str; 8] =
    ["core", "std", "test", "alloc", "cpu", "llama-cpp", "onnx", "example"];

/// The files of a new plugin crate `name`, relative to its directory.
pub(crate) fn files(name: &str) -> Result<Vec<(PathBuf, String)>> {
    if !valid_name(name) {
        return Err(super::Usage(format!(
            "plugin name {name:?}: lowercase letters, digits and '-', starting with a letter"
        ))
        .into());
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(super::Usage(format!(
            "plugin name {name:?} is taken (Rust's built-in crates and corral's own plugins: \
             {}); choose another",
            RESERVED_NAMES.join(", ")
        ))
        .into());
    }
    let lib = format!("lib{}.so", name.replace('-', "_"));
    let abi = format!("{ABI_MAJOR}.{ABI_MINOR}");
    let mut files = Vec::new();
    let mut add = |p: &str, s: String| files.push((PathBuf::from(p), s));
    add(
        "Cargo.toml",
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false
description = "A corral backend plugin"

[lib]
crate-type = ["cdylib"]

[dependencies]
# corral-backend-api is not on crates.io: `corral plugin new` vendored the copy its host
# was built with (ABI {abi}). A plugin built against it loads in that host and in every
# later host of ABI {ABI_MAJOR}.x; to use calls of a newer ABI, replace the vendored copy
# with a newer host's (`corral plugin new` writes one).
corral-backend-api = {{ path = "vendor/corral-backend-api" }}
serde = {{ version = "1", features = ["derive"] }}
log = "0.4"

[dev-dependencies]
# The backend conformance suite (`corral_plugin_host::conformance`), vendored with the
# crates it needs from the same corral; `tests/conformance.rs` runs it.
corral-plugin-host = {{ path = "vendor/corral-plugin-host" }}

# A workspace of its own, even when created inside another one.
[workspace]
"#
        ),
    );
    add(
        "build.rs",
        format!(
            r#"//! Copies `manifest.toml` beside the library cargo builds, as
//! `target/<profile>/{name}.corral-plugin.toml`: the name the host finds beside a
//! library, so `corral plugin check` and `corral plugin install` take the built library.

fn main() {{
    println!("cargo:rerun-if-changed=manifest.toml");
    let Ok(out_dir) = std::env::var("OUT_DIR") else {{ return }};
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else {{ return }};
    if let Err(e) = std::fs::copy("manifest.toml", profile_dir.join("{name}.corral-plugin.toml")) {{
        println!("cargo:warning=could not copy the manifest beside the library: {{e}}");
    }}
}}
"#
        ),
    );
    add(
        "manifest.toml",
        format!(
            r#"# The manifest the corral host reads before it opens the library. The host finds it
# as `manifest.toml` in a plugin's own directory (`corral plugin install` puts it there)
# or as `NAME.corral-plugin.toml` beside the library (build.rs writes that one).
name = "{name}"
variant = "cpu"
version = "0.1.0"
abi = "{abi}"                 # the corral-backend-api MAJOR.MINOR this is built against
library = "{lib}"
# The toy engine takes any file as its model; "toy" keeps it out of the way of real
# engines for GGUF and ONNX files. Run one with `corral run --format toy FILE`.
formats = ["toy"]
# 0, and no [requires] cpu_features: an in-tree engine for the same format outranks it.
priority = 0
description = "{name}: a toy engine from `corral plugin new`"

[requires]
os = "linux"

[options]
"#
        ),
    );
    let engine = ENGINE
        .replace("name: \"example\",", &format!("name: \"{name}\","))
        .replace("name: \"example\".into()", &format!("name: \"{name}\".into()"))
        .replace("\"example toy engine {}\"", &format!("\"{name} toy engine {{}}\""))
        .replace("//! # corral-plugin-example", &format!("//! # {name}"))
        .replace("[backends.example]", &format!("[backends.{name}]"))
        .replace("\"example backend initialised", &format!("\"{name} backend initialised"));
    add("src/lib.rs", engine);
    add("src/faults.rs", FAULTS.to_string());
    add(
        "tests/conformance.rs",
        format!(
            r#"//! The corral backend conformance suite on the library this crate builds, run in this
//! test's process by the suite's library (`corral_plugin_host::conformance`, vendored):
//! the same checks as `corral plugin check`. The model is a tiny generated GGUF file
//! (the toy engine takes any file), or the file `CORRAL_CHECK_MODEL` names.

use corral_plugin_host::conformance::{{Outcome, check_plugin}};

#[test]
fn the_plugin_passes_the_conformance_suite() {{
    // Tests run from target/<profile>/deps/; `cargo test` builds the library and
    // build.rs puts the manifest beside it in target/<profile>/.
    let exe = std::env::current_exe().expect("test executable");
    let profile = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let manifest = profile.join("{name}.corral-plugin.toml");
    assert!(manifest.is_file(), "{{}} is missing: run `cargo build` first", manifest.display());
    let model = std::env::var_os("CORRAL_CHECK_MODEL").map(std::path::PathBuf::from);
    let report = check_plugin(&manifest, model.as_deref())
        .unwrap_or_else(|e| panic!("the conformance suite could not run: {{e}}"));
    println!("{{report}}");
    assert_eq!(report.count(Outcome::Fail), 0, "conformance failed:\n{{report}}");
    assert!(report.count(Outcome::Pass) > 0, "{{report}}");
}}
"#
        ),
    );
    add(
        "README.md",
        format!(
            r#"# {name}: a corral backend plugin

Written by `corral plugin new`. `src/lib.rs` is a complete toy engine (a byte vocabulary;
logits are a hash of the sequence's KV cache; `src/faults.rs` holds test hooks you may
delete with its uses): replace it with your engine, keeping the three traits
(`Backend`, `Model`, `Context`) and `export_plugin!`. The model file the toy engine
takes is any file; its format is `toy` (`corral run --format toy FILE`).

- `vendor/corral-backend-api`: the ABI crate (ABI {abi}), vendored from the corral that
  wrote this crate, since it is not on crates.io. A plugin built against it loads in
  that host and every later {ABI_MAJOR}.x host.
- `vendor/corral-plugin-host` (with `corral-probe` and `corral-gguf`, which it needs): the
  conformance suite, a dev-dependency only; `tests/conformance.rs` calls
  `corral_plugin_host::conformance::check_plugin` on the library `cargo test` builds.
  `Cargo.lock` pins every dependency to what that corral was tested with, so
  `cargo build --offline` works wherever corral itself was built.
- `manifest.toml`: what the host reads before it opens the library. The host finds it
  as `manifest.toml` in a plugin's own directory, or as `{name}.corral-plugin.toml`
  beside the library (`build.rs` copies it there). Any other name is not read
  (`corral backends` warns about a `.toml` that looks like a manifest).

```sh
cargo build --release                        # add --offline without a network
cargo test                                   # the conformance suite on the built library (vendor/corral-plugin-host)
corral plugin install target/release/{lib}   # checks it in a worker, copies it to ~/.local/lib/corral/backends/{name}-cpu/
corral backends                              # lists it
corral plugin check ~/.local/lib/corral/backends/{name}-cpu
corral run --backend {name} --format toy SOME_FILE "hello"
corral plugin remove {name}
```
"#
        ),
    );
    for (krate, file, text) in VENDORED {
        let text = if *file == "Cargo.toml" { vendored_toml(text)? } else { (*text).to_string() };
        add(&format!("vendor/{krate}/{file}"), text);
    }
    add("Cargo.lock", LOCK.to_string());
    add(".gitignore", "/target\n".to_string());
    Ok(files)
}

/// Writes the crate `name` into `dir` (which must not exist or be empty).
pub(crate) fn write(name: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let files = files(name)?;
    if dir.exists() && std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_some()) {
        return Err(super::Usage(format!("{} exists and is not empty", dir.display())).into());
    }
    let mut written = Vec::new();
    for (rel, text) in files {
        let p = dir.join(&rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        written.push(rel);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_the_manifest_speaks_this_abi() {
        assert!(files("Bad Name").is_err());
        assert!(files("9lives").is_err());
        let f = files("my-engine").unwrap();
        let get = |p: &str| &f.iter().find(|(r, _)| r == Path::new(p)).unwrap().1;
        let m = get("manifest.toml");
        assert!(m.contains(&format!("abi = \"{ABI_MAJOR}.{ABI_MINOR}\"")), "{m}");
        assert!(m.contains("library = \"libmy_engine.so\"") && m.contains("priority = 0"));
        assert!(!m.lines().any(|l| l.trim_start().starts_with("cpu_features")), "{m}");
        assert!(get("src/lib.rs").contains("name: \"my-engine\","));
        let api = get("vendor/corral-backend-api/Cargo.toml");
        assert!(!api.contains("workspace = true") && api.contains("abi_stable = "), "{api}");
        // The conformance suite comes with what it needs, every path inside vendor/.
        let host = get("vendor/corral-plugin-host/Cargo.toml");
        assert!(host.contains("corral-backend-api = { path = \"../corral-backend-api\" }"));
        assert!(host.contains("corral-probe = { path = \"../corral-probe\" }"), "{host}");
        assert!(!host.contains("[dev-dependencies]") && !host.contains("[lints]"), "{host}");
        for krate in ["corral-plugin-host", "corral-probe", "corral-gguf"] {
            let toml = get(&format!("vendor/{krate}/Cargo.toml"));
            assert!(toml.contains("version = \"") && !toml.contains("workspace"), "{toml}");
            assert!(f.iter().any(|(p, _)| p == Path::new(&format!("vendor/{krate}/src/lib.rs"))));
        }
        assert!(
            get("Cargo.toml")
                .contains("corral-plugin-host = { path = \"vendor/corral-plugin-host\" }")
        );
        assert!(get("tests/conformance.rs").contains("check_plugin(&manifest"));
    }

    #[test]
    fn the_scaffold_names_the_new_plugin_and_refuses_taken_names() {
        for taken in RESERVED_NAMES {
            let e = files(taken).unwrap_err().to_string();
            assert!(e.contains("is taken"), "{taken}: {e}");
        }
        let f = files("hostile").unwrap();
        let lib = &f.iter().find(|(r, _)| r == Path::new("src/lib.rs")).unwrap().1;
        assert!(lib.contains("[backends.hostile]") && !lib.contains("[backends.example]"));
        assert!(lib.contains("\"hostile backend initialised") && !lib.contains("\"example "));
        // The walk-through shows the manifest this ABI writes.
        let readme = include_str!("../../../plugins/example/README.md");
        let abi = format!("abi = \"{ABI_MAJOR}.{ABI_MINOR}\"");
        assert!(readme.lines().any(|l| l.starts_with(&abi)), "README.md lacks {abi}");
    }
}
