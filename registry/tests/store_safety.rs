//! What a registry (or a concurrent `rm`) cannot make a pull do: lose blobs it is about
//! to reference, write a layer larger than the limit, wait forever for a token or an
//! answer, or follow a token realm or a redirect where it must not go.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use corral_registry::manifest::{Layer, MEDIA_TYPE_CONFIG, MEDIA_TYPE_MODEL};
use corral_registry::oci::{Client, ClientOptions, Progress, check_target};
use corral_registry::{Digest, Manifest, ModelName, Store, StoreOptions};

fn client(opts: ClientOptions) -> Client {
    Client::with_credentials(
        ClientOptions {
            insecure: true,
            retry_backoff: Duration::from_millis(10),
            max_retries: 2,
            stall_timeout: Duration::from_secs(5),
            ..opts
        },
        Default::default(),
    )
    .unwrap()
}

fn quiet(_: &Progress) {}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), StoreOptions::default()).unwrap();
    (d, s)
}

fn layer(media_type: &str, bytes: &[u8]) -> Layer {
    Layer {
        media_type: media_type.into(),
        digest: Digest::of_bytes(bytes),
        size: bytes.len() as u64,
        from: None,
        annotations: None,
    }
}

/// A `rm` of another model while a pull is downloading must not delete a blob the pull
/// found present and is about to reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_during_a_pull_keeps_the_blobs_the_pull_references() {
    let shared = fake_gguf(50_000, 1); // the weights: local model `a` has them already
    let adapter = fake_gguf(40_000, 2); // downloaded, slowly
    let config = b"{\"model_format\":\"gguf\"}".to_vec();
    let m = Manifest::new(
        layer(MEDIA_TYPE_CONFIG, &config),
        vec![
            layer(MEDIA_TYPE_MODEL, &shared),
            layer("application/vnd.ollama.image.adapter", &adapter),
        ],
    );
    let manifest = String::from_utf8(m.to_json()).unwrap();
    let (cfg_d, shared_d, adapter_d) =
        (Digest::of_bytes(&config), Digest::of_bytes(&shared), Digest::of_bytes(&adapter));
    let (c2, s2, a2) = (config.clone(), shared.clone(), adapter.clone());
    let port = fake_server(move |r, _| {
        if r.path.contains("/manifests/") {
            Resp::Full(200, vec![], manifest.clone().into_bytes())
        } else if r.path.ends_with(&cfg_d.to_string()) {
            Resp::Full(200, vec![], c2.clone())
        } else if r.path.ends_with(&shared_d.to_string()) {
            Resp::Full(200, vec![], s2.clone())
        } else {
            Resp::Delayed(
                Duration::from_millis(1500),
                Box::new(Resp::Full(200, vec![], a2.clone())),
            )
        }
    })
    .await;
    let (_d, s) = store();
    // Local model `a` holds the shared weights (and only `a` does).
    let a_cfg = s.write_blob_bytes(b"{}").unwrap();
    let a_w = s.write_blob_bytes(&shared).unwrap();
    let a = ModelName::parse("a").unwrap();
    s.write_manifest(
        &a,
        &Manifest::new(
            Layer { digest: a_cfg, ..layer(MEDIA_TYPE_CONFIG, b"{}") },
            vec![Layer { digest: a_w, ..layer(MEDIA_TYPE_MODEL, &shared) }],
        ),
    )
    .unwrap();

    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let downloading = Arc::new(tokio::sync::Notify::new());
    let d2 = downloading.clone();
    let hex = adapter_d.hex()[..12].to_string();
    let cb = move |p: &Progress| {
        if p.status == format!("pulling {hex}") {
            d2.notify_one();
        }
    };
    let (s3, n3) = (s.clone(), n.clone());
    let pull = tokio::spawn(async move { client(Default::default()).pull(&s3, &n3, &cb).await });
    downloading.notified().await;
    // The pull has seen the shared blob present and is fetching the adapter: `rm a`.
    let s4 = s.clone();
    let rep = tokio::task::spawn_blocking(move || s4.remove(&a)).await.unwrap().unwrap();
    assert!(!rep.removed.contains(&shared_d), "rm deleted a blob the pull references: {rep:?}");
    pull.await.unwrap().expect("the pull completes");
    let got = s.get(&n).expect("the pulled model opens");
    assert_eq!(std::fs::read(&got.model_path).unwrap(), shared);
    assert!(s.prune().unwrap().removed.iter().all(|d| *d != shared_d));
}

