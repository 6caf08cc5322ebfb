//! What a hostile or broken registry cannot make a pull or push do: hold a download open
//! with a trickle of bytes, have its credentials sent to another host, store a model that
//! can never be opened, pass its own faults off as the user's (a wrong blob is the
//! registry's fault; "not found" is its 404, not words in a 500), or spoil the next
//! honest pull of the same blob with a partial download.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use corral_registry::oci::{Client, ClientOptions, Credentials, Progress};
use corral_registry::{Digest, Error, ModelName, Store, StoreOptions};

fn opts() -> ClientOptions {
    ClientOptions {
        insecure: true,
        retry_backoff: Duration::from_millis(10),
        max_retries: 2,
        stall_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn client() -> Client {
    Client::with_credentials(opts(), Credentials::default()).unwrap()
}

fn quiet(_: &Progress) {}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), StoreOptions::default()).unwrap();
    (d, s)
}

fn layer_json(media_type: &str, bytes: &[u8], title: Option<&str>) -> String {
    let ann = title.map_or(String::new(), |t| {
        format!(r#","annotations":{{"org.opencontainers.image.title":{t:?}}}"#)
    });
    format!(
        r#"{{"mediaType":"{media_type}","digest":"{}","size":{}{ann}}}"#,
        Digest::of_bytes(bytes),
        bytes.len()
    )
}

fn manifest(config: &[u8], layers: &[String]) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[{}]}}"#,
        layer_json("application/vnd.docker.container.image.v1+json", config, None),
        layers.join(",")
    )
}

/// A registry that serves `manifest` for every manifest and each blob of `blobs` by its
/// digest.
async fn serve(manifest: String, blobs: Vec<Vec<u8>>) -> u16 {
    fake_server(move |r, _| {
        if r.path.contains("/manifests/") {
            return Resp::Full(200, vec![], manifest.clone().into_bytes());
        }
        for b in &blobs {
            if r.path.ends_with(&Digest::of_bytes(b).to_string()) {
                return Resp::Full(200, vec![], b.clone());
            }
        }
        Resp::Full(404, vec![], vec![])
    })
    .await
}

/// A registry of one model whose config is `{}` and whose model blob `blob` is answered
/// by `model_blob` (a trickle, a silence).
async fn serve_model_blob(
    blob: &[u8],
    model_blob: impl Fn() -> Resp + Send + Sync + 'static,
) -> u16 {
    let config = b"{}".to_vec();
    let m = manifest(&config, &[layer_json("application/vnd.ollama.image.model", blob, None)]);
    let cfg = Digest::of_bytes(&config).to_string();
    fake_server(move |r, _| {
        if r.path.contains("/manifests/") {
            Resp::Full(200, vec![], m.clone().into_bytes())
        } else if r.path.ends_with(&cfg) {
            Resp::Full(200, vec![], config.clone())
        } else {
            model_blob()
        }
    })
    .await
}

fn blob_files(s: &Store) -> usize {
    std::fs::read_dir(s.root().join("blobs")).map_or(0, Iterator::count)
}

/// A registry that sends a blob one byte at a time, never pausing long enough to trip the
/// stall timeout, is abandoned by the throughput floor (an upstream error that says so),
/// and the partial download is kept for a later pull.
#[tokio::test]
async fn a_trickling_blob_is_abandoned_by_the_throughput_floor() {
    let blob = fake_gguf(100_000, 3);
    let dripped = blob.clone();
    let port =
        serve_model_blob(&blob, move || Resp::Drip(dripped.clone(), Duration::from_millis(50)))
            .await;
    let (_d, s) = store();
    let c = Client::with_credentials(
        ClientOptions { min_speed: 1000, speed_window: Duration::from_secs(1), ..opts() },
        Credentials::default(),
    )
    .unwrap();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let t = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(30), c.pull(&s, &n, &quiet))
        .await
        .expect("the trickle was not abandoned")
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert!(e.to_string().contains("bytes/s"), "{e}");
    let partials = std::fs::read_dir(s.tmp_dir())
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "partial")))
        .count();
    assert_eq!(partials, 1, "the partial download is kept for a resume");
    assert!(s.list().unwrap().is_empty());
}

