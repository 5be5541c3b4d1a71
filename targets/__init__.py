"""Validation of exported SNNs on ONNX Runtime, per target device, and release bundles.

Torch-free on purpose: this package must run on a device (or in a CI job) that has only numpy
and onnxruntime. It may import `edgeprune.errors` and `edgeprune.artifacts` (both torch-free)
and nothing else from edgeprune; tests/test_targets.py checks that.
The sparse C runtime's c_build.py (compile natively / for aarch64, sanitizer builds) and
c_run.py (run its runner natively or under qemu-aarch64) need only the stdlib and numpy.
"""
