"""Model FLOPs utilisation of the SD3 transformer's training step (LoRA, as the engine trains it).

    python benchmarks/mfu.py --model /tmp/mid_sd3 --batch 8 --resolution 512 --dtype bf16

FLOPs are counted, not guessed: ``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products
and attention of one forward + backward of the CFG-doubled batch (what one trained denoising step costs
in drift/train.py). The time is the median of CUDA-synchronised repetitions. MFU = counted FLOPs / time
/ the card's dense peak for the dtype (a table below; the peak is the vendor's dense-tensor figure, not
a measurement). Also reports the sampling forward (no grad) throughput. On CPU it runs but reports no MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

# Vendor dense (no sparsity) peak tensor throughput, TFLOP/s, for bf16/fp16.
PEAK_TFLOPS = {"H100 80GB HBM3": 989.4, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.05, "A10": 125.0}


def peak_for(name: str) -> float | None:
    for k, v in PEAK_TFLOPS.items():
        if k in name:
            return v
    return None


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an SD3 pipeline folder (drift.worlds.sd3.tiny) or its transformer/")
    ap.add_argument("--batch", type=int, default=8, help="images per trained step before CFG doubling")
    ap.add_argument("--cfg", action="store_true", default=True)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--seq", type=int, default=205, help="text tokens (SD3: 77 CLIP + 128 T5)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    sub = os.path.join(a.model, "transformer") if os.path.isdir(os.path.join(a.model, "transformer")) else a.model
    net = SD3Transformer2DModel.from_pretrained(sub, torch_dtype=dt).to(dev)
    net.requires_grad_(False)
    net.add_adapter(LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, init_lora_weights="gaussian",
                               target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                               "add_v_proj", "to_add_out"]))
    for p in net.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # LoRA weights in fp32, as the engine keeps them
    c = net.config
    n = a.batch * (2 if a.cfg else 1)
    lat = a.resolution // 8
    x = torch.randn(n, c.in_channels, lat, lat, device=dev, dtype=dt)
    ctx = torch.randn(n, a.seq, c.joint_attention_dim, device=dev, dtype=dt)
    pooled = torch.randn(n, c.pooled_projection_dim, device=dev, dtype=dt)
    t = torch.full((n,), 500.0, device=dev)

    def fwd():
        with torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32):
            return net(x, ctx, pooled, t, return_dict=False)[0]

    def train_step():
        fwd().float().square().mean().backward()

    def sample_step():
        with torch.no_grad():
            fwd()

    out = {"model": sub, "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "dtype": a.dtype,
           "batch_images": a.batch, "forward_batch": n, "resolution": a.resolution, "tokens_image": (lat // c.patch_size) ** 2,
           "tokens_text": a.seq, "transformer_params": sum(p.numel() for p in net.parameters()),
           "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad), "layers": c.num_layers}
    for name, fn in (("train_step", train_step), ("sample_forward", sample_step)):
        with FlopCounterMode(display=False) as fc:
            fn()
        flops = fc.get_total_flops()
        for _ in range(2):
            fn()
        times = []
        for _ in range(a.reps):
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        r = {"flops": flops, "seconds": med, "achieved_tflops": flops / med / 1e12}
        peak = peak_for(out["device"]) if dev.type == "cuda" and dt != torch.float32 else None
        if peak:
            r["peak_tflops"] = peak
            r["mfu"] = r["achieved_tflops"] / peak
        out[name] = r
    if dev.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
