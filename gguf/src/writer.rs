//! A streaming GGUF v3 writer.
//!
//! Describe the file first with a [`GgufBuilder`] (metadata and tensor infos, so every
//! tensor's offset is known), then [`GgufBuilder::begin`] writes the header and returns a
//! [`GgufWriter`] that takes the tensor data in order, one tensor or one chunk at a time,
//! padding each tensor to the alignment. Nothing but the header is held in memory.
//!
//! ```no_run
//! # use corral_gguf::{writer::GgufBuilder, GgmlType, Value};
//! # fn main() -> Result<(), corral_gguf::GgufError> {
//! let mut b = GgufBuilder::new();
//! b.add_metadata("general.architecture", Value::String("llama".into()))?;
//! b.add_tensor("output_norm.weight", &[64], GgmlType::F32)?;
//! let file = std::fs::File::create("x.gguf").unwrap();
//! let mut w = b.begin(std::io::BufWriter::new(file))?;
//! w.write_tensor("output_norm.weight", &[0u8; 256])?;
//! w.finish()?;
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::io::Write;

use crate::error::GgufError;
use crate::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::types::{GgmlType, Value, ValueType};

/// The GGUF version this writer produces.
pub const GGUF_VERSION: u32 = 3;

/// One tensor to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Dimensions in GGUF order (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

/// Collects the metadata and tensor infos of a GGUF file before it is written.
#[derive(Debug, Clone)]
pub struct GgufBuilder {
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<TensorSpec>,
    names: HashSet<String>,
    alignment: u64,
    data_size: u64,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufBuilder {
    /// An empty file with the default 32-byte alignment.
    pub fn new() -> Self {
        GgufBuilder {
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: DEFAULT_ALIGNMENT,
            data_size: 0,
        }
    }

    /// Adds a metadata entry. Keys must be unique. Setting `general.alignment` (before
    /// any tensor is added) changes the data alignment.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: Value,
    ) -> Result<&mut Self, GgufError> {
        let key = key.into();
        check_value(&key, &value)?;
        if key == "general.alignment" {
            let a = value.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                GgufError::Writer(format!("general.alignment must be a power of two, not {value}"))
            })?;
            if !self.tensors.is_empty() && a != self.alignment {
                return Err(GgufError::Writer(
                    "general.alignment must be set before tensors are added".into(),
                ));
            }
            self.alignment = a;
        }
        if !self.keys.insert(key.clone()) {
            return Err(GgufError::Writer(format!("duplicate metadata key '{key}'")));
        }
        self.metadata.push((key, value));
        Ok(self)
    }

    /// Adds a tensor info; its data must later be written in the same order.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
    ) -> Result<&mut Self, GgufError> {
        let name = name.into();
        if dims.is_empty() || dims.len() > MAX_DIMS as usize {
            return Err(GgufError::Writer(format!(
                "tensor '{name}' has {} dimensions (1 to {MAX_DIMS})",
                dims.len()
            )));
        }
        let size = tensor_size(dims, ggml_type).ok_or_else(|| {
            GgufError::Writer(format!(
                "tensor '{name}' {dims:?} cannot be stored as {ggml_type} (rows must be a \
                 multiple of {} elements)",
                ggml_type.block_size()
            ))
        })?;
        if !self.names.insert(name.clone()) {
            return Err(GgufError::Writer(format!("duplicate tensor name '{name}'")));
        }
        let offset = self.data_size;
        self.data_size = offset + size.div_ceil(self.alignment) * self.alignment;
        self.tensors.push(TensorSpec { name, dims: dims.to_vec(), ggml_type, offset, size });
        Ok(self)
    }

    /// The tensors added so far.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Bytes of the data section (all tensors with their padding).
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// Writes the header, metadata and tensor infos to `w` and returns the writer for
    /// the tensor data.
    pub fn begin<W: Write>(self, w: W) -> Result<GgufWriter<W>, GgufError> {
        let mut out = Counting { w, pos: 0 };
        out.put(&GGUF_MAGIC)?;
        out.put(&GGUF_VERSION.to_le_bytes())?;
        out.put(&(self.tensors.len() as u64).to_le_bytes())?;
        out.put(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            out.string(key)?;
            out.put(&(value.value_type() as u32).to_le_bytes())?;
            out.value(value)?;
        }
        for t in &self.tensors {
            out.string(&t.name)?;
            out.put(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                out.put(&d.to_le_bytes())?;
            }
            out.put(&t.ggml_type.as_u32().to_le_bytes())?;
            out.put(&t.offset.to_le_bytes())?;
        }
        out.pad(self.alignment)?;
        let data_offset = out.pos;
        Ok(GgufWriter {
            out,
            tensors: self.tensors,
            alignment: self.alignment,
            current: 0,
            written: 0,
            data_offset,
        })
    }
}

