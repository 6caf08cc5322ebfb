//! Several machines: the remote workers (`corral worker`, ggml RPC servers) whose devices
//! a model may use beside the local ones, as the settings name them, and what the engine
//! says it did with them.
//!
//! The workers are named by `--rpc` (on `serve`, `run` and `bench`, merged with
//! `CORRAL_RPC` by clap), else by the config's `[backends.llama-cpp] rpc = ["host:port",
//! ...]`; a split of the layers by `CORRAL_TENSOR_SPLIT`, else `[backends.llama-cpp]
//! tensor_split`. They reach the engine as the load options
//! [`corral_backend_api::EXTRA_RPC`] and [`corral_backend_api::EXTRA_TENSOR_SPLIT`] of
//! every load, as the KV cache settings do; an engine that honours them declares
//! [`corral_backend_api::Capabilities::REMOTE_DEVICES`] and says where the layers went
//! under [`corral_backend_api::META_PLACEMENT`].

use corral_backend_api::{Capabilities, ModelInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;

/// The config table the settings are read from.
pub const BACKEND_TABLE: &str = "llama-cpp";

/// The workers and the split every load is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteDevices {
    /// `host:port` of each worker, in order.
    pub endpoints: Vec<String>,
    /// Proportions per device, as the engine documents them (`None`: by free memory).
    pub tensor_split: Option<String>,
}

fn table_value(config: &Config, key: &str) -> Option<String> {
    let v = config.backends.get(BACKEND_TABLE)?.get(key)?;
    Some(match v {
        toml::Value::Array(items) => items
            .iter()
            .map(|i| match i {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

impl RemoteDevices {
    /// The settings in force: `flag` (`--rpc`, already merged with `CORRAL_RPC`), else
    /// the config; the split from `CORRAL_TENSOR_SPLIT`, else the config.
    pub fn from_settings(flag: &[String], config: &Config) -> RemoteDevices {
        let listed: Vec<String> =
            flag.iter().flat_map(|f| corral_probe::rpc::parse_endpoints(f)).collect();
        let endpoints = if listed.is_empty() {
            table_value(config, "rpc")
                .map_or_else(Vec::new, |s| corral_probe::rpc::parse_endpoints(&s))
        } else {
            listed
        };
        let tensor_split = std::env::var("CORRAL_TENSOR_SPLIT")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| table_value(config, "tensor_split"));
        RemoteDevices { endpoints, tensor_split }
    }

    /// What cannot work whatever the workers do, said before serving: an endpoint that is
    /// not `HOST:PORT` (a port from 1 to 65535, no scheme or path), a split that is not
    /// non-negative numbers, not all zero. (Whether a worker answers is seen per load.)
    pub fn check(&self) -> Result<(), String> {
        for e in &self.endpoints {
            let bad = |why: &str| Err(format!("RPC worker {e:?}: {why}"));
            if e.contains("://") || e.contains('/') {
                return bad("give HOST:PORT, without a scheme or path");
            }
            let Some((host, port)) = e.rsplit_once(':') else { return bad("not HOST:PORT") };
            if host.is_empty() || host.contains(':') && !host.starts_with('[') {
                return bad("not HOST:PORT (an IPv6 address goes in brackets: [::1]:50052)");
            }
            if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                return bad("the port must be a number from 1 to 65535");
            }
        }
        if let Some(split) = &self.tensor_split {
            // The separators the engine takes (llama.cpp's own `3/1` too).
            let parts: Vec<Option<f64>> = split
                .split(|c: char| c == ',' || c == '/' || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .map(|p| p.trim().parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0))
                .collect();
            if parts.iter().any(Option::is_none) || parts.iter().flatten().all(|x| *x == 0.0) {
                return Err(format!(
                    "tensor_split {split:?}: give one non-negative number per device, \
                     comma-separated, not all zero"
                ));
            }
        }
        Ok(())
    }

    /// Whether any worker is named.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The load options that carry them (nothing when nothing is set).
    pub fn extra(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if !self.endpoints.is_empty() {
            v.push((corral_backend_api::EXTRA_RPC.to_string(), self.endpoints.join(",")));
        }
        if let Some(s) = &self.tensor_split {
            v.push((corral_backend_api::EXTRA_TENSOR_SPLIT.to_string(), s.clone()));
        }
        v
    }

    /// After a load: a warning when workers were named but the engine does not use them
    /// (`None` when it does, or when none were named).
    pub fn unused_warning(&self, caps: Capabilities, engine: &str) -> Option<String> {
        (!self.endpoints.is_empty() && !caps.contains(Capabilities::REMOTE_DEVICES)).then(|| {
            format!(
                "{engine} cannot use RPC workers ({}): the model runs on this machine only; \
                 the llama-cpp backend can",
                self.endpoints.join(", ")
            )
        })
    }
}

/// One device that holds part of a model, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedDevice {
    /// The engine's name for it (`CPU`, `CUDA0`, `RPC0`).
    pub name: String,
    /// `cpu`, `gpu` or `remote`.
    pub kind: String,
    /// `host:port` of a remote device, empty for a local one.
    #[serde(default)]
    pub endpoint: String,
    /// Memory in bytes.
    #[serde(default)]
    pub memory_total: u64,
    /// Free memory in bytes before the model was loaded.
    #[serde(default)]
    pub memory_free: u64,
    /// The first and last layer it holds.
    pub layers: [u32; 2],
    /// How many layers it holds (the output layer counts as one).
    pub n_layers: u32,
    /// Whether it holds the output layer.
    #[serde(default)]
    pub output: bool,
}

/// `layers 2-3`, `layer 4 and the output`, `the output layer`: `layers` counts the output
/// layer as the one after the last repeating layer.
pub fn layer_text(layers: [u32; 2], output: bool) -> String {
    let [first, last] = layers;
    if output && first == last {
        return "the output layer".to_string();
    }
    let last = if output { last - 1 } else { last };
    let range =
        if first == last { format!("layer {first}") } else { format!("layers {first}-{last}") };
    if output { format!("{range} and the output") } else { range }
}

/// A worker that was named but not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedWorker {
    /// `host:port`.
    pub endpoint: String,
    /// Why.
    pub reason: String,
}

/// Where a model's layers went ([`corral_backend_api::META_PLACEMENT`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Each device that holds layers.
    #[serde(default)]
    pub devices: Vec<PlacedDevice>,
    /// Workers not used.
    #[serde(default)]
    pub skipped: Vec<SkippedWorker>,
}

