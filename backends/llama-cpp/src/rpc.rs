//! Several machines, on ggml's RPC backend: lending this machine's devices (`corral
//! worker` calls [`lend`]) and spreading a model's layers over other machines' devices
//! beside the local ones ([`plan_load`], for loads whose `rpc` option names workers).
//!
//! llama-cpp-sys-2 builds ggml-rpc when `GGML_RPC=ON` (the workspace's
//! `.cargo/config.toml` sets it for every build) and links the static library with the
//! others, but its bindings do not include `ggml-rpc.h`, so the two functions used are
//! declared here.
//!
//! ggml's RPC client aborts the process when a worker cannot be reached or speaks another
//! protocol version (`GGML_ABORT` in `rpc_dispatcher::start`). So every worker is asked
//! first, with timeouts, by [`corral_probe::rpc::probe_worker`]: one that does not answer,
//! or answers another version, is skipped with the reason (and the load fails, naming
//! it, when the model does not fit without it). A worker that dies while a model uses it
//! still aborts the process (`RPC_STATUS_ASSERT` on a dead socket): that is what engine
//! isolation is for, and the host reports the worker's last line ("Remote RPC server
//! crashed or returned malformed response").

use std::ffi::{CString, c_char};
use std::path::Path;

use corral_backend_api::{BackendError, LoadSettings};
use corral_probe::rpc as wire;
use llama_cpp_sys_2 as sys;
use serde::Serialize;

use crate::backend::{LlamaOptions, cstr_or_empty};

unsafe extern "C" {
    /// ggml-rpc.h: serves `devices` on `endpoint` and returns only when it cannot (a
    /// message on stderr says why).
    fn ggml_backend_rpc_start_server(
        endpoint: *const c_char,
        cache_dir: *const c_char,
        n_threads: usize,
        n_devices: usize,
        devices: *mut sys::ggml_backend_dev_t,
    );
    /// ggml-rpc.h: connects to the worker at `endpoint` (aborting when it cannot) and
    /// returns a registry of its devices, or null when it lends none. Kept per endpoint
    /// for the life of the process.
    fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> sys::ggml_backend_reg_t;
    /// ggml-impl.h (not in the bindings): what ggml prints after an abort's message.
    fn ggml_print_backtrace();
}

/// What ggml's abort says, made plain when it is an RPC worker that was lost.
pub(crate) fn explain_abort(message: &str) -> String {
    let lost = ["Remote RPC server crashed", "Failed to connect to", "RPC handshake failed"];
    if lost.iter().any(|m| message.contains(m)) {
        format!(
            "GGML_ABORT: {} ({message}): it stopped, crashed or the network failed; this \
             engine process ends and its requests fail",
            corral_backend_api::RPC_WORKER_LOST
        )
    } else {
        message.to_string()
    }
}

unsafe extern "C" fn on_abort(message: *const c_char) {
    let text = if message.is_null() {
        String::new()
    } else {
        // SAFETY: ggml passes a NUL-terminated message valid during the call.
        unsafe { std::ffi::CStr::from_ptr(message) }.to_string_lossy().into_owned()
    };
    // Nothing may unwind into C; ggml aborts the process right after this returns.
    let _ = std::panic::catch_unwind(|| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{}", explain_abort(&text));
    });
    // SAFETY: ggml's own default after the message, safe to call while aborting.
    unsafe { ggml_print_backtrace() };
}

/// Makes ggml's aborts say plainly when a worker was lost (the host shows that line as
/// why the engine process ended). Called once, at init.
pub(crate) fn install_abort_message() {
    // SAFETY: a plain function pointer valid for the life of the process.
    unsafe { sys::ggml_set_abort_callback(Some(on_abort)) };
}

/// The ggml backend registry of RPC devices is named this (ggml-rpc.cpp).
const RPC_REG_NAME: &str = "RPC";

