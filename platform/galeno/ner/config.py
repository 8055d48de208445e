"""Config of NER fine-tuning (``jobs/finetune_ner.py``): data, recipe, and the shared loop's groups.

The defaults are the ``reproduce`` recipe — the published fine-tuning of bsc-bio-ehr-es
(AdamW, learning rate 5e-5, no warmup, no weight decay, gradient clipping at 1.0, batch 16, 10
epochs, sequences of up to 512 tokens, the label on the first sub-token, the best epoch by dev F1,
one seed).
``configs/ner/best.yaml`` layers the ``best`` recipe over a task preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from galeno import paths
from galeno.runtime import RayConfig
from galeno.tracking import TrackingConfig
from galeno.train.config import OptimConfig, TrainerConfig

INITS = ("pretrained", "random")
#: Dev metrics that can pick the best evaluation (and stop early): F1, or F2 (recall weighs twice as
#: much as precision: de-identification, where a missed name is a leak) or recall alone.
SELECT = ("dev_f1", "dev_f2", "dev_recall")


def _reproduce_optim() -> OptimConfig:
    # gradient clipping at 1.0: the Hugging Face Trainer's default, which the published fine-tuning ran
    # with. Without it one early large gradient inflates Adam's second moment for hundreds of steps:
    # MiniLM on PharmaCoNER, 1 epoch at 1e-4, 0.43 dev F1 unclipped, 0.60 clipped (docs/benchmarks.md).
    return OptimConfig(lr=5e-5, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, warmup_steps=0, schedule="linear",
                       grad_clip=1.0)


def _reproduce_trainer() -> TrainerConfig:
    return TrainerConfig(max_steps=1, global_batch=16, micro_batch=16, deepspeed=False, log_every=10,
                         eval_every=0, eval_batches=0, checkpoint_every=0, keep_checkpoints=1)


@dataclass
class NERDataConfig:
    """Where the annotated text is and how sentences become model inputs."""

    train: str = "../shared/data/pharmaconer/train.conll"
    """Training data: a CoNLL file, a brat folder or glob (NAME.txt + NAME.ann), or i2b2 XML files."""
    dev: str = "../shared/data/pharmaconer/dev.conll"
    """Dev data, same formats: model selection and the reported scores (there is no test split)."""
    extra_dev: list[str] = field(default_factory=list)
    """Further evaluation sets (the same formats), scored with each seed's selected model and reported beside dev;
    never used for selection. ``NAME=PATH`` names one (``dev2=data/dev-set2/cantemist-ner`` reports ``dev2_f1``,
    ``dev2_span_f1``); a bare path is named by its folder or file name."""
    format: str = ""
    """conll, brat or i2b2xml; empty: from the file extensions."""
    max_length: int = 512
    """Sub-tokens per model input, special tokens included; longer sentences are split into overlapping windows."""
    stride: int = 32
    """Words shared by consecutive windows of a long sentence."""
    train_sentences: int = 0
    """Use only the first N training sentences (0: all): a stated slice for slow machines."""
    empty_fraction: float = 1.0
    """Share of the training sentences without any entity that are kept (a fixed, seeded choice; the
    dev set is never thinned). Below 1 the model sees entities more often: faster epochs and higher
    recall, for tasks where a miss costs more than a false alarm (de-identification)."""
    group_by_length: bool = False
    """Batch windows of similar length together (less padding); the batch order stays random."""
    equal_tokens: bool = False
    """With group_by_length: cut each length-sorted chunk into batches of about equal tokens
    (many short windows or few long ones; sorted, they pad about equally too) instead of equal window counts; same number of steps.
    Every step then sees about as many words as a random batch: see docs/ner.md."""
    weight_by_tokens: bool = False
    """Weigh each batch's loss by its labelled tokens against the epoch's mean batch, so that a batch
    of short sentences moves the model less than one of long sentences (every token weighs the same,
    as in randomly mixed batches). Meant with group_by_length: see docs/ner.md."""

    def __post_init__(self) -> None:
        if self.format not in ("", "conll", "brat", "i2b2xml"):
            raise ValueError("data.format must be conll, brat, i2b2xml or empty")
        if self.equal_tokens and not self.group_by_length:
            raise ValueError("data.equal_tokens cuts length-grouped chunks: set data.group_by_length=true too")
        if self.max_length < 8 or self.stride < 0 or self.train_sentences < 0:
            raise ValueError("data.max_length must be >= 8, stride and train_sentences >= 0")
        if not 0 < self.empty_fraction <= 1:
            raise ValueError("data.empty_fraction must be in (0, 1]")
        names = extra_dev_names(self.extra_dev)
        if len(set(names)) != len(names) or "dev" in names:
            raise ValueError(f"data.extra_dev: the sets need distinct names other than dev, got {names}")


def extra_dev_names(sets: list[str]) -> list[str]:
    """What each extra evaluation set is called in the results: its ``NAME=`` or its file or folder name."""
    return [split_extra_dev(entry)[0] for entry in sets]


def split_extra_dev(entry: str) -> tuple[str, str]:
    """``(name, path)`` of one ``data.extra_dev`` entry."""
    import re
    from pathlib import PurePath

    named = re.fullmatch(r"(\w+)=(.+)", entry)
    if named:
        return named.group(1).lower(), named.group(2)
    stem = PurePath(entry.rstrip("/")).stem
    return re.sub(r"\W+", "_", stem).strip("_").lower() or "extra", entry


@dataclass
class SweepConfig:
    """A Ray Tune search over learning rate, batch size and warmup, with ASHA stopping weak trials early."""

    enabled: bool = False
    """Run the sweep instead of the seeds: each trial is one Ray Train fine-tuning (first seed), scored on dev."""
    num_samples: int = 8
    """Trials (configurations drawn from the space below)."""
    lr_min: float = 1e-5
    """Smallest learning rate (drawn log-uniformly between lr_min and lr_max)."""
    lr_max: float = 1e-4
    """Largest learning rate."""
    batch_sizes: list[int] = field(default_factory=lambda: [16, 32])
    """Global batch sizes to choose from (each a multiple of trainer.micro_batch × workers)."""
    warmup_fractions: list[float] = field(default_factory=lambda: [0.0, 0.06, 0.1])
    """Warmup fractions to choose from."""
    grace_evals: int = 2
    """Dev evaluations every trial gets before ASHA may stop it."""
    reduction_factor: int = 3
    """ASHA keeps the best 1/reduction_factor of the trials at each rung."""
    max_concurrent: int = 1
    """Trials at a time (each takes trainer.num_workers × cpus_per_worker CPUs, plus 0.01 CPU for its driver)."""

    def __post_init__(self) -> None:
        if self.num_samples < 1 or not 0 < self.lr_min <= self.lr_max or not self.batch_sizes:
            raise ValueError("sweep: num_samples >= 1, 0 < lr_min <= lr_max and batch_sizes are required")
        if self.grace_evals < 1 or self.reduction_factor < 2 or self.max_concurrent < 1:
            raise ValueError("sweep: grace_evals >= 1, reduction_factor >= 2, max_concurrent >= 1")


@dataclass
class NERConfig:
    """Fine-tune a pretrained encoder for NER (token classification, linear head, BIO tags)."""

    task: str = "pharmaconer"
    """Task name: names the run and the registered model (galeno-ner-<task>)."""
    model: str = ""
    """Pretrained encoder (``--model``; jobs/pipeline.py passes it): a pretraining output folder, a Hugging
    Face directory or a registry URI (models:/galeno-mlm@champion)."""
    init: str = "pretrained"
    """pretrained: the model's weights; random: its architecture, freshly initialised (the no-pretraining baseline)."""
    output: str = field(default_factory=lambda: paths.default_output("ner"))
    """Run folder: encoded data, one folder per seed (checkpoints, best model, dev predictions), results.json
    and outputs.json (what promotion and Serve read)."""
    seeds: list[int] = field(default_factory=lambda: [42])
    """One fine-tuning per seed; the scores are reported as mean ± std and the best dev seed is registered."""
    epochs: float = 10.0
    """Passes over the training windows (a fraction is allowed); evaluation and checkpoint every eval_per_epoch."""
    eval_per_epoch: int = 1
    """Dev evaluations per epoch (the best one is kept)."""
    warmup_fraction: float = 0.0
    """Share of the optimizer steps spent warming up the learning rate (sets optim.warmup_steps)."""
    o_weight: float = 1.0
    """Weight of the O label in the training loss (each entity label weighs 1). Below 1 the model
    tags more readily: higher recall, lower precision (configs/ner/meddocan-deid.yaml)."""
    select: str = "dev_f1"
    """The dev metric that picks the best evaluation and drives early stopping: one of SELECT."""
    data: NERDataConfig = field(default_factory=NERDataConfig)
    """Annotated data and input encoding."""
    optim: OptimConfig = field(default_factory=_reproduce_optim)
    """Optimizer and schedule (warmup_steps is derived from warmup_fraction)."""
    trainer: TrainerConfig = field(default_factory=_reproduce_trainer)
    """Batches, workers, engine; max_steps, eval_every and checkpoint_every are derived from epochs."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray cluster to join or start."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow run of each seed and registration of the best seed's model as galeno-ner-<task>."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Optional hyperparameter search (Ray Tune + ASHA) instead of the seeds."""

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}")
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {SELECT}")
        if not 0 < self.o_weight <= 1:
            raise ValueError("o_weight must be in (0, 1]")
        if not self.seeds or self.epochs <= 0 or self.eval_per_epoch < 1:
            raise ValueError("seeds must be non-empty, epochs > 0 and eval_per_epoch >= 1")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError("warmup_fraction must be in [0, 1)")
        if not self.task or "/" in self.task:
            raise ValueError("task must be non-empty and contain no '/'")
