//! The messages between the host and an engine worker, and their framing: a 4-byte
//! little-endian length, then the message in postcard. Every read is bounded
//! ([`MAX_MESSAGE`]), so a confused peer cannot make the other allocate without limit.

use std::io::{Read, Write};

use corral_backend_api::{
    BackendError, BatchEntry, Capabilities, ContextParams, ErrorKind,
    plain::{Device, ModelInfo, SpecialTokenIds},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The largest message either side accepts (a 262k vocabulary's token table fits).
pub(crate) const MAX_MESSAGE: usize = 256 << 20;

/// A call from the host. Model calls travel on the model channel, context calls on the
/// context channel (see [`super`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Call {
    /// Open and initialise the plugin of this manifest, with these options.
    Init { manifest_path: std::path::PathBuf, options_json: String },
    /// Load a model.
    LoadModel { path: String, format: String, options: WireLoadOptions },
    /// Text to tokens.
    Tokenize { text: String, add_special: bool, parse_special: bool },
    /// Tokens to text.
    Detokenize { tokens: Vec<u32> },
    /// Every token's bytes, in id order.
    TokenTable,
    /// Create a context whose logits rows (up to `n_seq_max` per decode) go through a
    /// shared-memory file the worker creates.
    NewContext { params: WireParams, per_sequence: bool },
    /// Decode a batch; the logits rows it asked for are written to the context's
    /// shared memory, in batch order, as far as there is room.
    Decode { ctx: u32, batch: Vec<WireEntry> },
    /// One logits row that did not fit in the shared memory.
    Logits { ctx: u32, index: u32 },
    /// A pooled embedding.
    Embeddings { ctx: u32, seq: u32 },
    /// `kv_remove`.
    KvRemove { ctx: u32, seq: i32, p0: i32, p1: i32 },
    /// `kv_copy`.
    KvCopy { ctx: u32, src: u32, dst: u32, p0: i32, p1: i32 },
    /// `kv_pos_max`.
    KvPosMax { ctx: u32, seq: u32 },
    /// `kv_clear`.
    KvClear { ctx: u32 },
    /// `kv_shift`.
    KvShift { ctx: u32, seq: u32, p0: i32, p1: i32, delta: i32 },
    /// Drop a context.
    DropContext { ctx: u32 },
}

/// A successful answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    /// Nothing to say.
    Unit,
    /// The plugin is initialised.
    /// `abi_note`: how the manifest's `abi` disagrees with the library's, if it does.
    Inited { version: String, devices: Vec<WireDevice>, describe: String, abi_note: Option<String> },
    /// The model is loaded.
    Loaded { info: WireModelInfo, special: WireSpecial, vocab_size: u32, capabilities: u64 },
    /// Token ids.
    Tokens(Vec<u32>),
    /// Text.
    Text(String),
    /// Every token's bytes.
    Table(Vec<Vec<u8>>),
    /// A context was created.
    Context { id: u32, params: WireParams, shm_path: std::path::PathBuf, rows: u32 },
    /// A batch was decoded; the batch indices whose logits rows are in shared memory,
    /// row `i` holding `indices[i]`.
    Decoded { indices: Vec<u32> },
    /// Floats (a logits row or an embedding).
    Floats(Vec<f32>),
    /// An integer (`kv_pos_max`).
    Int(i32),
}

/// A call's outcome.
pub(crate) type Reply = Result<Answer, WireError>;

/// [`BackendError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireError {
    kind: u8,
    message: String,
}

const KINDS: [ErrorKind; 7] = [
    ErrorKind::InvalidInput,
    ErrorKind::NotFound,
    ErrorKind::OutOfMemory,
    ErrorKind::Unsupported,
    ErrorKind::ContextFull,
    ErrorKind::Internal,
    ErrorKind::Panic,
];

impl From<BackendError> for WireError {
    fn from(e: BackendError) -> Self {
        let kind = KINDS.iter().position(|k| *k == e.kind).unwrap_or(5) as u8;
        WireError { kind, message: e.message.to_string() }
    }
}

/// The most of an engine's error message the host keeps (it reaches clients, and a
/// plugin once answered a 32 MiB one, which became a 33 MB HTTP error body).
pub(crate) const MAX_ERROR_MESSAGE: usize = 4 << 10;

/// `message` cut to [`MAX_ERROR_MESSAGE`] bytes at a character boundary, saying so.
pub(crate) fn bounded_message(mut message: String) -> String {
    if message.len() <= MAX_ERROR_MESSAGE {
        return message;
    }
    let total = message.len();
    let mut cut = MAX_ERROR_MESSAGE;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!("… (cut: the engine's message was {total} bytes)"));
    message
}