impl Placement {
    /// The placement a loaded model's metadata reports, if any.
    pub fn of(meta: &ModelInfo) -> Option<Placement> {
        serde_json::from_str(meta.get(corral_backend_api::META_PLACEMENT)?).ok()
    }

    /// As JSON, for `/api/ps`.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// One line per device: `RPC0 127.0.0.1:50052 (remote): layers 3-5, 7.6 GiB free of
    /// 15.5 GiB`.
    pub fn lines(&self) -> Vec<String> {
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        let mut out: Vec<String> = self
            .devices
            .iter()
            .map(|d| {
                let at =
                    if d.endpoint.is_empty() { String::new() } else { format!(" {}", d.endpoint) };
                format!(
                    "{}{at} ({}): {}, {:.1} GiB free of {:.1} GiB",
                    d.name,
                    d.kind,
                    layer_text(d.layers, d.output),
                    gib(d.memory_free),
                    gib(d.memory_total)
                )
            })
            .collect();
        out.extend(self.skipped.iter().map(|s| format!("{} not used: {}", s.endpoint, s.reason)));
        out
    }
}

/// What one named worker answered (`corral probe`, `corral backends`).
#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    /// `host:port`.
    pub endpoint: String,
    /// What it lends, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<corral_probe::rpc::RpcWorker>,
    /// Why it cannot be used, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Asks every worker what it lends, one after the other, with the protocol's timeouts.
/// A worker serving a model of another process does not answer (it serves one client at
/// a time): that is reported, not waited for.
pub fn probe_workers(endpoints: &[String]) -> Vec<WorkerReport> {
    endpoints
        .iter()
        .map(|ep| {
            match corral_probe::rpc::probe_worker(
                ep,
                corral_probe::rpc::PROTOCOL,
                corral_probe::rpc::DEFAULT_TIMEOUT,
            ) {
                Ok(w) => WorkerReport { endpoint: ep.clone(), worker: Some(w), error: None },
                Err(e) => {
                    WorkerReport { endpoint: ep.clone(), worker: None, error: Some(e.to_string()) }
                }
            }
        })
        .collect()
}

