//! corral-backend-onnx (work in progress).
