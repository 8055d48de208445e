"""The whole chain in one job (``jobs/pipeline.py``): corpus → tokenizer → pretraining → NER
fine-tuning → promotion (registry aliases) → Serve, each stage the job a user would run by hand.

Each stage runs as its own process (``python jobs/<stage>.py --config ... overrides``), so it
starts, uses and stops its own Ray exactly as when run alone — or joins the cluster named by
``$RAY_ADDRESS`` under ``ray job submit -- python jobs/pipeline.py``.

Stages hand over explicitly. Each finished stage leaves a typed record in its output folder
(``outputs.json``, :mod:`galeno.handover`), and this job reads it and passes what the next stage
needs on that stage's command line: the corpus folder to the tokenizer and pretraining, the
tokenizer to pretraining, the pretrained model to NER, the registered versions to promotion, and
``models:/NAME@ALIAS`` of both to Serve. So a stage preset names only its own output, never an
upstream one. ``start_from`` skips the stages before it after reading their records;
``stop_after`` ends the chain early.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from galeno.config import ConfigError, parse_cli, to_dict

log = logging.getLogger(__name__)

STAGES = ("corpus", "tokenizer", "pretrain", "ner", "promote", "serve")
Stage = Literal["corpus", "tokenizer", "pretrain", "ner", "promote", "serve"]
#: The job scripts, relative to the working directory: the repo root, or the working_dir that
#: ``ray job submit`` unpacks (where the package itself may come from elsewhere, via py_modules).
JOBS = Path("jobs")


@dataclass
class StageConfig:
    """One stage: the presets and overrides its job is run with."""

    config: list[str] = field(default_factory=list)
    """Preset files of the stage's job (``--config``, in order)."""
    overrides: list[str] = field(default_factory=list)
    """``key.path=value`` overrides of the stage's job, applied last."""


@dataclass
class PromoteConfig:
    """Registry aliases moved after training (``jobs/promote.py``)."""

    alias: str = "champion"
    """Alias pointed at the new pretrained and NER versions (when their dev metric is no worse)."""
    force: bool = False
    """Move the alias even when the new version's metric is worse than the current holder's."""


