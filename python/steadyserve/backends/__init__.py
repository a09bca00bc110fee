"""Execution backends. Only ONNX Runtime for now; it is imported lazily (see onnx.py)."""

from .onnx import OnnxBackend

__all__ = ["OnnxBackend"]
