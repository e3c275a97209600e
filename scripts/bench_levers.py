"""Each performance lever of the training step, measured against the step as it was, in fresh processes.

    python scripts/bench_levers.py [rounds=3] [steps=3] [levers=name,name,...] [out=/tmp/bench-levers]
                                   [alpaca=<rows.json>]   # those Alpaca rows instead of the embedded set
    python scripts/bench_levers.py --fused-qkv      # the most fusing LoRA's q/k/v A matmuls could save
    python scripts/bench_levers.py --matmul-bound [lever=default_path] [rows=4] [packing=true] [top=20]
                                                  [alpaca=<rows.json>]
        # where one step's time goes: each matmul in the step and alone, the other operators, and the MFU
        # a step of nothing but its own matmuls (timed alone) would reach

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
PADDED = ["data.packing=false", "trainer.micro_batch_size=16", "trainer.effective_batch_size=16"]
# What sft.train switches on while training fp32 weights under bf16-mixed on a CPU (worker switches).
DEFAULT_SWITCHES = {
    "frozen_bf16": True,
    "segments": True,
    "uncast_lora_inputs": True,
    "fused_lora_adds": True,
    "norm_bf16": True,
}
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
    # default_path before NormOutputsInBf16: the norms' outputs in fp32, cast by each projection reading them.
    "default_fp32_norms": (["trainer.precision=bf16-mixed"], {**DEFAULT_SWITCHES, "norm_bf16": False}, {}),
    # As `make train` trains by default on a bf16-fast CPU: fp32 weights, frozen copies, the switches.
    "default_path": (["trainer.precision=bf16-mixed"], DEFAULT_SWITCHES, {}),
    # make train's micro-batches (16 padded rows of the embedded set), attention by torch's kernel ...
    "padded_kernel": (["trainer.precision=bf16-mixed", *PADDED], {**DEFAULT_SWITCHES, "segments": False}, {}),
    # ... and by matmul_attention, as sdpa_segments trains padded rows on a CPU.
    "padded_matmul": (["trainer.precision=bf16-mixed", *PADDED], DEFAULT_SWITCHES, {}),
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
    from sft.training.dropout import ScatterDropout
    from sft.training.lineage import start_model
    from sft.training.lora_forward import fuse_lora_adds
    from sft.training.model import load_tokenizer
    from sft.training.module import SFTModule
    from sft.training.precision import (
        frozen_linears_to_bf16,
        matmul_peak,
        norm_outputs_to_bf16,
        uncast_lora_inputs,
    )

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
    if spec.get("norm_bf16"):  # what sft.training.precision.NormOutputsInBf16 does during training
        norm_outputs_to_bf16(model)
    if spec.get("compile"):
        for layer in model.get_base_model().get_decoder().layers:
            layer.compile()
    module = SFTModule(model, typed.optimizer, typed.scheduler, typed.trainer)
    bf16 = typed.trainer.precision == "bf16-mixed"
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    # The fixed batch's loss with every dropout at 0 but in training mode (the attention path training takes):
    # what a lever must keep (or, for bf16, changes).
    drops = [m for m in model.modules() if isinstance(m, (torch.nn.Dropout, ScatterDropout))]
    rates = [m.p for m in drops]
    model.train()
    for drop in drops:
        drop.p = 0.0
    with torch.no_grad(), autocast():
        loss, count, _ = module.token_loss(batches[0])
    check_loss = float(loss / count)
    for drop, rate in zip(drops, rates, strict=True):
        drop.p = rate

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
    lengths = [
        n
        for b in batches[2:]
        for n in (
            block_lengths(b["position_ids"]) if "position_ids" in b else b["attention_mask"].sum(-1).tolist()
        )
    ]
    per_token = flops_per_token(
        counts["frozen_matmul"], counts["trainable"], counts["layers"], counts["width"], mean_context(lengths)
    )
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32, n=2048, seconds=1.0)
    found = {
        "tokens_per_sec": tokens / seconds,
        "first_step_seconds": first,
        "check_loss": check_loss,
        "mfu": tokens / seconds * per_token / (peak * 1e9),
        "peak_gflops": peak,
    }
    if spec.get("matmul_bound"):
        batch = batches[2]
        calls = record_matmuls(lambda: step(batch))
        found["bound"] = matmul_bound(
            calls, int(batch["num_tokens"]) * per_token, seconds / (len(batches) - 2)
        )
    return found


MATMULS = {
    "mm",
    "addmm",
    "addmm_",
    "bmm",
    "baddbmm",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention_for_cpu_backward",
}


def record_matmuls(step) -> list[dict]:
    """Every matmul and attention kernel one call of `step` runs (forward, backward, optimizer): its
    operator, its arguments (tensors as shape, strides and dtype) and the seconds it took there."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    def shape_of(x):
        if isinstance(x, torch.Tensor):
            return ("tensor", tuple(x.shape), tuple(x.stride()), str(x.dtype).removeprefix("torch."))
        return x

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            started = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            took = time.perf_counter() - started
            name = func.overloadpacket.__name__
            spec = torch.utils._pytree.tree_map(shape_of, (args, kwargs or {})) if name in MATMULS else None
            calls.append({"op": func, "args": spec, "seconds": took})
            return out

    with Recorder():
        step()
    return calls


