"""Compile the gpu engine's Triton kernels for an H100 (sm_90) on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``, the tests) runs the kernels as Python and never sees Triton's compiler, so
a construct it accepts may still fail to compile. This script runs the launchers of ``gatedrnn.engine.gpu.launch``
for every cell variant, in float32 and bfloat16, with a persistent tiling and with one launch per step (per stage),
records each kernel specialisation they launch instead of running it, and compiles each one through Triton's
NVIDIA backend down to a cubin (``ptxas`` ships with triton). It needs no CUDA device and no driver; it shows that
the kernels compile, not that they run (``scripts/gpu_check.sh`` does that on a device).

Usage: ``python scripts/compile_check.py [--dtypes float32,bfloat16] [--capability 90]``; exits non-zero if any
specialisation fails to compile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter never compiles)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from gatedrnn.engine.gpu import kernels, launch  # noqa: E402

POINTER = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int64: "*i64",
           torch.int32: "*i32"}
CELLS = {
    "rnn": launch.Cell("rnn"),
    "rnn-relu-layernorm": launch.Cell("rnn", relu=True, layer_norm=True),
    "lstm-peephole": launch.Cell("lstm", peephole=True),
    "lstm-coupled": launch.Cell("lstm", coupled=True),
    "lstm-layernorm": launch.Cell("lstm", layer_norm=True),
    "lstm-layernorm-coupled-peephole": launch.Cell("lstm", coupled=True, peephole=True, layer_norm=True),
    "lstm-proj": launch.Cell("lstm", proj=True),
    "lstm-proj-coupled-peephole": launch.Cell("lstm", coupled=True, peephole=True, proj=True),
    "lstm-layernorm-proj-peephole": launch.Cell("lstm", peephole=True, layer_norm=True, proj=True),
    "gru": launch.Cell("gru"),
    "gru-before": launch.Cell("gru", reset_before=True),
    "gru-layernorm": launch.Cell("gru", layer_norm=True),
    "gru-before-layernorm": launch.Cell("gru", reset_before=True, layer_norm=True),
}
TILINGS = [launch.Tiling(64, 16, 64, persistent=True), launch.Tiling(16, 16, 64, persistent=False)]


class Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, fn: triton.JITFunction) -> None:
        self.fn = fn
        self.calls: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def record(cell: launch.Cell, dtype: torch.dtype, tiling: launch.Tiling) -> None:
    """Run ``launch.forward`` and ``launch.backward`` of ``cell`` on small CPU tensors (the kernels are recorders)."""
    T, B, H = 3, 5, 32
    S = 24 if cell.proj else H
    G = cell.gates
    gx = torch.randn(T, B, G * H, dtype=dtype)
    weight_hh = torch.randn(G * H, S, dtype=dtype)
    weight_hr = torch.randn(S, H, dtype=dtype) if cell.proj else None
    peephole = torch.randn(3, H) if cell.peephole else None
    ln = torch.randn(2 * G * H + (2 * H if cell.cell == "lstm" else 0)) if cell.layer_norm else None
    lstm = cell.cell == "lstm"
    h0 = torch.randn(B, S, dtype=dtype)
    c0 = torch.randn(B, H) if lstm else None
    lengths = torch.tensor([3, 1, 2, 3, 3])
    bias = torch.randn(G * H, dtype=dtype)
    out, hs, cs, saved, q, xhat, stats, _ = launch.forward(cell, gx, weight_hh, weight_hr, bias, peephole, ln, h0, c0,
                                                           lengths, True, tiling)
    launch.backward(cell, torch.randn_like(out), torch.randn(B, S), torch.randn(B, H) if lstm else None, weight_hh,
                    weight_hr, peephole, ln, lengths, hs, cs, saved, xhat, stats, tiling)


def signature(fn: triton.JITFunction, args: tuple, kwargs: dict) -> tuple[dict, dict, int]:
    """Triton's signature (argument name -> type), the constexprs and ``num_warps`` of one recorded launch."""
    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps")
    runtime = [name for name in fn.arg_names if name not in kwargs]
    sig: dict[str, str] = {}
    for name, value in zip(runtime, args, strict=True):
        if isinstance(value, torch.Tensor):
            sig[name] = POINTER[value.dtype]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i32"
        else:
            sig[name] = "fp32"
    sig.update({name: "constexpr" for name in kwargs})
    return sig, kwargs, num_warps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--capability", type=int, default=90)
    options = parser.parse_args()
    recorders = {name: Recorder(getattr(kernels, name)) for name in ("forward_kernel", "backward_kernel")}
    for name, recorder in recorders.items():
        setattr(kernels, name, recorder)
    for cell in CELLS.values():
        for dtype in (getattr(torch, d) for d in options.dtypes.split(",")):
            for tiling in TILINGS:
                if cell.reset_before and not tiling.persistent:
                    continue  # never launched so (launch.forward refuses it)
                record(cell, dtype, tiling)
    target = GPUTarget("cuda", options.capability, 32)
    seen: set[str] = set()
    failures = 0
    for name, recorder in recorders.items():
        for args, kwargs in recorder.calls:
            sig, constexprs, num_warps = signature(recorder.fn, args, kwargs)
            key = repr((name, sorted(sig.items()), sorted((k, str(v)) for k, v in constexprs.items()), num_warps))
            if key in seen:
                continue
            seen.add(key)
            fn = recorder.fn
            source = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
            label = f"{name} " + " ".join(f"{k}={v}" for k, v in constexprs.items() if k not in ("PRECISION",))
            start = time.perf_counter()
            try:
                triton.compile(source, target=target, options={"num_warps": num_warps})
            except Exception as error:  # report every failing specialisation, then fail
                failures += 1
                print(f"FAIL {label}\n  {type(error).__name__}: {str(error)[:2000]}", flush=True)
                continue
            print(f"ok   {time.perf_counter() - start:5.1f}s  {label}", flush=True)
    print(f"{len(seen) - failures} of {len(seen)} specialisations compiled for sm_{options.capability}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
