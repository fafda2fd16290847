"""Offline side: data -> PyTorch autoencoder -> calibrated threshold -> ONNX model package."""