@dataclass
class PipelineConfig:
    """Which presets each stage runs, and which stages run."""

    corpus: StageConfig = field(default_factory=StageConfig)
    tokenizer: StageConfig = field(default_factory=StageConfig)
    pretrain: StageConfig = field(default_factory=StageConfig)
    ner: StageConfig = field(default_factory=StageConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    serve: StageConfig = field(default_factory=StageConfig)
    """Run with ``--once``: start the application, send one request to each model, print, stop."""
    start_from: Stage = "corpus"
    """First stage to run; the earlier ones' recorded outputs must exist."""
    stop_after: Stage = "serve"
    """Last stage to run."""
    log_dir: str = ""
    """Where each stage's full output (its log, Ray's, the libraries') is written; default
    <artifact root>/logs/pipeline-<start time>. The console shows one progress line per stage,
    warnings, what a stage reused, and the served models' answers."""
    stream: bool = False
    """Also print every stage's full output on the console as it comes (the log files are written either way)."""

    def __post_init__(self) -> None:
        if STAGES.index(self.start_from) > STAGES.index(self.stop_after):
            raise ValueError(f"start_from ({self.start_from}) comes after stop_after ({self.stop_after})")


def _job_args(stage: StageConfig, *flags: str, inputs: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The stage job's arguments: its presets, ``flags``, the ``inputs`` handed over from upstream
    stages, then the stage's own overrides (last, so a user's override wins)."""
    return ([arg for path in stage.config for arg in ("--config", path)] + list(flags) + list(inputs)
            + list(stage.overrides))


def _job_config(cls: type, stage: StageConfig) -> Any:
    """The stage's effective job config, parsed from the very arguments its job is given."""
    return parse_cli(cls, _job_args(stage))


def stage_outputs(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Per training stage: the folder it writes and the record class it leaves there (its output contract)."""
    from galeno import handover
    from galeno.corpus.config import CorpusConfig
    from galeno.ner.config import NERConfig
    from galeno.tokenizer import TokenizerConfig
    from galeno.train.config import PretrainConfig

    configs = {"corpus": (CorpusConfig, handover.CorpusOutputs), "tokenizer": (TokenizerConfig, handover.TokenizerOutputs),
               "pretrain": (PretrainConfig, handover.PretrainOutputs), "ner": (NERConfig, handover.NEROutputs)}
    return {stage: {"output": _job_config(cls, getattr(cfg, stage)).output, "record": record}
            for stage, (cls, record) in configs.items()}


def stage_inputs(stage: str, done: dict[str, Any], alias: str) -> list[str]:
    """What ``stage`` is handed from the records of the stages ``done`` before it, as overrides."""
    if stage == "tokenizer":
        return [f"corpus={done['corpus'].output}"]
    if stage == "pretrain":
        return [f"data.corpus={done['corpus'].output}", f"data.tokenizer={done['tokenizer'].tokenizer}"]
    if stage == "ner":
        return [f"model={done['pretrain'].model}"]
    if stage == "serve":
        return [f"fill_mask_model={_alias_uri(done['pretrain'], alias)}", f"ner_model={_alias_uri(done['ner'], alias)}"]
    return []


def _registered(rec: Any) -> tuple[str, str]:
    """(name, version) of the model a training stage registered, from its record."""
    from galeno.inference.source import split_models_uri

    uri = rec.registered_model or ""
    if not uri.startswith("models:/"):
        raise RuntimeError(f"the {rec.STAGE} stage registered no model (is tracking on and the store reachable?): "
                           f"see {rec.output}")
    name, version, _ = split_models_uri(uri)
    return name, version


def _alias_uri(rec: Any, alias: str) -> str:
    return f"models:/{_registered(rec)[0]}@{alias}"


def _command(script: str, stage: StageConfig, *flags: str, inputs: list[str]) -> list[str]:
    return [sys.executable, str(JOBS / script), *_job_args(stage, *flags, inputs=inputs)]


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the stages from ``start_from`` to ``stop_after`` in the working directory (the repo root,
    where relative paths in the presets point from, as for every job); returns per-stage status,
    seconds and outputs. Raises :class:`ConfigError` when a skipped stage's output is missing, and
    ``RuntimeError`` naming the stage whose job failed."""
    from galeno import handover, paths

    if not (JOBS / "pretrain.py").is_file():
        raise ConfigError(f"run the pipeline from the repo root: no {JOBS / 'pretrain.py'} under {Path.cwd()}")
    outputs = stage_outputs(cfg)
    first, last = STAGES.index(cfg.start_from), STAGES.index(cfg.stop_after)
    done: dict[str, Any] = {}
    for skipped in STAGES[:first]:
        if skipped in outputs:
            try:
                done[skipped] = handover.read(outputs[skipped]["output"], outputs[skipped]["record"])
            except handover.HandoverError as err:
                raise ConfigError(f"start_from={cfg.start_from} needs the {skipped} stage's output: {err} "
                                  f"(or run from {skipped}: start_from={skipped})") from err
    report: dict[str, Any] = {"config": to_dict(cfg), "stages": {}}
    logs = Path(cfg.log_dir) if cfg.log_dir else paths.pipeline_logs(time.strftime("%Y%m%d-%H%M%S"))
    logs.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    for index, stage in enumerate(STAGES[first:last + 1], start=first + 1):
        print(f"\n=== [{index}/{len(STAGES)}] {stage} ===", flush=True)
        t0 = time.time()
        inputs = stage_inputs(stage, done, cfg.promote.alias)
        if stage == "promote":
            commands = []
            for trained in ("pretrain", "ner"):
                name, version = _registered(done[trained])
                commands.append([sys.executable, str(JOBS / "promote.py"), "--model", name, "--version", version,
                                 "--alias", cfg.promote.alias,
                                 *(["--force", "--reason", "pipeline promote.force=true"] if cfg.promote.force else [])])
        elif stage == "serve":
            commands = [_command("serve.py", cfg.serve, "--once", inputs=inputs)]
        else:
            script = {"corpus": "clean_corpus.py", "tokenizer": "train_tokenizer.py", "pretrain": "pretrain.py",
                      "ner": "finetune_ner.py"}[stage]
            commands = [_command(script, getattr(cfg, stage), inputs=inputs)]
        codes = []
        for n, cmd in enumerate(commands):
            log_file = logs / f"{index}-{stage}{f'-{n + 1}' if len(commands) > 1 else ''}.log"
            codes.append(_run_stage(cmd, log_file, f"[{index}/{len(STAGES)}] {stage}",
                                    show_stdout=stage == "serve", stream=cfg.stream))
        seconds = round(time.time() - t0, 1)
        refused = stage == "promote" and all(c in (0, 2) for c in codes) and 2 in codes
        ok = all(c == 0 for c in codes) or refused
        report["stages"][stage] = {"status": "ok" if not refused else "ok (alias kept: metric not better)",
                                   "seconds": seconds, **({"output": outputs[stage]["output"]} if stage in outputs else {})}
        if not ok:
            tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
            print(f"--- the last lines of {log_file} ---", *tail, "---", sep="\n", flush=True)
            raise RuntimeError(f"the {stage} stage failed (exit status {max(codes)}; its log: {log_file}); the "
                               f"stages before it are done: rerun with start_from={stage} once it is fixed")
        if stage in outputs:
            try:
                done[stage] = handover.read(outputs[stage]["output"], outputs[stage]["record"])
            except handover.HandoverError as err:
                raise RuntimeError(f"the {stage} stage ended without its record: {err}") from err
            report["stages"][stage]["notes"] = done[stage].notes
        print(f"=== {stage}: {seconds:.0f} s, {_outcome(stage, done.get(stage))} ===", flush=True)
        for note in getattr(done.get(stage), "notes", []):
            print(f"    {note}", flush=True)
    report["seconds"] = round(time.time() - t_all, 1)
    report["logs"] = str(logs)
    return report


def _outcome(stage: str, rec: Any) -> str:
    """One phrase per stage for the console, from its record."""
    if rec is None:
        return "done"
    if stage == "corpus":
        return f"{rec.documents_out:,} documents, {rec.words_out:,} words kept (table: {rec.report})"
    if stage == "tokenizer":
        return f"vocabulary of {rec.vocab_size:,} ({rec.tokenizer})"
    return f"model {rec.model}" + (f", registered as {rec.registered_model}" if rec.registered_model else "")


#: The prefix Ray puts on worker output it forwards to the driver: "(RayTrainWorker pid=12) ", maybe coloured.
_RAY_PREFIX = r"(?:\x1b\[[0-9;]*m)?\([^)]*pid=\d+[^)]*\)(?:\x1b\[[0-9;]*m)?\s*"
_RAY_WORKER = re.compile("^" + _RAY_PREFIX)
#: A log line of ours, as galeno.runtime.LOG_FORMAT writes it ("<date> <time> LEVEL galeno.x: message"),
#: in the driver or forwarded from a worker.
_OUR_LOG = re.compile(f"^(?:{_RAY_PREFIX})?" + r"\S+ \S+ (INFO|WARNING|ERROR|CRITICAL) (galeno[\w.]*): (.*)$")


def _run_stage(cmd: list[str], log_file: Path, title: str, *, show_stdout: bool, stream: bool) -> int:
    """Run one stage's job with its whole output in ``log_file``; the console gets one progress line (our
    latest log message, rewritten in place on a terminal, every 30 s otherwise), our warnings and errors,
    and, where ``show_stdout``, what the job prints as its result. Returns the exit status."""
    import queue
    import shutil
    import threading

    tty = sys.stdout.isatty()
    width = max(40, shutil.get_terminal_size((100, 20)).columns - 1)
    clear = "\r" + " " * width + "\r" if tty else ""  # wipes the progress line before a line that stays
    log.debug("running %s (log: %s)", " ".join(cmd[1:]), log_file)
    print(f"{title}: running; full log {log_file}", flush=True)
    lines: queue.Queue = queue.Queue()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                            bufsize=1)

    def pump(stream_name: str, pipe) -> None:
        for line in pipe:
            lines.put((stream_name, line))
        lines.put((stream_name, None))

    for name, pipe in (("out", proc.stdout), ("err", proc.stderr)):
        threading.Thread(target=pump, args=(name, pipe), daemon=True).start()
    t0, shown, last_print, latest, open_streams = time.time(), "", 0.0, "", 2
    with open(log_file, "w", encoding="utf-8") as out:
        while open_streams:
            try:
                name, line = lines.get(timeout=1.0)
            except queue.Empty:
                name, line = "", ""
            if line is None:
                open_streams -= 1
                continue
            if line:
                out.write(line)
                out.flush()
                text = line.rstrip("\n")
                ours = _OUR_LOG.match(text)
                if stream:
                    print(text, flush=True)
                elif ours and ours.group(1) != "INFO":
                    print(f"{clear}    {ours.group(1)}: {ours.group(3)}", flush=True)
                elif show_stdout and name == "out" and not _RAY_WORKER.match(text):
                    print(clear + text, flush=True)
                elif ours:
                    latest = ours.group(3)
            if stream or not latest:
                continue
            now = time.time()
            status = f"{title}: {now - t0:.0f} s  {latest}"
            if tty and status != shown:
                print("\r" + status[:width].ljust(width), end="", flush=True)
                shown = status
            elif not tty and now - last_print >= 30 and latest != shown:
                print(f"{title}: {now - t0:.0f} s  {latest}", flush=True)
                shown, last_print = latest, now
    if tty and shown:
        print(clear, end="", flush=True)
    return proc.wait()


USAGE = """Run the whole chain: corpus -> tokenizer -> pretraining -> NER -> promotion -> Serve (--once).

examples:
  python jobs/pipeline.py --config configs/pipeline/demo.yaml
  python jobs/pipeline.py --config configs/pipeline/demo.yaml start_from=ner      # reuse the recorded corpus,
                                                                                  # tokenizer and pretrained model
  python jobs/pipeline.py --config configs/pipeline/demo.yaml stop_after=pretrain
  ray job submit --working-dir . --runtime-env configs/ray/runtime-env.yaml -- \\
      python jobs/pipeline.py --config configs/pipeline/demo.yaml
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from galeno.runtime import setup_logging

    setup_logging()
    cfg = parse_cli(PipelineConfig, argv, prog="pipeline.py", description=USAGE)
    try:
        report = run(cfg)
    except (ConfigError, RuntimeError) as err:
        sys.exit(f"pipeline.py: error: {err}")
    print("\nstage      seconds  status")
    for stage, done in report["stages"].items():
        print(f"{stage:<10} {done['seconds']:>7.0f}  {done['status']}{'  ' + done['output'] if 'output' in done else ''}")
    print(f"pipeline: {report['seconds']:.0f} s; full logs of every stage in {report['logs']}")
    return report
