"""Run an ONNX model on a batch of inputs and time it: the part of validation that executes on
the target.

This file is run as a script, in a fresh process, either natively (`python runner.py JOB_DIR`)
or inside qemu-aarch64 with the aarch64 build of ONNX Runtime. It must therefore import nothing
but the standard library, numpy and onnxruntime (not edgeprune, which is not on the emulated
sys.path). The job is exchanged through files in JOB_DIR:

  in:  job.json (model path, session options, timing plan), inputs.npy
  out: outputs.npy (logits for every input), result.json (latencies, memory, versions) or
       result.json with {"error": ...} and exit status 3.

A fresh process per target also makes the memory figure clean: peak RSS growth from just before
the session is created to after the last run, with no other session alive in the process.
"""
import json
import os
import platform
import resource
import sys
import time
import traceback

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def _status_kib(field):
    """A Vm* line of /proc/self/status in bytes, or None where there is no procfs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Memory:
    """Peak RSS growth from `start()` on.

    Importing onnxruntime peaks higher than a small session ever does, so the process's lifetime
    peak (ru_maxrss) would hide the session. Linux resets the peak (VmHWM) to the current RSS
    when "5" is written to /proc/self/clear_refs; where that is refused, RSS samples taken after
    session creation and after the runs stand in for the peak."""

    def start(self):
        self.baseline = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM after a peak reset"
        except OSError:
            self.method = "VmRSS samples"
        if self.baseline is None:  # no procfs (macOS): the lifetime peak is all there is
            self.baseline = self._maxrss()
            self.method = "ru_maxrss"
        self.samples = []

    def sample(self):
        rss = _status_kib("VmRSS")
        if rss is not None:
            self.samples.append(rss)

    @staticmethod
    def _maxrss():
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # KiB on Linux

    def peak(self):
        if self.method == "ru_maxrss":
            return self._maxrss()
        candidates = list(self.samples)
        if self.method.startswith("VmHWM"):
            hwm = _status_kib("VmHWM")
            if hwm is not None:
                candidates.append(hwm)
        return max(candidates) if candidates else self.baseline


def batches(x, axis, size):
    """Split along the batch axis into chunks of `size`, padding the last by repetition
    (for models whose batch dimension is fixed)."""
    n = x.shape[axis]
    for start in range(0, n, size):
        idx = list(range(start, min(start + size, n)))
        real = len(idx)
        idx += [idx[-1]] * (size - real)
        yield x.take(idx, axis=axis), real


def main(job_dir):
    import numpy as np
    import onnxruntime as ort

    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    x = np.load(os.path.join(job_dir, "inputs.npy"))
    mem = Memory()
    mem.start()

    if job["provider"] not in ort.get_available_providers():
        raise RuntimeError(f"execution provider {job['provider']} is not available in this "
                           f"onnxruntime build (has: {', '.join(ort.get_available_providers())})")
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                          OPT_LEVELS[job["graph_optimization_level"]])
    so.intra_op_num_threads = int(job["intra_op_threads"])
    t0 = time.perf_counter()
    sess = ort.InferenceSession(job["model"], sess_options=so, providers=[job["provider"]])
    load_ms = (time.perf_counter() - t0) * 1e3
    mem.sample()
    inp = sess.get_inputs()[0]
    name = inp.name
    axis = 1 if x.ndim == 5 else 0  # (T, B, C, H, W) for poisson input, else (B, C, H, W)
    fixed = inp.shape[axis] if isinstance(inp.shape[axis], int) else None

    # Outputs for every input, in chunks (a fixed batch dimension forces its size).
    chunk = fixed or int(job.get("infer_batch") or x.shape[axis])
    outs = []
    for xb, real in batches(x, axis, chunk):
        outs.append(sess.run(None, {name: xb})[0][:real])
    logits = np.concatenate(outs, axis=0)

    # Latency at the profile's batch size: warm-up runs first (allocations, kernel choice).
    lb = int(job["latency_batch"])
    if fixed is not None and fixed != lb:
        raise RuntimeError(f"the model's batch dimension is fixed at {fixed}, the profile asks "
                           f"for latency at batch {lb}")
    reps = -(-lb // x.shape[axis])
    xl = np.concatenate([x] * reps, axis=axis).take(range(lb), axis=axis)
    feed = {name: np.ascontiguousarray(xl)}
    for _ in range(int(job["warmup"])):
        sess.run(None, feed)
    times = []
    for _ in range(int(job["runs"])):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    mem.sample()

    np.save(os.path.join(job_dir, "outputs.npy"), logits)
    result = {"latencies_ms": times, "session_load_ms": load_ms,
              "rss_baseline_bytes": mem.baseline, "rss_peak_bytes": mem.peak(),
              "rss_method": mem.method,
              "onnxruntime": ort.__version__, "numpy": np.__version__,
              "machine": platform.machine(), "python": platform.python_version(),
              "providers": sess.get_providers(), "input_name": name,
              "input_shape": [d if isinstance(d, int) else str(d) for d in inp.shape]}
    with open(os.path.join(job_dir, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as e:  # reported to the host through result.json, not a traceback
        with open(os.path.join(sys.argv[1], "result.json"), "w") as f:
            json.dump({"error": f"{type(e).__name__}: {e}".strip(),
                       "traceback": traceback.format_exc()}, f)
        sys.exit(3)
