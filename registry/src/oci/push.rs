//! `Client::push`: blobs (existence check, cross-repository mount, chunked upload), then
//! the manifest.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

use super::{Client, Ctx, Progress, ProgressFn};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Layer, MEDIA_TYPE_LINK, MEDIA_TYPE_MANIFEST, MEDIA_TYPE_MODEL};
use crate::name::ModelName;
use crate::store::Store;

/// What a push did.
#[derive(Clone, Debug, Default)]
pub struct PushOutcome {
    /// sha256 of the manifest bytes that were pushed.
    pub manifest_digest: Option<Digest>,
    /// Blobs uploaded.
    pub uploaded: Vec<Digest>,
    /// Blobs mounted from another repository of the same registry.
    pub mounted: Vec<Digest>,
    /// Blobs the registry already had in this repository.
    pub existing: Vec<Digest>,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
}

fn location(ctx: &Ctx, resp: &reqwest::Response) -> Result<String> {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| ctx.err("the registry answered an upload request without a Location"))
}

impl Client {
    /// Pushes a local model to its registry (the host in its name). A model created with
    /// `--link` is pushed as an ordinary model: the linked file is uploaded as its model
    /// layer.
    pub async fn push(
        &self,
        store: &Store,
        name: &ModelName,
        progress: ProgressFn<'_>,
    ) -> Result<PushOutcome> {
        let ctx = Ctx::new(name, true);
        // A model that cannot be opened here (no model layer, parameters that are not
        // JSON, ...) is not pushed: no registry should hold what no client can use, and
        // the refusal is the same locally and through a server.
        store.check(name)?;
        let (mut manifest, _) = store.read_manifest(name)?;
        let mut raw = crate::store::read_bounded(
            &store.manifest_path(name),
            crate::store::MAX_MANIFEST_BYTES,
        )?;
        let mut sources: HashMap<Digest, PathBuf> = HashMap::new();
        if manifest.layers.iter().any(|l| l.media_type == MEDIA_TYPE_LINK) {
            for l in &mut manifest.layers {
                if l.media_type == MEDIA_TYPE_LINK {
                    let li = store.read_link(&l.digest)?;
                    Store::check_link(&li)?;
                    sources.insert(li.digest, li.path.clone());
                    *l = Layer {
                        media_type: MEDIA_TYPE_MODEL.into(),
                        digest: li.digest,
                        size: li.size,
                        from: None,
                        annotations: None,
                    };
                }
            }
            raw = manifest.to_json();
        }
        let mut out = PushOutcome::default();
        let mut seen = HashSet::new();
        for l in manifest.blobs() {
            if !seen.insert(l.digest) {
                continue;
            }
            let path =
                sources.get(&l.digest).cloned().unwrap_or_else(|| store.blob_path(&l.digest));
            if !path.is_file() {
                return Err(Error::BlobMissing {
                    model: name.to_string(),
                    digest: l.digest.to_string(),
                    path,
                });
            }
            self.push_blob(&ctx, store, name, l, &path, progress, &mut out).await?;
        }
        progress(&Progress::status("pushing manifest"));
        let url = self.url(&ctx, &format!("manifests/{}", name.tag()));
        let body = Bytes::from(raw);
        let resp = self
            .send(&ctx, "putting the manifest", |c| {
                c.put(&url)
                    .header(reqwest::header::CONTENT_TYPE, MEDIA_TYPE_MANIFEST)
                    .body(body.clone())
            })
            .await?;
        if !resp.status().is_success() {
            let s = resp.status();
            let b = super::error_body(resp).await;
            return Err(ctx.err(format!("putting the manifest: HTTP {s}{b}")));
        }
        out.manifest_digest = Some(Digest::of_bytes(&body));
        progress(&Progress::status("success"));
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn push_blob(
        &self,
        ctx: &Ctx,
        store: &Store,
        name: &ModelName,
        l: &Layer,
        path: &std::path::Path,
        progress: ProgressFn<'_>,
        out: &mut PushOutcome,
    ) -> Result<()> {
        let d = l.digest;
        let status = format!("pushing {}", &d.hex()[..12]);
        let emit = |done: u64| {
            progress(&Progress {
                status: status.clone(),
                digest: Some(d.to_string()),
                total: Some(l.size),
                completed: Some(done),
            });
        };
        let blob_url = self.url(ctx, &format!("blobs/{d}"));
        let resp = self.send(ctx, "checking for a blob", |c| c.head(&blob_url)).await?;
        match resp.status() {
            s if s.is_success() => {
                out.existing.push(d);
                emit(l.size);
                return Ok(());
            }
            StatusCode::NOT_FOUND => {}
            s => return Err(ctx.err(format!("checking for blob {d}: HTTP {s}"))),
        }
        // Cross-repository mount from another repository of the same registry.
        let from = store.repositories_with_blob(name.host(), &d, &name.repository());
        let mut upload_url = self.url(ctx, "blobs/uploads/");
        if let Some(from) = from.first() {
            let mut u = reqwest::Url::parse(&upload_url).map_err(|e| ctx.err(e.to_string()))?;
            u.query_pairs_mut().append_pair("mount", &d.to_string()).append_pair("from", from);
            upload_url = u.to_string();
        }
        let resp = self
            .send(ctx, "starting an upload", |c| {
                c.post(&upload_url).header(reqwest::header::CONTENT_LENGTH, 0)
            })
            .await?;
        let mut loc = match resp.status() {
            StatusCode::CREATED if !from.is_empty() => {
                out.mounted.push(d);
                emit(l.size);
                return Ok(());
            }
            StatusCode::ACCEPTED => self.resolve_location(ctx, &location(ctx, &resp)?)?,
            s => {
                let b = super::error_body(resp).await;
                return Err(ctx.err(format!("starting the upload of blob {d}: HTTP {s}{b}")));
            }
        };
        let mut file =
            tokio::fs::File::open(path).await.map_err(|e| Error::io("opening", path, e))?;
        let chunk = self.opts.upload_chunk_size.max(1 << 16);
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        emit(0);
        while sent < l.size {
            let n = chunk.min(l.size - sent) as usize;
            let mut buf = vec![0u8; n];
            file.read_exact(&mut buf).await.map_err(|e| Error::io("reading", path, e))?;
            hasher.update(&buf);
            let body = Bytes::from(buf);
            let range = format!("{}-{}", sent, sent + n as u64 - 1);
            let url = loc.clone();
            let timeout = self.upload_timeout(n as u64);
            let resp = self
                .send_upload(ctx, "uploading a blob chunk", |c| {
                    c.patch(&url)
                        .timeout(timeout)
                        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                        .header(reqwest::header::CONTENT_RANGE, &range)
                        .header(reqwest::header::CONTENT_LENGTH, n)
                        .body(body.clone())
                })
                .await?;
            if resp.status() != StatusCode::ACCEPTED && !resp.status().is_success() {
                let s = resp.status();
                let b = super::error_body(resp).await;
                return Err(ctx.err(format!("uploading blob {d} bytes {range}: HTTP {s}{b}")));
            }
            loc = self.resolve_location(ctx, &location(ctx, &resp)?)?;
            sent += n as u64;
            out.bytes_uploaded += n as u64;
            emit(sent);
        }
        let got = Digest::from_hasher(hasher);
        if got != d {
            return Err(Error::DigestMismatch {
                what: format!("{} (while pushing {})", path.display(), ctx.model),
                expected: d.to_string(),
                actual: got.to_string(),
            });
        }
        let mut u = reqwest::Url::parse(&loc).map_err(|e| ctx.err(e.to_string()))?;
        u.query_pairs_mut().append_pair("digest", &d.to_string());
        let url = u.to_string();
        // The registry may verify the whole blob before it answers: allow for reading it
        // at 16 MiB/s.
        let timeout = self.opts.read_timeout.saturating_add(Duration::from_secs(l.size >> 24));
        let resp = self
            .send_upload(ctx, "finishing an upload", |c| {
                c.put(&url).timeout(timeout).header(reqwest::header::CONTENT_LENGTH, 0)
            })
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            let s = resp.status();
            let b = super::error_body(resp).await;
            return Err(ctx.err(format!("finishing the upload of blob {d}: HTTP {s}{b}")));
        }
        out.uploaded.push(d);
        Ok(())
    }
}