def matmul_flops(op: str, args) -> float:
    """FLOPs of one recorded matmul (attention: the causal half of its score and value products)."""
    tensors = [a for a in args if isinstance(a, tuple) and a[:1] == ("tensor",)]
    if op in ("mm", "addmm", "addmm_"):
        (m, k), (_, n) = tensors[-2][1], tensors[-1][1]
        return 2.0 * m * k * n
    if op in ("bmm", "baddbmm"):
        (b, m, k), (_, _, n) = tensors[-2][1], tensors[-1][1]
        return 2.0 * b * m * k * n
    batch, heads, length, width = tensors[1 if op.endswith("backward") else 0][1]
    causal = 2.0 * batch * heads * length * length * width  # scores and values, half of each computed
    return causal * (2 if op.endswith("backward") else 1)


def matmul_bound(calls: list[dict], model_flops: float, step_seconds: float) -> dict:
    """Time each recorded matmul alone on random tensors of its shapes (at least 0.05 s a shape), and
    compare: the step's matmul seconds in the step and alone, and the MFU of a step of only them."""
    import torch

    def make(a):
        if isinstance(a, tuple) and a[:1] == ("tensor",):
            _, shape, stride, dtype = a
            storage = torch.zeros(1 + sum((n - 1) * step for n, step in zip(shape, stride, strict=True)))
            return storage.uniform_(-0.1, 0.1).to(getattr(torch, dtype)).as_strided(shape, stride)
        return a

    alone: dict[str, float] = {}
    rows: dict[str, dict] = {}
    others: dict[str, list] = {}
    for call in calls:
        if call["args"] is None:
            other = others.setdefault(call["op"].overloadpacket.__name__, [0, 0.0])
            other[0] += 1
            other[1] += call["seconds"]
            continue
        key = f"{call['op'].overloadpacket.__name__} {call['args']}"
        if key not in alone:
            args, kwargs = torch.utils._pytree.tree_map(
                make, call["args"], is_leaf=lambda a: isinstance(a, tuple) and a[:1] == ("tensor",)
            )
            call["op"](*args, **kwargs)
            repeats, started = 0, time.perf_counter()
            while time.perf_counter() - started < 0.05 or repeats < 3:
                call["op"](*args, **kwargs)
                repeats += 1
            alone[key] = (time.perf_counter() - started) / repeats
        op = call["op"].overloadpacket.__name__
        row = rows.setdefault(key, {"op": op, "calls": 0, "in_step": 0.0, "alone": 0.0, "flops": 0.0})
        row["calls"] += 1
        row["in_step"] += call["seconds"]
        row["alone"] += alone[key]
        row["flops"] += matmul_flops(op, call["args"][0])
    in_step = sum(r["in_step"] for r in rows.values())
    by_alone = sum(r["alone"] for r in rows.values())
    return {
        "step_seconds": step_seconds,
        "matmul_seconds_in_step": in_step,
        "matmul_seconds_alone": by_alone,
        "matmul_flops": sum(r["flops"] for r in rows.values()),
        "model_flops": model_flops,
        "rows": sorted(rows.items(), key=lambda kv: -kv[1]["in_step"]),
        "others": sorted(others.items(), key=lambda kv: -kv[1][1]),
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


def in_process(spec: dict, env: dict, out: Path, name: str) -> dict:
    """Run `worker(spec)` in a fresh process with `env` added (its log: out/name.log); its result."""
    spec_file, result = out / f"{name}.json", out / f"{name}.result.json"
    spec_file.write_text(json.dumps({**spec, "out": str(out / "run"), "result": str(result)}))
    run(
        [sys.executable, __file__, "--worker", str(spec_file)],
        out / f"{name}.log",
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(result.read_text())


def alpaca_overrides(opts: dict) -> list[str]:
    """The overrides that train on `opts["alpaca"]` (an Alpaca rows file) when given, else none."""
    if "alpaca" not in opts:
        return []
    return ["data=alpaca_en", f"data.datasets.alpaca_en.path={opts['alpaca']}", "data.val_size=0"]


def print_matmul_bound(opts: dict) -> None:
    """Record one step's matmuls for a lever, time each alone, print where the step's time goes."""
    opts = {"lever": "default_path", "rows": "4", "steps": "3", "out": "/tmp/bench-levers-bound", **opts}
    opts.setdefault("packing", "true")
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    overrides, switches, env = LEVERS[opts["lever"]]
    rows = [f"trainer.micro_batch_size={opts['rows']}", f"trainer.effective_batch_size={opts['rows']}"]
    rows.append(f"data.packing={opts['packing']}")
    spec = {"overrides": [*overrides, *rows, *alpaca_overrides(opts)], "steps": int(opts["steps"])}
    found = in_process({**spec, **switches, "matmul_bound": True}, env, out, opts["lever"])
    bound, peak = found["bound"], found["peak_gflops"] * 1e9
    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} cores); lever {opts['lever']}, "
        f"{opts['rows']} rows a micro-batch, packing={opts['packing']}"
    )
    print("| operator and shapes | calls | ms in the step | ms alone | GFLOP/s alone |")
    print("|---|---|---|---|---|")
    for key, row in bound["rows"][: int(opts.get("top", 20))]:
        rate = row["flops"] / row["alone"] / 1e9
        print(
            f"| `{key[:150]}` | {row['calls']} | {row['in_step'] * 1e3:.1f} | {row['alone'] * 1e3:.1f} "
            f"| {rate:.0f} |"
        )
    print("\n| other operator | calls | ms in the step |\n|---|---|---|")
    for name, (count, seconds) in bound["others"][: int(opts.get("top", 20))]:
        print(f"| {name} | {count} | {seconds * 1e3:.1f} |")
    step, in_step = bound["step_seconds"], bound["matmul_seconds_in_step"]
    alone, rest = bound["matmul_seconds_alone"], sum(seconds for _, (_, seconds) in bound["others"])
    print(
        f"\nstep {step:.3f} s ({found['tokens_per_sec']:.1f} tokens/s, MFU {found['mfu']:.1%} of "
        f"{peak / 1e9:.0f} GFLOP/s); its matmuls {in_step:.3f} s in the step ({in_step / step:.0%}), "
        f"{alone:.3f} s alone at {bound['matmul_flops'] / alone / 1e9:.0f} GFLOP/s; "
        f"a step of only its matmuls, timed alone: MFU {bound['model_flops'] / alone / peak:.1%}; "
        f"the other operators {rest:.3f} s in the step"
    )


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
    if argv[:1] == ["--matmul-bound"]:
        print_matmul_bound(dict(a.split("=", 1) for a in argv[1:]))
        return
    opts = {"rounds": "3", "steps": "3", "levers": ",".join(LEVERS), "out": "/tmp/bench-levers"}
    opts.update(a.split("=", 1) for a in argv)
    data = alpaca_overrides(opts)
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    wanted = opts["levers"].split(",")
    names = [n for n in wanted if Path(LEVERS[n][2].get("LD_PRELOAD", "/")).exists()]  # allocators installed
    results: dict[str, list[dict]] = {n: [] for n in names}
    for round_ in range(int(opts["rounds"])):
        for name in names:
            overrides, switches, env = LEVERS[name]
            spec = {"overrides": [*overrides, *data], "steps": int(opts["steps"]), **switches}
            results[name].append(in_process(spec, env, out, f"{name}-{round_}"))
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
