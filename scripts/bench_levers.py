"""Each performance lever of the training step, measured against the step as it was, in fresh processes.

    python scripts/bench_levers.py [rounds=3] [steps=3] [levers=name,name,...] [out=/tmp/bench-levers]
                                   [alpaca=<rows.json>]   # those Alpaca rows instead of the embedded set
    python scripts/bench_levers.py --fused-qkv      # the most fusing LoRA's q/k/v A matmuls could save

One worker process per lever and round (rounds alternate the levers, so drift in a noisy machine's speed
falls on all of them alike) trains SmolLM2-135M with LoRA r32 on all linear layers on real micro-batches of
the embedded data (packed, cutoff 512, micro-batch 2, as `data.packing=true`): forward, backward and the
AdamW step of the run's own module (`SFTModule.token_loss`). It prints tokens/s per lever (median over
rounds), the ratio to `before` (the step before the second round: fp32, PEFT's dropout) or, without it, to
the first lever named, model FLOPs utilisation against the peak of the dtype it computes in, and the loss
of a fixed batch with dropout off, whose difference from that baseline's shows whether a lever keeps the
numbers (1e-5) or changes them (bf16).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stages import run  # noqa: E402

from sft.provenance import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIBS = Path("/usr/lib/x86_64-linux-gnu")
# name -> (train overrides, worker switches, environment). `before` is the step before this round's work.
LEVERS = {
    "before": (["trainer.precision=32-true", "lora.fast_dropout=false"], {}, {}),
    "scatter_dropout": (["trainer.precision=32-true"], {}, {}),
    "bf16_autocast": (["trainer.precision=bf16-mixed", "lora.fast_dropout=false"], {}, {}),
    "bf16_and_dropout": (["trainer.precision=bf16-mixed"], {}, {}),
    "bf16_frozen_copies": (["trainer.precision=bf16-mixed"], {"frozen_bf16": True}, {}),
    "bf16_base_weights": (["trainer.precision=bf16-mixed", "model.dtype=bfloat16"], {}, {}),
    "sdpa_segments": (["trainer.precision=bf16-mixed"], {"frozen_bf16": True, "segments": True}, {}),
    # sdpa_segments with torch's flash kernel for every sequence: what its matmul path for short ones adds.
    "segments_kernel_only": (
        ["trainer.precision=bf16-mixed"],
        {"frozen_bf16": True, "segments": True, "eager_max_len": 0},
        {},
    ),
    # As `make bench` trains sft_packed: bf16 base weights (no frozen copies needed), per-sequence attention.
    "bench_path": (["trainer.precision=bf16-mixed", "model.dtype=bfloat16"], {"segments": True}, {}),
    # bench_path without PEFT's cast of each adapter's input to its fp32 weights (autocast casts anyway).
    "bench_path_uncast": (
        ["trainer.precision=bf16-mixed", "model.dtype=bfloat16"],
        {"segments": True, "uncast_lora_inputs": True},
        {},
    ),
    # bench_path_uncast with lora_B's product added to the base output inside the GEMM.
    "bench_path_fused": (
        ["trainer.precision=bf16-mixed", "model.dtype=bfloat16"],
        {"segments": True, "uncast_lora_inputs": True, "fused_lora_adds": True},
        {},
    ),
    # bench_path_fused with each decoder layer compiled by inductor.
    "bench_path_compiled": (
        ["trainer.precision=bf16-mixed", "model.dtype=bfloat16"],
        {"segments": True, "uncast_lora_inputs": True, "fused_lora_adds": True, "compile": True},
        {},
    ),
    # As `make train` trains by default on a bf16-fast CPU: fp32 weights, frozen copies, the switches.
    "default_path": (
        ["trainer.precision=bf16-mixed"],
        {"frozen_bf16": True, "segments": True, "uncast_lora_inputs": True, "fused_lora_adds": True},
        {},
    ),
    "bench_path_kernel_only": (
        ["trainer.precision=bf16-mixed", "model.dtype=bfloat16"],
        {"segments": True, "eager_max_len": 0},
        {},
    ),
    # Each of the rest on top of bf16_and_dropout.
    "compile_layers": (["trainer.precision=bf16-mixed"], {"compile": True}, {}),
    "full_logits": (["trainer.precision=bf16-mixed", "trainer.trained_logits_only=false"], {}, {}),
    "one_thread": (["trainer.precision=bf16-mixed"], {"threads": 1}, {}),
    "omp_bind_cores": (
        ["trainer.precision=bf16-mixed"],
        {},
        {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    ),
    "jemalloc": (["trainer.precision=bf16-mixed"], {}, {"LD_PRELOAD": str(LIBS / "libjemalloc.so.2")}),
    "tcmalloc": (
        ["trainer.precision=bf16-mixed"],
        {},
        {"LD_PRELOAD": str(LIBS / "libtcmalloc_minimal.so.4")},
    ),
}
COMMON = [
    "model=smollm2_135m",
    "data.packing=true",
    "data.cutoff_len=512",
    "trainer=cpu",
    "trainer.micro_batch_size=2",
    "lora.r=32",
]


def block_lengths(positions) -> list[int]:
    """Lengths of the sequences packed in each row: a run of positions restarting at 0 is one sequence."""
    lengths = []
    for row in positions.tolist():
        starts = [i for i, p in enumerate(row) if p == 0] + [len(row)]
        lengths += [b - a for a, b in zip(starts, starts[1:], strict=False)]
    return lengths


def worker(spec: dict) -> dict:
    """Time `steps` training steps (after one untimed) of a lever; a fixed batch's loss without dropout."""
    import contextlib

    import torch
    from hydra import compose, initialize_config_dir

    from sft.bench.flops import flops_per_token, mean_context, parameter_counts
    from sft.config import validate
    from sft.data.datamodule import build_datamodule
    from sft.data.loading import system_prompt
    from sft.data.templates import get_template
    from sft.locations import CONF_DIR
    from sft.training import attention
    from sft.training.lineage import start_model
    from sft.training.lora_forward import fuse_lora_adds
    from sft.training.model import load_tokenizer
    from sft.training.module import SFTModule
    from sft.training.precision import frozen_linears_to_bf16, matmul_peak, uncast_lora_inputs

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*COMMON, *spec["overrides"], f"paths.output_dir={spec['out']}"])
    typed = validate(cfg)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(typed.model, typed.paths.cache_dir)
    template = get_template(typed.data.template, tokenizer, system_prompt(typed.data))
    data = build_datamodule(typed, tokenizer, template)
    data.prepare_data()
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [next(loader) for _ in range(spec["steps"] + 2)]
    model = start_model(typed, typed.paths.cache_dir)
    if spec.get("frozen_bf16"):  # what sft.training.precision.FrozenLinearsInBf16 does during training
        frozen_linears_to_bf16(model)
    if spec.get("segments"):  # what sft.training.run does for packed rows
        attention.attend_by_segment(model)
    if spec.get("eager_max_len") is not None:
        attention.EAGER_MAX_LEN = spec["eager_max_len"]
    if spec.get("uncast_lora_inputs"):
        uncast_lora_inputs(model)
    if spec.get("fused_lora_adds"):  # what sft.training.lora_forward.FusedLoraAdds does during training
        fuse_lora_adds(model)
    if spec.get("compile"):
        for layer in model.get_base_model().get_decoder().layers:
            layer.compile()
    module = SFTModule(model, typed.optimizer, typed.scheduler, typed.trainer)
    bf16 = typed.trainer.precision == "bf16-mixed"
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    model.eval()  # the fixed batch's loss, dropout off: what a lever must keep (or, for bf16, changes)
    with torch.no_grad(), autocast():
        loss, count, _ = module.token_loss(batches[0])
    check_loss = float(loss / count)
    model.train()

    def step(batch) -> None:
        with autocast():
            summed = module.token_loss(batch)[0]
        summed.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    step(batches[1])  # thread pools, allocator, compilation
    first = time.perf_counter() - started
    tokens = sum(int(b["num_tokens"]) for b in batches[2:])
    started = time.perf_counter()
    for batch in batches[2:]:
        step(batch)
    seconds = time.perf_counter() - started
    counts = parameter_counts(model)
    lengths = [n for b in batches[2:] for n in block_lengths(b["position_ids"])]
    per_token = flops_per_token(
        counts["frozen_matmul"], counts["trainable"], counts["layers"], counts["width"], mean_context(lengths)
    )
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32, n=2048, seconds=1.0)
    return {
        "tokens_per_sec": tokens / seconds,
        "first_step_seconds": first,
        "check_loss": check_loss,
        "mfu": tokens / seconds * per_token / (peak * 1e9),
        "peak_gflops": peak,
    }


