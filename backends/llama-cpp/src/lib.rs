//! corral-backend-llama-cpp (work in progress).
