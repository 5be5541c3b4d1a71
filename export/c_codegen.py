"""C99 code for a C-runtime program (export/c_program.py): computes only non-zero weights and,
after a spiking layer, only the inputs that are non-zero (events).

`write_c(program, folder)` writes into `folder`:
    model.h          the interface: sizes as macros, the context struct, the infer functions
    model.c          the network: one static function per layer, straight-line per-step schedule
    model_weights.c  the weights as `const` arrays (sparse: values + indices + row pointers)
    runner.c         a standalone runner (stdin images -> stdout logits, --bench, --info, --stats)
and returns a summary (files with bytes and sha256, weight bytes, per-layer facts).

Why `const` C arrays rather than a binary blob: the weights land in .rodata (flash on a
microcontroller, shared read-only pages on Linux) with no loader, file I/O, parsing, alignment
or endianness code; the compiler checks their types; and the model is one self-contained
object file. A blob would only matter for swapping weights without recompiling, which a
validated, packaged ticket does not do. Values are written as C99 hexadecimal float literals,
so every float32 round-trips exactly, and the output is byte-for-byte deterministic.

Storage and computation per layer (conv2d / linear):
- input after a LIF layer (spikes, or pooled spikes): EVENT-DRIVEN. Weights are grouped by
  input (conv: one row per (input channel, ky, kx) listing output channels; linear: CSC, one
  row per input column listing output rows). Only non-zero inputs are visited, and each
  scatters value*w into the outputs its non-zero weights reach; for 0/1 spikes the multiply is
  skipped (1.0f*w == w exactly). Input channels whose weights are all pruned are skipped whole.
- dense input (the image in the stem): GATHER over non-zero weights only (conv: one row per
  output channel listing (input channel, ky, kx) taps, each tap a vectorizable sweep over the
  output plane; linear: CSR).
  A conv whose op has "dense_rows" (c_program.choose_dense_rows: weights at least that
  dense) stores each (input channel, ky, kx) row whole, zeros included, padded to a multiple
  of 8 output channels, at 4 bytes per weight slot instead of ~5 per non-zero: an event then
  updates all output channels in one loop whose length the compiler knows is a multiple of the
  vector width (gcc -O2 vectorizes only such loops); on dense input (the stem) each output
  position sums input * row over its window that way, then writes its channels once. Same
  sums in the same order as sparse rows, so the same bits. Events accumulate position-major
  (HWC) in a scratch buffer, so one event's outputs are adjacent in memory.
- events: an event-driven layer first lists the indices of its non-zero inputs, 256 at a time,
  without a branch, then visits only those (a per-input zero test mispredicts at 10-30% spikes
  and cost more than the updates). A stride-1 conv accumulates into a buffer with a halo
  around the output, where the border events' outer taps land and are dropped, so no event
  tests bounds: on sparse rows one flat loop over the channel's weights, each stored with its
  offset in that buffer (instead of its output channel); on dense rows one vectorized loop per
  tap at a constant offset.
- pooling sweeps each window row and column across a whole output row (vectorizable), each
  output still summing its window in order; average/sum pooling of spikes adds the window's
  rows first (spike counts sum exactly in any order).
Index arrays use the smallest unsigned type that holds their values (uint8/uint16/uint32).
Bias (and step_bias) is added after the sum, as PyTorch's kernels do.

Neurons follow their framework in the same float32 operation order (export/c_neurons.py), so
spikes match PyTorch bit for bit except where a membrane potential lands within rounding of the
threshold. Compile with -ffp-contract=off (c_build does): a fused multiply-add would change the
rounding.

The parts: export/c_plan.py checks the program and annotates each op; export/c_ops.py has one
emitter per op kind (export/c_neurons.py per neuron kind); export/c_layout.py the sparse
weight storage; export/c_runner.py the runner; this module lays out the buffers and assembles
the files.

All state lives in a caller-allocatable context struct (no malloc, no I/O in model.c; it needs
only <stdint.h>); `PREFIX_infer` uses a static context and is therefore not reentrant.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from edgeprune.errors import UserError

from .c_ops import EMITTERS, Emitted, Site
from .c_plan import plan
from .c_runner import runner_c
from .c_text import array, comment, hexf

GENERATOR = "edgeprune.c_codegen/4"
FILES = ("model.h", "model.c", "model_weights.c", "runner.c")


def _check_prefix(prefix: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,30}", prefix or ""):
        raise UserError(f"C symbol prefix {prefix!r} is not a C identifier")
    return prefix


def _buffers(p: dict, input_size: int) -> tuple[list[int], int]:
    """Give every op its input and output buffer ("buf_in", "buf_out"); returns the three
    buffers' sizes and the one that holds the body's output. The stem ping-pongs between
    buffers 0 and 1 from the normalized image in 0; its output stays put for all steps while
    the body ping-pongs between the other two. Flatten moves no data."""
    sizes, cur = [input_size, 0, 0], 0
    for op in p["stem"]:
        src = cur
        if op["kind"] != "flatten":
            cur = 1 - cur
        op["buf_in"], op["buf_out"] = src, cur
        sizes[cur] = max(sizes[cur], int(np.prod(op["out_shape"])))
    pair = [b for b in (0, 1, 2) if b != cur]  # cur: the stem's output, kept for all steps
    for op in p["body"]:
        src = cur
        if op["kind"] != "flatten":
            cur = pair[0] if cur != pair[0] else pair[1]
        op["buf_in"], op["buf_out"] = src, cur
        sizes[cur] = max(sizes[cur], int(np.prod(op["out_shape"])))
    return sizes, cur


class _Program:
    """The emitted ops of a plan, gathered into what the three files need."""

    def __init__(self, p: dict, prefix: str):
        self.fns, self.weights, self.externs, self.fields, self.resets = [], [], [], [], []
        self.schedule = {"stem": [], "body": []}
        self.layers, self.spiking_names, self.spiking_sizes = [], [], []
        self.weight_bytes, self.scratch = 0, 0
        for part in ("stem", "body"):
            for n, op in enumerate(p[part]):
                site = Site(part, n, prefix, f"ctx->buf{op['buf_in']}", f"ctx->buf{op['buf_out']}")
                self._add(op, site, EMITTERS[op["kind"]](op, site))

    def _add(self, op: dict, site: Site, e: Emitted) -> None:
        info = {"name": op["name"], "part": site.part, "kind": op["kind"],
                "in_shape": op["in_shape"], "out_shape": op["out_shape"],
                "input": op["in_kind"], **e.info}
        if e.function:
            self.fns.append(e.function)
        if e.arrays:
            self.weights.append(e.weights_comment)
            for name, ctype, vals, fmt in e.arrays:
                self.weights.append(array(ctype, name, vals, fmt))
                self.externs.append(f"extern const {ctype} {name}[{max(len(vals), 1)}];")
            self.weights.append("\n")
            self.weight_bytes += info["bytes"]
        self.scratch = max(self.scratch, e.scratch)
        call = e.call
        if e.states:
            size = int(np.prod(op["in_shape"]))
            for st in e.states:
                self.fields.append(f"    float {st}{site.n}[{size}]; /* "
                                   f"{comment(op['name'])} {st} */")
                self.resets.append(f"{st}{site.n}")
            info.update(neurons=size, states=len(e.states))
        if e.spiking:
            info.update(spike_index=len(self.spiking_names))
            call = f"ctx->spikes[{len(self.spiking_names)}] += {call}"
            self.spiking_names.append(op["name"])
            self.spiking_sizes.append(int(np.prod(op["in_shape"])))
        self.schedule[site.part].append(call)
        self.layers.append(info)


def generate(program: dict, prefix: str = "edgeprune") -> tuple[dict[str, str], dict]:
    """The C sources (name -> text) and a summary; `write_c` writes them."""
    prefix = _check_prefix(prefix)
    p = plan(program)
    C, H, W = (int(v) for v in program["input_shape"])
    T = int(program["timesteps"])
    K = p["out_shape"][0]
    mean = [float(np.float32(v)) for v in program["normalize"]["mean"]]
    std = [float(np.float32(v)) for v in program["normalize"]["std"]]
    sizes, out_buf = _buffers(p, C * H * W)
    g = _Program(p, prefix)
    norm_bytes = 8 * C
    weight_bytes = g.weight_bytes + norm_bytes
    shape = dict(prefix=prefix, C=C, H=H, W=W, T=T, K=K)
    sources = {"model.h": _header(g, sizes, weight_bytes, **shape),
               "model.c": _model_c(g, mean, std, out_buf, **shape),
               "model_weights.c": _weights_c(g), "runner.c": runner_c(prefix)}
    summary = {"generator": GENERATOR, "prefix": prefix, "input_shape": [C, H, W],
               "num_classes": K, "timesteps": T, "weight_bytes": weight_bytes,
               "normalize_bytes": norm_bytes,
               "state_bytes": 4 * sum(l.get("neurons", 0) * l.get("states", 0)
                                      for l in g.layers),
               "buffer_bytes": 4 * sum(max(s, 1) for s in sizes) + 4 * max(g.scratch, 1),
               "spiking_layers": g.spiking_names, "layers": g.layers}
    return sources, summary


def _header(g: _Program, sizes: list[int], weight_bytes: int, *, prefix: str, C: int, H: int,
            W: int, T: int, K: int) -> str:
    P, L = prefix.upper(), len(g.spiking_names)
    summary = "\n".join(
        f" *   {l['name']:<14} {l['kind']:<10} {str(l['in_shape']):>14} -> {str(l['out_shape']):<14}"
        + (f" {l['nonzero']}/{l['weights']} weights ({l['mode']})" if "weights" in l else "")
        for l in g.layers)
    return f"""/* Generated by {GENERATOR}: do not edit.
 * Spiking network, direct encoding, T = {T} timesteps, input {C}x{H}x{W} float32 in [0, 1]
 * (normalized inside), {K} logits = the last layer's output summed over the T steps.
 * Layers:
{comment(summary)}
 */
