//! corral-registry (work in progress).