/// The workers as text, one line per device or failure.
pub fn render_workers(reports: &[WorkerReport]) -> String {
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let mut out = String::from("RPC workers:\n");
    for r in reports {
        match (&r.worker, &r.error) {
            (Some(w), _) if w.devices.is_empty() => {
                out.push_str(&format!(
                    "  {} (protocol {}): lends no device\n",
                    r.endpoint, w.version
                ));
            }
            (Some(w), _) => {
                for d in &w.devices {
                    out.push_str(&format!(
                        "  {} device {} (protocol {}): {:.1} GiB free of {:.1} GiB\n",
                        r.endpoint,
                        d.index,
                        w.version,
                        gib(d.memory_free),
                        gib(d.memory_total)
                    ));
                }
            }
            (None, e) => out.push_str(&format!(
                "  {}: {}\n",
                r.endpoint,
                e.as_deref().unwrap_or("no answer")
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_splits_that_cannot_work_are_refused_before_serving() {
        let with = |endpoints: &[&str], split: Option<&str>| RemoteDevices {
            endpoints: endpoints.iter().map(ToString::to_string).collect(),
            tensor_split: split.map(str::to_string),
        };
        assert_eq!(with(&["10.0.0.2:50052", "[::1]:50052", "gpu-box:1"], None).check(), Ok(()));
        for bad in ["foo", "127.0.0.1:99999", ":80", "a:b:c", "http://h:1", "h:0", "h:1/x"] {
            assert!(with(&[bad], None).check().is_err(), "{bad}");
        }
        for good in ["1,2.5,0", "3/1", "3 1"] {
            assert_eq!(with(&[], Some(good)).check(), Ok(()), "{good}");
        }
        for bad in ["abc", "0,0", "-1,1", "inf", ","] {
            assert!(with(&[], Some(bad)).check().unwrap_err().contains("tensor_split"), "{bad}");
        }
    }

    fn config(toml_text: &str) -> Config {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn the_flag_wins_over_the_config() {
        let c = config("[backends.llama-cpp]\nrpc = [\"a:1\", \"b:2\"]\ntensor_split = [1, 2]\n");
        let r = RemoteDevices::from_settings(&[], &c);
        assert_eq!(r.endpoints, ["a:1", "b:2"]);
        let r = RemoteDevices::from_settings(&["c:3,d:4".into()], &c);
        assert_eq!(r.endpoints, ["c:3", "d:4"]);
        assert_eq!(r.extra()[0], ("rpc".to_string(), "c:3,d:4".to_string()));
        let none = RemoteDevices::from_settings(&[], &Config::default());
        assert!(none.is_empty() && none.extra().is_empty());
    }

    #[test]
    fn an_engine_that_ignores_workers_is_named() {
        let r = RemoteDevices { endpoints: vec!["a:1".into()], tensor_split: None };
        let w = r.unused_warning(Capabilities::GENERATION, "cpu:cpu").unwrap();
        assert!(w.contains("cpu:cpu cannot use RPC workers (a:1)"), "{w}");
        assert!(r.unused_warning(Capabilities::REMOTE_DEVICES, "llama-cpp:cpu").is_none());
    }

    #[test]
    fn layers_read_as_a_person_says_them() {
        assert_eq!(layer_text([0, 1], false), "layers 0-1");
        assert_eq!(layer_text([3, 3], false), "layer 3");
        assert_eq!(layer_text([4, 5], true), "layer 4 and the output");
        assert_eq!(layer_text([2, 5], true), "layers 2-4 and the output");
        assert_eq!(layer_text([5, 5], true), "the output layer");
    }

    #[test]
    fn placements_read_back_and_print() {
        let json = r#"{"devices":[{"name":"CPU","kind":"cpu","endpoint":"","memory_total":2147483648,"memory_free":1073741824,"layers":[0,1],"n_layers":2,"output":false},{"name":"RPC0","kind":"remote","endpoint":"127.0.0.1:50052","memory_total":2147483648,"memory_free":1073741824,"layers":[2,4],"n_layers":3,"output":true}],"skipped":[{"endpoint":"h:1","reason":"cannot be reached"}]}"#;
        let meta = ModelInfo {
            kv: vec![(corral_backend_api::META_PLACEMENT.into(), json.into())],
            ..Default::default()
        };
        let p = Placement::of(&meta).unwrap();
        assert_eq!(p.devices.len(), 2);
        assert_eq!(
            p.lines(),
            [
                "CPU (cpu): layers 0-1, 1.0 GiB free of 2.0 GiB",
                "RPC0 127.0.0.1:50052 (remote): layers 2-3 and the output, 1.0 GiB free of 2.0 GiB",
                "h:1 not used: cannot be reached",
            ]
        );
    }
}