def fused_qkv_estimate(rounds: int = 20) -> dict:
    """What fusing the LoRA A matmuls of q, k and v (one x @ [A_q; A_k; A_v]^T) and sharing their dropout
    mask could save per step at most: both ways timed (forward and backward, bf16 autocast, SmolLM2's
    shapes: 2 x 512 tokens, width 576, k/v width 192, rank 32), times the 30 layers."""
    import torch

    from sft.training.dropout import ScatterDropout

    x = torch.randn(2, 512, 576, requires_grad=True)
    heads = [torch.randn(32, 576, requires_grad=True) for _ in range(3)]
    outs = [torch.randn(w, 32, requires_grad=True) for w in (576, 192, 192)]
    drop = ScatterDropout(0.05).train()

    def separate():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ys = [drop(x) @ a.T @ b.T for a, b in zip(heads, outs, strict=True)]
        sum(y.float().sum() for y in ys).backward()

    def fused():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = (drop(x) @ torch.cat(heads).T).split(32, dim=-1)
            ys = [h @ b.T for h, b in zip(low, outs, strict=True)]
        sum(y.float().sum() for y in ys).backward()

    times = {}
    for name, f in (("separate", separate), ("fused", fused)):
        f()
        started = time.perf_counter()
        for _ in range(rounds):
            f()
        times[name] = (time.perf_counter() - started) / rounds
    return {**times, "saved_per_step": 30 * (times["separate"] - times["fused"])}


