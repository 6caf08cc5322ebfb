//! The GGUF reader: every model file `corral create`, `pull` and the server open goes
//! through it before any engine sees the file.

use corral_gguf::reader::{GgufFile, ReadLimits, starts_with_magic};

/// Tight limits, so the limit checks themselves are reached by small inputs.
fn tight() -> ReadLimits {
    ReadLimits {
        max_header_bytes: 4096,
        max_string_len: 256,
        max_array_len: 64,
        max_kv_count: 16,
        max_tensor_count: 16,
        max_dim: 1 << 20,
        max_array_depth: 2,
    }
}

/// Parses `data` as a GGUF file three ways (default limits, tight limits, and a file that
/// claims to be longer than the bytes that can be read, as one that shrinks while it is
/// read), and uses what parses the way `corral show` and the loaders do.
pub fn gguf_reader(data: &[u8]) {
    let _ = starts_with_magic(&mut &data[..]);
    let len = data.len() as u64;
    if let Ok(f) = GgufFile::from_bytes(data) {
        exercise(&f, len);
    }
    if let Ok(f) = GgufFile::parse(data, len, &tight()) {
        exercise(&f, len);
    }
    if let Ok(f) = GgufFile::parse(data, len + 4096, &ReadLimits::default()) {
        exercise(&f, len + 4096);
    }
}

fn exercise(f: &GgufFile, file_len: u64) {
    assert!(f.version() == 2 || f.version() == 3, "version {} parsed", f.version());
    assert!(f.alignment().is_power_of_two(), "alignment {}", f.alignment());
    assert_eq!(f.data_offset() % f.alignment(), 0, "data section not aligned");
    for t in f.tensors() {
        let end = f.data_offset().checked_add(t.offset).and_then(|s| s.checked_add(t.size));
        assert!(
            end.is_some_and(|e| e <= file_len),
            "tensor '{}' ends past the file ({end:?} > {file_len})",
            t.name
        );
        assert_eq!(t.offset % f.alignment(), 0, "tensor '{}' offset not aligned", t.name);
        let _ = t.n_elements();
    }
    for t in f.tensors().iter().take(4) {
        assert!(f.tensor(&t.name).is_some(), "tensor '{}' not found by name", t.name);
    }
    let summary = f.summary();
    let _ = summary.parameter_count_short();
    let _ = f.predominant_tensor_type();
    let _ = f.architecture();
    for (key, value) in f.metadata() {
        let _ = value.display_short();
        assert!(f.get(key).is_some(), "metadata key '{key}' not found by name");
        let _ = (f.get_u32(key), f.get_f64(key), f.get_bool(key), f.get_array_len(key));
        let _ = f.get_str_array(key);
    }
}