#ifndef {P}_MODEL_H
#define {P}_MODEL_H

#include <stdint.h>

#define {P}_INPUT_C {C}
#define {P}_INPUT_H {H}
#define {P}_INPUT_W {W}
#define {P}_INPUT_SIZE {C * H * W}
#define {P}_NUM_CLASSES {K}
#define {P}_TIMESTEPS {T}
#define {P}_NUM_SPIKING_LAYERS {L}
#define {P}_WEIGHT_BYTES {weight_bytes}
#define {P}_NUM_LAYERS {len(g.layers)}

/* Everything one inference touches: activations and neuron state. Allocate it anywhere
 * (static, stack, heap); {prefix}_infer_ctx resets the state itself. */
typedef struct {{
    float buf0[{max(sizes[0], 1)}];
    float buf1[{max(sizes[1], 1)}];
    float buf2[{max(sizes[2], 1)}];
{chr(10).join(g.fields)}
    float scratch[{max(g.scratch, 1)}]; /* event-driven convs: position-major accumulator */
    uint32_t spikes[{max(L, 1)}]; /* spikes per LIF layer in the last inference (all steps) */
}} {prefix}_ctx;

/* Run one image (C*H*W floats, channel-major, [0, 1] pixels) and write NUM_CLASSES logits.
 * Returns 0, or -1 if a pointer is NULL. */
