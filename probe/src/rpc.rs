//! Remote workers: machines that lend their devices over ggml's RPC protocol (`corral
//! worker`, or llama.cpp's own `rpc-server`), asked over the network what they lend.
//!
//! ggml's RPC client aborts its process when a worker cannot be reached or speaks another
//! protocol version, and blocks without a timeout on a worker that accepts a connection
//! but does not answer (a worker serves one client at a time; the others wait in its
//! listen queue). So everything that is about to hand an endpoint to ggml asks it here
//! first, with timeouts: [`probe_worker`] does the protocol's `HELLO` (and reads the
//! worker's version), then counts its devices and asks each one's memory, and closes.
//!
//! The wire format (ggml/src/ggml-rpc/ggml-rpc.cpp, TCP transport): a request is a
//! command byte, a little-endian `u64` size and that many bytes; an answer is a `u64`
//! size and that many bytes. `HELLO` (14) sends 24 capability bytes (zeros: plain TCP)
//! and answers `major, minor, patch, pad` and 24 capability bytes; `DEVICE_COUNT` (15)
//! answers a `u32`; `GET_DEVICE_MEMORY` (11) takes a `u32` device and answers two `u64`s,
//! free then total.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Serialize;

/// The RPC protocol version of the llama.cpp this corral is built with
/// (`RPC_PROTO_*_VERSION` in ggml-rpc.h of llama-cpp-sys-2 0.1.161). A worker of another
/// major, or of a newer minor, is refused, as ggml's own client refuses it.
pub const PROTOCOL: RpcVersion = RpcVersion { major: 7, minor: 0, patch: 0 };

/// How long a worker may take to accept a connection or to answer one message.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const CMD_GET_DEVICE_MEMORY: u8 = 11;
const CMD_HELLO: u8 = 14;
const CMD_DEVICE_COUNT: u8 = 15;
const CAPS_SIZE: usize = 24;
/// More devices than any machine has; a larger count is a peer that is not a worker.
const MAX_DEVICES: u32 = 256;

/// A version of ggml's RPC protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RpcVersion {
    /// Incompatible changes.
    pub major: u8,
    /// Additions a client of a later minor may use.
    pub minor: u8,
    /// Fixes.
    pub patch: u8,
}

impl std::fmt::Display for RpcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl RpcVersion {
    /// Whether a client of version `self` may use a worker of version `worker`: the same
    /// major and a minor no newer than the client's (ggml's own rule).
    pub fn can_use(self, worker: RpcVersion) -> bool {
        worker.major == self.major && worker.minor <= self.minor
    }
}

/// One device a worker lends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RpcDevice {
    /// Its index on the worker.
    pub index: u32,
    /// Free memory in bytes, as the worker reports it.
    pub memory_free: u64,
    /// Total memory in bytes.
    pub memory_total: u64,
}

/// What a worker answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RpcWorker {
    /// `host:port` as given.
    pub endpoint: String,
    /// Its protocol version.
    pub version: RpcVersion,
    /// The devices it lends.
    pub devices: Vec<RpcDevice>,
}

impl RpcWorker {
    /// Free memory over all of its devices.
    pub fn memory_free(&self) -> u64 {
        self.devices.iter().map(|d| d.memory_free).sum()
    }
}

/// Why a worker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The endpoint is not `host:port`, or the host does not resolve.
    #[error("RPC worker {endpoint:?}: {reason}")]
    BadEndpoint {
        /// As given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be made.
    #[error("RPC worker {endpoint} cannot be reached: {source}")]
    Unreachable {
        /// As given.
        endpoint: String,
        /// The connection's error.
        source: std::io::Error,
    },
    /// A connection was made, but no answer came in time.
    #[error(
        "RPC worker {endpoint} accepted the connection but did not answer within {}s: it is \
         serving another client (a worker serves one corral engine at a time), or it is not \
         a corral worker",
        timeout.as_secs()
    )]
    NoAnswer {
        /// As given.
        endpoint: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// The worker closed the connection or answered something that is not the protocol.
    #[error("RPC worker {endpoint} {detail}")]
    Protocol {
        /// As given.
        endpoint: String,
        /// What happened.
        detail: String,
    },
    /// The worker speaks another version of the protocol.
    #[error(
        "RPC worker {endpoint} speaks RPC protocol {worker}, this corral speaks {ours}: run the \
         same corral version on both machines"
    )]
    Version {
        /// As given.
        endpoint: String,
        /// The worker's version.
        worker: RpcVersion,
        /// The version this side speaks.
        ours: RpcVersion,
    },
}

