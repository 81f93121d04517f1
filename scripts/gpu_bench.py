"""Time cuDNN, the reference engine and the gpu engine on the grid of issue #5 (forward and forward+backward).

Interleaved in one run, CUDA events, median of repeats; writes JSON and prints µs per step and the ratio to cuDNN
LSTM at the same shape and dtype. TF32 is off for every implementation (float32 is IEEE float32 everywhere).

    python scripts/gpu_bench.py --out bench.json [--variants lstm,gru] [--shapes 0,1] [--reference]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from gatedrnn.variants import VARIANTS

GRID = [(1, 512, 256, 256), (16, 256, 512, 512), (64, 256, 1024, 1024), (256, 128, 1024, 1024)]
CUDNN = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


def time_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def workloads(module, x):
    def fwd():
        with torch.no_grad():
            module(x)

    def fwd_bwd():
        out, _ = module(x)
        out.sum().backward()

    return fwd, fwd_bwd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default="lstm,gru,rnn,lstm-peephole,lstm-coupled,lstm-forgetbias,rnn-relu")
    parser.add_argument("--shapes", default="0,1,2,3")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--reference", action="store_true", help="also time the reference engine (slow)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for shape_index in [int(s) for s in args.shapes.split(",")]:
        B, T, I, H = GRID[shape_index]
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            x = torch.randn(T, B, I, device="cuda", dtype=dtype)
            impls = []
            for family, cls in CUDNN.items():
                impls.append((family, "cudnn", cls(I, H, device="cuda", dtype=dtype)))
            for name in args.variants.split(","):
                engines = ["gpu", "reference"] if args.reference else ["gpu"]
                for engine in engines:
                    impls.append((name, engine, VARIANTS[name].build(I, H, engine=engine, device="cuda",
                                                                     dtype=dtype)))
            for variant, impl, module in impls:
                fwd, fwd_bwd = workloads(module, x)
                repeats = max(3, args.repeats // 3) if impl == "reference" else args.repeats
                row = dict(B=B, T=T, I=I, H=H, dtype=dtype_name, variant=variant, impl=impl,
                           fwd_ms=time_ms(fwd, repeats), fwd_bwd_ms=time_ms(fwd_bwd, repeats))
                rows.append(row)
                print(json.dumps(row), flush=True)
    base = {(r["B"], r["dtype"]): r for r in rows if r["impl"] == "cudnn" and r["variant"] == "lstm"}
    for r in rows:
        b = base[(r["B"], r["dtype"])]
        r["fwd_us_per_step"] = 1000 * r["fwd_ms"] / r["T"]
        r["fwd_bwd_us_per_step"] = 1000 * r["fwd_bwd_ms"] / r["T"]
        r["ratio_fwd_bwd_to_cudnn_lstm"] = r["fwd_bwd_ms"] / b["fwd_bwd_ms"]
        r["ratio_fwd_to_cudnn_lstm"] = r["fwd_ms"] / b["fwd_ms"]
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"{'B':>4} {'T':>4} {'H':>5} {'dtype':>8} {'variant':>16} {'impl':>9} {'fwd us/step':>11} "
          f"{'f+b us/step':>11} {'f+b/cudnnLSTM':>13}")
    for r in rows:
        print(f"{r['B']:>4} {r['T']:>4} {r['H']:>5} {r['dtype']:>8} {r['variant']:>16} {r['impl']:>9} "
              f"{r['fwd_us_per_step']:>11.2f} {r['fwd_bwd_us_per_step']:>11.2f} "
              f"{r['ratio_fwd_bwd_to_cudnn_lstm']:>13.2f}")


if __name__ == "__main__":
    main()