/// Whether `dev` is a device of ggml's RPC backend (another machine's).
///
/// # Safety
/// `dev` must be a live device of ggml's registry.
unsafe fn is_rpc_device(dev: sys::ggml_backend_dev_t) -> bool {
    // SAFETY: the caller's promise; a device's registry and its name live as long as it.
    let reg = unsafe { sys::ggml_backend_dev_backend_reg(dev) };
    // SAFETY: as above.
    !reg.is_null() && cstr_or_empty(unsafe { sys::ggml_backend_reg_name(reg) }) == RPC_REG_NAME
}

/// What a worker lends: its GPUs (and other accelerators) when it has any, else its CPU,
/// as llama.cpp's own `rpc-server` chooses.
fn devices_to_lend() -> Vec<sys::ggml_backend_dev_t> {
    let mut gpus = Vec::new();
    let mut cpus = Vec::new();
    // SAFETY: the registry is initialised (init_llama); indices stay below its count.
    unsafe {
        for i in 0..sys::ggml_backend_dev_count() {
            let dev = sys::ggml_backend_dev_get(i);
            if dev.is_null() || is_rpc_device(dev) {
                continue;
            }
            match sys::ggml_backend_dev_type(dev) {
                sys::GGML_BACKEND_DEVICE_TYPE_CPU => cpus.push(dev),
                sys::GGML_BACKEND_DEVICE_TYPE_GPU | sys::GGML_BACKEND_DEVICE_TYPE_IGPU => {
                    gpus.push(dev);
                }
                _ => {}
            }
        }
    }
    if gpus.is_empty() { cpus } else { gpus }
}

/// Serves this machine's devices on `endpoint` with ggml's RPC server; returns only when
/// the server cannot start or stops.
pub(crate) fn lend(
    options: &LlamaOptions,
    endpoint: &str,
    settings: &LoadSettings,
) -> Result<(), BackendError> {
    let cendpoint = CString::new(endpoint)
        .map_err(|_| BackendError::invalid("the endpoint contains a NUL byte"))?;
    let cache_dir = match settings.extra(corral_backend_api::EXTRA_CACHE_DIR) {
        Some(d) if !d.is_empty() => {
            std::fs::create_dir_all(d).map_err(|e| {
                BackendError::invalid(format!("cannot create the cache directory {d}: {e}"))
            })?;
            Some(
                CString::new(d)
                    .map_err(|_| BackendError::invalid("the cache directory contains a NUL"))?,
            )
        }
        _ => None,
    };
    let mut devices = devices_to_lend();
    if devices.is_empty() {
        return Err(BackendError::internal("llama.cpp found no device to lend"));
    }
    let threads = options.threads(settings.n_threads).max(1) as usize;
    log::info!("ggml RPC server on {endpoint}, {} device(s), {threads} threads", devices.len());
    // SAFETY: the strings are NUL-terminated and outlive the call (which does not return
    // while it serves); `devices` holds `devices.len()` live devices of the registry.
    unsafe {
        ggml_backend_rpc_start_server(
            cendpoint.as_ptr(),
            cache_dir.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            threads,
            devices.len(),
            devices.as_mut_ptr(),
        );
    }
    Err(BackendError::internal(format!(
        "ggml's RPC server on {endpoint} stopped (its reason is on stderr: an address in use, \
         an address this machine does not have, ...)"
    )))
}

/// One line of ggml's RPC server that means a client of another protocol version was
/// turned away, said so a person knows what to do (`None` for every other line).
pub(crate) fn explain_server_line(line: &str) -> Option<String> {
    (line.contains("HELLO request size mismatch") || line.contains("Expected HELLO command")).then(
        || {
            format!(
                "a client of another RPC protocol version was refused (this worker speaks {}); \
                 run the same corral version on both machines [ggml: {line}]",
                wire::PROTOCOL
            )
        },
    )
}

