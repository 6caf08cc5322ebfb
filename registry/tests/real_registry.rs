//! Round trips against a real OCI registry (Debian's docker-registry) on loopback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use corral_registry::oci::{Client, ClientOptions, Progress};
use corral_registry::{Error, ModelName, Store, StoreOptions};

fn client() -> Client {
    Client::with_credentials(
        ClientOptions {
            insecure: true,
            upload_chunk_size: 1 << 20,
            min_part_size: 1 << 20,
            retry_backoff: Duration::from_millis(20),
            max_retries: 2,
            ..Default::default()
        },
        Default::default(),
    )
    .unwrap()
}

fn quiet(_: &Progress) {}

fn new_store(dir: &std::path::Path, sub: &str) -> Store {
    Store::open(dir.join(sub), StoreOptions::default()).unwrap()
}

#[tokio::test]
async fn push_remove_pull_round_trip() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "a");
    let name = format!("{}/test/tiny:v1", reg.host());
    let made = make_model(&store, dir.path(), &name, 3 << 20 | 12345, 1);
    let original = std::fs::read(&made.model_path).unwrap();
    let c = client();
    let n = ModelName::parse(&name).unwrap();
    let events = std::sync::Mutex::new(Vec::new());
    let pushed =
        c.push(&store, &n, &|p: &Progress| events.lock().unwrap().push(p.clone())).await.unwrap();
    assert_eq!(pushed.uploaded.len(), 5, "{pushed:?}"); // config, model, template, system, params
    assert!(pushed.bytes_uploaded >= original.len() as u64);
    assert!(events.lock().unwrap().iter().any(|e| e.status == "success"));

    // Pushing it again finds every blob there.
    let again = c.push(&store, &n, &quiet).await.unwrap();
    assert_eq!(again.existing.len(), 5);
    assert!(again.uploaded.is_empty());

    // Another repository on the same registry: blobs are mounted, not uploaded.
    let other = ModelName::parse(&format!("{}/other/tiny:v1", reg.host())).unwrap();
    store.copy(&n, &other).unwrap();
    let mounted = c.push(&store, &other, &quiet).await.unwrap();
    assert_eq!(mounted.mounted.len(), 5, "{mounted:?}");
    assert_eq!(mounted.bytes_uploaded, 0);

    // Remove locally, pull back, identical bytes.
    store.remove(&other).unwrap();
    store.remove(&n).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(!store.has_blob(&made.model_digest));
    let events = std::sync::Mutex::new(Vec::new());
    let out =
        c.pull(&store, &n, &|p: &Progress| events.lock().unwrap().push(p.clone())).await.unwrap();
    assert_eq!(out.manifest_digest, made.manifest_digest);
    assert_eq!(out.blobs_fetched, 5);
    let got = store.get(&n).unwrap();
    assert_eq!(std::fs::read(&got.model_path).unwrap(), original);
    assert_eq!(got.template, made.template);
    assert_eq!(got.params, made.params);
    {
        let ev = events.lock().unwrap();
        let last_model = ev
            .iter()
            .rfind(|e| e.digest.as_deref() == Some(&made.model_digest.to_string()))
            .unwrap();
        assert_eq!(last_model.completed, Some(original.len() as u64));
        assert_eq!(ev.last().unwrap().status, "success");
    }
    // Pulling again fetches nothing.
    let out = c.pull(&store, &n, &quiet).await.unwrap();
    assert_eq!((out.blobs_fetched, out.bytes_fetched, out.blobs_present), (0, 0, 5));

    // Pinning the manifest digest works, and a wrong pin is refused.
    let pinned = ModelName::parse(&format!("{name}@{}", made.manifest_digest)).unwrap();
    c.pull(&new_store(dir.path(), "pinned"), &pinned, &quiet).await.unwrap();
    let wrong = ModelName::parse(&format!("{name}@{}", made.model_digest)).unwrap();
    let e = c.pull(&new_store(dir.path(), "wrong"), &wrong, &quiet).await.unwrap_err();
    assert!(matches!(e, Error::Registry { .. } | Error::RegistryModelNotFound { .. }), "{e}");

    // An unknown tag is a clear error.
    let missing = ModelName::parse(&format!("{}/test/tiny:nope", reg.host())).unwrap();
    let e = c.pull(&store, &missing, &quiet).await.unwrap_err().to_string();
    assert!(e.contains("not found") && e.contains(&reg.host()) && e.contains("tiny:nope"), "{e}");
}

