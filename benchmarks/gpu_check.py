"""GPU check, part 2: throughput of the engine on random SD3 pipelines in bf16 on CUDA (run by gpu_check.sh).

    python benchmarks/gpu_check.py OUT_DIR [--quick]

Builds (offline, random weights) the ``tiny`` and ``mid`` SD3 pipelines (drift/worlds/sd3/tiny.py; ``mid`` has
SD3.5-Medium's layer layout with 3 of its 24 layers) and tiny reward / feature models, then:
1. ``drift.bench`` on each: a real training run (flow_grpo, bf16, PickScore-layout reward, CLIP features)
   with the per-phase breakdown, images/s, trajectories/s and the overhead ratio -> bench_<size>.json;
2. ``benchmarks/mfu.py`` on ``mid``: counted FLOPs and MFU of the LoRA training step -> mfu_mid.json.
Output format: docs/gpu_check.md. On a machine without CUDA it runs on the CPU at small sizes (--quick).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out"
    quick = "--quick" in sys.argv
    os.makedirs(out, exist_ok=True)
    import torch

    from drift.bench import format_result, run
    from drift.worlds.sd3.tiny import build_tiny_sd3
    from drift.worlds.sd3.tiny_rewards import build_tiny_reward_models

    cuda = torch.cuda.is_available()
    work = os.path.join("/tmp", "drift_gpu_check_models")
    t = time.time()
    rewards = build_tiny_reward_models(os.path.join(work, "rewards"), dreamsim=False)
    sizes = {"tiny": (64 if quick or not cuda else 256), "mid": 512}
    if quick or not cuda:
        sizes = {"tiny": 64}
    paths = {s: build_tiny_sd3(os.path.join(work, s), s) for s in sizes}
    print(f"[gpu_check] built models in {time.time() - t:.1f} s: {paths}", flush=True)
    summary = {"cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    try:
        import mlflow  # noqa: F401

        tracking = []
    except Exception as e:  # the GPU image may lack MLflow: measure without it rather than not at all
        tracking = ["tracking_uri=none"]
        summary["mlflow"] = f"not importable ({type(e).__name__}: {e}); runs logged to metrics.jsonl only"
    for size, res in sizes.items():
        items = [
            "model.world=sd3", f"model.path={paths[size]}", "model.lora_rank=32", "model.lora_alpha=64",
            "model.features=clip", f"sd3.features_path={rewards['clip']}", f"sd3.pickscore_path={rewards['pickscore']}",
            f"sd3.device={'cuda' if cuda else 'cpu'}", f"sd3.dtype={'bf16' if cuda else 'fp32'}", f"sd3.resolution={res}",
            "sample.num_steps=10", "sample.shift=3", "sample.cfg=4.5", "sample.groups_per_iter=2",
            f"sample.group_size={8 if cuda else 2}", f"train.iterations={6 if cuda else 3}", "eval.num_prompts=4",
            "eval.seeds=4", f"eval.num_steps={20 if cuda else 3}", "eval.grid_prompts=4", "method=flow_grpo",
        ] + tracking
        t = time.time()
        r = run(items)
        r["wall_seconds_total"] = time.time() - t
        print(format_result(r), flush=True)
        with open(os.path.join(out, f"bench_{size}.json"), "w") as f:
            json.dump(r, f, indent=1)
        summary[f"bench_{size}"] = {"overhead_ratio": r["overhead_ratio"], "iteration_seconds": r["iteration_seconds"]["wall"],
                                    "images_per_second_sampling": r["images_per_second_sampling"],
                                    "trajectories_per_second_training": r["trajectories_per_second_training"]}
    if "mid" in paths:
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "mfu.py"), "--model", paths["mid"], "--batch", "8",
               "--resolution", "512", "--dtype", "bf16", "--json", os.path.join(out, "mfu_mid.json")]
        print("[gpu_check] " + " ".join(cmd), flush=True)
        subprocess.call(cmd)
    with open(os.path.join(out, "gpu_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
