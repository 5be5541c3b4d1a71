"""Validation of exported SNNs on ONNX Runtime, per target device, and release bundles.

Torch-free on purpose: this package must run on a device (or in a CI job) that has only numpy
and onnxruntime. It may import `edgeprune.errors` and `edgeprune.artifacts` (both torch-free)
and nothing else from edgeprune; tests/test_targets.py checks that.
"""
