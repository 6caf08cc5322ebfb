//! corral-e2e (work in progress).