int {prefix}_infer_ctx({prefix}_ctx *ctx, const float *image, float *logits);

/* The same with a static context: not reentrant, not thread-safe. */
int {prefix}_infer(const float *image, float *logits);

/* Name and neuron count of each LIF layer (index = position in ctx->spikes). */
extern const char *const {prefix}_spiking_layer_names[{max(L, 1)}];
extern const uint32_t {prefix}_spiking_layer_neurons[{max(L, 1)}];

#ifdef MODEL_PROFILE
/* Profiling build only: the layers' names and kinds (index NUM_LAYERS: "other", i.e. state
 * reset, normalization and readout), and the hook the host defines: called with -1 when an
 * inference starts, then with the index of each layer as it finishes. */
extern const char *const {prefix}_layer_names[{len(g.layers) + 1}];
extern const char *const {prefix}_layer_kinds[{len(g.layers) + 1}];
void {prefix}_profile_mark(int layer);
#endif

#endif
"""


def _model_c(g: _Program, mean: list[float], std: list[float], out_buf: int, *, prefix: str,
             C: int, H: int, W: int, T: int, K: int) -> str:
    L = len(g.spiking_names)
    names = ", ".join(json.dumps(n) for n in g.spiking_names) or "\"\""
    neurons = ", ".join(str(v) for v in g.spiking_sizes) or "0"
    resets = "".join(f"    for (i = 0; i < (int)(sizeof ctx->{s} / sizeof ctx->{s}[0]); i++) "
                     f"ctx->{s}[i] = 0.0f;\n" for s in g.resets)
    n_stem = len(g.schedule["stem"])
    stem = "".join(f"    {s}\n    PROFILE_MARK({k});\n" for k, s in enumerate(g.schedule["stem"]))
    body = "".join(f"        {s}\n        PROFILE_MARK({n_stem + k});\n"
                   for k, s in enumerate(g.schedule["body"]))
    overhead = len(g.layers)  # the profile's last slot: reset, normalization, readout
    kinds = ", ".join(json.dumps(l["kind"]) for l in g.layers)
    layer_names = ", ".join(json.dumps(l["name"]) for l in g.layers)
    return f"""/* Generated by {GENERATOR}: do not edit. See model.h.
 * Build with -std=c99 -ffp-contract=off: fusing a multiply and an add changes the rounding
 * that spikes are compared against. */
