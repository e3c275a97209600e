"""The Gradio page: Train (compose, validate, launch, watch), Runs, Sweeps and Chat tabs.

Every option list comes from conf/ through Hydra, every check is `sft.config.validate`, every launch is
`python -m sft.train` in its own process; this module only wires those to components.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from .. import metrics_file
from ..locations import SOURCE_DIR
from ..provenance import redact
from ..sweep.storage import default_storage
from . import runs, sweeps
from .compare import Comparison, chat_ready
from .configs import EXTRA, FIELDS, Checked, Draft, Roots, check, config_groups, group_options

CSS = """
.field-error p { color: var(--error-text-color, #b91c1c); font-size: 0.85em; margin: 2px 0 0 0; }
#run-status p { font-family: var(--font-mono); }
"""
CURVE_SERIES = list(runs.CURVES.values())
# Logs follow their end like `tail -f` while they grow, and stay where the reader put them once they stop.
FOLLOW_LOGS = """() => {
  for (const t of document.querySelectorAll('#log textarea, #sweep-log textarea')) {
    if (t.dataset.seen !== String(t.scrollHeight)) {
      t.scrollTop = t.scrollHeight;
      t.dataset.seen = t.scrollHeight;
    }
  }
}"""


@dataclass
class Settings:
    """Where runs go, which locations the page may touch, and what the page starts from."""

    log_dir: Path
    roots: Roots
    overrides: list[str] = field(default_factory=list)  # e.g. ["model=tiny"]: the first composition
    refresh_seconds: float = 1.0
    hidden_env: tuple[str, ...] = ()  # environment variables runs must not inherit (the page's password)


def _errors(problems: list[str]) -> str:
    """Markdown for the problems of one field (empty when there are none)."""
    return "\n\n".join(f"⚠ {p}" for p in problems)


def _starting_draft(overrides: list[str], groups: dict[str, list[str]], defaults: dict[str, str]) -> Draft:
    """The draft the page opens with: group choices from `overrides`, the rest into the extra box."""
    choices, extra = dict(defaults), []
    for override in overrides:
        key, _, value = override.partition("=")
        if key in groups:
            choices[key] = value
        else:
            extra.append(override)
    return Draft(choices, {}, shlex.join(extra))


def _curves(title: str, elem_id: str) -> gr.LinePlot:
    """A chart of `runs.curves` rows (step, value, series), one line per series."""
    return gr.LinePlot(x="step", y="value", color="series", title=title, elem_id=elem_id, height=280)


def build(settings: Settings) -> gr.Blocks:
    """The whole page. Runs it starts go on when the browser closes; the server stops them when it exits."""
    groups, defaults = config_groups()
    log_dir = Path(settings.log_dir).resolve()
    launcher = runs.Launcher(log_dir, SOURCE_DIR, hidden_env=settings.hidden_env)
    # Where runs go is the page's decision, and part of the command, so the command runs the same anywhere.
    placed = [f"paths.log_dir={log_dir}"]
    fixed = [*placed, f"paths.output_dir={log_dir / 'train' / 'runs' / 'new'}"]
    start = _starting_draft(settings.overrides, groups, defaults)
    names = list(groups)
    comparison: dict[str, Comparison] = {}
    chat_lock = threading.Lock()

    def draft_of(touched: list[str], extra: str, values: tuple) -> Draft:
        picked = dict(zip(names, values[: len(names)], strict=True))
        edited = dict(zip((f.name for f in FIELDS), values[len(names) :], strict=True))
        return Draft(picked, {name: edited[name] for name in touched}, extra or "")

    def checked_of(touched: list[str], extra: str, values: tuple) -> Checked:
        checked = check(draft_of(touched, extra, values), defaults, fixed, settings.roots.problem)
        checked.overrides += placed
        return checked

    with gr.Blocks(title="sft", analytics_enabled=False) as page:
        touched = gr.State([])  # fields the user edited; the others follow the composed config
        current = gr.State("")  # the run the Train tab watches
        gr.Markdown("## sft: supervised fine-tuning")
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    group_boxes, group_errors = {}, {}
                    for g in names:
                        with gr.Column(min_width=150):
                            group_boxes[g] = gr.Dropdown(
                                groups[g],
                                value=start.choices[g],
                                label=g,
                                elem_id=f"group-{g}",
                                interactive=True,
                            )
                            group_errors[g] = gr.Markdown(elem_id=f"error-{g}", elem_classes="field-error")
                with gr.Row():
                    field_boxes, field_errors = {}, {}
                    for f in FIELDS:
                        with gr.Column(min_width=150):
                            field_boxes[f.name] = gr.Number(
                                label=f.label,
                                elem_id=f"field-{f.name}",
                                precision=0 if f.kind is int else None,
                                interactive=True,
                            )
                            field_errors[f.name] = gr.Markdown(
                                elem_id=f"error-{f.name}", elem_classes="field-error"
                            )
                extra = gr.Textbox(
                    value=start.extra,
                    label="more overrides (Hydra syntax, any key)",
                    placeholder="trainer.max_steps=20 data.max_samples=200",
                    elem_id="extra",
                )
                extra_error = gr.Markdown(elem_id="error-extra", elem_classes="field-error")
                command = gr.Textbox(
                    label="command line", buttons=["copy"], interactive=False, elem_id="command"
                )
                with gr.Accordion("composed config (YAML)", open=False):
                    composed = gr.Code(language="yaml", elem_id="composed", interactive=False)
                with gr.Row():
                    start_button = gr.Button("Start", variant="primary", interactive=False, elem_id="start")
                    stop_button = gr.Button("Stop (save a checkpoint)", interactive=False, elem_id="stop")
                    resume_button = gr.Button("Resume", interactive=False, elem_id="resume")
                    watch = gr.Dropdown([], value=None, label="watching", elem_id="watch", scale=2)
                run_status = gr.Markdown(elem_id="run-status")
                with gr.Row():
                    loss_plot = _curves("loss", "loss-plot")
                    lr_plot = _curves("learning rate", "lr-plot")
                log_box = gr.Textbox(label="log", lines=14, max_lines=14, interactive=False, elem_id="log")

            with gr.Tab("Runs", id="runs") as runs_tab:
                refresh_runs = gr.Button("Refresh", elem_id="refresh-runs")
                runs_table = gr.Dataframe(interactive=False, elem_id="runs-table", wrap=True)
                with gr.Row():
                    overlay_pick = gr.Dropdown(
                        [], multiselect=True, label="compare runs", elem_id="overlay-pick"
                    )
                    overlay_series = gr.Radio(CURVE_SERIES, value="train loss", label="curve")
                overlay_plot = gr.LinePlot(
                    x="step", y="value", color="run", elem_id="overlay-plot", height=300
                )

            with gr.Tab("Sweeps", id="sweeps") as sweeps_tab:
                spaces = group_options("sweep")
                with gr.Row():
                    space_pick = gr.Dropdown(
                        spaces, value=spaces[0] if spaces else None, label="search space"
                    )
                    study_name = gr.Textbox(label="study name", elem_id="study-name")
                    n_trials = gr.Number(label="trials", precision=0, minimum=1, elem_id="n-trials")
                space_view = gr.Code(language="json", label="space (sweeps/<name>.yaml)", interactive=False)
                gr.Markdown("Each trial uses the Train tab's settings; the space's keys override them.")
                with gr.Row():
                    sweep_button = gr.Button("Start sweep", variant="primary", elem_id="start-sweep")
                    sweep_stop = gr.Button("Stop sweep", elem_id="stop-sweep")
                sweep_status = gr.Markdown(elem_id="sweep-status")
                sweep_log = gr.Textbox(
                    label="sweep log", lines=8, max_lines=8, interactive=False, elem_id="sweep-log"
                )
                with gr.Row():
                    study_pick = gr.Dropdown([], label="study", elem_id="study-pick", allow_custom_value=True)
                    refresh_studies = gr.Button("Refresh studies")
                best = gr.Markdown(elem_id="best-trial")
                trials_table = gr.Dataframe(interactive=False, elem_id="trials-table")
                sweep_job = gr.State("")

            with gr.Tab("Chat", id="chat") as chat_tab:
                with gr.Row():
                    chat_pick = gr.Dropdown([], label="finished run", elem_id="chat-run")
                    max_new = gr.Slider(16, 512, value=128, step=16, label="max new tokens")
                    load_button = gr.Button("Load", elem_id="chat-load")
                chat_status = gr.Markdown(elem_id="chat-status")
                with gr.Row():
                    tuned_box = gr.Chatbot(label="tuned (the run)", elem_id="chat-tuned", height=320)
                    base_box = gr.Chatbot(label="base model", elem_id="chat-base", height=320)
                prompt = gr.Textbox(label="prompt (same for both, greedy)", elem_id="chat-prompt")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="chat-send")
                    clear = gr.Button("Clear")

        # ---- Train tab: compose and validate on every change --------------------------------------------
        compose_inputs = [touched, extra, *group_boxes.values(), *field_boxes.values()]
        compose_outputs = [
            touched,
            *field_boxes.values(),
            *group_errors.values(),
            *field_errors.values(),
            extra_error,
            composed,
            command,
            start_button,
        ]

        def recompose(edited: list[str], extra_text: str, *values):
            checked = checked_of(edited, extra_text, values)
            fields = [
                gr.update()
                if f.name in edited or not checked.values
                else gr.update(value=checked.values[f.name])
                for f in FIELDS
            ]
            problems = checked.problems
            return [
                edited,
                *fields,
                *(_errors(problems.get(g, [])) for g in names),
                *(_errors(problems.get(f.name, [])) for f in FIELDS),
                _errors(problems.get(EXTRA, [])),
                checked.yaml,
                checked.command(),
                gr.update(interactive=checked.ok),
            ]

        def edit(name: str):
            def handler(edited: list[str], *rest):
                return recompose(sorted({*edited, name}), *rest)

            return handler

        def pick_group(group: str):
            def handler(edited: list[str], *rest):
                # A new preset brings its own row: forget edits of the fields it sets, keep the others.
                if group == "preset":
                    edited = [f.name for f in FIELDS if f.name in edited and not f.key.startswith("preset.")]
                return recompose(edited, *rest)

            return handler

        common = dict(inputs=compose_inputs, outputs=compose_outputs, trigger_mode="always_last")
        for g, box in group_boxes.items():
            box.input(pick_group(g), **common)
        for f in FIELDS:
            field_boxes[f.name].input(edit(f.name), **common)
        extra.change(recompose, **common)  # only the user writes this box
        page.load(recompose, **common)

        def list_options():
            # Read again at every page load, so a YAML file added since the server started is offered.
            found, _ = config_groups()
            return [gr.update(choices=found.get(g, groups[g])) for g in names]

        page.load(list_options, None, list(group_boxes.values()))

        # ---- Train tab: launch, stop, resume and watch ----------------------------------------------------
        def run_choices(selected: str | None = None):
            found = [(str(p.relative_to(log_dir)), str(p)) for p in runs.find_runs(log_dir)]
            return gr.update(choices=found, value=selected)

        def own(run: str) -> Path:
            # Only runs under the outputs directory are watched, stopped or resumed.
            path = Path(run).resolve()
            if log_dir not in path.parents:
                raise gr.Error(f"{run}: not a run under {log_dir}")
            return path

        def start_run(edited: list[str], extra_text: str, *values):
            checked = checked_of(edited, extra_text, values)
            if not checked.ok:
                raise gr.Error("Fix the problems shown beside the fields first.")
            try:
                job = launcher.start_run(checked.overrides, checked.cfg.task_name)
            except ValueError as err:
                raise gr.Error(str(err)) from None
            gr.Info(f"Started {job.run.name}")
            return str(job.run), run_choices(str(job.run))

        def stop_run(run: str):
            if launcher.stop(own(run)):
                gr.Info(
                    "Stop requested: a training run saves a checkpoint at the next optimizer step and exits "
                    "(while it is still loading it just exits)."
                )
            else:
                gr.Warning("This run is not running from this page.")

        def resume_run(run: str):
            try:
                launcher.resume_run(own(run))
            except ValueError as err:
                raise gr.Error(str(err)) from None
            gr.Info(f"Resuming {Path(run).name} from its last checkpoint.")
            return run

        def watch_run(run: str):
            if not run:
                return "No run yet: compose one and press Start.", None, None, "", gr.update(), gr.update()
            path = own(run)
            alive = launcher.alive(path)
            known = True if alive else None  # the page's own child, or the pid in progress.json
            state = runs.status(path, known)
            logged = metrics_file.read(path)  # once per tick, for the charts and the progress line
            curves = runs.curves(logged)
            loss = curves[curves["series"] != "learning rate"]
            lr = curves[curves["series"] == "learning rate"]
            counts = ", ".join(
                f"{name}: {int((curves['series'] == name).sum())} points" for name in CURVE_SERIES
            )
            line = f"**{path.name}** · {runs.progress_line(path, state, logged)} · {counts}"
            # The plot keeps the series of its first data, so it starts once train loss is there too
            # (the initial evaluation logs val loss alone).
            return (
                line,
                loss if (loss["series"] == "train loss").any() else None,
                lr if len(lr) else None,
                redact(runs.tail(path / runs.CONSOLE_LOG)),  # a key in the environment never shows
                gr.update(interactive=alive),
                gr.update(interactive=state in ("stopped", "failed") and runs.resumable(path)),
            )

        watch_outputs = [run_status, loss_plot, lr_plot, log_box, stop_button, resume_button]
        start_button.click(start_run, compose_inputs, [current, watch])
        stop_button.click(stop_run, current, None)
        resume_button.click(resume_run, current, current)
        watch.input(lambda run: run or "", watch, current)
        watch.focus(lambda run: run_choices(run), current, watch)  # list runs started elsewhere too
        timer = gr.Timer(settings.refresh_seconds)
        timer.tick(watch_run, current, watch_outputs, show_progress="hidden").then(None, js=FOLLOW_LOGS)
        current.change(watch_run, current, watch_outputs, show_progress="hidden")

        # ---- Runs tab ------------------------------------------------------------------------------------
        def list_runs():
            df = runs.table(log_dir, launcher.running())
            return df, gr.update(choices=list(df["run"]))

        def overlay(names_: list[str], series: str):
            df = runs.overlay(log_dir, names_ or [], series)
            return df if len(df) else None

        refresh_runs.click(list_runs, None, [runs_table, overlay_pick])
        runs_tab.select(list_runs, None, [runs_table, overlay_pick])
        overlay_pick.change(overlay, [overlay_pick, overlay_series], overlay_plot)
        overlay_series.change(overlay, [overlay_pick, overlay_series], overlay_plot)

        # ---- Sweeps tab ----------------------------------------------------------------------------------
        storage = default_storage(log_dir)  # where the sweeps it starts keep their studies

        def show_space(name: str):
            if not name:
                return "", "", None
            s = sweeps.space(name)
            return (
                json.dumps({"params": s["params"], "enqueue": s["enqueue"]}, indent=2),
                s["study_name"],
                s["n_trials"],
            )

        def start_sweep(name: str, study: str, trials: float, edited: list[str], extra_text: str, *values):
            checked = checked_of(edited, extra_text, values)
            if not checked.ok:
                raise gr.Error("The Train tab's settings have problems; fix them first.")
            if not name or not trials or trials < 1:
                raise gr.Error("Pick a search space and at least one trial.")
            if not re.fullmatch(r"[\w.-]+", study or ""):
                raise gr.Error("The study name takes letters, digits, '.', '_' and '-' only.")
            swept = set(sweeps.space(name)["params"])
            base = [o for o in checked.overrides if o.partition("=")[0] not in swept]
            job = launcher.start_sweep(sweeps.sweep_overrides(name, int(trials), study, base))
            return (
                str(job.log),
                f"Started: `{shlex.join(['python', '-m', *job.args])}`",
                gr.update(value=study),
            )

        def stop_sweep(job: str):
            if launcher.stop(job):
                gr.Info("Stop requested: the running trial saves a checkpoint and the sweep ends.")

        def watch_sweep(job: str, study: str):
            log = redact(runs.tail(Path(job))) if job else ""
            try:
                if not study or study not in sweeps.studies(storage):
                    return log, "", None
                rows, line = sweeps.trials(study, storage)
            except Exception:  # e.g. SQLite busy while a trial writes: keep what is shown, try next tick
                return log, gr.update(), gr.update()
            return log, line, rows

        def list_studies(selected: str | None):
            found = sweeps.studies(storage)
            return gr.update(
                choices=found, value=selected if selected in found else (found[0] if found else None)
            )

        space_pick.change(show_space, space_pick, [space_view, study_name, n_trials])
        page.load(show_space, space_pick, [space_view, study_name, n_trials])
        sweep_button.click(
            start_sweep,
            [space_pick, study_name, n_trials, *compose_inputs],
            [sweep_job, sweep_status, study_pick],
        )
        sweep_stop.click(stop_sweep, sweep_job, None)
        refresh_studies.click(list_studies, study_pick, study_pick)
        sweeps_tab.select(list_studies, study_pick, study_pick)
        # The study is read from its storage, so less often than a run's files.
        sweep_timer = gr.Timer(max(settings.refresh_seconds, 3.0))
        sweep_timer.tick(
            watch_sweep, [sweep_job, study_pick], [sweep_log, best, trials_table], show_progress="hidden"
        ).then(None, js=FOLLOW_LOGS)

        # ---- Chat tab ------------------------------------------------------------------------------------
        def chat_runs():
            ready = [str(p.relative_to(log_dir)) for p in runs.find_runs(log_dir) if chat_ready(p)]
            return gr.update(choices=ready, value=ready[0] if ready else None)

        def load_chat(name: str, limit: float):
            if not name:
                raise gr.Error("Pick a finished run first.")
            path = settings.roots.check(log_dir / name, "run")
            with chat_lock:
                comparison.clear()  # one pair of models in memory at a time
                comparison[name] = Comparison(path, max_new_tokens=int(limit))
            return f"Loaded **{name}** and its base model.", [], []

        def ask(name: str, text: str, tuned_history: list, base_history: list):
            with chat_lock:
                pair = comparison.get(name)
            if pair is None:
                raise gr.Error("Load the run first.")
            if not text.strip():
                raise gr.Error("Type a prompt.")
            user = {"role": "user", "content": text}
            # Gradio runs one `ask` at a time (its default concurrency), so the pair's history stays whole.
            for tuned, base in pair.ask(text):
                yield (
                    [*tuned_history, user, {"role": "assistant", "content": tuned}],
                    [*base_history, user, {"role": "assistant", "content": base}],
                    "",
                )

        def clear_chat(name: str):
            with chat_lock:
                pair = comparison.get(name)
            if pair is not None:
                pair.reset()
            return [], []

        chat_tab.select(chat_runs, None, chat_pick)
        load_button.click(load_chat, [chat_pick, max_new], [chat_status, tuned_box, base_box])
        chat_inputs = [chat_pick, prompt, tuned_box, base_box]
        send.click(ask, chat_inputs, [tuned_box, base_box, prompt])
        prompt.submit(ask, chat_inputs, [tuned_box, base_box, prompt])
        clear.click(clear_chat, chat_pick, [tuned_box, base_box])

    page.launcher = launcher  # the entry point stops live runs on exit
    return page