/// Manifests that no use could open are refused before they are stored (an upstream
/// error naming the problem), and the blobs fetched for them are not left behind.
#[tokio::test]
async fn manifests_that_cannot_be_opened_are_not_stored() {
    let gguf = fake_gguf(2000, 5);
    let other = fake_gguf(1000, 6);
    let config = b"{}".to_vec();
    let model = layer_json("application/vnd.ollama.image.model", &gguf, None);
    let onnx = "application/vnd.corral.onnx.file";
    // (what, layers, blobs the registry serves, what the error says)
    type Case = (&'static str, Vec<String>, Vec<Vec<u8>>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "template only",
            vec![layer_json("application/vnd.ollama.image.template", b"{{ .Prompt }}", None)],
            vec![b"{{ .Prompt }}".to_vec()],
            "no model layer",
        ),
        (
            "unknown types",
            vec![layer_json("application/x-unknown", &gguf, None)],
            vec![gguf.clone()],
            "no model layer",
        ),
        (
            "params not JSON",
            vec![model.clone(), layer_json("application/vnd.ollama.image.params", b"nope", None)],
            vec![gguf.clone(), b"nope".to_vec()],
            "params layer",
        ),
        (
            "ONNX a and a/b",
            vec![layer_json(onnx, &gguf, Some("a")), layer_json(onnx, &other, Some("a/b"))],
            vec![gguf.clone(), other.clone()],
            "cannot both be files",
        ),
        (
            "ONNX a twice",
            vec![layer_json(onnx, &gguf, Some("a")), layer_json(onnx, &other, Some("a/"))],
            vec![gguf.clone(), other.clone()],
            "cannot both be files",
        ),
        (
            "ONNX traversal",
            vec![layer_json(onnx, &gguf, Some("../../x"))],
            vec![gguf.clone()],
            "unsafe path",
        ),
    ];
    for (what, layers, mut blobs, needle) in cases {
        blobs.push(config.clone());
        let port = serve(manifest(&config, &layers), blobs).await;
        let (_d, s) = store();
        let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
        let e = client().pull(&s, &n, &quiet).await.unwrap_err();
        assert!(matches!(e, Error::Registry { .. }), "{what}: {e}");
        let text = e.to_string();
        assert!(text.contains(needle) && text.contains("not stored"), "{what}: {text}");
        assert!(s.list().unwrap().is_empty(), "{what}");
        assert!(!s.manifest_path(&n).exists(), "{what}");
        assert_eq!(blob_files(&s), 0, "{what}: the pull's blobs were left behind");
    }
}