/// One device of a load's placement, as [`corral_backend_api::META_PLACEMENT`] lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Placed {
    /// ggml's name (`CPU`, `CUDA0`, `RPC0`).
    pub(crate) name: String,
    /// `cpu`, `gpu` or `remote`.
    pub(crate) kind: &'static str,
    /// `host:port` of a remote device, empty for a local one.
    pub(crate) endpoint: String,
    /// Memory in bytes when the model was loaded.
    pub(crate) memory_total: u64,
    /// Free memory in bytes before the model was loaded.
    pub(crate) memory_free: u64,
    /// The first and last layer it holds (`n_layers` = 0: none).
    pub(crate) layers: [u32; 2],
    /// How many of the model's layers it holds (the output layer counts as one).
    pub(crate) n_layers: u32,
    /// Whether it holds the output layer.
    pub(crate) output: bool,
}

/// A worker that was not used, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Skipped {
    /// `host:port`.
    pub(crate) endpoint: String,
    /// Why.
    pub(crate) reason: String,
}

/// Where a model's layers go: what [`corral_backend_api::META_PLACEMENT`] carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Placement {
    /// Every device that takes part, local first.
    pub(crate) devices: Vec<Placed>,
    /// Workers named but not used.
    pub(crate) skipped: Vec<Skipped>,
}

/// A load's device list and split for llama.cpp, kept alive until the load returns
/// (`llama_model_params` borrows both arrays).
pub(crate) struct LoadPlan {
    /// The devices to offload to, null-terminated.
    pub(crate) devices: Vec<sys::ggml_backend_dev_t>,
    /// One proportion per device of `devices`, padded to `llama_max_devices()`.
    pub(crate) tensor_split: Vec<f32>,
    /// Layers to offload (the rest stay on the CPU).
    pub(crate) n_gpu_layers: i32,
    /// What it means, for the model's metadata.
    pub(crate) placement: Placement,
}

/// Splits `units` layers over devices in proportion to `weights` (largest remainders;
/// the counts add up to `units`). All-zero weights split evenly.
pub(crate) fn split_layers(units: u32, weights: &[f64]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let sum: f64 = weights.iter().map(|w| w.max(0.0)).sum();
    let shares: Vec<f64> = if sum > 0.0 {
        weights.iter().map(|w| w.max(0.0) / sum * f64::from(units)).collect()
    } else {
        vec![f64::from(units) / weights.len() as f64; weights.len()]
    };
    let mut counts: Vec<u32> = shares.iter().map(|s| s.floor() as u32).collect();
    let mut left = units.saturating_sub(counts.iter().sum());
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = shares[a] - shares[a].floor();
        let rb = shares[b] - shares[b].floor();
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// Parses a `tensor_split` option: one non-negative number per device.
fn parse_split(text: &str, names: &[String]) -> Result<Vec<f64>, BackendError> {
    let values: Vec<f64> = text
        .split(|c: char| c == ',' || c == '/' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            BackendError::invalid(format!(
                "tensor_split {text:?}: give one non-negative number per device"
            ))
        })?;
    if values.len() != names.len() || values.iter().all(|v| *v == 0.0) {
        return Err(BackendError::invalid(format!(
            "tensor_split {text:?} gives {} proportion(s) for {} device(s) ({}); give one \
             per device, in that order, not all zero",
            values.len(),
            names.len(),
            names.join(", ")
        )));
    }
    Ok(values)
}

/// A device taking part in a load.
struct Candidate {
    dev: sys::ggml_backend_dev_t,
    placed: Placed,
}

fn candidate(dev: sys::ggml_backend_dev_t, kind: &'static str, endpoint: &str) -> Candidate {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: `dev` is a live device; the out-pointers point to live locals.
    let name = unsafe {
        sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
        cstr_or_empty(sys::ggml_backend_dev_name(dev))
    };
    Candidate {
        dev,
        placed: Placed {
            name,
            kind,
            endpoint: endpoint.to_string(),
            memory_total: total as u64,
            memory_free: free as u64,
            layers: [0, 0],
            n_layers: 0,
            output: false,
        },
    }
}