/// A manifest that declares a layer larger than the limit is refused before any byte is
/// written or any blob is requested.
#[tokio::test]
async fn oversized_declared_layer_is_refused_before_writing() {
    let config = b"{}".to_vec();
    let mut big = layer(MEDIA_TYPE_MODEL, b"whatever");
    big.size = 1 << 40;
    let manifest =
        String::from_utf8(Manifest::new(layer(MEDIA_TYPE_CONFIG, &config), vec![big]).to_json())
            .unwrap();
    let blob_requests = Arc::new(AtomicUsize::new(0));
    let br = blob_requests.clone();
    let port = fake_server(move |r, _| {
        if r.path.contains("/manifests/") {
            Resp::Full(200, vec![], manifest.clone().into_bytes())
        } else {
            br.fetch_add(1, Ordering::SeqCst);
            Resp::Full(200, vec![], config.clone())
        }
    })
    .await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let c = client(ClientOptions { max_blob_size: 1 << 20, ..Default::default() });
    let e = c.pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert!(e.contains("1099511627776") && e.contains("CORRAL_MAX_BLOB_SIZE"), "{e}");
    assert_eq!(blob_requests.load(Ordering::SeqCst), 0, "a blob was requested");
    let left: Vec<_> = std::fs::read_dir(s.tmp_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial") || n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(std::fs::read_dir(s.root().join("blobs")).unwrap().next().is_none());
    assert!(s.list().unwrap().is_empty());
    // The default is 256 GiB.
    assert_eq!(ClientOptions::default().max_blob_size, 256 << 30);
}

/// A token endpoint that never answers fails the pull after the token timeout.
#[tokio::test]
async fn token_request_times_out() {
    let port = fake_server(|r, port| {
        if r.path.starts_with("/token") {
            return Resp::Delayed(
                Duration::from_secs(120),
                Box::new(Resp::Full(200, vec![], b"{}".to_vec())),
            );
        }
        let ch = format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake""#);
        Resp::Full(401, vec![("WWW-Authenticate".into(), ch)], vec![])
    })
    .await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let c =
        client(ClientOptions { token_timeout: Duration::from_millis(500), ..Default::default() });
    let t = Instant::now();
    let e = c.pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
    assert!(e.contains("token") && e.contains("timed out"), "{e}");
}

/// A registry that accepts the connection but never answers fails after the read timeout.
#[tokio::test]
async fn silent_registry_times_out() {
    let port = fake_server(|_, _| {
        Resp::Delayed(Duration::from_secs(120), Box::new(Resp::Full(200, vec![], Vec::new())))
    })
    .await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let c =
        client(ClientOptions { read_timeout: Duration::from_millis(500), ..Default::default() });
    let t = Instant::now();
    let e = c.pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
    assert!(e.contains("timed out"), "{e}");
}

/// A realm with a scheme other than http(s) is refused before any request to it.
#[tokio::test]
async fn token_realm_with_another_scheme_is_refused() {
    let port = fake_server(|_, _| {
        let ch = r#"Bearer realm="file:///etc/passwd",service="fake""#.to_string();
        Resp::Full(401, vec![("WWW-Authenticate".into(), ch)], vec![])
    })
    .await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let e = client(Default::default()).pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert!(e.contains("refusing the token realm") && e.contains("scheme"), "{e}");
}

/// A redirect to another scheme is refused.
#[tokio::test]
async fn redirect_to_another_scheme_is_refused() {
    let port = fake_server(|_, _| {
        Resp::Full(302, vec![("Location".into(), "ftp://127.0.0.1/x".into())], vec![])
    })
    .await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let e = client(Default::default()).pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert!(e.contains("redirect") && e.contains("scheme"), "{e}");
}

/// The realm and redirect rule, decided without sending anything.
#[test]
fn realm_rule() {
    let url = |s: &str| reqwest::Url::parse(s).unwrap();
    let public = "registry.example.com";
    let ok = |reg: &str, u: &str, insecure: bool| check_target(reg, &url(u), insecure);
    assert!(ok(public, "https://auth.example.com/token", false).is_ok());
    // Plain http only when insecure is allowed.
    assert!(ok(public, "http://auth.example.com/token", false).unwrap_err().contains("plain http"));
    assert!(ok(public, "http://auth.example.com/token", true).is_ok());
    assert!(ok(public, "ftp://auth.example.com/token", true).is_err());
    // Loopback, link-local, unspecified: not for a registry elsewhere.
    for target in [
        "https://127.0.0.1/token",
        "https://127.8.9.10:8443/token",
        "https://localhost/token",
        "https://api.localhost/token",
        "https://169.254.169.254/latest/meta-data",
        "https://0.0.0.0/token",
        "https://[::1]/token",
        "https://[fe80::1]/token",
        "https://[::ffff:127.0.0.1]/token",
        "https://[::ffff:169.254.169.254]/token",
        "https://2130706433/token",
    ] {
        let e = ok(public, target, true).unwrap_err();
        assert!(e.contains("loopback"), "{target}: {e}");
    }
    // A registry on loopback may send us to loopback (a local test setup).
    assert!(ok("127.0.0.1:5000", "http://127.0.0.1:5001/token", true).is_ok());
    assert!(ok("localhost:5000", "https://localhost/token", false).is_ok());
    assert!(ok("[::1]:5000", "https://[::1]:5001/token", false).is_ok());
    // A private-range address is not this rule's business.
    assert!(ok(public, "https://10.1.2.3/token", false).is_ok());
}
