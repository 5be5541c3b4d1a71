"""Exporters for edgeprune SNNs: unrolled and one-step (streaming) ONNX, and NIR.

`export` may import `edgeprune`; `edgeprune` never imports `export`. The modules each do one job:

- prepare.py       fold BatchNorm into the preceding conv/linear, switch spikes to a plain Heaviside
- onnx_unrolled.py T timesteps unrolled into one static graph (`model.onnx`)
- onnx_step.py     one timestep, neuron state as explicit inputs/outputs (`model.step.onnx`)
- metadata.py      the `edgeprune.*` metadata_props the validator reads
- compact.py       exact compaction: units the ticket made dead removed, their fixed output folded
                   into the next layer's (per-step) bias; `check` proves it spike for spike
- sparse.py        mostly-zero weights as ONNX sparse initializers
- quantize.py      int8 per-channel QDQ weights (model.int8.onnx), from onnxruntime's quantizer
- nir_graph.py     the SNN as a NIR graph (`model.nir`); nir_sim.py simulates one in numpy
- parity.py        PyTorch references and ONNX Runtime runs, to compare exported files with the model
- c_program.py     the SNN as a torch-free program (dicts + float32 arrays) for the sparse C runtime
- c_codegen.py     that program as dependency-free C99 (model.h/.c, const sparse weights, runner.c);
                   torch-free, event-driven after spiking layers. Its parts: c_plan.py (checks and
                   shapes), c_ops.py (one emitter per op kind), c_neurons.py (per neuron kind),
                   c_layout.py (sparse weight storage), c_text.py (C literals), c_runner.py
- passes.py        the export as a declared list of passes (prepare, compact, ONNX unrolled and
                   step, sparse storage, int8, C, NIR), each checking itself
- stage.py         the `export` stage: runs the passes into an `export-<id>/` artifact
"""