/// Bytes a tensor of these dims and type takes, if its rows are whole blocks.
pub fn tensor_size(dims: &[u64], ggml_type: GgmlType) -> Option<u64> {
    let row = *dims.first()?;
    let rows = dims[1..].iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
    ggml_type.row_bytes(row)?.checked_mul(rows)
}

fn check_value(key: &str, value: &Value) -> Result<(), GgufError> {
    if let Value::Array { elem_type, values } = value {
        for v in values {
            if v.value_type() != *elem_type {
                return Err(GgufError::Writer(format!(
                    "metadata '{key}': array of {} holds a {}",
                    elem_type.name(),
                    v.value_type().name()
                )));
            }
            check_value(key, v)?;
        }
    }
    Ok(())
}

/// Writes tensor data after the header; see the [module docs](self).
#[derive(Debug)]
pub struct GgufWriter<W: Write> {
    out: Counting<W>,
    tensors: Vec<TensorSpec>,
    alignment: u64,
    current: usize,
    written: u64,
    data_offset: u64,
}

impl<W: Write> GgufWriter<W> {
    /// The tensor whose data is expected next, or `None` when all are written.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.current)
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Writes a chunk of the current tensor's data. Chunks must not cross a tensor's end;
    /// when a tensor is complete, the padding is written and the next one begins.
    pub fn write_data(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        let Some(t) = self.tensors.get(self.current) else {
            return Err(GgufError::Writer(format!(
                "{} bytes of tensor data given after every tensor was written",
                bytes.len()
            )));
        };
        let left = t.size - self.written;
        if bytes.len() as u64 > left {
            return Err(GgufError::Writer(format!(
                "tensor '{}' takes {} bytes but {} were given",
                t.name,
                t.size,
                self.written + bytes.len() as u64
            )));
        }
        self.out.put(bytes)?;
        self.written += bytes.len() as u64;
        if self.written == t.size {
            self.out.pad(self.alignment)?;
            self.current += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Writes the whole data of the tensor `name`, which must be the next one.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), GgufError> {
        match self.tensors.get(self.current) {
            Some(t) if t.name == name && self.written == 0 => {
                if bytes.len() as u64 != t.size {
                    return Err(GgufError::Writer(format!(
                        "tensor '{name}' takes {} bytes but {} were given",
                        t.size,
                        bytes.len()
                    )));
                }
                self.write_data(bytes)
            }
            Some(t) => Err(GgufError::Writer(format!(
                "tensor '{name}' written out of order; '{}' is next",
                t.name
            ))),
            None => Err(GgufError::Writer(format!(
                "tensor '{name}' written after every tensor was written"
            ))),
        }
    }

    /// Checks every tensor was written, flushes, and returns the inner writer.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if let Some(t) = self.tensors.get(self.current) {
            return Err(GgufError::Writer(format!(
                "finished before tensor '{}' was written ({} of {} tensors done)",
                t.name,
                self.current,
                self.tensors.len()
            )));
        }
        self.out.w.flush().map_err(|e| GgufError::io("flushing the GGUF file", e))?;
        Ok(self.out.w)
    }
}

#[derive(Debug)]
struct Counting<W> {
    w: W,
    pos: u64,
}

