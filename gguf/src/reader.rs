//! A bounded GGUF v2/v3 reader.
//!
//! [`GgufFile::open`] reads the header, the metadata and the tensor infos of a file
//! (never the tensor data). Every read is bounded: sizes and counts are checked against
//! [`ReadLimits`] and against the bytes left in the file *before* anything is
//! allocated, so a malformed or hostile file gives a clear [`GgufError`], never a panic
//! or a huge allocation.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::GgufError;
use crate::types::{GgmlType, Value, ValueType, file_type_name};

/// The GGUF magic, "GGUF" in file order.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a ggml tensor has.
pub const MAX_DIMS: u32 = 4;
/// The longest metadata key or tensor name accepted, in bytes.
const MAX_NAME_LEN: u64 = 65_535;

/// Bounds applied while reading a GGUF header. The defaults accept every real model
/// (vocabularies of several hundred thousand tokens, thousands of tensors) while keeping
/// the memory a hostile file can make the reader allocate to a few hundred MiB at most.
#[derive(Debug, Clone)]
pub struct ReadLimits {
    /// Most bytes of header, metadata and tensor infos together.
    pub max_header_bytes: u64,
    /// Longest string value, in bytes.
    pub max_string_len: u64,
    /// Most elements in one array.
    pub max_array_len: u64,
    /// Most metadata entries.
    pub max_kv_count: u64,
    /// Most tensors.
    pub max_tensor_count: u64,
    /// Largest single tensor dimension.
    pub max_dim: u64,
    /// Deepest nesting of arrays within arrays.
    pub max_array_depth: u32,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_header_bytes: 512 << 20,
            max_string_len: 64 << 20,
            max_array_len: 64 << 20,
            max_kv_count: 1 << 16,
            max_tensor_count: 1 << 20,
            max_dim: 1 << 40,
            max_array_depth: 4,
        }
    }
}

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. "blk.0.attn_q.weight".
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the row length (ggml's ne[0]).
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section (see
    /// [`GgufFile::data_offset`]).
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements (the product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A short description of a model file, for listings such as `corral list`/`show`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// `general.architecture`, e.g. "llama".
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// Total number of tensor elements.
    pub parameter_count: u64,
    /// `{arch}.context_length`.
    pub context_length: Option<u64>,
    /// `{arch}.embedding_length`.
    pub embedding_length: Option<u64>,
    /// `{arch}.block_count`.
    pub block_count: Option<u64>,
    /// Predominant quantization: the name of `general.file_type` ("Q4_0", "Q4_K_M",
    /// "F16", ...) or, without it, the type holding the most matrix elements.
    pub quantization: String,
    /// `general.file_type` as stored, if present.
    pub file_type: Option<u32>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Number of tensors.
    pub tensor_count: usize,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// File size in bytes.
    pub file_size: u64,
}

impl ModelSummary {
    /// The parameter count in the usual short form: "1.1B", "125M", "34K".
    pub fn parameter_count_short(&self) -> String {
        let n = self.parameter_count as f64;
        if n >= 1e9 {
            format!("{:.1}B", n / 1e9)
        } else if n >= 1e6 {
            format!("{:.0}M", n / 1e6)
        } else if n >= 1e3 {
            format!("{:.0}K", n / 1e3)
        } else {
            format!("{}", self.parameter_count)
        }
    }
}

/// A parsed GGUF header: metadata and tensor infos.
#[derive(Debug, Clone)]
pub struct GgufFile {
    path: Option<PathBuf>,
    version: u32,
    file_len: u64,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Opens and parses the file at `path` with the default [`ReadLimits`].
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        Self::open_with_limits(path, &ReadLimits::default())
    }

    /// Opens and parses the file at `path` with the given limits.
    pub fn open_with_limits(
        path: impl AsRef<Path>,
        limits: &ReadLimits,
    ) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let file = File::open(path)
            .map_err(|e| GgufError::io(format!("opening {}", path.display()), e))?;
        let file_len = file
            .metadata()
            .map_err(|e| GgufError::io(format!("reading the size of {}", path.display()), e))?
            .len();
        let mut parsed = Self::parse(BufReader::with_capacity(1 << 16, file), file_len, limits)?;
        parsed.path = Some(path.to_path_buf());
        Ok(parsed)
    }

    /// Parses a GGUF header from `reader`, positioned at the start of a file of
    /// `file_len` bytes (the length bounds every size the header declares).
    pub fn parse(
        reader: impl Read,
        file_len: u64,
        limits: &ReadLimits,
    ) -> Result<GgufFile, GgufError> {
        Parser { r: reader, pos: 0, file_len, limits, ctx: String::from("the header") }.parse()
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        Self::parse(bytes, bytes.len() as u64, &ReadLimits::default())
    }

    /// The file this was read from, if it was opened by path.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The value of `key` if it is an integer of any type that fits in u32.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get_u64(key).and_then(|v| u32::try_from(v).ok())
    }

    /// The value of `key` if it is a non-negative integer of any type.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// The value of `key` if it is a number of any type, as f64.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// The value of `key` if it is a bool.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    /// The number of elements of `key` if it is an array.
    pub fn get_array_len(&self, key: &str) -> Option<usize> {
        self.get(key).and_then(Value::as_array).map(<[Value]>::len)
    }

    /// The elements of `key` as strings, if it is an array of strings.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?.as_array()?.iter().map(Value::as_str).collect()
    }

    /// The architecture (`general.architecture`).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Byte offset in the file where the data section starts; a tensor's data starts
    /// at `data_offset() + tensor.offset`.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The data alignment (`general.alignment`, 32 by default).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Reads one tensor's raw bytes from the file this was opened from.
    pub fn read_tensor_bytes(&self, tensor: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let path = self.path.as_deref().ok_or_else(|| {
            GgufError::Invalid("tensor data can only be read from a file opened by path".into())
        })?;
        let ctx = || format!("reading tensor '{}' from {}", tensor.name, path.display());
        let mut file = File::open(path).map_err(|e| GgufError::io(ctx(), e))?;
        let start = self.data_offset + tensor.offset;
        file.seek(SeekFrom::Start(start)).map_err(|e| GgufError::io(ctx(), e))?;
        let len = usize::try_from(tensor.size)
            .map_err(|_| GgufError::LimitExceeded(format!("{}: too large", ctx())))?;
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).map_err(|e| GgufError::io(ctx(), e))?;
        Ok(buf)
    }

    /// A short description of the model: architecture, size, quantization, template.
    pub fn summary(&self) -> ModelSummary {
        let arch = self.architecture().map(str::to_string);
        let arch_key = |k: &str| arch.as_ref().and_then(|a| self.get_u64(&format!("{a}.{k}")));
        let file_type = self.get_u32("general.file_type");
        let quantization = match file_type.and_then(file_type_name) {
            Some(name) => name.to_string(),
            None => self.predominant_tensor_type().map_or("unknown".into(), |t| t.to_string()),
        };
        ModelSummary {
            architecture: arch.clone(),
            name: self.get_str("general.name").map(str::to_string),
            parameter_count: self.tensors.iter().map(TensorInfo::n_elements).sum(),
            context_length: arch_key("context_length"),
            embedding_length: arch_key("embedding_length"),
            block_count: arch_key("block_count"),
            quantization,
            file_type,
            chat_template: self.get_str("tokenizer.chat_template").map(str::to_string),
            tensor_count: self.tensors.len(),
            version: self.version,
            file_size: self.file_len,
        }
    }

    /// The tensor type holding the most elements among matrices (tensors of two or
    /// more dimensions), or among all tensors when there are no matrices.
    pub fn predominant_tensor_type(&self) -> Option<GgmlType> {
        let mut by_type: HashMap<GgmlType, u64> = HashMap::new();
        let has_matrix = self.tensors.iter().any(|t| t.dims.len() >= 2);
        for t in self.tensors.iter().filter(|t| !has_matrix || t.dims.len() >= 2) {
            *by_type.entry(t.ggml_type).or_default() += t.n_elements();
        }
        // Ties go to the lower type number so the answer is deterministic.
        by_type.into_iter().max_by_key(|&(t, n)| (n, std::cmp::Reverse(t.as_u32()))).map(|(t, _)| t)
    }
}

