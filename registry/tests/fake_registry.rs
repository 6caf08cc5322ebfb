//! A misbehaving registry: oversized manifests, redirect loops, truncated bodies, auth.

mod common;

use std::time::Duration;

use common::*;
use corral_registry::oci::{Client, ClientOptions, Progress};
use corral_registry::{Digest, Error, ModelName, Store, StoreOptions};

fn client() -> Client {
    Client::with_credentials(
        ClientOptions {
            insecure: true,
            retry_backoff: Duration::from_millis(10),
            max_retries: 2,
            stall_timeout: Duration::from_secs(2),
            ..Default::default()
        },
        Default::default(),
    )
    .unwrap()
}

fn quiet(_: &Progress) {}

fn manifest_for(blob: &[u8], config: &[u8]) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{}","size":{}}}]}}"#,
        Digest::of_bytes(config),
        config.len(),
        Digest::of_bytes(blob),
        blob.len()
    )
}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), StoreOptions::default()).unwrap();
    (d, s)
}

#[tokio::test]
async fn oversized_manifest_is_refused() {
    let port = fake_server(|r, _| {
        if r.path.contains("/manifests/big") {
            Resp::Full(200, vec![], vec![b' '; 5 << 20])
        } else {
            Resp::Endless(64 << 20)
        }
    })
    .await;
    let (_d, s) = store();
    for tag in ["big", "endless"] {
        let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:{tag}")).unwrap();
        let e = client().pull(&s, &n, &quiet).await.unwrap_err().to_string();
        assert!(e.contains("exceeds the limit"), "{e}");
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    }
    assert!(s.list().unwrap().is_empty());
}

#[tokio::test]
async fn redirect_loop_is_refused() {
    let port =
        fake_server(|r, _| Resp::Full(302, vec![("Location".into(), r.path.clone())], vec![]))
            .await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let e = client().pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert!(e.contains("redirect"), "{e}");
}

#[tokio::test]
async fn truncated_blob_is_retried_then_refused() {
    let blob = fake_gguf(100_000, 9);
    let config = b"{}".to_vec();
    let manifest = manifest_for(&blob, &config);
    let cfg_digest = Digest::of_bytes(&config).to_string();
    let b2 = blob.clone();
    let port = fake_server(move |r, _| {
        if r.path.contains("/manifests/") {
            Resp::Full(200, vec![], manifest.clone().into_bytes())
        } else if r.path.ends_with(&cfg_digest) {
            Resp::Full(200, vec![], config.clone())
        } else {
            Resp::Truncated(b2.len() as u64, b2[..5000].to_vec())
        }
    })
    .await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let e = client().pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert!(e.contains("gave up"), "{e}");
    eprintln!("truncated: {e}");
    assert!(!s.has_blob(&Digest::of_bytes(&blob)));
    assert!(s.list().unwrap().is_empty());
}

#[tokio::test]
async fn link_layer_from_a_registry_is_refused() {
    let config = b"{}".to_vec();
    let m = manifest_for(b"x", &config).replace("vnd.ollama.image.model", "vnd.corral.link");
    let port = fake_server(move |_, _| Resp::Full(200, vec![], m.clone().into_bytes())).await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let e = client().pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert!(e.contains("link layer"), "{e}");
}

#[tokio::test]
async fn bad_digest_in_a_manifest_is_refused() {
    let m = manifest_for(b"x", b"{}").replacen("sha256:", "sha256:../../../../", 1);
    let port = fake_server(move |_, _| Resp::Full(200, vec![], m.clone().into_bytes())).await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let e = client().pull(&s, &n, &quiet).await.unwrap_err().to_string();
    assert!(e.contains("not valid") && e.contains("sha256"), "{e}");
}

#[tokio::test]
async fn bearer_token_challenge_is_followed() {
    let blob = fake_gguf(3000, 7);
    let config = b"{}".to_vec();
    let manifest = manifest_for(&blob, &config);
    let cfg_digest = Digest::of_bytes(&config).to_string();
    let b2 = blob.clone();
    let port = fake_server(move |r, port| {
        if r.path.starts_with("/token") {
            assert!(r.path.contains("scope=repository%3Ans%2Fm%3Apull"), "{}", r.path);
            return Resp::Full(200, vec![], br#"{"token":"tok123"}"#.to_vec());
        }
        if r.header("authorization") != Some("Bearer tok123") {
            let ch = format!(
                r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake",scope="repository:ns/m:pull""#
            );
            return Resp::Full(401, vec![("WWW-Authenticate".into(), ch)], vec![]);
        }
        if r.path.contains("/manifests/") {
            Resp::Full(200, vec![], manifest.clone().into_bytes())
        } else if r.path.ends_with(&cfg_digest) {
            Resp::Full(200, vec![], config.clone())
        } else {
            Resp::Full(200, vec![], b2.clone())
        }
    })
    .await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let out = client().pull(&s, &n, &quiet).await.unwrap();
    assert_eq!(out.blobs_fetched, 2);
    assert_eq!(std::fs::read(s.get(&n).unwrap().model_path).unwrap(), blob);
}

#[tokio::test]
async fn basic_challenge_without_credentials_says_where_to_put_them() {
    let port = fake_server(|_, _| {
        Resp::Full(401, vec![("WWW-Authenticate".into(), r#"Basic realm="r""#.into())], vec![])
    })
    .await;
    let (_d, s) = store();
    let n = ModelName::parse(&format!("127.0.0.1:{port}/ns/m:x")).unwrap();
    let e = client().pull(&s, &n, &quiet).await.unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert!(e.to_string().contains("user name and password"), "{e}");
}
