"""ELU kernel bandwidth against a device-to-device copy of the same size, on one GPU.

Both read N elements and write N elements, so the ratio copy_time / elu_time
is the fraction of copy bandwidth the kernel reaches (target >= 0.85 at 2^28
elements). Prints one line per dtype and loader; needs a CUDA GPU and PyTorch,
not TensorRT.

    python benchmarks/elu_kernel_bandwidth.py [--log2-elements 28] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import add_json_option, write_figures  # noqa: E402


def time_ms(fn, repeats: int) -> float:
    import torch

    fn()  # warm-up
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2-elements", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--target", type=float, default=0.85, help="ratio the fp32 result must reach (exit 1 if not)")
    add_json_option(parser, __file__)
    args = parser.parse_args()

    import torch

    from elunet.plugins.kernel_loader import LOADERS, load_kernel

    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing measured")
        return 0
    n = 1 << args.log2_elements
    print(f"GPU: {torch.cuda.get_device_name()}  elements: 2^{args.log2_elements}  repeats: {args.repeats}")
    worst_fp32, rows = None, []
    for loader in LOADERS:
        try:
            elu = load_kernel(loader)
        except Exception as exc:
            print(f"{loader}: unavailable ({exc})")
            continue
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.randn(n, device="cuda", dtype=dtype)
            y = torch.empty_like(x)
            copy_ms = time_ms(lambda: y.copy_(x), args.repeats)
            elu_ms = time_ms(lambda: elu(x, y, 1.0), args.repeats)
            moved = 2 * n * x.element_size()
            ratio = copy_ms / elu_ms
            rows.append({"loader": loader, "dtype": str(dtype), "elu_ms": elu_ms, "elu_gb_per_s": moved / elu_ms / 1e6, "copy_ms": copy_ms,
                         "copy_gb_per_s": moved / copy_ms / 1e6, "copy_over_elu": ratio})
            print(f"{loader:5s} {str(dtype):15s} elu {elu_ms:8.3f} ms {moved / elu_ms / 1e6:8.1f} GB/s | "
                  f"copy {copy_ms:8.3f} ms {moved / copy_ms / 1e6:8.1f} GB/s | ratio {ratio:.3f}")
            if dtype == torch.float32:
                worst_fp32 = ratio if worst_fp32 is None else min(worst_fp32, ratio)
            del x, y
            torch.cuda.empty_cache()
    if worst_fp32 is None:
        print("no loader worked: nothing measured")
        return 1
    verdict = "meets" if worst_fp32 >= args.target else "MISSES"
    print(f"fp32 ratio {worst_fp32:.3f} {verdict} the target {args.target}")
    write_figures(args.json, {"gpu": torch.cuda.get_device_name(), "elements": n, "repeats": args.repeats, "target": args.target,
                              "worst_fp32_ratio": worst_fp32, "kernels": rows})
    return 0 if worst_fp32 >= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
