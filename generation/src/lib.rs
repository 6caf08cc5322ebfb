//! corral-generation (work in progress).