impl<W: Write> Counting<W> {
    fn put(&mut self, b: &[u8]) -> Result<(), GgufError> {
        self.w
            .write_all(b)
            .map_err(|e| GgufError::io(format!("writing the GGUF file at byte {}", self.pos), e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self, alignment: u64) -> Result<(), GgufError> {
        let n = self.pos.div_ceil(alignment) * alignment - self.pos;
        const ZEROS: [u8; 64] = [0; 64];
        let mut left = n as usize;
        while left > 0 {
            let k = left.min(ZEROS.len());
            self.put(&ZEROS[..k])?;
            left -= k;
        }
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), GgufError> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }

    fn value(&mut self, v: &Value) -> Result<(), GgufError> {
        match v {
            Value::U8(x) => self.put(&x.to_le_bytes()),
            Value::I8(x) => self.put(&x.to_le_bytes()),
            Value::U16(x) => self.put(&x.to_le_bytes()),
            Value::I16(x) => self.put(&x.to_le_bytes()),
            Value::U32(x) => self.put(&x.to_le_bytes()),
            Value::I32(x) => self.put(&x.to_le_bytes()),
            Value::F32(x) => self.put(&x.to_le_bytes()),
            Value::U64(x) => self.put(&x.to_le_bytes()),
            Value::I64(x) => self.put(&x.to_le_bytes()),
            Value::F64(x) => self.put(&x.to_le_bytes()),
            Value::Bool(b) => self.put(&[u8::from(*b)]),
            Value::String(s) => self.string(s),
            Value::Array { elem_type, values } => {
                self.put(&(*elem_type as u32).to_le_bytes())?;
                self.put(&(values.len() as u64).to_le_bytes())?;
                values.iter().try_for_each(|x| self.value(x))
            }
        }
    }
}

impl ValueType {
    /// An empty array of this element type.
    pub fn empty_array(self) -> Value {
        Value::Array { elem_type: self, values: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::GgufFile;

    #[test]
    fn round_trips_every_value_type() {
        let values = vec![
            ("u8", Value::U8(200)),
            ("i8", Value::I8(-5)),
            ("u16", Value::U16(60000)),
            ("i16", Value::I16(-3000)),
            ("u32", Value::U32(4_000_000_000)),
            ("i32", Value::I32(-2_000_000_000)),
            ("f32", Value::F32(1.5e-5)),
            ("bool", Value::Bool(true)),
            ("string", Value::String("héllo 日本語".into())),
            ("u64", Value::U64(u64::MAX)),
            ("i64", Value::I64(i64::MIN)),
            ("f64", Value::F64(std::f64::consts::PI)),
            ("strings", Value::string_array(["a b", "", "ĠĊ"])),
            ("ints", Value::i32_array([1, -2, 3])),
            ("empty", ValueType::F32.empty_array()),
            (
                "nested",
                Value::Array {
                    elem_type: ValueType::Array,
                    values: vec![Value::i32_array([1]), Value::i32_array([2, 3])],
                },
            ),
        ];
        let mut b = GgufBuilder::new();
        for (k, v) in &values {
            b.add_metadata(*k, v.clone()).unwrap();
        }
        b.add_tensor("a", &[3], GgmlType::F32).unwrap();
        b.add_tensor("b", &[32, 2], GgmlType::Q4_0).unwrap();
        let mut w = b.begin(Vec::new()).unwrap();
        assert_eq!(w.data_offset() % 32, 0);
        w.write_tensor("a", &[1u8; 12]).unwrap();
        w.write_data(&[2u8; 20]).unwrap();
        w.write_data(&[3u8; 16]).unwrap();
        assert!(w.next_tensor().is_none());
        let bytes = w.finish().unwrap();

        let f = GgufFile::from_bytes(&bytes).unwrap();
        assert_eq!(f.version(), 3);
        for ((k, v), (rk, rv)) in values.iter().zip(f.metadata()) {
            assert_eq!(k, rk);
            assert_eq!(v, rv);
        }
        let t = f.tensors();
        assert_eq!((t[0].offset, t[0].size), (0, 12));
        assert_eq!((t[1].offset, t[1].size), (32, 36));
        assert_eq!(t[1].dims, [32, 2]);
        let start = (f.data_offset() + t[1].offset) as usize;
        assert_eq!(&bytes[start..start + 20], &[2u8; 20]);
        assert_eq!(bytes.len() as u64, f.data_offset() + 96);
    }

    #[test]
    fn misuse_is_reported() {
        let mut b = GgufBuilder::new();
        assert!(b.add_tensor("q", &[33], GgmlType::Q8_0).is_err());
        assert!(b.add_tensor("q", &[], GgmlType::F32).is_err());
        b.add_tensor("a", &[4], GgmlType::F32).unwrap();
        assert!(
            b.add_tensor("a", &[4], GgmlType::F32).unwrap_err().to_string().contains("duplicate")
        );
        b.add_metadata("k", Value::U8(1)).unwrap();
        assert!(b.add_metadata("k", Value::U8(1)).is_err());
        let bad = Value::Array { elem_type: ValueType::U8, values: vec![Value::I8(1)] };
        assert!(b.add_metadata("bad", bad).is_err());
        b.add_tensor("b", &[4], GgmlType::F32).unwrap();
        let mut w = b.begin(Vec::new()).unwrap();
        assert!(w.write_tensor("b", &[0; 16]).unwrap_err().to_string().contains("out of order"));
        assert!(w.write_data(&[0; 17]).is_err());
        w.write_tensor("a", &[0; 16]).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("before tensor 'b'"), "{e}");
    }

    #[test]
    fn custom_alignment() {
        let mut b = GgufBuilder::new();
        b.add_metadata("general.alignment", Value::U32(64)).unwrap();
        b.add_tensor("a", &[1], GgmlType::F32).unwrap();
        b.add_tensor("b", &[1], GgmlType::F32).unwrap();
        let mut w = b.begin(Vec::new()).unwrap();
        w.write_tensor("a", &[0; 4]).unwrap();
        w.write_tensor("b", &[0; 4]).unwrap();
        let bytes = w.finish().unwrap();
        let f = GgufFile::from_bytes(&bytes).unwrap();
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_offset() % 64, 0);
        assert_eq!(f.tensors()[1].offset, 64);
    }
}
