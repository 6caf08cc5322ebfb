//! Test harness: a real `docker-registry` on a loopback port, and a tiny fake registry.
#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the reference registry lives (Debian's `docker-registry` package).
pub(crate) fn registry_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CORRAL_DOCKER_REGISTRY") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from("/usr/bin/docker-registry");
    p.is_file().then_some(p)
}

pub(crate) fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap()
}

/// A running docker-registry, killed on drop.
pub(crate) struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry, or returns None (after printing why) if the binary is missing.
    pub(crate) fn start() -> Option<Registry> {
        let Some(bin) = registry_binary() else {
            eprintln!("SKIP: docker-registry not found (install Debian's docker-registry package)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reg = Registry { child, port, dir };
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(reg)
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file holding a blob on the registry's disk.
    pub(crate) fn blob_data_path(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request seen by the fake registry.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What the fake registry answers.
pub(crate) enum Resp {
    /// status, extra headers, body.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// Announces `len` bytes, sends `body`, closes.
    Truncated(u64, Vec<u8>),
    /// Streams `len` zero bytes with a chunked body (no length).
    Endless(u64),
    /// Waits, then answers.
    Delayed(Duration, Box<Resp>),
    /// Announces `body.len()` bytes and sends them one at a time, one every `Duration`
    /// (never stalled long enough for a stall timeout).
    Drip(Vec<u8>, Duration),
}

/// Starts a fake HTTP server on a free port; returns its port.
pub(crate) async fn fake_server(
    handler: impl Fn(&Req, u16) -> Resp + Send + Sync + 'static,
) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = sock.read(&mut tmp).await else { return };
                    if n == 0 || buf.len() > 65536 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let mut lines = text.split("\r\n");
                let first = lines.next().unwrap_or("");
                let mut it = first.split(' ');
                let method = it.next().unwrap_or("").to_string();
                let path = it.next().unwrap_or("").to_string();
                let headers = lines
                    .take_while(|l| !l.is_empty())
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let req = Req { method, path, headers };
                let mut resp = handler(&req, port);
                while let Resp::Delayed(d, inner) = resp {
                    tokio::time::sleep(d).await;
                    resp = *inner;
                }
                match resp {
                    Resp::Full(status, headers, body) => {
                        let mut head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                            body.len()
                        );
                        for (k, v) in headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str("\r\n");
                        let _ = sock.write_all(head.as_bytes()).await;
                        if req.method != "HEAD" {
                            let _ = sock.write_all(&body).await;
                        }
                    }
                    Resp::Truncated(len, body) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                    }
                    Resp::Endless(len) => {
                        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                        if sock.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b' '; 65536];
                        let mut sent = 0;
                        while sent < len {
                            let mut msg = format!("{:x}\r\n", chunk.len()).into_bytes();
                            msg.extend_from_slice(&chunk);
                            msg.extend_from_slice(b"\r\n");
                            if sock.write_all(&msg).await.is_err() {
                                return;
                            }
                            sent += chunk.len() as u64;
                        }
                        let _ = sock.write_all(b"0\r\n\r\n").await;
                    }
                    Resp::Drip(body, every) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        if sock.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        for b in body {
                            if sock.write_all(&[b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(every).await;
                        }
                    }
                    Resp::Delayed(..) => unreachable!("unwrapped above"),
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    port
}

/// Random bytes that start like a GGUF file.
pub(crate) fn fake_gguf(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(b"GGUF\x03\0\0\0");
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Makes a model in `store` from a fresh fake GGUF of `len` bytes written under `dir`.
pub(crate) fn make_model(
    store: &corral_registry::Store,
    dir: &Path,
    name: &str,
    len: usize,
    seed: u64,
) -> corral_registry::ResolvedModel {
    use corral_registry::modelfile;
    let gguf = dir.join(format!("m{seed}.gguf"));
    std::fs::write(&gguf, fake_gguf(len, seed)).unwrap();
    let mf = modelfile::parse(&format!(
        "FROM {}\nTEMPLATE \"\"\"{{{{ .Prompt }}}}\"\"\"\nPARAMETER temperature 0.3\nSYSTEM be brief\n",
        gguf.display()
    ))
    .unwrap();
    let name = corral_registry::ModelName::parse(name).unwrap();
    modelfile::create(store, &name, &mf, dir, &Default::default(), &mut |_| {}).unwrap()
}
