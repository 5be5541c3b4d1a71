"""One C emitter per op kind of a C-runtime program (export/c_plan.py's annotated ops): each
returns its C function, the statement that runs it, its weight arrays and what it needs from
the context (export/c_codegen.py assembles the files). Variants (event-driven or gather,
binary or valued input, dense rows, per-step bias) are chosen by parameters while the text is
built; nothing edits generated text afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from edgeprune.neuron_kinds import KINDS

from .c_layout import halo, layout
from .c_neurons import C_NEURONS
from .c_text import comment, hexf


@dataclass(frozen=True)
class Site:
    """Where an op runs in the generated program."""

    part: str  # "stem" (runs once) or "body" (every timestep)
    n: int  # its index in the part
    prefix: str  # the C symbol prefix
    src: str  # its input buffer, e.g. "ctx->buf0"
    dst: str  # its output buffer

    def fn(self, op: dict) -> str:
        return f"{self.part}_{self.n}_{op['kind']}"

    @property
    def sym(self) -> str:  # its weight arrays' name stem
        return f"{self.prefix}_{self.part}{self.n}"

    @property
    def step(self) -> str:  # the timestep as the function sees it
        return "t" if self.part == "body" else "0"


@dataclass(frozen=True)
class Emitted:
    call: str  # the statement that runs the op (every step in the body)
    function: str = ""  # its static C function
    arrays: tuple = ()  # weight arrays in model_weights.c: (name, C type, values, format)
    weights_comment: str = ""  # the line that heads its arrays
    states: tuple[str, ...] = ()  # neuron state arrays in the context (one float per neuron)
    spiking: bool = False  # `call` returns the spike count (counted in ctx->spikes)
    scratch: int = 0  # floats of ctx->scratch it needs
    info: dict = field(default_factory=dict)  # facts for the summary


def _bias_code(op: dict, sym: str, nout: int, plane: int) -> str:
    """Add bias (then step_bias[t]) to `out`, `plane` outputs per channel."""
    if op["bias"] is None and op["step_bias"] is None:
        return ""
    terms = []
    if op["bias"] is not None:
        terms.append(f"{sym}_bias[c]")
    if op["step_bias"] is not None and op["step_bias"].ndim == 4 and plane > 1:
        terms.append(f"{sym}_step_bias[(t * {nout} + c) * {plane} + p]")
    elif op["step_bias"] is not None:
        terms.append(f"{sym}_step_bias[t * {nout} + c]")
    body = "".join(f"            o[p] += {term};\n" for term in terms)
    if plane == 1:
        body = "".join(f"        out[c] += {term};\n" for term in terms)
        return f"    for (c = 0; c < {nout}; c++) {{\n{body}    }}\n"
    return (f"    for (c = 0; c < {nout}; c++) {{\n"
            f"        float *o = out + c * {plane};\n"
            f"        for (p = 0; p < {plane}; p++) {{\n{body}        }}\n    }}\n")


def _bias_terms(op: dict, sym: str, nout: int, plane: int, c: str, p: str) -> str:
    """`+ bias[c] + step_bias[t][c][p]` for one output (channel `c`, position `p`, C
    expressions), in the order _bias_code adds them: folded into a loop that writes `out`."""
    terms = f" + {sym}_bias[{c}]" if op["bias"] is not None else ""
    sb = op["step_bias"]
    if sb is not None and sb.ndim == 4 and plane > 1:
        terms += f" + {sym}_step_bias[(t * {nout} + {c}) * {plane} + {p}]"
    elif sb is not None:
        terms += f" + {sym}_step_bias[t * {nout} + {c}]"
    return terms


def _source(op: dict, lay: dict) -> str:
    return f"event-driven over {op['in_kind']} input" if lay["event"] else "dense input"


class _Conv(NamedTuple):
    """A conv op's sizes, as its C loops use them."""

    o: int  # output channels
    i: int  # input channels
    kh: int
    kw: int
    h: int  # input height and width
    w: int
    oh: int  # output height and width
    ow: int
    sh: int  # stride
    sw: int
    ph: int  # padding
    pw: int

    @classmethod
    def of(cls, op: dict) -> "_Conv":
        return cls(*op["weight"].shape, *op["in_shape"][1:], *op["out_shape"][1:],
                   *op["stride"], *op["padding"])