def main(argv: list[str]) -> None:
    """Run every lever `rounds` times in turn; print the table."""
    if argv[:1] == ["--worker"]:
        spec = json.loads(Path(argv[1]).read_text())
        Path(spec["result"]).write_text(json.dumps(worker(spec)))
        return
    if argv[:1] == ["--fused-qkv"]:
        found = fused_qkv_estimate()
        print(
            f"LoRA A of q/k/v, forward and backward, one layer: separate {found['separate'] * 1e3:.2f} ms, "
            f"fused {found['fused'] * 1e3:.2f} ms; at most {found['saved_per_step']:.3f} s per step "
            "of 30 layers"
        )
        return
    opts = {"rounds": "3", "steps": "3", "levers": ",".join(LEVERS), "out": "/tmp/bench-levers"}
    opts.update(a.split("=", 1) for a in argv)
    data = (
        ["data=alpaca_en", f"data.datasets.alpaca_en.path={opts['alpaca']}", "data.val_size=0"]
        if "alpaca" in opts
        else []
    )
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    wanted = opts["levers"].split(",")
    names = [n for n in wanted if Path(LEVERS[n][2].get("LD_PRELOAD", "/")).exists()]  # allocators installed
    results: dict[str, list[dict]] = {n: [] for n in names}
    for round_ in range(int(opts["rounds"])):
        for name in names:
            overrides, switches, env = LEVERS[name]
            spec_file, result = out / f"{name}-{round_}.json", out / f"{name}-{round_}.result.json"
            spec = {"overrides": [*overrides, *data], "steps": int(opts["steps"]), "out": str(out / "run")}
            spec.update(switches)
            spec_file.write_text(json.dumps({**spec, "result": str(result)}))
            run(
                [sys.executable, __file__, "--worker", str(spec_file)],
                out / f"{name}-{round_}.log",
                env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            )
            results[name].append(json.loads(result.read_text()))
            print(
                f"round {round_ + 1} {name}: {results[name][-1]['tokens_per_sec']:.1f} tokens/s", flush=True
            )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    first = "before" if "before" in results else names[0]  # the ratios' and loss differences' baseline
    base = statistics.median(r["tokens_per_sec"] for r in results[first])
    base_loss = results[first][0]["check_loss"]
    print(
        f"\nCPU: {cpu_model()} ({os.cpu_count()} cores); "
        f"{opts['rounds']} rounds of {opts['steps']} timed steps"
    )
    print(f"| lever | tokens/s (median) | min-max | vs {first} | MFU | first step s | loss - {first}'s |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        speeds = [r["tokens_per_sec"] for r in runs]
        median = statistics.median(speeds)
        ratio = f"{median / base:.2f}"
        loss = f"{runs[0]['check_loss'] - base_loss:+.1e}"
        print(
            f"| {name} | {median:.1f} | {min(speeds):.1f}-{max(speeds):.1f} | {ratio} "
            f"| {statistics.median(r['mfu'] for r in runs):.1%} "
            f"| {statistics.median(r['first_step_seconds'] for r in runs):.1f} | {loss} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