/// Splits a list of endpoints as the settings give it (`CORRAL_RPC`, `--rpc`): commas
/// or whitespace between them, empty entries dropped.
pub fn parse_endpoints(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Resolves `host:port` (a bracketed IPv6 address for the host, as in `[::1]:50052`).
pub fn resolve(endpoint: &str) -> Result<Vec<SocketAddr>, RpcError> {
    let bad = |reason: String| RpcError::BadEndpoint { endpoint: endpoint.to_string(), reason };
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(bad("not HOST:PORT".into()));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad("not HOST:PORT".into()));
    }
    let addrs: Vec<SocketAddr> = endpoint
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad(format!("{host} resolves to no address")));
    }
    Ok(addrs)
}

struct Conn<'a> {
    endpoint: &'a str,
    stream: TcpStream,
    timeout: Duration,
}

impl Conn<'_> {
    fn io_error(&self, e: &std::io::Error, doing: &str) -> RpcError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                RpcError::NoAnswer { endpoint: self.endpoint.to_string(), timeout: self.timeout }
            }
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => RpcError::Protocol {
                endpoint: self.endpoint.to_string(),
                detail: format!(
                    "closed the connection {doing}: it speaks another RPC protocol version \
                     (an older or newer corral or llama.cpp) or is not an RPC worker"
                ),
            },
            _ => RpcError::Protocol {
                endpoint: self.endpoint.to_string(),
                detail: format!("failed {doing}: {e}"),
            },
        }
    }

    /// Sends one command and reads its answer, which must be `answer_len` bytes.
    fn call(&mut self, cmd: u8, input: &[u8], answer_len: usize) -> Result<Vec<u8>, RpcError> {
        let mut msg = Vec::with_capacity(9 + input.len());
        msg.push(cmd);
        msg.extend_from_slice(&(input.len() as u64).to_le_bytes());
        msg.extend_from_slice(input);
        self.stream.write_all(&msg).map_err(|e| self.io_error(&e, "while we sent a request"))?;
        let mut size = [0u8; 8];
        self.stream.read_exact(&mut size).map_err(|e| self.io_error(&e, "instead of answering"))?;
        let size = u64::from_le_bytes(size);
        if size != answer_len as u64 {
            return Err(RpcError::Protocol {
                endpoint: self.endpoint.to_string(),
                detail: format!(
                    "answered {size} bytes where {answer_len} were expected: it speaks another \
                     RPC protocol version or is not an RPC worker"
                ),
            });
        }
        let mut out = vec![0u8; answer_len];
        self.stream.read_exact(&mut out).map_err(|e| self.io_error(&e, "in mid-answer"))?;
        Ok(out)
    }
}

fn connect<'a>(endpoint: &'a str, timeout: Duration) -> Result<Conn<'a>, RpcError> {
    let mut last = None;
    for addr in resolve(endpoint)? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                let set = stream
                    .set_read_timeout(Some(timeout))
                    .and_then(|()| stream.set_write_timeout(Some(timeout)))
                    .and_then(|()| stream.set_nodelay(true));
                if let Err(source) = set {
                    return Err(RpcError::Unreachable { endpoint: endpoint.to_string(), source });
                }
                return Ok(Conn { endpoint, stream, timeout });
            }
            Err(e) => last = Some(e),
        }
    }
    let source = last.unwrap_or_else(|| std::io::Error::other("no address"));
    Err(RpcError::Unreachable { endpoint: endpoint.to_string(), source })
}

fn hello(conn: &mut Conn<'_>) -> Result<RpcVersion, RpcError> {
    let answer = conn.call(CMD_HELLO, &[0u8; CAPS_SIZE], 4 + CAPS_SIZE)?;
    Ok(RpcVersion { major: answer[0], minor: answer[1], patch: answer[2] })
}