def _conv_fn(op: dict, fn: str, sym: str, lay: dict) -> str:
    g = _Conv.of(op)
    o, i, kh, kw, h, w, oh, ow, sh, sw, ph, pw = g
    plane = oh * ow
    event = lay["event"]
    head = (f"/* {comment(op['name'])}: conv2d {i}->{o}, {kh}x{kw}, stride {sh}x{sw}, "
            f"padding {ph}x{pw}, {h}x{w} -> {oh}x{ow}; {lay.get('nonzero', len(lay['val']))} "
            f"non-zero weights, {_source(op, lay)}"
            f"{', dense rows' if lay.get('dense_rows') else ''} */\n"
            f"static void {fn}(const float *restrict in, float *restrict out, int t"
            f"{', float *restrict acc_' if event else ''})\n{{\n"
            f"    int c, p;{f'{chr(10)}    int ev_[{EVENT_CHUNK}];' if event else ''}\n    (void)t;\n")
    bias = _bias_terms(op, sym, o, plane, "c", "p")
    if not event and lay.get("dense_rows"):
        return head + _conv_positions(g, sym, lay, bias) + "}\n"
    if event:
        hw, binary = halo(op), op["in_kind"] == "binary"  # 0/1 spikes: no multiply
        events = _conv_events_halo(g, binary, sym, lay, bias, hw[1]) if hw else \
            _conv_events(g, binary, sym, lay, bias)
        return (head + f"    for (p = 0; p < {_lanes(op, lay) * _acc_positions(op)}; p++) "
                f"acc_[p] = 0.0f;\n" + events + "}\n")
    return (head + f"    for (p = 0; p < {o * plane}; p++) out[p] = 0.0f;\n"
            + _conv_gather(g, op["in_kind"], sym, lay) + _bias_code(op, sym, o, plane) + "}\n")


def _lanes(op: dict, lay: dict) -> int:
    """Output channels per position in an event conv's accumulator: dense rows are padded."""
    return lay["lanes"] if lay.get("dense_rows") else op["weight"].shape[0]


# Event-driven layers first gather the indices of their non-zero inputs, a chunk at a time, into
# a list on the stack (EVENT_CHUNK ints: small enough for a microcontroller's stack), without a
# branch, then visit only those: one test per input whose outcome is unpredictable (spikes at
# 10-30%) mispredicts often and cost more than the events' own updates. Same inputs in the same
# order, so the same bits.
EVENT_CHUNK = 256


def _compact_events(x: str, base: str, size: int, indent: str) -> str:
    """C lines that set `n` to the count of non-zero `x[base + j]` (j < EVENT_CHUNK, within
    `size`) and `ev_[0..n)` to their indices `base + j` in increasing order."""
    return (f"{indent}const int end_ = {base} + {EVENT_CHUNK} < {size} ? {base} + {EVENT_CHUNK}"
            f" : {size};\n"
            f"{indent}int n = 0, e, j;\n"
            f"{indent}for (j = {base}; j < end_; j++) {{\n"
            f"{indent}    ev_[n] = j;\n"
            f"{indent}    n += {x}[j] != 0.0f; /* NaN counts: it is not zero */\n"
            f"{indent}}}\n")