/// "Not found" is the registry's 404, never words in a message: a 500 whose body says
/// "model not found" is a failing registry.
#[tokio::test]
async fn not_found_is_decided_by_the_status() {
    let port = fake_server(|r, _| {
        if r.path.contains("/manifests/gone") {
            Resp::Full(404, vec![], vec![])
        } else {
            Resp::Full(500, vec![], br#"{"error":"model not found"}"#.to_vec())
        }
    })
    .await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:gone")).unwrap();
    let e = client().pull(&s, &n, &quiet).await.unwrap_err();
    assert!(matches!(e, Error::RegistryModelNotFound { .. }), "{e}");
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:broken")).unwrap();
    let e = client().pull(&s, &n, &quiet).await.unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");
}

/// A registry that sends other bytes than the manifest's digest (the same size, more,
/// endless) is at fault: a registry error, not a digest mismatch of the user's input.
#[tokio::test]
async fn wrong_blob_bytes_are_the_registrys_fault() {
    let blob = fake_gguf(50_000, 8);
    let config = b"{}".to_vec();
    let m = manifest(&config, &[layer_json("application/vnd.ollama.image.model", &blob, None)]);
    let cfg = Digest::of_bytes(&config).to_string();
    for mode in ["same size", "bigger", "endless"] {
        let (m, config, cfg, blob) = (m.clone(), config.clone(), cfg.clone(), blob.clone());
        let port = fake_server(move |r, _| {
            if r.path.contains("/manifests/") {
                return Resp::Full(200, vec![], m.clone().into_bytes());
            }
            if r.path.ends_with(&cfg) {
                return Resp::Full(200, vec![], config.clone());
            }
            match mode {
                "same size" => Resp::Full(200, vec![], vec![7u8; blob.len()]),
                "bigger" => Resp::Full(200, vec![], vec![7u8; blob.len() * 2]),
                _ => Resp::Endless(1 << 30),
            }
        })
        .await;
        let (_d, s) = store();
        let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
        let e = client().pull(&s, &n, &quiet).await.unwrap_err();
        assert!(matches!(e, Error::Registry { .. }), "{mode}: {e}");
        assert!(e.to_string().contains("digest mismatch"), "{mode}: {e}");
        assert!(s.list().unwrap().is_empty());
    }
}

/// A partial download left by one registry (here serving zeros, then cutting the body)
/// does not spoil the next pull of the same digest from an honest registry: the resumed
/// download fails its digest check, is discarded, and is fetched again from the start.
#[tokio::test]
async fn a_poisoned_partial_does_not_spoil_an_honest_pull() {
    let blob = fake_gguf(200_000, 21);
    let config = b"{}".to_vec();
    let m = manifest(&config, &[layer_json("application/vnd.ollama.image.model", &blob, None)]);
    let cfg = Digest::of_bytes(&config).to_string();
    let honest_blob_requests = Arc::new(Mutex::new(0usize));
    let count = honest_blob_requests.clone();
    let b2 = blob.clone();
    let port = fake_server(move |r, _| {
        if r.path.contains("/manifests/") {
            return Resp::Full(200, vec![], m.clone().into_bytes());
        }
        if r.path.ends_with(&cfg) {
            return Resp::Full(200, vec![], config.clone());
        }
        if r.path.contains("/poison/") {
            // Half of the blob's length in zeros, then the connection closes.
            return Resp::Truncated(b2.len() as u64, vec![0u8; b2.len() / 2]);
        }
        *count.lock().unwrap() += 1;
        Resp::Full(200, vec![], b2.clone())
    })
    .await;
    let (_d, s) = store();
    let poison = ModelName::parse(&format!("127.0.0.1:{port}/x/poison:v")).unwrap();
    let e = client().pull(&s, &poison, &quiet).await.unwrap_err();
    assert!(e.to_string().contains("gave up"), "{e}");
    let legit = ModelName::parse(&format!("127.0.0.1:{port}/x/legit:v")).unwrap();
    client().pull(&s, &legit, &quiet).await.expect("the honest pull");
    assert_eq!(std::fs::read(s.get(&legit).unwrap().model_path).unwrap(), blob);
    assert_eq!(*honest_blob_requests.lock().unwrap(), 2, "one resume, one fresh download");
}

/// An upload `Location` on another host (here another port) gets the bytes but never
/// the registry's credentials.
#[tokio::test]
async fn an_upload_location_elsewhere_gets_no_credentials() {
    let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
    let seen2 = seen.clone();
    let other = fake_server(move |r, _| {
        seen2.lock().unwrap().push(r.clone());
        match r.method.as_str() {
            "PATCH" => Resp::Full(202, vec![("Location".into(), "/upload/1".into())], vec![]),
            _ => Resp::Full(201, vec![], vec![]),
        }
    })
    .await;
    let registry = fake_server(move |r, _| {
        if r.header("authorization").is_none() {
            return Resp::Full(
                401,
                vec![("WWW-Authenticate".into(), r#"Basic realm="r""#.into())],
                vec![],
            );
        }
        match r.method.as_str() {
            "HEAD" => Resp::Full(404, vec![], vec![]),
            "POST" => Resp::Full(
                202,
                vec![("Location".into(), format!("http://127.0.0.1:{other}/upload/1"))],
                vec![],
            ),
            _ => Resp::Full(201, vec![], vec![]),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_d, s) = store();
    let name = format!("127.0.0.1:{registry}/ns/m:1");
    make_model(&s, dir.path(), &name, 5000, 4);
    let creds = Credentials::from_pairs([(
        format!("127.0.0.1:{registry}"),
        "user".to_string(),
        "secret".to_string(),
    )]);
    let c = Client::with_credentials(opts(), creds).unwrap();
    c.push(&s, &ModelName::parse(&name).unwrap(), &quiet).await.expect("push");
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "the upload went to the Location");
    for r in seen.iter() {
        assert!(r.header("authorization").is_none(), "credentials sent to another host: {r:?}");
    }
}

/// An HTTPS request answered in plain HTTP says to use --insecure (rustls only says
/// "received corrupt message of type InvalidContentType").
#[tokio::test]
async fn a_plain_http_registry_without_insecure_gets_a_hint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let _ = sock
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let (_d, s) = store();
    let c = Client::with_credentials(
        ClientOptions { insecure: false, ..opts() },
        Credentials::default(),
    )
    .unwrap();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let e = c.pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert!(e.contains("--insecure"), "{e}");
}

/// A blob request that is never answered fails with a message naming the registry and
/// the model once (it said "registry X, model Y: ... registry X, model Y: ...").
#[tokio::test]
async fn a_silent_blob_names_the_registry_once() {
    let blob = fake_gguf(1000, 2);
    let port = serve_model_blob(&blob, || {
        Resp::Delayed(Duration::from_secs(60), Box::new(Resp::Full(200, vec![], vec![])))
    })
    .await;
    let (_d, s) = store();
    let c = Client::with_credentials(
        ClientOptions { read_timeout: Duration::from_millis(300), ..opts() },
        Credentials::default(),
    )
    .unwrap();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let e = c.pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert_eq!(e.matches("registry 127.0.0.1").count(), 1, "{e}");
    assert!(e.contains("timed out"), "{e}");
}