impl From<WireError> for BackendError {
    fn from(e: WireError) -> Self {
        let kind = KINDS.get(usize::from(e.kind)).copied().unwrap_or(ErrorKind::Internal);
        BackendError::new(kind, bounded_message(e.message))
    }
}

/// [`corral_backend_api::LoadOptions`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireLoadOptions {
    pub(crate) n_gpu_layers: i32,
    pub(crate) main_gpu: i32,
    pub(crate) use_mmap: bool,
    pub(crate) use_mlock: bool,
    pub(crate) n_threads: u32,
    pub(crate) extra: Vec<(String, String)>,
}

impl From<&corral_backend_api::LoadOptions> for WireLoadOptions {
    fn from(o: &corral_backend_api::LoadOptions) -> Self {
        WireLoadOptions {
            n_gpu_layers: o.n_gpu_layers,
            main_gpu: o.main_gpu,
            use_mmap: o.use_mmap,
            use_mlock: o.use_mlock,
            n_threads: o.n_threads,
            extra: o.extra.iter().map(|t| (t.0.to_string(), t.1.to_string())).collect(),
        }
    }
}

impl From<WireLoadOptions> for corral_backend_api::LoadOptions {
    fn from(o: WireLoadOptions) -> Self {
        corral_backend_api::LoadOptions {
            n_gpu_layers: o.n_gpu_layers,
            main_gpu: o.main_gpu,
            use_mmap: o.use_mmap,
            use_mlock: o.use_mlock,
            n_threads: o.n_threads,
            extra: o
                .extra
                .into_iter()
                .map(|(k, v)| corral_backend_api::Tuple2(k.into(), v.into()))
                .collect(),
        }
    }
}

/// [`ContextParams`] on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct WireParams {
    n_ctx: u32,
    n_batch: u32,
    n_seq_max: u32,
    n_threads: u32,
    n_threads_batch: u32,
    embeddings: bool,
    seed: u64,
}

impl From<&ContextParams> for WireParams {
    fn from(p: &ContextParams) -> Self {
        WireParams {
            n_ctx: p.n_ctx,
            n_batch: p.n_batch,
            n_seq_max: p.n_seq_max,
            n_threads: p.n_threads,
            n_threads_batch: p.n_threads_batch,
            embeddings: p.embeddings,
            seed: p.seed,
        }
    }
}

impl From<WireParams> for ContextParams {
    fn from(p: WireParams) -> Self {
        ContextParams {
            n_ctx: p.n_ctx,
            n_batch: p.n_batch,
            n_seq_max: p.n_seq_max,
            n_threads: p.n_threads,
            n_threads_batch: p.n_threads_batch,
            embeddings: p.embeddings,
            seed: p.seed,
        }
    }
}

/// [`BatchEntry`] on the wire: token, position, sequence, wants logits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct WireEntry(u32, u32, u32, bool);

impl From<&BatchEntry> for WireEntry {
    fn from(e: &BatchEntry) -> Self {
        WireEntry(e.token, e.pos, e.seq, e.logits)
    }
}

impl From<WireEntry> for BatchEntry {
    fn from(e: WireEntry) -> Self {
        BatchEntry { token: e.0, pos: e.1, seq: e.2, logits: e.3 }
    }
}

/// [`ModelInfo`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireModelInfo {
    architecture: String,
    name: String,
    parameter_count: u64,
    context_length: u32,
    embedding_length: u32,
    block_count: u32,
    quantization: String,
    size_bytes: u64,
    kv: Vec<(String, String)>,
}

impl From<ModelInfo> for WireModelInfo {
    fn from(m: ModelInfo) -> Self {
        WireModelInfo {
            architecture: m.architecture,
            name: m.name,
            parameter_count: m.parameter_count,
            context_length: m.context_length,
            embedding_length: m.embedding_length,
            block_count: m.block_count,
            quantization: m.quantization,
            size_bytes: m.size_bytes,
            kv: m.kv,
        }
    }
}

impl From<WireModelInfo> for ModelInfo {
    fn from(m: WireModelInfo) -> Self {
        ModelInfo {
            architecture: m.architecture,
            name: m.name,
            parameter_count: m.parameter_count,
            context_length: m.context_length,
            embedding_length: m.embedding_length,
            block_count: m.block_count,
            quantization: m.quantization,
            size_bytes: m.size_bytes,
            kv: m.kv,
        }
    }
}

/// [`SpecialTokenIds`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireSpecial {
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl From<SpecialTokenIds> for WireSpecial {
    fn from(s: SpecialTokenIds) -> Self {
        WireSpecial {
            bos: s.bos,
            eos: s.eos,
            eot: s.eot,
            eog: s.eog,
            add_bos: s.add_bos,
            add_eos: s.add_eos,
        }
    }
}