struct Parser<'l, R> {
    r: R,
    pos: u64,
    file_len: u64,
    limits: &'l ReadLimits,
    /// What is being read, for error messages.
    ctx: String,
}

impl<R: Read> Parser<'_, R> {
    fn parse(mut self) -> Result<GgufFile, GgufError> {
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut self.r, &mut magic)
            .map_err(|e| GgufError::io("reading the GGUF magic", e))?;
        if n < 4 || magic != GGUF_MAGIC {
            let found = magic[..n].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>();
            let found = if found.is_empty() { "none: empty file".into() } else { found.join(" ") };
            return Err(GgufError::BadMagic { found });
        }
        self.pos = 4;
        let version = self.u32()?;
        if version == 1 {
            return Err(GgufError::UnsupportedVersion(1));
        }
        if version != 2 && version != 3 {
            // A big-endian file reads as a huge version number; say so.
            if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                return Err(GgufError::Invalid(format!(
                    "big-endian GGUF (version {}) is not supported",
                    version.swap_bytes()
                )));
            }
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = self.u64()?;
        let kv_count = self.u64()?;
        if kv_count > self.limits.max_kv_count {
            return Err(GgufError::LimitExceeded(format!(
                "the header declares {kv_count} metadata entries (limit {})",
                self.limits.max_kv_count
            )));
        }
        if tensor_count > self.limits.max_tensor_count {
            return Err(GgufError::LimitExceeded(format!(
                "the header declares {tensor_count} tensors (limit {})",
                self.limits.max_tensor_count
            )));
        }

        let mut metadata = Vec::with_capacity(kv_count.min(1024) as usize);
        let mut index = HashMap::new();
        for i in 0..kv_count {
            self.ctx = format!("the key of metadata entry {i}");
            let key = self.string(MAX_NAME_LEN)?;
            self.ctx = format!("metadata entry {i} ('{key}')");
            let tag = self.u32()?;
            let vt = ValueType::from_u32(tag).ok_or_else(|| {
                GgufError::Invalid(format!(
                    "metadata key '{key}' at byte {} has unknown value type {tag}",
                    self.pos - 4
                ))
            })?;
            let value = self.value(vt, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::Invalid(format!("duplicate metadata key '{key}'")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::Invalid(format!(
                        "general.alignment is {}, expected a power of two integer",
                        v.display_short()
                    )));
                }
            },
        };

        let mut tensors = Vec::with_capacity(tensor_count.min(4096) as usize);
        let mut names = HashSet::new();
        for i in 0..tensor_count {
            self.ctx = format!("the name of tensor info {i}");
            let name = self.string(MAX_NAME_LEN)?;
            self.ctx = format!("tensor info {i} ('{name}')");
            let n_dims = self.u32()?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::Invalid(format!(
                    "tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = self.u64()?;
                if d > self.limits.max_dim {
                    return Err(GgufError::LimitExceeded(format!(
                        "tensor '{name}' has a dimension of {d} (limit {})",
                        self.limits.max_dim
                    )));
                }
                dims.push(d);
            }
            let type_num = self.u32()?;
            let ggml_type = GgmlType::from_u32(type_num).ok_or_else(|| {
                GgufError::Invalid(format!("tensor '{name}' has unknown ggml type {type_num}"))
            })?;
            let offset = self.u64()?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| GgufError::Invalid(format!("tensor '{name}' is too large")))?;
            let row = dims.first().copied().unwrap_or(1);
            let row_bytes = ggml_type.row_bytes(row).ok_or_else(|| {
                GgufError::Invalid(format!(
                    "tensor '{name}' of type {ggml_type} has rows of {row} elements, not a \
                     multiple of the block size {}",
                    ggml_type.block_size()
                ))
            })?;
            let size = n_elements
                .checked_div(row)
                .map_or(Some(0), |rows| row_bytes.checked_mul(rows))
                .ok_or_else(|| GgufError::Invalid(format!("tensor '{name}' is too large")))?;
            if offset % alignment != 0 {
                return Err(GgufError::Invalid(format!(
                    "tensor '{name}' has data offset {offset}, not a multiple of the \
                     alignment {alignment}"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(GgufError::Invalid(format!("duplicate tensor name '{name}'")));
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset, size });
        }

        let data_offset = self.pos.div_ceil(alignment) * alignment;
        if tensor_count > 0 && data_offset > self.file_len {
            return Err(GgufError::Truncated(format!(
                "the data section starts at byte {data_offset} but the file is {} bytes",
                self.file_len
            )));
        }
        for t in &tensors {
            let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.size));
            match end {
                Some(end) if end <= self.file_len => {}
                _ => {
                    let end = end.map_or_else(|| "past 2^64".to_string(), |e| e.to_string());
                    return Err(GgufError::Truncated(format!(
                        "tensor '{}' ends at byte {end} but the file is {} bytes",
                        t.name, self.file_len
                    )));
                }
            }
        }

        Ok(GgufFile {
            path: None,
            version,
            file_len: self.file_len,
            metadata,
            index,
            tensors,
            alignment,
            data_offset,
        })
    }

    fn remaining(&self) -> u64 {
        self.file_len.saturating_sub(self.pos)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        let n = buf.len() as u64;
        if n > self.remaining() {
            return Err(self.truncated(n));
        }
        if self.pos + n > self.limits.max_header_bytes {
            return Err(GgufError::LimitExceeded(format!(
                "the header (metadata and tensor infos) is larger than {} bytes, reading {}",
                self.limits.max_header_bytes, self.ctx
            )));
        }
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.truncated(n)
            } else {
                GgufError::io(format!("reading {} at byte {}", self.ctx, self.pos), e)
            }
        })?;
        self.pos += n;
        Ok(())
    }

    fn truncated(&self, wanted: u64) -> GgufError {
        GgufError::Truncated(format!(
            "the file is {} bytes and ends while reading {} ({wanted} bytes at byte {})",
            self.file_len, self.ctx, self.pos
        ))
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.read(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn string(&mut self, max_len: u64) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64()?;
        if len > max_len {
            return Err(GgufError::LimitExceeded(format!(
                "string of {len} bytes at byte {at} in {} (limit {max_len})",
                self.ctx
            )));
        }
        if len > self.remaining() {
            return Err(GgufError::Truncated(format!(
                "string of {len} bytes at byte {at} in {} runs past the end of the file \
                 ({} bytes)",
                self.ctx, self.file_len
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.read(&mut buf)?;
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn value(&mut self, vt: ValueType, depth: u32) -> Result<Value, GgufError> {
        Ok(match vt {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.bytes()?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.bytes()?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            ValueType::Bool => {
                let [b] = self.bytes::<1>()?;
                match b {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    _ => {
                        return Err(GgufError::Invalid(format!(
                            "bool value {b} at byte {} in {}",
                            self.pos - 1,
                            self.ctx
                        )));
                    }
                }
            }
            ValueType::String => Value::String(self.string(self.limits.max_string_len)?),
            ValueType::Array => {
                if depth >= self.limits.max_array_depth {
                    return Err(GgufError::LimitExceeded(format!(
                        "arrays nested deeper than {} in {}",
                        self.limits.max_array_depth, self.ctx
                    )));
                }
                let at = self.pos;
                let tag = self.u32()?;
                let elem_type = ValueType::from_u32(tag).ok_or_else(|| {
                    GgufError::Invalid(format!(
                        "array at byte {at} in {} has unknown element type {tag}",
                        self.ctx
                    ))
                })?;
                let count = self.u64()?;
                if count > self.limits.max_array_len {
                    return Err(GgufError::LimitExceeded(format!(
                        "array of {count} elements at byte {at} in {} (limit {})",
                        self.ctx, self.limits.max_array_len
                    )));
                }
                let min_bytes = count.saturating_mul(elem_type.min_encoded_size());
                if min_bytes > self.remaining() {
                    return Err(GgufError::Truncated(format!(
                        "array of {count} {} values at byte {at} in {} needs at least \
                         {min_bytes} bytes but only {} remain in the file",
                        elem_type.name(),
                        self.ctx,
                        self.remaining()
                    )));
                }
                let mut values = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    values.push(self.value(elem_type, depth + 1)?);
                }
                Value::Array { elem_type, values }
            }
        })
    }
}

/// Whether `r` starts with the GGUF magic (reads at most 4 bytes). A short or empty
/// input is not GGUF.
pub fn starts_with_magic(r: &mut impl Read) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    let n = read_up_to(r, &mut magic)?;
    Ok(n == 4 && magic == GGUF_MAGIC)
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds raw GGUF bytes by hand, so malformed files can be made.
    #[derive(Default)]
    struct Raw(Vec<u8>);

    impl Raw {
        fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
            let mut r = Raw(b"GGUF".to_vec());
            r.u32(version).u64(n_tensors).u64(n_kv);
            r
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.u64(s.len() as u64);
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        fn pad_to(&mut self, align: usize) -> &mut Self {
            while !self.0.len().is_multiple_of(align) {
                self.0.push(0);
            }
            self
        }
    }

    fn err(bytes: &[u8]) -> String {
        match GgufFile::from_bytes(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn valid_file() -> Vec<u8> {
        let mut r = Raw::header(3, 1, 2);
        r.str("general.architecture").u32(8).str("llama");
        r.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(3).str("a").str("b").str("c");
        r.str("t.weight").u32(2).u64(32).u64(2).u32(GgmlType::Q8_0 as u32).u64(0);
        r.pad_to(32);
        r.0.extend(std::iter::repeat_n(0u8, 68));
        r.0
    }

    #[test]
    fn parses_a_valid_file() {
        let f = GgufFile::from_bytes(&valid_file()).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.get_array_len("tokenizer.ggml.tokens"), Some(3));
        assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap(), ["a", "b", "c"]);
        let t = &f.tensors()[0];
        assert_eq!((t.name.as_str(), t.size, t.offset), ("t.weight", 68, 0));
        assert_eq!(f.data_offset() % 32, 0);
        assert_eq!(f.summary().quantization, "Q8_0");
        assert_eq!(f.summary().parameter_count, 64);
    }

    #[test]
    fn bad_magic() {
        assert!(err(b"GGML\x03\0\0\0").contains("not a GGUF file (magic 47 47 4d 4c"));
        assert!(err(b"").contains("not a GGUF file"));
        assert!(err(b"GG").contains("magic 47 47,"));
    }

    #[test]
    fn unsupported_version() {
        let r = Raw::header(7, 0, 0);
        assert_eq!(err(&r.0), "unsupported GGUF version 7 (this reader supports versions 2 and 3)");
        let r = Raw::header(1, 0, 0);
        assert!(err(&r.0).contains("version 1"));
        let r = Raw::header(3u32.swap_bytes(), 0, 0);
        assert!(err(&r.0).contains("big-endian"));
        // Version 2 is accepted.
        assert!(GgufFile::from_bytes(&Raw::header(2, 0, 0).0).is_ok());
    }

    #[test]
    fn truncated_everywhere() {
        let bytes = valid_file();
        // Every prefix must fail cleanly, never panic.
        for n in 0..bytes.len() {
            assert!(GgufFile::from_bytes(&bytes[..n]).is_err(), "prefix of {n} bytes parsed");
        }
        let e = err(&bytes[..30]);
        assert!(e.starts_with("truncated:"), "{e}");
    }

    #[test]
    fn huge_string_length() {
        let mut r = Raw::header(3, 0, 1);
        r.u64(u64::MAX - 3);
        let e = err(&r.0);
        assert!(e.contains("string of 18446744073709551612 bytes"), "{e}");
        // Below the limit but past the end of the file.
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(8).u64(1 << 20);
        let e = err(&r.0);
        assert!(e.starts_with("truncated: string of 1048576 bytes"), "{e}");
        assert!(e.contains("metadata entry 0 ('k')"), "{e}");
    }

    #[test]
    fn huge_array_count() {
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(9).u32(4).u64(u64::MAX);
        let e = err(&r.0);
        assert!(e.starts_with("limit exceeded: array of 18446744073709551615 elements"), "{e}");
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(9).u32(8).u64(1000).str("only one");
        let e = err(&r.0);
        assert!(e.starts_with("truncated: array of 1000 string values"), "{e}");
    }

    #[test]
    fn huge_counts_in_header() {
        let r = Raw::header(3, u64::MAX, 0);
        assert!(err(&r.0).contains("tensors (limit"));
        let r = Raw::header(3, 0, u64::MAX);
        assert!(err(&r.0).contains("metadata entries (limit"));
    }

    #[test]
    fn unknown_value_type() {
        let mut r = Raw::header(3, 0, 1);
        r.str("my.key").u32(13).u32(0);
        let e = err(&r.0);
        assert_eq!(e, "invalid GGUF: metadata key 'my.key' at byte 38 has unknown value type 13");
        let mut r = Raw::header(3, 0, 1);
        r.str("my.key").u32(9).u32(99).u64(0);
        assert!(err(&r.0).contains("unknown element type 99"));
    }

    #[test]
    fn tensor_data_past_eof() {
        let mut bytes = valid_file();
        bytes.truncate(bytes.len() - 1);
        let e = err(&bytes);
        assert!(e.starts_with("truncated: tensor 't.weight' ends at byte"), "{e}");
        assert!(e.contains(&format!("but the file is {} bytes", bytes.len())), "{e}");
    }

    #[test]
    fn bad_tensor_infos() {
        let mk = |n_dims: u32, dims: &[u64], ty: u32, off: u64| {
            let mut r = Raw::header(3, 1, 0);
            r.str("x").u32(n_dims);
            for &d in dims {
                r.u64(d);
            }
            r.u32(ty).u64(off);
            r.pad_to(32);
            r.0.extend(std::iter::repeat_n(0u8, 256));
            r.0
        };
        assert!(err(&mk(5, &[1, 1, 1, 1, 1], 0, 0)).contains("5 dimensions"));
        assert!(err(&mk(1, &[4], 99, 0)).contains("unknown ggml type 99"));
        assert!(err(&mk(1, &[33], 2, 0)).contains("not a multiple of the block size 32"));
        assert!(err(&mk(1, &[4], 0, 3)).contains("not a multiple of the alignment"));
        assert!(err(&mk(2, &[1 << 40, 1 << 40], 0, 0)).contains("too large"));
        assert!(err(&mk(1, &[u64::MAX], 0, 0)).contains("limit exceeded"));
        assert!(GgufFile::from_bytes(&mk(1, &[4], 0, 0)).is_ok());
    }

    #[test]
    fn duplicate_keys_and_bad_alignment() {
        let mut r = Raw::header(3, 0, 2);
        r.str("a").u32(4).u32(1).str("a").u32(4).u32(2);
        assert!(err(&r.0).contains("duplicate metadata key 'a'"));
        let mut r = Raw::header(3, 0, 1);
        r.str("general.alignment").u32(4).u32(3);
        assert!(err(&r.0).contains("general.alignment is 3"));
    }

    #[test]
    fn nested_arrays_are_bounded() {
        let mut r = Raw::header(3, 0, 1);
        r.str("k");
        r.u32(9);
        for _ in 0..10 {
            r.u32(9).u64(1);
        }
        assert!(err(&r.0).contains("nested deeper"));
    }

    #[test]
    fn header_byte_limit() {
        let limits = ReadLimits { max_header_bytes: 40, ..ReadLimits::default() };
        let bytes = valid_file();
        let e = GgufFile::parse(&bytes[..], bytes.len() as u64, &limits).unwrap_err();
        assert!(e.to_string().contains("larger than 40 bytes"), "{e}");
    }
}