def _event_loop(g: _Conv, sym: str, lay: dict, first: str, event: str) -> str:
    """The loops of an event conv: each input channel that has a kept weight, its non-zero
    inputs listed a chunk at a time, `first` (which sets q, the event's position) then `event`
    (C lines at 16 spaces) for each."""
    kk, hw = g.kh * g.kw, g.h * g.w
    return f"""    for (c = 0; c < {g.i}; c++) {{
        const {lay['ptr_t']} *rp = {sym}_ptr + c * {kk};
        const float *x = in + c * {hw};
        int p0;
        if (rp[0] == rp[{kk}]) continue; /* every weight from this channel is pruned */
        for (p0 = 0; p0 < {hw}; p0 += {EVENT_CHUNK}) {{
{_compact_events("x", "p0", hw, " " * 12)}            for (e = 0; e < n; e++) {{
                {first}
{event}            }}
        }}
    }}
"""


def _acc_positions(op: dict) -> int:
    """Positions in an event conv's accumulator (scratch floats = this x lanes): with a halo
    (export/c_layout.halo) for stride 1, the output plane otherwise."""
    hw = halo(op)
    return hw[0] * hw[1] if hw else op["out_shape"][1] * op["out_shape"][2]


def _conv_events_halo(g: _Conv, binary: bool, sym: str, lay: dict, bias: str, aw: int) -> str:
    """Stride 1: each non-zero input scatters into the halo accumulator (export/c_layout.halo:
    the output plus kernel - 1 - padding on each side) in one loop over
    its channel's kept weights, each stored with its offset from the event's own position
    (export/c_layout.py); dense rows: one vectorized loop per kept tap, the tap's offset a
    constant. The halo is dropped as the sums go to `out` (CHW), bias added on the way. Each
    output gets at most one term per event, in event order: the same sums in the same order as
    visiting the taps one by one."""
    o, i, kh, kw, h, w, oh, ow, sh, sw, ph, pw = g
    kk, plane = kh * kw, oh * ow
    ind = " " * 16
    if lay.get("dense_rows"):
        lanes = lay["lanes"]
        toff = ", ".join(str(((kh - 1 - ky) * aw + (kw - 1 - kx)) * lanes)
                         for ky in range(kh) for kx in range(kw))
        consts = f"    static const int toff_[{kk}] = {{{toff}}};\n"
        update = (f"{ind}const float *wr = {sym}_val + c * {kk * lanes};\n"
                  f"{ind}int tap, co;\n"
                  f"{ind}for (tap = 0; tap < {kk}; tap++, wr += {lanes}) {{\n"
                  f"{ind}    float *o = ob + toff_[tap];\n"
                  f"{ind}    if (rp[tap] == rp[tap + 1]) continue; /* row pruned */\n"
                  f"{ind}    for (co = 0; co < {lanes}; co++) o[co] += "
                  f"{'wr[co]' if binary else 'xv * wr[co]'};\n"
                  f"{ind}}}\n")
    else:
        lanes, consts = o, ""
        update = (f"{ind}{lay['ptr_t']} k;\n"
                  f"{ind}for (k = rp[0]; k < rp[{kk}]; k++) ob[{sym}_off[k]] += "
                  f"{'' if binary else 'xv * '}{sym}_val[k];\n")
    xv = "" if binary else f"{ind}const float xv = x[q];\n"
    event = (f"                float *ob = acc_ + (q / {w} * {aw} + q % {w}) * {lanes};\n"
             + xv + update)
    return (consts + _event_loop(g, sym, lay, "const int q = ev_[e];", event) + f"""    for (c = 0; c < {o}; c++) {{
        int oy, ox;
        for (oy = 0, p = 0; oy < {oh}; oy++) {{
            const float *a = acc_ + ((oy + {kh - 1 - ph}) * {aw} + {kw - 1 - pw}) * {lanes} + c;
            for (ox = 0; ox < {ow}; ox++, p++) out[c * {plane} + p] = a[ox * {lanes}]{bias};
        }}
    }}
""")


