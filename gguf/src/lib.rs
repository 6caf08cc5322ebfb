//! corral-gguf (work in progress).
