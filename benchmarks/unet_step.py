r"""CPU cost of one training step of the 56 × 56 score U-Net, outside the fit loop: memory format, precision, compile.

One Adam step (forward, squared-error loss, backward, update) of
``bayesinv.nets.ScoreUNet(1, y_channels=1, base_channels=w, channel_mults=(1, 2, 2))`` on a batch of
64 random 56 × 56 fields, timed as process CPU seconds per step after two warm-up steps, for each
mode of ``--modes``:

- ``fp32``: float32, contiguous (NCHW) tensors — what the fit loop does;
- ``cl``: channels-last memory format of the network and the inputs;
- ``bf16``: the forward pass under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the fit option
  ``precision="bfloat16"``);
- ``cl_bf16``: both;
- ``compile``: ``torch.compile`` of the network (inductor; the compile time is in the warm-up).

The fit-loop figures (``precision`` as a fit option) are ``train_throughput.py --cases unet<w>_<precision>``.

Run:  OMP_NUM_THREADS=1 python benchmarks/unet_step.py --widths 8 16 32 --modes fp32 cl bf16 cl_bf16 --steps 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import metadata, set_threads, write_results  # noqa: E402
from bayesinv.nets.unet import ScoreUNet  # noqa: E402

MODES = ("fp32", "cl", "bf16", "cl_bf16", "compile")


def step_cost(width: int, mode: str, steps: int, batch: int = 64, size: int = 56) -> dict:
    r"""CPU and wall seconds per training step of the U-Net of base width ``width`` in ``mode``."""
    torch.manual_seed(0)
    net = ScoreUNet(1, y_channels=1, base_channels=width, channel_mults=(1, 2, 2))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x, y, t = torch.randn(batch, 1, size, size), torch.randn(batch, 1, size, size), torch.rand(batch)
    if "cl" in mode:
        net = net.to(memory_format=torch.channels_last)
        x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
    f = torch.compile(net) if mode == "compile" else net

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in mode):
            out = f(x, y, t)
        loss = (out.float() - x).pow(2).mean()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    return {"width": width, "mode": mode, "parameters": sum(p.numel() for p in net.parameters()),
            "cpu_s_per_step": (time.process_time() - c0) / steps, "wall_s_per_step": (time.perf_counter() - t0) / steps}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--modes", nargs="+", default=["fp32", "cl", "bf16", "cl_bf16"], choices=MODES)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="default")
    p.add_argument("--machine", default="2-core CPU, no GPU (shared with other jobs)")
    args = p.parse_args()
    set_threads(args.threads)
    out = {"meta": metadata(args.machine), "args": vars(args), "results": []}
    for width in args.widths:
        for mode in args.modes:
            row = step_cost(width, mode, args.steps)
            out["results"].append(row)
            print(row, flush=True)
            write_results(f"unet_step_{args.label}", out)


if __name__ == "__main__":
    main()
