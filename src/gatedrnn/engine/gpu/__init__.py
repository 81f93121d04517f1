"""The gpu engine: the recurrence as fused Triton kernels (``kernels.py``), launched by ``launch.py``, wrapped as
custom ops with autograd (``ops.py``); ``scan.py`` holds the parallel scan of minGRU and minLSTM. The layers reach
it through the engine registry (``engine="gpu"``, or ``"auto"`` for CUDA tensors).

Triton ships with PyTorch's CUDA builds and compiles at run time, so users need no CUDA compiler. The kernels are
imported on first use, so that ``TRITON_INTERPRET=1`` set before that first use runs them on the CPU (tests).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

import torch
from torch import Tensor

from ...cells import CellSpec, GRUSpec, LinearRecurrenceSpec, LSTMSpec, RNNSpec, State
from ..base import Engine
from .tiling import choose_tiling

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Looked up once: torch.compile cannot trace importlib, and the engine's status is asked on every call.
HAS_TRITON = importlib.util.find_spec("triton") is not None


class GPUEngine(Engine):
    """Fused Triton kernels, forward and backward, for CUDA tensors in float32, bfloat16 and float16.

    Runs Elman RNNs (tanh, relu), LSTMs (peephole, coupled, forget_bias, proj_size) and GRUs (reset after or
    before), each with or without layer norm, and minGRU and minLSTM as a parallel scan (``scan.py``); a
    reset-before GRU whose grid would not fit on the device at once is left to other engines (its kernel
    synchronises inside each step).
    Products accumulate in float32 and the LSTM cell state stays in float32 through the sequence.
    """

    name = "gpu"
    priority = 20

    def status(self) -> tuple[bool, str]:
        if not HAS_TRITON:
            return False, "needs triton (pip install triton)"
        if torch.cuda.is_available():
            return True, "fused Triton kernels on the CUDA devices"
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return True, "Triton's CPU interpreter (TRITON_INTERPRET=1): for testing the kernels, slow"
        return False, "needs a CUDA device (none found)"

    def covers(self, spec: CellSpec, x: Tensor) -> bool:
        # Kernels for the classic families exactly and the linear recurrences (the scan); sLSTM, the Clockwork RNN,
        # the depth-gated and Grid LSTMs run on the reference engine.
        if not (x.is_cuda and x.dtype in DTYPES
                and (type(spec) in (LSTMSpec, GRUSpec, RNNSpec) or isinstance(spec, LinearRecurrenceSpec))):
            return False
        if isinstance(spec, GRUSpec) and spec.reset == "before" and x.dim() == 3:  # x: (T, B, I)
            return choose_tiling(x.shape[1], spec.hidden_size, x.device).persistent
        return True

    def run(
        self, spec: CellSpec, gx: Tensor, params: Mapping[str, Tensor], state: State, lengths: Tensor | None
    ) -> tuple[Tensor, State]:
        if isinstance(spec, LinearRecurrenceSpec):
            from .. import scan as linear
            from . import scan  # the kernel is compiled (or interpreted) from here on

            return linear.run(spec, gx, state, lengths, scan.linear_scan)
        from . import ops  # the kernels are compiled (or interpreted) from here on

        device = gx.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else gx.dtype
        if dtype not in DTYPES:
            raise ValueError(f"engine: 'gpu' runs float32, bfloat16 and float16, got {dtype}")
        lstm = isinstance(spec, LSTMSpec)
        peephole = None
        if lstm and spec.peephole:
            # (3, H): p_i | p_f | p_o; a coupled cell has no forget gate, so its row stays zero.
            p_f = params["weight_ci"].new_zeros(spec.hidden_size) if spec.coupled else params["weight_cf"]
            peephole = torch.stack([params["weight_ci"], p_f, params["weight_co"]]).float()
        ln = None
        if spec.layer_norm:
            # LN_hh's weight and bias (G·H each), then LN_c's (H each, LSTM only), float32 as the kernels read them.
            names = ["ln_hh_weight", "ln_hh_bias", *(["ln_c_weight", "ln_c_bias"] if lstm else [])]
            ln = torch.cat([params[name] for name in names]).float()
        bias = params.get("bias_hh")
        weight_hr = params.get("weight_hr")
        save = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (gx, params["weight_hh"], weight_hr, bias, peephole, ln, *state)
        )
        out, hs, cs, *_ = ops.recurrence(
            gx.to(dtype).contiguous(),
            params["weight_hh"].to(dtype).contiguous(),
            None if weight_hr is None else weight_hr.to(dtype).contiguous(),
            None if bias is None else bias.to(dtype),
            peephole,
            ln,
            state[0].to(dtype).contiguous(),
            state[1].to(torch.float32).contiguous() if lstm else None,
            None if lengths is None else lengths.to(device=gx.device, dtype=torch.int64).contiguous(),
            spec.family,
            isinstance(spec, RNNSpec) and spec.nonlinearity == "relu",
            lstm and spec.coupled,
            float(spec.forget_bias) if lstm else 0.0,
            isinstance(spec, GRUSpec) and spec.reset == "before",
            save,
        )
        if lstm:
            return out, (hs[-1], cs[-1].to(dtype))
        return out, (hs[-1],)