def _conv_events(g: _Conv, binary: bool, sym: str, lay: dict, bias: str) -> str:
    """Strides above 1: each non-zero input scatters into the outputs its kept weights reach,
    each tap tested against the output's bounds (stride 1: _conv_events_halo).
    Events accumulate into `acc_` laid out position-major (HWC): one event's output channels
    are then adjacent (a cache line or two) instead of a plane apart; the sums and their order
    are the same.
    Transposed into `out` (CHW) at the end, bias added on the way."""
    o, i, kh, kw, h, w, oh, ow, sh, sw, ph, pw = g
    kk, plane = kh * kw, oh * ow
    lanes = lay["lanes"] if lay.get("dense_rows") else o
    inner = f"for (k = r[0]; k < r[1]; k++) o[idx[k]] += {'' if binary else 'xv * '}val[k];"
    kdecl = "" if lay.get("dense_rows") else f"\n                        {lay['ptr_t']} k;"
    if lay.get("dense_rows"):  # a loop of `lanes` (a multiple of the vector width)
        inner = (f"if (r[0] != r[1]) {{\n"
                 f"                            const float *wr = val + (c * {kk} + ky * {kw} "
                 f"+ kx) * {lanes};\n"
                 f"                            int co;\n"
                 f"                            (void)idx;\n"
                 f"                            for (co = 0; co < {lanes}; co++) o[co] += "
                 f"{'wr[co]' if binary else 'xv * wr[co]'};\n"
                 f"                        }}")
    first = "const int q = ev_[e], iy = q / " + str(w) + ", ix = q % " + str(w) + ";"
    xv = "" if binary else "                const float xv = x[q];\n"
    return _event_loop(g, sym, lay, first, xv + f"""                int ky, kx;
                for (ky = 0; ky < {kh}; ky++) {{
                    const int ny = iy + {ph} - ky;
                    if (ny < 0) break;
                    if (ny % {sh} != 0 || ny / {sh} >= {oh}) continue;
                    for (kx = 0; kx < {kw}; kx++) {{
                        const int nx = ix + {pw} - kx;
                        const {lay['ptr_t']} *r = rp + ky * {kw} + kx;
                        const {lay['idx_t']} *idx = {sym}_idx;
                        const float *val = {sym}_val;
                        float *o;{kdecl}
                        if (nx < 0) break;
                        if (nx % {sw} != 0 || nx / {sw} >= {ow}) continue;
                        o = acc_ + ((ny / {sh}) * {ow} + nx / {sw}) * {lanes};
                        {inner}
                    }}
                }}
""") + f"""    for (c = 0; c < {o}; c++)
        for (p = 0; p < {plane}; p++) out[c * {plane} + p] = acc_[p * {lanes} + c]{bias};
"""


def _conv_positions(g: _Conv, sym: str, lay: dict, bias: str) -> str:
    """Dense input, dense rows: output position by position, the sums of all (LANES-padded)
    output channels stay in `acc` while every (input channel, ky, kx) row that has a weight
    adds input * row, one vectorized loop per row; then `acc` goes to `out` (CHW) once. The
    sum of each output runs over ky, kx, then input channels."""
    o, i, kh, kw, h, w, oh, ow, sh, sw, ph, pw = g
    kk, hw, plane, lanes = kh * kw, h * w, oh * ow, lay["lanes"]
    return f"""    for (p = 0; p < {plane}; p++) {{
        const int oy = p / {ow}, ox = p % {ow};
        float acc[{lanes}];
        int ky, kx, co;
        for (co = 0; co < {lanes}; co++) acc[co] = 0.0f;
        for (ky = 0; ky < {kh}; ky++) {{
            const int iy = oy * {sh} - {ph} + ky;
            if (iy < 0 || iy >= {h}) continue;
            for (kx = 0; kx < {kw}; kx++) {{
                const int ix = ox * {sw} - {pw} + kx;
                if (ix < 0 || ix >= {w}) continue;
                for (c = 0; c < {i}; c++) {{
                    const int r = c * {kk} + ky * {kw} + kx;
                    const float xv = in[c * {hw} + iy * {w} + ix];
                    const float *wr = {sym}_val + r * {lanes};
                    if ({sym}_ptr[r] == {sym}_ptr[r + 1]) continue; /* row pruned */
                    for (co = 0; co < {lanes}; co++) acc[co] += xv * wr[co];
                }}
            }}
        }}
        for (c = 0; c < {o}; c++) out[c * {plane} + p] = acc[c]{bias};
    }}
"""