#include "model.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* Profiling build (-DMODEL_PROFILE): after each layer the model calls {prefix}_profile_mark
 * with the layer's index, which the host (runner.c) defines and times; the model itself reads
 * no clock. Normal builds compile the marks to nothing. */
#ifdef MODEL_PROFILE
const char *const {prefix}_layer_names[{len(g.layers) + 1}] = {{{layer_names}, "other"}};
const char *const {prefix}_layer_kinds[{len(g.layers) + 1}] = {{{kinds}, "other"}};
#define PROFILE_MARK(n) {prefix}_profile_mark(n)
#else
#define PROFILE_MARK(n) ((void)0)
#endif

/* weights (model_weights.c) */
{chr(10).join(g.externs)}

static const float mean_[{C}] = {{{", ".join(hexf(v) for v in mean)}}};
static const float std_[{C}] = {{{", ".join(hexf(v) for v in std)}}};

const char *const {prefix}_spiking_layer_names[{max(L, 1)}] = {{{names}}};
const uint32_t {prefix}_spiking_layer_neurons[{max(L, 1)}] = {{{neurons}}};

{chr(10).join(g.fns)}
int {prefix}_infer_ctx({prefix}_ctx *ctx, const float *image, float *logits)
{{
    int i, c, t;
    if (!ctx || !image || !logits) return -1;
    PROFILE_MARK(-1);
    for (i = 0; i < {max(L, 1)}; i++) ctx->spikes[i] = 0;
{resets}    for (i = 0; i < {K}; i++) logits[i] = 0.0f;
    /* normalization: (x - mean) / std per channel */
    for (c = 0; c < {C}; c++)
        for (i = 0; i < {H * W}; i++)
            ctx->buf0[c * {H * W} + i] = (image[c * {H * W} + i] - mean_[c]) / std_[c];
    PROFILE_MARK({overhead});
    /* stem: once */
{stem}    /* body: every timestep */
    for (t = 0; t < {T}; t++) {{
{body}        for (i = 0; i < {K}; i++) logits[i] += ctx->buf{out_buf}[i];
        PROFILE_MARK({overhead});
    }}
    return 0;
}}

int {prefix}_infer(const float *image, float *logits)
{{
    static {prefix}_ctx ctx;
    return {prefix}_infer_ctx(&ctx, image, logits);
}}
"""


def _weights_c(g: _Program) -> str:
    return (f"/* Generated by {GENERATOR}: do not edit. Weights of model.c, sparse: per layer\n"
            " * row pointers (ptr), indices (idx) and float32 values (val), C99 hex floats. */\n"
            "#include <stdint.h>\n\n" + "".join(g.weights))


def write_c(program: dict, folder, *, prefix: str = "edgeprune") -> dict:
    """Write model.h, model.c, model_weights.c and runner.c for `program` into `folder`
    (created if missing). Deterministic: the same program gives the same bytes.
    Returns the summary of `generate` plus "files": {name: {"bytes", "sha256"}} and "folder"."""
    sources, summary = generate(program, prefix)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in FILES:
        data = sources[name].encode()
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / name)
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    summary.update(folder=str(folder), files=files)
    return summary
