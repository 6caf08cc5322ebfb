//! Helper of `bench/pull_vs_curl.sh`: `bench_pull push HOST FILE` creates a model from
//! FILE and pushes it to `HOST/bench/model:latest`; `bench_pull pull HOST STORE_DIR
//! [PARALLEL]` pulls it into an empty store and prints the rate.

use std::time::Instant;

use corral_registry::oci::{Client, ClientOptions};
use corral_registry::{ModelName, Store, StoreOptions, modelfile};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_pull push HOST FILE | pull HOST STORE_DIR [PARALLEL]";
    let (mode, host) = match (args.get(1), args.get(2)) {
        (Some(m), Some(h)) => (m.as_str(), h.as_str()),
        _ => return Err(usage.into()),
    };
    let name = ModelName::parse(&format!("{host}/bench/model:latest"))?;
    let path = args.get(3).ok_or(usage)?;
    let parallel = args.get(4).and_then(|p| p.parse().ok()).unwrap_or(4);
    let opts = ClientOptions { insecure: true, parallel, ..Default::default() };
    let client = Client::with_credentials(opts, Default::default())?;
    match mode {
        "push" => {
            let dir = tempfile::tempdir()?;
            let store = Store::open(dir.path(), StoreOptions::default())?;
            let mf = modelfile::parse(&format!("FROM {path}"))?;
            let cwd = std::env::current_dir()?;
            let opts = modelfile::CreateOptions { link: true };
            let r = modelfile::create(&store, &name, &mf, &cwd, &opts, &mut |_| {})?;
            client.push(&store, &name, &|_| {}).await?;
            println!("{}", r.model_digest);
        }
        "pull" => {
            let store = Store::open(path, StoreOptions::default())?;
            let t = Instant::now();
            let out = client.pull(&store, &name, &|_| {}).await?;
            let s = t.elapsed().as_secs_f64();
            let mb = out.bytes_fetched as f64 / 1e6;
            println!("corral: {mb:.0} MB in {s:.3} s = {:.0} MB/s (parallel {parallel})", mb / s);
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
