"""The end-of-run report on stdout (summary.json itself is written by sft.run_dir)."""

from __future__ import annotations

from ..run_dir import SUMMARY_METRICS


def print_summary(s: dict) -> None:
    """A short end-of-run report on stdout."""

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [
        "",
        f"=== sft run summary ({s.get('stage', 'sft')}) ===",
        f"steps {s['global_step']}  wall {s['wall_seconds']} s  train {s.get('train_seconds', 'n/a')} s  "
        f"{s.get('tokens_per_sec', 'n/a')} tokens/s ({s.get('trained_tokens_per_sec', 'n/a')} trained)  "
        f"training from {s.get('seconds_to_training', 'n/a')} s, first step done "
        f"{s.get('seconds_to_first_step', 'n/a')} s after start",
        f"train loss {fmt(s['train_loss'])}  val loss {fmt(s['initial_val_loss'])} -> {fmt(s['val_loss'])}  "
        f"val ppl {fmt(s['val_ppl'])}  val token accuracy {fmt(s['val_token_accuracy'])}",
    ]
    # A stage's own validation metrics (preference rewards and accuracy, KL), from the first evaluation on.
    for name, value in s.get("val", {}).items():
        if name not in SUMMARY_METRICS:
            lines.append(f"{name} {fmt(s.get('initial_val', {}).get(name))} -> {fmt(value)}")
    lines += [f"data warning: {w}" for w in s.get("data", {}).get("warnings", [])]
    for p in s.get("probes", []):
        lines += [f"Q: {p['prompt']}", f"  before: {p['before']}", f"  after:  {p['after']}"]
    lines += [f"saved: {s['saved']}", f"run dir: {s['output_dir']}", ""]
    print("\n".join(lines), flush=True)
