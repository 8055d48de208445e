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

import json
import logging
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
    from galeno import handover

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
        for cmd in commands:
            log.info("running %s", " ".join(cmd[1:]))
            codes.append(subprocess.run(cmd).returncode)
        seconds = round(time.time() - t0, 1)
        refused = stage == "promote" and all(c in (0, 2) for c in codes) and 2 in codes
        ok = all(c == 0 for c in codes) or refused
        report["stages"][stage] = {"status": "ok" if not refused else "ok (alias kept: metric not better)",
                                   "seconds": seconds, **({"output": outputs[stage]["output"]} if stage in outputs else {})}
        if not ok:
            raise RuntimeError(f"the {stage} stage failed (exit status {max(codes)}); the stages before it are "
                               f"done: rerun with start_from={stage} once it is fixed")
        if stage in outputs:
            try:
                done[stage] = handover.read(outputs[stage]["output"], outputs[stage]["record"])
            except handover.HandoverError as err:
                raise RuntimeError(f"the {stage} stage ended without its record: {err}") from err
        print(f"=== {stage}: {seconds:.0f} s ===", flush=True)
    report["seconds"] = round(time.time() - t_all, 1)
    return report


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
    print(json.dumps(report["stages"], indent=2))
    print(f"pipeline: {report['seconds']:.0f} s")
    return report