/// Connects to the workers of a load's `rpc` option, asking each first (see the module
/// docs), and plans where the model at `path` goes: over the local devices (the CPU, or
/// the local GPUs when there are any and `n_gpu_layers` is not 0) and the workers'
/// devices, in proportion to their free memory or as `tensor_split` says.
pub(crate) fn plan_load(
    path: &Path,
    endpoints: &[String],
    settings: &LoadSettings,
) -> Result<LoadPlan, BackendError> {
    let mut skipped = Vec::new();
    let mut remote = Vec::new();
    for endpoint in endpoints {
        match wire::probe_worker(endpoint, wire::PROTOCOL, wire::DEFAULT_TIMEOUT) {
            Ok(w) if w.devices.is_empty() => skipped
                .push(Skipped { endpoint: endpoint.clone(), reason: "it lends no device".into() }),
            Ok(_) => {
                let c = CString::new(endpoint.as_str())
                    .map_err(|_| BackendError::invalid("an RPC endpoint contains a NUL byte"))?;
                // SAFETY: `c` is NUL-terminated; the worker just answered this protocol
                // version, so ggml's connection does not abort (a worker that vanished in
                // between would: isolation contains that).
                let reg = unsafe { ggml_backend_rpc_add_server(c.as_ptr()) };
                if reg.is_null() {
                    skipped.push(Skipped {
                        endpoint: endpoint.clone(),
                        reason: "it lends no device".into(),
                    });
                    continue;
                }
                // SAFETY: `reg` is a live registry of ggml's; indices below its count.
                unsafe {
                    for i in 0..sys::ggml_backend_reg_dev_count(reg) {
                        let dev = sys::ggml_backend_reg_dev_get(reg, i);
                        if !dev.is_null() {
                            remote.push(candidate(dev, "remote", endpoint));
                        }
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                log::warn!("{reason}; the model is spread without it");
                skipped.push(Skipped { endpoint: endpoint.clone(), reason });
            }
        }
    }

    let mut local = Vec::new();
    if settings.n_gpu_layers != 0 {
        // SAFETY: the registry is initialised; indices stay below its count.
        unsafe {
            for i in 0..sys::ggml_backend_dev_count() {
                let dev = sys::ggml_backend_dev_get(i);
                if dev.is_null() || is_rpc_device(dev) {
                    continue;
                }
                if matches!(
                    sys::ggml_backend_dev_type(dev),
                    sys::GGML_BACKEND_DEVICE_TYPE_GPU | sys::GGML_BACKEND_DEVICE_TYPE_IGPU
                ) {
                    local.push(candidate(dev, "gpu", ""));
                }
            }
        }
    }
    let cpu_layers = local.is_empty();
    if cpu_layers {
        // SAFETY: ggml always registers its CPU device.
        let cpu = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
        if cpu.is_null() {
            return Err(BackendError::internal("llama.cpp has no CPU device"));
        }
        local.push(candidate(cpu, "cpu", ""));
    }
    let mut all: Vec<Candidate> = local.into_iter().chain(remote).collect();

    let file_size = std::fs::metadata(path).map_or(0, |m| m.len());
    let free: u64 = all.iter().map(|c| c.placed.memory_free).sum();
    fits_without_skipped(path, file_size, free, &skipped)?;

    let n_layer = block_count(path)?;
    // llama.cpp counts the output layer as one more layer to place.
    let units = n_layer + 1;
    let names: Vec<String> = all
        .iter()
        .map(|c| {
            if c.placed.endpoint.is_empty() {
                c.placed.name.clone()
            } else {
                format!("{} ({})", c.placed.name, c.placed.endpoint)
            }
        })
        .collect();
    let by_memory = || all.iter().map(|c| c.placed.memory_free as f64).collect::<Vec<_>>();
    let weights = match settings.extra(corral_backend_api::EXTRA_TENSOR_SPLIT) {
        Some(t) if !t.trim().is_empty() => match parse_split(t, &names) {
            Ok(w) => w,
            // A split written for every worker cannot hold once one is skipped: the load
            // goes on without the worker, as it does without a split.
            Err(e) if !skipped.is_empty() => {
                log::warn!(
                    "{e}; skipped {}: the layers are split by free memory instead",
                    skipped.iter().map(|s| s.endpoint.as_str()).collect::<Vec<_>>().join(", ")
                );
                by_memory()
            }
            Err(e) => return Err(e),
        },
        _ => by_memory(),
    };
    let counts = split_layers(units, &weights);
    let mut first = 0u32;
    for (c, &n) in all.iter_mut().zip(&counts) {
        c.placed.n_layers = n;
        if n > 0 {
            c.placed.layers = [first, first + n - 1];
            c.placed.output = first + n == units;
        }
        first += n;
    }

    // The CPU's layers are the ones not offloaded (llama.cpp keeps the first
    // `units - n_gpu_layers` on the CPU); the offloaded ones split over `devices` as
    // `tensor_split` says, in order, so the counts above are exactly what llama.cpp does.
    let offloaded = if cpu_layers { &all[1..] } else { &all[..] };
    let n_gpu_layers = offloaded.iter().map(|c| c.placed.n_layers).sum::<u32>();
    let mut devices: Vec<sys::ggml_backend_dev_t> = offloaded.iter().map(|c| c.dev).collect();
    devices.push(std::ptr::null_mut());
    // SAFETY: a plain query.
    let max = unsafe { sys::llama_max_devices() };
    if offloaded.len() > max {
        return Err(BackendError::invalid(format!(
            "{} devices to offload to, llama.cpp takes at most {max}",
            offloaded.len()
        )));
    }
    let mut tensor_split = vec![0f32; max.max(1)];
    for (slot, c) in tensor_split.iter_mut().zip(offloaded) {
        *slot = c.placed.n_layers as f32;
    }
    // llama.cpp splits evenly when every proportion is 0: give a device the layers only
    // when some device takes any.
    let placement = Placement {
        devices: all.into_iter().map(|c| c.placed).filter(|p| p.n_layers > 0).collect(),
        skipped,
    };
    Ok(LoadPlan { devices, tensor_split, n_gpu_layers: n_gpu_layers as i32, placement })
}

/// The model's `{arch}.block_count`.
fn block_count(path: &Path) -> Result<u32, BackendError> {
    let g = corral_gguf::reader::GgufFile::open(path)
        .map_err(|e| BackendError::invalid(format!("cannot read {}: {e}", path.display())))?;
    let arch = g.architecture().unwrap_or_default().to_string();
    let key = format!("{arch}.block_count");
    g.get_u32(&key).or_else(|| g.get_u64(&key).and_then(|v| u32::try_from(v).ok())).ok_or_else(
        || {
            BackendError::invalid(format!(
                "{} has no {key}: cannot split its layers over devices",
                path.display()
            ))
        },
    )
}

/// Logs what the placement says, once per load.
pub(crate) fn log_placement(p: &Placement) {
    for d in &p.devices {
        let at = if d.endpoint.is_empty() { String::new() } else { format!(" at {}", d.endpoint) };
        let [first, last] = d.layers;
        let what = match (d.output, first == last) {
            (true, true) => "the output layer".to_string(),
            (true, false) => format!("layers {first}-{} and the output", last - 1),
            (false, _) => format!("layers {first}-{last}"),
        };
        log::info!(
            "{}{at}: {what} ({} MiB free of {} MiB)",
            d.name,
            d.memory_free >> 20,
            d.memory_total >> 20
        );
    }
}

/// Refuses a load that needs the workers which could not be used: the weights
/// (`file_size`) exceed the `free` memory of the devices left. A model that fits without
/// them loads (they were skipped with a warning).
fn fits_without_skipped(
    path: &Path,
    file_size: u64,
    free: u64,
    skipped: &[Skipped],
) -> Result<(), BackendError> {
    if skipped.is_empty() || file_size <= free {
        return Ok(());
    }
    let who: Vec<String> =
        skipped.iter().map(|s| format!("{} ({})", s.endpoint, s.reason)).collect();
    Err(BackendError::new(
        corral_backend_api::ErrorKind::OutOfMemory,
        format!(
            "{} needs {} MiB for its weights but the devices left have {} MiB free without \
             the RPC worker(s) that could not be used: {}",
            path.display(),
            file_size >> 20,
            free >> 20,
            who.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_that_needs_a_lost_worker_is_refused_naming_it() {
        let lost = [Skipped {
            endpoint: "10.0.0.5:50052".into(),
            reason: "cannot be reached: connection refused".into(),
        }];
        let path = Path::new("/m/big.gguf");
        let e = fits_without_skipped(path, 40 << 30, 23 << 30, &lost).unwrap_err();
        assert_eq!(e.kind, corral_backend_api::ErrorKind::OutOfMemory);
        let m = e.to_string();
        assert!(m.contains("40960 MiB") && m.contains("23552 MiB free"), "{m}");
        assert!(m.contains("10.0.0.5:50052 (cannot be reached: connection refused)"), "{m}");
        // It fits without the worker: the load goes on (the worker was skipped with a
        // warning); nothing skipped: no refusal here, the engine says what it must.
        assert!(fits_without_skipped(path, 1 << 30, 23 << 30, &lost).is_ok());
        assert!(fits_without_skipped(path, 40 << 30, 23 << 30, &[]).is_ok());
    }

    #[test]
    fn layers_split_in_proportion_and_add_up() {
        assert_eq!(split_layers(5, &[1.0, 1.0, 1.0]), [2, 2, 1]);
        assert_eq!(split_layers(13, &[1.0, 1.0, 1.0]), [5, 4, 4]);
        assert_eq!(split_layers(10, &[3.0, 1.0]), [8, 2]);
        assert_eq!(split_layers(4, &[0.0, 0.0]), [2, 2]);
        assert_eq!(split_layers(4, &[1.0, 0.0]), [4, 0]);
        for units in 0..40 {
            let w = [7.0, 2.5, 0.1, 11.0];
            assert_eq!(split_layers(units, &w).iter().sum::<u32>(), units);
        }
    }

    #[test]
    fn a_split_names_the_devices_it_needs() {
        let names = vec!["CPU".to_string(), "RPC0 (a:1)".to_string()];
        assert_eq!(parse_split("3,1", &names).unwrap(), [3.0, 1.0]);
        let e = parse_split("1", &names).unwrap_err().to_string();
        assert!(e.contains("1 proportion(s) for 2 device(s) (CPU, RPC0 (a:1))"), "{e}");
        assert!(parse_split("a,b", &names).is_err());
        assert!(parse_split("0,0", &names).is_err());
        assert!(parse_split("-1,2", &names).is_err());
    }

    #[test]
    fn a_lost_worker_is_said_plainly() {
        let m = "ggml-rpc.cpp:566: Remote RPC server crashed or returned malformed response";
        let e = explain_abort(m);
        assert!(e.starts_with("GGML_ABORT: an RPC worker was lost ("), "{e}");
        assert_eq!(explain_abort("x.c:1: GGML_ASSERT(a) failed"), "x.c:1: GGML_ASSERT(a) failed");
    }

    #[test]
    fn version_refusals_are_explained() {
        let l = "HELLO request size mismatch (0 vs 24) — client needs upgrade to protocol v7.x";
        let e = explain_server_line(l).unwrap();
        assert!(e.contains("another RPC protocol version was refused"), "{e}");
        assert!(explain_server_line("Accepted client connection").is_none());
    }
}