def _conv_gather(g: _Conv, in_kind: str, sym: str, lay: dict) -> str:
    """Each output channel sweeps its kept taps over the output plane (vectorizable). The
    input offset `xb` stays an int: a pointer formed before the row (ox < x0) would be
    undefined behaviour even unread."""
    o, i, kh, kw, h, w, oh, ow, sh, sw, ph, pw = g
    kk, plane = kh * kw, oh * ow
    return f"""    for (c = 0; c < {o}; c++) {{
        float *oc = out + c * {plane};
        {lay['ptr_t']} k;
        for (k = {sym}_ptr[c]; k < {sym}_ptr[c + 1]; k++) {{
            const int tap = (int){sym}_idx[k];
            const float wv = {sym}_val[k];
            const int ci = tap / {kk}, ky = (tap % {kk}) / {kw}, kx = tap % {kw};
            const int y0 = ky < {ph} ? ({ph} - ky + {sh - 1}) / {sh} : 0;
            const int x0 = kx < {pw} ? ({pw} - kx + {sw - 1}) / {sw} : 0;
            int y1 = ({h - 1 + ph} - ky) / {sh} + 1, x1 = ({w - 1 + pw} - kx) / {sw} + 1;
            const float *xc = in + ci * {h * w};
            int oy, ox;
            if (y1 > {oh}) y1 = {oh};
            if (x1 > {ow}) x1 = {ow};
            for (oy = y0; oy < y1; oy++) {{
                const int xb = (oy * {sh} - {ph} + ky) * {w} - {pw} + kx;
                float *orow = oc + oy * {ow};
                for (ox = x0; ox < x1; ox++) orow[ox] += wv * xc[xb + ox * {sw}];
            }}
        }}
    }}
"""


def _linear_fn(op: dict, fn: str, sym: str, lay: dict) -> str:
    o, i = op["weight"].shape
    head = (f"/* {comment(op['name'])}: linear {i}->{o}; {len(lay['val'])} non-zero weights, "
            f"{_source(op, lay)} */\n"
            f"static void {fn}(const float *restrict in, float *restrict out, int t)\n{{\n"
            f"    int c;\n    {lay['ptr_t']} k;\n    (void)t;\n")
    if lay["event"]:
        acc = "out[{s}_idx[k]] += {s}_val[k];" if op["in_kind"] == "binary" else \
              "out[{s}_idx[k]] += xv * {s}_val[k];"
        xv = "" if op["in_kind"] == "binary" else "            const float xv = in[c];\n"
        loop = (f"    int c0, ev_[{EVENT_CHUNK}];\n"
                f"    for (c = 0; c < {o}; c++) out[c] = 0.0f;\n"
                f"    for (c0 = 0; c0 < {i}; c0 += {EVENT_CHUNK}) {{\n"
                + _compact_events("in", "c0", i, " " * 8) +
                f"        for (e = 0; e < n; e++) {{\n"
                f"            c = ev_[e];\n{xv}"
                f"            for (k = {sym}_ptr[c]; k < {sym}_ptr[c + 1]; k++) "
                + acc.format(s=sym) + "\n        }\n    }\n")
    else:
        loop = (f"    for (c = 0; c < {o}; c++) {{\n"
                f"        float acc = 0.0f;\n"
                f"        for (k = {sym}_ptr[c]; k < {sym}_ptr[c + 1]; k++) "
                f"acc += {sym}_val[k] * in[{sym}_idx[k]];\n"
                f"        out[c] = acc;\n    }}\n")
    return head + loop + _bias_code(op, sym, o, 1) + "}\n"


