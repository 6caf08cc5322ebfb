//! `corral plugin new`: a plugin crate that builds into a loadable plugin on its own,
//! outside this repository. `corral-backend-api` is not on crates.io, so the crate gets a
//! vendored copy of the one this `corral` was built with (`vendor/corral-backend-api`,
//! its sources embedded in the binary), and the lock file this `corral` was built with,
//! so the dependencies resolve to tested versions (and offline, from cargo's cache).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use corral_backend_api::{ABI_MAJOR, ABI_MINOR};

const API_FILES: [(&str, &str); 7] = [
    ("README.md", include_str!("../../../backend-api/README.md")),
    ("src/lib.rs", include_str!("../../../backend-api/src/lib.rs")),
    ("src/ffi.rs", include_str!("../../../backend-api/src/ffi.rs")),
    ("src/plain.rs", include_str!("../../../backend-api/src/plain.rs")),
    ("src/plugin.rs", include_str!("../../../backend-api/src/plugin.rs")),
    ("src/types.rs", include_str!("../../../backend-api/src/types.rs")),
    ("Cargo.toml", include_str!("../../../backend-api/Cargo.toml")),
];
const ROOT_TOML: &str = include_str!("../../../Cargo.toml");
const LOCK: &str = include_str!("../../../Cargo.lock");
const ENGINE: &str = include_str!("../../../plugins/example/src/lib.rs");
const FAULTS: &str = include_str!("../../../plugins/example/src/faults.rs");

/// A `[workspace.dependencies]` line of the repository's root Cargo.toml.
fn workspace_dep(name: &str) -> Result<String> {
    ROOT_TOML
        .lines()
        .find(|l| l.starts_with(&format!("{name} = ")))
        .map(str::to_string)
        .with_context(|| format!("{name} is missing from corral's own workspace dependencies"))
}

/// backend-api's Cargo.toml made standalone: workspace-inherited keys spelled out, the
/// workspace lints dropped.
fn vendored_api_toml(original: &str) -> Result<String> {
    let mut out = String::new();
    let mut dropping = false;
    for line in original.lines() {
        if line.starts_with('[') {
            dropping = line.trim() == "[lints]";
        }
        if dropping {
            continue;
        }
        let t = line.trim();
        if let Some(dep) = t.strip_suffix(".workspace = true") {
            match dep {
                "edition" => out.push_str("edition = \"2024\""),
                "license" => out.push_str("license = \"MIT OR Apache-2.0\""),
                _ => out.push_str(&workspace_dep(dep)?),
            }
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

/// The files of a new plugin crate `name`, relative to its directory. `corral` is the
/// binary its conformance test runs by default.
pub(crate) fn files(name: &str, corral: &Path) -> Result<Vec<(PathBuf, String)>> {
    if !valid_name(name) {
        bail!("plugin name {name:?}: lowercase letters, digits and '-', starting with a letter");
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
        .replace("//! # corral-plugin-example", &format!("//! # {name}"));
    add("src/lib.rs", engine);
    add("src/faults.rs", FAULTS.to_string());
    add(
        "tests/conformance.rs",
        format!(
            r#"//! The corral backend conformance suite on this plugin, as the host runs it: after
//! `cargo build`, `corral plugin check` on the built library (its manifest beside it)
//! with a tiny generated GGUF model (the toy engine takes any file). `CORRAL_BIN` names
//! the corral binary; the default is the one that wrote this crate.

use std::path::PathBuf;

const CORRAL: &str = {corral:?};

#[test]
fn the_plugin_passes_the_conformance_suite() {{
    // tests run from target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable");
    let profile = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let manifest: PathBuf = profile.join("{name}.corral-plugin.toml");
    assert!(manifest.is_file(), "{{}} is missing: run `cargo build` first", manifest.display());
    let corral = std::env::var_os("CORRAL_BIN").unwrap_or_else(|| CORRAL.into());
    let out = std::process::Command::new(&corral)
        .args(["plugin", "check"])
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {{corral:?}} (set CORRAL_BIN): {{e}}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{{stdout}}");
    assert!(out.status.success(), "conformance failed:\n{{stdout}}\n{{stderr}}");
    assert!(stdout.contains(" 0 failed"), "{{stdout}}");
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
- `manifest.toml`: what the host reads before it opens the library. The host finds it
  as `manifest.toml` in a plugin's own directory, or as `{name}.corral-plugin.toml`
  beside the library (`build.rs` copies it there). Any other name is not read
  (`corral backends` warns about a `.toml` that looks like a manifest).

```sh
cargo build --release                        # add --offline without a network
cargo test                                   # the conformance suite through `corral plugin check`
corral plugin install target/release/{lib}   # checks it in a worker, copies it to ~/.local/lib/corral/backends/{name}-cpu/
corral backends                              # lists it
corral plugin check ~/.local/lib/corral/backends/{name}-cpu
corral run --backend {name} --format toy SOME_FILE "hello"
corral plugin remove {name}
```
"#
        ),
    );
    for (file, text) in API_FILES {
        let text = if file == "Cargo.toml" { vendored_api_toml(text)? } else { text.to_string() };
        add(&format!("vendor/corral-backend-api/{file}"), text);
    }
    add("Cargo.lock", LOCK.to_string());
    add(".gitignore", "/target\n".to_string());
    Ok(files)
}

/// Writes the crate `name` into `dir` (which must not exist or be empty).
pub(crate) fn write(name: &str, dir: &Path, corral: &Path) -> Result<Vec<PathBuf>> {
    let files = files(name, corral)?;
    if dir.exists() && std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_some()) {
        bail!("{} exists and is not empty", dir.display());
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
        assert!(files("Bad Name", Path::new("corral")).is_err());
        assert!(files("9lives", Path::new("corral")).is_err());
        let f = files("my-engine", Path::new("/bin/corral")).unwrap();
        let get = |p: &str| &f.iter().find(|(r, _)| r == Path::new(p)).unwrap().1;
        let m = get("manifest.toml");
        assert!(m.contains(&format!("abi = \"{ABI_MAJOR}.{ABI_MINOR}\"")), "{m}");
        assert!(m.contains("library = \"libmy_engine.so\"") && m.contains("priority = 0"));
        assert!(!m.lines().any(|l| l.trim_start().starts_with("cpu_features")), "{m}");
        assert!(get("src/lib.rs").contains("name: \"my-engine\","));
        let api = get("vendor/corral-backend-api/Cargo.toml");
        assert!(!api.contains("workspace = true") && api.contains("abi_stable = "), "{api}");
    }
}