#[tokio::test]
async fn interrupted_pull_resumes() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = new_store(dir.path(), "src");
    let name = format!("{}/test/big:latest", reg.host());
    let size = 48 << 20;
    let made = make_model(&src, dir.path(), &name, size, 2);
    let c = client();
    let n = ModelName::parse(&name).unwrap();
    c.push(&src, &n, &quiet).await.unwrap();

    let dst = new_store(dir.path(), "dst");
    let pc = Client::with_credentials(
        ClientOptions { insecure: true, parallel: 4, min_part_size: 4 << 20, ..Default::default() },
        Default::default(),
    )
    .unwrap();
    let stop = Arc::new(tokio::sync::Notify::new());
    let fired = AtomicBool::new(false);
    let model_digest = made.model_digest.to_string();
    let cb = |p: &Progress| {
        if p.digest.as_deref() == Some(model_digest.as_str())
            && p.completed.unwrap_or(0) >= (size as u64) / 3
            && !fired.swap(true, Ordering::SeqCst)
        {
            stop.notify_one();
        }
    };
    tokio::select! {
        biased;
        _ = stop.notified() => {}
        r = pc.pull(&dst, &n, &cb) => panic!("pull finished before it was interrupted: {r:?}"),
    }
    assert!(dst.list().unwrap().is_empty(), "no manifest after an interrupted pull");
    assert!(!dst.has_blob(&made.model_digest), "no visible blob after an interrupted pull");
    let partial = dst.tmp_dir().join(format!("{}.partial", made.model_digest.blob_file_name()));
    assert!(partial.is_file(), "the partial file is kept for resuming");

    let out = pc.pull(&dst, &n, &quiet).await.unwrap();
    eprintln!("resumed: fetched {} of {} bytes the second time", out.bytes_fetched, size);
    assert!(out.bytes_fetched < size as u64 * 3 / 4, "resume fetched {} bytes", out.bytes_fetched);
    assert!(out.bytes_fetched > 0);
    let got = dst.get(&n).unwrap();
    assert_eq!(std::fs::read(&got.model_path).unwrap(), fake_gguf(size, 2));
    assert!(!partial.exists());
}

#[tokio::test]
async fn corrupt_or_missing_blob_on_the_registry_is_refused() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = new_store(dir.path(), "src");
    let c = client();

    // Corrupted bytes (same length) on the registry's disk.
    let name = ModelName::parse(&format!("{}/test/corrupt:1", reg.host())).unwrap();
    let made = make_model(&src, dir.path(), &name.to_string(), 2 << 20, 3);
    c.push(&src, &name, &quiet).await.unwrap();
    let data = reg.blob_data_path(&made.model_digest.hex());
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[1 << 20] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let dst = new_store(dir.path(), "dst");
    let e = c.pull(&dst, &name, &quiet).await.unwrap_err();
    // The registry's fault (upstream), not a mismatch in the user's input.
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert!(e.to_string().contains("digest mismatch"), "{e}");
    assert!(e.to_string().contains(&reg.host()), "{e}");
    assert!(!dst.has_blob(&made.model_digest));
    assert!(dst.list().unwrap().is_empty());
    assert!(std::fs::read_dir(dst.tmp_dir()).unwrap().all(|e| {
        let n = e.unwrap().file_name().to_string_lossy().to_string();
        !n.ends_with(".partial")
    }));

    // A manifest naming a blob the registry does not have.
    let name = ModelName::parse(&format!("{}/test/missing:1", reg.host())).unwrap();
    let made = make_model(&src, dir.path(), &name.to_string(), 1 << 20, 4);
    c.push(&src, &name, &quiet).await.unwrap();
    std::fs::remove_file(reg.blob_data_path(&made.model_digest.hex())).unwrap();
    let e = c.pull(&dst, &name, &quiet).await.unwrap_err().to_string();
    assert!(e.contains(&made.model_digest.to_string()), "{e}");
    assert!(dst.get(&name).is_err());
    eprintln!("missing blob error: {e}");
}

#[tokio::test]
async fn concurrent_pulls_of_one_model() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = new_store(dir.path(), "src");
    let name = ModelName::parse(&format!("{}/test/twice:1", reg.host())).unwrap();
    let made = make_model(&src, dir.path(), &name.to_string(), 8 << 20, 5);
    let c = client();
    c.push(&src, &name, &quiet).await.unwrap();
    let dst = new_store(dir.path(), "dst");
    let c2 = client();
    let (a, b) = tokio::join!(c.pull(&dst, &name, &quiet), c2.pull(&dst, &name, &quiet));
    a.unwrap();
    b.unwrap();
    let got = dst.get(&name).unwrap();
    assert_eq!(std::fs::read(&got.model_path).unwrap(), std::fs::read(&made.model_path).unwrap());
}

#[test]
fn bad_names_and_digests() {
    for bad in [
        "127.0.0.1:5000/../etc/passwd",
        "127.0.0.1:5000/ns/m:../../x",
        "m@sha256:../../../../etc/passwd",
        "m@sha256:ABC",
        "ns/m\0/x",
        "a/b/c/d",
    ] {
        let e = ModelName::parse(bad).unwrap_err();
        assert!(matches!(e, Error::InvalidName { .. } | Error::InvalidDigest { .. }), "{bad}: {e}");
    }
}
