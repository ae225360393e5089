"""NumPy-only runtime for nic's ONNX models (filled in by the native_fallback issue)."""
