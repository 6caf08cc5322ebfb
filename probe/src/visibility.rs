//! `CUDA_VISIBLE_DEVICES`, `ROCR_VISIBLE_DEVICES` and `HIP_VISIBLE_DEVICES`.
//!
//! The lists follow the runtimes' own rules: comma-separated indices or UUIDs (a unique
//! prefix suffices), read up to the first entry that is invalid, negative or out of
//! range; an empty value or `-1` therefore hides every device. ROCm applies
//! `ROCR_VISIBLE_DEVICES` first, then `HIP_VISIBLE_DEVICES` (or, when that is unset,
//! `CUDA_VISIBLE_DEVICES`, which HIP also honours) to the devices left.

use std::collections::BTreeMap;

use crate::{GpuApi, GpuInfo};

/// Which of `devices` (in enumeration order, each with its UUID) `spec` keeps.
pub(crate) fn select(spec: &str, uuids: &[Option<&str>]) -> Vec<bool> {
    let mut keep = vec![false; uuids.len()];
    for entry in spec.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            break;
        }
        if let Ok(index) = entry.parse::<i64>() {
            match usize::try_from(index).ok().filter(|i| *i < uuids.len()) {
                Some(i) => keep[i] = true,
                None => break,
            }
            continue;
        }
        let wanted = entry.to_ascii_lowercase();
        let matches: Vec<usize> = uuids
            .iter()
            .enumerate()
            .filter(|(_, u)| u.is_some_and(|u| uuid_matches(u, &wanted)))
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [i] => keep[*i] = true,
            _ => break,
        }
    }
    keep
}

fn uuid_matches(uuid: &str, wanted: &str) -> bool {
    let uuid = uuid.to_ascii_lowercase();
    let bare = |s: &str| s.strip_prefix("gpu-").unwrap_or(s).to_string();
    uuid.starts_with(wanted) || bare(&uuid).starts_with(&bare(wanted))
}

/// Marks entries hidden by the visibility variables in `env`.
pub(crate) fn apply(env: &BTreeMap<String, String>, gpus: &mut [GpuInfo], notes: &mut Vec<String>) {
    if let Some(spec) = env.get("CUDA_VISIBLE_DEVICES") {
        filter(gpus, GpuApi::Cuda, "CUDA_VISIBLE_DEVICES", spec);
    }
    if let Some(spec) = env.get("ROCR_VISIBLE_DEVICES") {
        filter(gpus, GpuApi::Rocm, "ROCR_VISIBLE_DEVICES", spec);
    }
    let hip = env
        .get("HIP_VISIBLE_DEVICES")
        .map(|s| ("HIP_VISIBLE_DEVICES", s))
        .or_else(|| env.get("CUDA_VISIBLE_DEVICES").map(|s| ("CUDA_VISIBLE_DEVICES", s)));
    if let Some((name, spec)) = hip {
        filter(gpus, GpuApi::Rocm, name, spec);
    }
    for (name, api) in [
        ("CUDA_VISIBLE_DEVICES", GpuApi::Cuda),
        ("ROCR_VISIBLE_DEVICES", GpuApi::Rocm),
        ("HIP_VISIBLE_DEVICES", GpuApi::Rocm),
    ] {
        if env.contains_key(name) {
            let hidden = gpus.iter().filter(|g| g.api == api && !g.visible).count();
            let total = gpus.iter().filter(|g| g.api == api).count();
            if hidden > 0 && hidden == total {
                notes.push(format!("{name} hides every {api} device"));
            }
        }
    }
}

/// Applies one variable to the still-visible entries of `api`, in their order.
fn filter(gpus: &mut [GpuInfo], api: GpuApi, name: &str, spec: &str) {
    let positions: Vec<usize> = gpus
        .iter()
        .enumerate()
        .filter(|(_, g)| g.api == api && g.visible)
        .map(|(i, _)| i)
        .collect();
    let uuids: Vec<Option<&str>> = positions.iter().map(|&i| gpus[i].uuid.as_deref()).collect();
    let keep = select(spec, &uuids);
    for (pos, kept) in positions.into_iter().zip(keep) {
        if !kept {
            gpus[pos].visible = false;
            gpus[pos].hidden_by = Some(format!("{name}={spec}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUIDS: [Option<&str>; 3] = [
        Some("GPU-aaaa1111-0000-0000-0000-000000000000"),
        Some("GPU-bbbb2222-0000-0000-0000-000000000000"),
        None,
    ];

    #[test]
    fn indices() {
        assert_eq!(select("1", &UUIDS), [false, true, false]);
        assert_eq!(select("2,0", &UUIDS), [true, false, true]);
        assert_eq!(select(" 0 , 1 ", &UUIDS), [true, true, false]);
    }

    #[test]
    fn hiding_all_and_stopping_at_invalid_entries() {
        assert_eq!(select("", &UUIDS), [false, false, false]);
        assert_eq!(select("-1", &UUIDS), [false, false, false]);
        assert_eq!(select("0,-1,1", &UUIDS), [true, false, false]);
        assert_eq!(select("0,7,1", &UUIDS), [true, false, false]);
        assert_eq!(select("bogus,1", &UUIDS), [false, false, false]);
    }

    #[test]
    fn uuids_and_prefixes() {
        assert_eq!(select("GPU-bbbb2222", &UUIDS), [false, true, false]);
        assert_eq!(
            select("gpu-AAAA1111-0000-0000-0000-000000000000", &UUIDS),
            [true, false, false]
        );
        // Ambiguous prefix stops the list.
        assert_eq!(select("GPU-", &UUIDS), [false, false, false]);
    }
}