def _pool_head(op: dict, fn: str, what: str, note: str, buf: str, ints: str = "") -> str:
    """A pooling function up to the body of its loop over output rows (c, oy), with the row
    buffer `buf` (and the `ints`) declared."""
    c, h, w = op["in_shape"]
    _, oh, ow = op["out_shape"]
    (kh, kw), (sh, sw) = op["kernel"], op["stride"]
    return (f"/* {comment(op['name'])}: {op['kind']} {kh}x{kw} stride {sh}x{sw}{what}, "
            f"{c}x{h}x{w} -> {c}x{oh}x{ow}{note} */\n"
            f"static void {fn}(const float *restrict in, float *restrict out)\n{{\n"
            f"    int c, oy, ox, ky, kx{ints};\n"
            f"    float {buf};\n"
            f"    for (c = 0; c < {c}; c++) {{\n"
            f"        const float *x = in + c * {h * w};\n"
            f"        float *o = out + c * {oh * ow};\n"
            f"        for (oy = 0; oy < {oh}; oy++) {{\n")


def _pool_fn(op: dict, fn: str) -> str:
    """Row by row: each window row (ky) and column (kx) is swept across a whole output row in
    `s`, so the loop over ox runs over many outputs at once (vectorizable); every output still
    sees its window in the order ky, kx, as one output at a time would (the same bits)."""
    _, h, w = op["in_shape"]
    _, oh, ow = op["out_shape"]
    (kh, kw), (sh, sw) = op["kernel"], op["stride"]
    if op["in_kind"] == "binary" and op["kind"] != "maxpool2d":
        return _spike_sum_pool_fn(op, fn)
    if op["kind"] == "maxpool2d":
        init = f"s[ox] = x[(oy * {sh}) * {w} + ox * {sw}];"
        step = "if (v > s[ox] || v != v) s[ox] = v;"
        fin = "s[ox]"
    else:
        init, step = "s[ox] = 0.0f;", "s[ox] += v;"
        fin = "s[ox]" if op["kind"] == "sumpool2d" else f"s[ox] / {float(kh * kw)!r}f"
    return (_pool_head(op, fn, "", "", f"s[{ow}]")
            + f"            for (ox = 0; ox < {ow}; ox++) {init}\n"
            f"            for (ky = 0; ky < {kh}; ky++) {{\n"
            f"                const float *row = x + (oy * {sh} + ky) * {w};\n"
            f"                for (kx = 0; kx < {kw}; kx++) {{\n"
            f"                    for (ox = 0; ox < {ow}; ox++) {{\n"
            f"                        const float v = row[ox * {sw} + kx];\n"
            f"                        {step}\n"
            f"                    }}\n"
            f"                }}\n"
            f"            }}\n"
            f"            for (ox = 0; ox < {ow}; ox++) o[oy * {ow} + ox] = {fin};\n"
            f"        }}\n"
            f"    }}\n}}\n")


def _spike_sum_pool_fn(op: dict, fn: str) -> str:
    """Average or sum pooling of spikes: the window's rows are added first along the whole
    input row (contiguous, vectorized), then each output adds its columns of that sum. Spike
    counts are small integers, whose float sums are exact in any order: the same bits as
    summing each window in the order ky, kx."""
    _, h, w = op["in_shape"]
    _, oh, ow = op["out_shape"]
    (kh, kw), (sh, sw) = op["kernel"], op["stride"]
    rw = (ow - 1) * sw + kw  # the input columns the windows cover
    fin = "v" if op["kind"] == "sumpool2d" else f"v / {float(kh * kw)!r}f"
    return (_pool_head(op, fn, " of spikes", ": window rows summed first (exact)", f"r[{rw}]",
                       ", j")
            + f"            const float *row = x + oy * {sh * w};\n"
            f"            for (j = 0; j < {rw}; j++) r[j] = row[j];\n"
            f"            for (ky = 1; ky < {kh}; ky++)\n"
            f"                for (j = 0; j < {rw}; j++) r[j] += row[ky * {w} + j];\n"
            f"            for (ox = 0; ox < {ow}; ox++) {{\n"
            f"                float v = r[ox * {sw}];\n"
            f"                for (kx = 1; kx < {kw}; kx++) v += r[ox * {sw} + kx];\n"
            f"                o[oy * {ow} + ox] = {fin};\n"
            f"            }}\n"
            f"        }}\n"
            f"    }}\n}}\n")