/// Connects to the worker at `endpoint`, checks that a client of version `ours` may use
/// it, and asks what it lends; the connection is closed before this returns, so the
/// worker is free for the client that follows. Every step has `timeout`.
pub fn probe_worker(
    endpoint: &str,
    ours: RpcVersion,
    timeout: Duration,
) -> Result<RpcWorker, RpcError> {
    let mut conn = connect(endpoint, timeout)?;
    let version = hello(&mut conn)?;
    if !ours.can_use(version) {
        return Err(RpcError::Version { endpoint: endpoint.to_string(), worker: version, ours });
    }
    let count = conn.call(CMD_DEVICE_COUNT, &[], 4)?;
    let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
    if count > MAX_DEVICES {
        return Err(RpcError::Protocol {
            endpoint: endpoint.to_string(),
            detail: format!("says it has {count} devices; it is not an RPC worker"),
        });
    }
    let mut devices = Vec::with_capacity(count as usize);
    for index in 0..count {
        let m = conn.call(CMD_GET_DEVICE_MEMORY, &index.to_le_bytes(), 16)?;
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&m[i..i + 8]);
            u64::from_le_bytes(b)
        };
        devices.push(RpcDevice { index, memory_free: word(0), memory_total: word(8) });
    }
    Ok(RpcWorker { endpoint: endpoint.to_string(), version, devices })
}

/// Whether every address `endpoint` names is a loopback address (`127.0.0.0/8`, `::1`,
/// `localhost`).
pub fn is_loopback(endpoint: &str) -> Result<bool, RpcError> {
    Ok(resolve(endpoint)?.iter().all(|a| a.ip().is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A fake worker answering `HELLO` with `version` and then, for a matching version,
    /// one device of 3 GiB free of 4.
    fn fake_worker(version: [u8; 3]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            loop {
                let mut head = [0u8; 9];
                if s.read_exact(&mut head).is_err() {
                    return;
                }
                let n = u64::from_le_bytes(head[1..9].try_into().unwrap()) as usize;
                let mut input = vec![0u8; n];
                s.read_exact(&mut input).unwrap();
                let answer: Vec<u8> = match head[0] {
                    CMD_HELLO => {
                        let mut a = vec![version[0], version[1], version[2], 0];
                        a.extend_from_slice(&[0u8; CAPS_SIZE]);
                        a
                    }
                    CMD_DEVICE_COUNT => 1u32.to_le_bytes().to_vec(),
                    CMD_GET_DEVICE_MEMORY => {
                        let mut a = (3u64 << 30).to_le_bytes().to_vec();
                        a.extend_from_slice(&(4u64 << 30).to_le_bytes());
                        a
                    }
                    _ => return,
                };
                s.write_all(&(answer.len() as u64).to_le_bytes()).unwrap();
                s.write_all(&answer).unwrap();
            }
        });
        addr
    }

    #[test]
    fn a_worker_of_this_version_lists_its_devices() {
        let ep = fake_worker([7, 0, 0]);
        let w = probe_worker(&ep, PROTOCOL, Duration::from_secs(5)).unwrap();
        assert_eq!(w.version, PROTOCOL);
        assert_eq!(
            w.devices,
            [RpcDevice { index: 0, memory_free: 3 << 30, memory_total: 4 << 30 }]
        );
        assert_eq!(w.memory_free(), 3 << 30);
    }

    #[test]
    fn another_version_is_one_clear_error() {
        let ep = fake_worker([6, 1, 0]);
        let e = probe_worker(&ep, PROTOCOL, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, RpcError::Version { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("speaks RPC protocol 6.1.0, this corral speaks 7.0.0"), "{text}");
        // A newer minor is refused too, an older one accepted.
        assert!(!PROTOCOL.can_use(RpcVersion { major: 7, minor: 1, patch: 0 }));
        assert!(RpcVersion { major: 7, minor: 2, patch: 0 }.can_use(PROTOCOL));
    }

    #[test]
    fn silence_and_absence_are_told_apart() {
        // Accepts (the kernel's listen queue) but never answers.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = l.local_addr().unwrap().to_string();
        let e = probe_worker(&ep, PROTOCOL, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, RpcError::NoAnswer { .. }), "{e}");
        drop(l);
        let e = probe_worker(&ep, PROTOCOL, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, RpcError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("cannot be reached"), "{e}");
    }

    #[test]
    fn endpoints_are_parsed_and_checked() {
        assert_eq!(parse_endpoints(" a:1, b:2 c:3,,"), ["a:1", "b:2", "c:3"]);
        assert!(resolve("nohost").is_err());
        assert!(resolve("127.0.0.1:notaport").is_err());
        assert!(is_loopback("127.0.0.1:50052").unwrap());
        assert!(is_loopback("[::1]:50052").unwrap());
        assert!(!is_loopback("10.0.0.5:50052").unwrap());
        assert!(!is_loopback("0.0.0.0:50052").unwrap());
    }
}