impl From<WireSpecial> for SpecialTokenIds {
    fn from(s: WireSpecial) -> Self {
        SpecialTokenIds {
            bos: s.bos,
            eos: s.eos,
            eot: s.eot,
            eog: s.eog,
            add_bos: s.add_bos,
            add_eos: s.add_eos,
        }
    }
}

/// [`Device`] on the wire (the kind by name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireDevice {
    index: u32,
    name: String,
    kind: String,
    memory_total: u64,
    memory_free: u64,
}

impl From<Device> for WireDevice {
    fn from(d: Device) -> Self {
        WireDevice {
            index: d.index,
            name: d.name,
            kind: format!("{:?}", d.kind),
            memory_total: d.memory_total,
            memory_free: d.memory_free,
        }
    }
}

impl From<WireDevice> for Device {
    fn from(d: WireDevice) -> Self {
        use corral_backend_api::DeviceKind as K;
        let kind = [K::Cpu, K::Gpu, K::Accelerator]
            .into_iter()
            .find(|k| format!("{k:?}") == d.kind)
            .unwrap_or(K::Cpu);
        Device {
            index: d.index,
            name: d.name,
            kind,
            memory_total: d.memory_total,
            memory_free: d.memory_free,
        }
    }
}

/// The capabilities of an answer's bits.
pub(crate) fn capabilities(bits: u64) -> Capabilities {
    Capabilities::from_bits(bits)
}

/// Sends `framed` (a payload after 4 placeholder bytes) as one frame: its length in the
/// 4 bytes (little-endian), then the payload, in a single write, so a frame never reaches
/// the peer in two pieces when the writer is preempted between two writes. Refuses
/// payloads over `max`.
pub fn write_frame(w: &mut impl Write, mut framed: Vec<u8>, max: usize) -> std::io::Result<()> {
    let len = framed
        .len()
        .checked_sub(4)
        .and_then(|l| u32::try_from(l).ok())
        .filter(|&l| l as usize <= max)
        .ok_or_else(|| std::io::Error::other("message too large"))?;
    framed[..4].copy_from_slice(&len.to_le_bytes());
    w.write_all(&framed)?;
    w.flush()
}

/// Reads one frame's payload (at most `max` bytes); `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::other(format!("message of {len} bytes is over the limit")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Writes one message as a frame ([`write_frame`]).
pub(crate) fn write_message<T: Serialize>(w: &mut impl Write, m: &T) -> std::io::Result<()> {
    let framed = postcard::to_extend(m, vec![0u8; 4]).map_err(std::io::Error::other)?;
    write_frame(w, framed, MAX_MESSAGE)
}

/// Reads one framed message; `Ok(None)` at a clean end of stream.
pub(crate) fn read_message<T: DeserializeOwned>(r: &mut impl Read) -> std::io::Result<Option<T>> {
    match read_frame(r, MAX_MESSAGE)? {
        Some(buf) => postcard::from_bytes(&buf).map(Some).map_err(std::io::Error::other),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bound_their_size() {
        let mut buf = Vec::new();
        let framed = |p: &[u8]| [&[0u8; 4][..], p].concat();
        write_frame(&mut buf, framed(b"hello"), 16).unwrap();
        write_frame(&mut buf, framed(b""), 16).unwrap();
        assert!(write_frame(&mut Vec::new(), framed(&[1; 17]), 16).is_err());
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r, 16).unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(read_frame(&mut r, 16).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(read_frame(&mut r, 16).unwrap(), None);
        let huge = 17u32.to_le_bytes();
        assert!(read_frame(&mut &huge[..], 16).is_err());
    }

    #[test]
    fn round_trip_and_bounds() {
        let mut buf = Vec::new();
        let call = Call::Decode { ctx: 3, batch: vec![WireEntry(1, 2, 0, true)] };
        write_message(&mut buf, &call).unwrap();
        let back: Call = read_message(&mut buf.as_slice()).unwrap().unwrap();
        assert!(matches!(back, Call::Decode { ctx: 3, .. }));
        let e = BackendError::new(ErrorKind::OutOfMemory, "no room");
        let w = WireError::from(e.clone());
        assert_eq!(BackendError::from(w), e);
        let huge = (u32::MAX).to_le_bytes();
        assert!(read_message::<Call>(&mut huge.as_slice()).is_err());
        assert!(read_message::<Call>(&mut [].as_slice()).unwrap().is_none());
    }

    #[test]
    fn engine_error_messages_are_bounded() {
        let huge = WireError { kind: 5, message: "é".repeat(1 << 20) };
        let e = BackendError::from(huge);
        assert!(e.message.len() < MAX_ERROR_MESSAGE + 100, "{}", e.message.len());
        assert!(e.message.ends_with("(cut: the engine's message was 2097152 bytes)"));
        let small = WireError { kind: 0, message: "bad token".into() };
        assert_eq!(BackendError::from(small), BackendError::invalid("bad token"));
    }
}