def _weighted(op: dict, site: Site, lay: dict, function: str, call: str,
              scratch: int = 0) -> Emitted:
    """A conv/linear op: its function, its sparse weights (and bias, step bias) as arrays."""
    arrays = [("ptr", lay["ptr_t"], lay["ptr"], str), ("idx", lay["idx_t"], lay["idx"], str),
              ("val", "float", lay["val"], hexf)]
    if "off" in lay:
        arrays.append(("off", lay["off_t"], lay["off"], str))
    nbytes = dict(lay["bytes"])
    if op["bias"] is not None:
        arrays.append(("bias", "float", op["bias"], hexf))
        nbytes["bias"] = 4 * op["bias"].size
    if op["step_bias"] is not None:
        arrays.append(("step_bias", "float", op["step_bias"].ravel(), hexf))
        nbytes["step_bias"] = 4 * op["step_bias"].size
    total = int(op["weight"].size)
    nnz = int(lay.get("nonzero", len(lay["val"])))
    mode = ("event" if lay["event"] else "dense") + (", dense rows" if lay.get("dense_rows") else "")
    return Emitted(
        call=call, function=function, scratch=scratch,
        arrays=tuple((f"{site.sym}_{suffix}", ctype, vals, fmt)
                     for suffix, ctype, vals, fmt in arrays),
        weights_comment=(f"/* {comment(op['name'])}: {op['kind']} {list(op['weight'].shape)}, "
                         f"{'by input' if lay['event'] else 'by output'} */\n"),
        info=dict(weights=total, nonzero=nnz, sparsity=1.0 - nnz / total if total else 0.0,
                  mode=mode, index_type=lay["idx_t"], pointer_type=lay["ptr_t"],
                  bytes=sum(nbytes.values()), bytes_detail=nbytes))


def _conv(op: dict, site: Site) -> Emitted:
    lay = layout(op)
    fn = site.fn(op)
    if lay["event"]:
        return _weighted(op, site, lay, _conv_fn(op, fn, site.sym, lay),
                         f"{fn}({site.src}, {site.dst}, {site.step}, ctx->scratch);",
                         scratch=_lanes(op, lay) * _acc_positions(op))
    return _weighted(op, site, lay, _conv_fn(op, fn, site.sym, lay),
                     f"{fn}({site.src}, {site.dst}, {site.step});")


def _linear(op: dict, site: Site) -> Emitted:
    lay = layout(op)
    fn = site.fn(op)
    return _weighted(op, site, lay, _linear_fn(op, fn, site.sym, lay),
                     f"{fn}({site.src}, {site.dst}, {site.step});")


def _pool(op: dict, site: Site) -> Emitted:
    fn = site.fn(op)
    return Emitted(call=f"{fn}({site.src}, {site.dst});", function=_pool_fn(op, fn))


def _flatten(op: dict, site: Site) -> Emitted:
    return Emitted(call=f"/* {comment(op['name'])}: flatten (no data movement) */")


def _neuron(op: dict, site: Site) -> Emitted:
    """A neuron kind (export/c_neurons.py): its state arrays live in the context."""
    fn, kind = site.fn(op), KINDS[op["kind"]]
    states = kind.states(op["params"])
    state_args = ", ".join(f"ctx->{st}{site.n}" for st in states)
    return Emitted(call=f"{fn}({site.src}, {site.dst}, {state_args});",
                   function=C_NEURONS[op["kind"]].emit(op, fn), states=states,
                   spiking=kind.spiking)


# op kind -> emitter(annotated op, site) -> Emitted
EMITTERS = {"conv2d": _conv, "linear": _linear, "avgpool2d": _pool, "sumpool2d": _pool,
            "maxpool2d": _pool, "flatten": _flatten, **{k: _neuron for k in C_NEURONS}}
