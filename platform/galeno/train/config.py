"""Config groups of the training loop, shared by pretraining and NER fine-tuning.

``ModelConfig``, ``OptimConfig`` and ``TrainerConfig`` are the same objects for every task;
``PretrainConfig`` composes them with the MLM data group. Derived values (gradient
accumulation, precision on this device, padded vocabulary) are methods, so the arithmetic
lives in one tested place (STYLE.md §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from galeno import paths
from galeno.runtime import RayConfig
from galeno.tracking import TrackingConfig

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
SCHEDULES = ("linear", "polynomial", "constant")
PACK_MODES = ("doc_sentences", "full_sentences")
LAUNCHERS = ("ray", "local")


@dataclass
class ModelConfig:
    """A RoBERTa encoder. Defaults are RoBERTa-base (Liu et al. 2019; fairseq ``roberta_base``)."""

    hidden_size: int = 768
    """Width of every layer."""
    num_layers: int = 12
    """Transformer layers."""
    num_heads: int = 12
    """Attention heads (hidden_size must divide by it)."""
    intermediate_size: int = 3072
    """Width of the feed-forward block."""
    max_position_embeddings: int = 514
    """Learned positions: sequence length + 2 (RoBERTa offsets positions by the padding id)."""
    dropout: float = 0.1
    """Dropout on hidden states and attention probabilities."""
    vocab_multiple: int = 64
    """Pad the embedding matrix to a multiple of this (tensor-core friendly); export trims it back."""
    attention: str = "sdpa"
    """Attention kernel: ``sdpa`` (PyTorch scaled_dot_product_attention; memory-efficient kernel on V100) or ``eager``."""
    init_from: str = ""
    """Continual pretraining: a Hugging Face masked-LM or encoder checkpoint (a folder, a pretraining output folder
    or a ``models:/`` URI) to start from, with its own tokenizer; the architecture fields above are then read from
    it. An encoder without an MLM head (a BERT saved as ``BertModel``) gets a fresh, seeded head. Empty: random
    weights of the architecture above."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.hidden_size {self.hidden_size} must divide by num_heads {self.num_heads}")
        if self.attention not in ("sdpa", "eager"):
            raise ValueError("model.attention must be sdpa or eager")
        if self.vocab_multiple < 1:
            raise ValueError("model.vocab_multiple must be >= 1")

    def padded_vocab(self, tokenizer_size: int) -> int:
        return int(math.ceil(tokenizer_size / self.vocab_multiple) * self.vocab_multiple)


@dataclass
class OptimConfig:
    """Adam(W) with warmup then decay; defaults are RoBERTa's pretraining recipe."""

    lr: float = 5e-4
    """Peak learning rate, reached at the end of warmup."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam betas."""
    eps: float = 1e-6
    """Adam epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay (not applied to biases and LayerNorm weights)."""
    warmup_steps: int = 10_000
    """Linear warmup from 0 to ``lr`` over this many optimizer steps."""
    schedule: str = "polynomial"
    """Decay after warmup: linear, polynomial (power 1 = fairseq's polynomial_decay) or constant."""
    power: float = 1.0
    """Power of the polynomial decay."""
    end_lr: float = 0.0
    """Learning rate at the last step."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this (0: off, as in RoBERTa)."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError("optim.betas must be two numbers in [0, 1)")
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("optim.lr must be > 0, warmup_steps and grad_clip >= 0")


@dataclass
class TrainerConfig:
    """How the loop runs: batch arithmetic, precision, DeepSpeed, checkpoints, workers."""

    max_steps: int = 125_000
    """Optimizer steps (updates) of the whole run."""
    global_batch: int = 2048
    """Sequences per optimizer step, over all workers and accumulation steps."""
    micro_batch: int = 32
    """Sequences per worker per forward pass; accumulation = global / (micro × workers)."""
    num_workers: int = 1
    """Ray Train workers (one per GPU, or per CPU slot on a CPU machine)."""
    use_gpu: bool = False
    """Give each worker one GPU."""
    cpus_per_worker: float = 1.0
    """Ray CPUs reserved by each worker (torch threads on CPU: this, rounded, at least 1). Leave CPUs free for Ray Data's reads: with 2 workers on a 2-CPU Ray, use 0.5."""
    precision: str = "auto"
    """auto (bf16 on Ampere or newer, fp16 with dynamic loss scaling on V100, fp32 on CPU), fp32, fp16 or bf16."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage (0-3); 1-2 shard optimizer state (and gradients) across workers."""
    deepspeed: bool = True
    """Wrap the model in a DeepSpeed engine; off: plain PyTorch (DDP under Ray when workers > 1)."""
    log_every: int = 10
    """Log a progress line every N steps (rank 0 writes every step to metrics.jsonl and MLflow; Ray
    Train gets the evaluations and checkpoints)."""
    eval_every: int = 1000
    """Validation every N steps (and at the end); 0: only at the end."""
    eval_batches: int = 50
    """Cap on validation micro-batches per worker (0: the whole split)."""
    checkpoint_every: int = 1000
    """Checkpoint every N steps (and at the end); each rank writes its DeepSpeed shards."""
    keep_checkpoints: int = 2
    """Checkpoints kept by Ray Train (oldest deleted)."""
    max_failures: int = 3
    """Worker failures Ray Train recovers from (restarting from the latest checkpoint); -1: unlimited."""
    seed: int = 1234
    """Seeds model init, data order and dynamic masking."""
    launcher: str = "ray"
    """ray (Ray Train TorchTrainer) or local (this process, world size 1, no Ray)."""
    storage_path: str = ""
    """Ray Train storage shared by all nodes (local dir, s3://, NFS); default: <output>/ray."""
    peak_tflops: float = 0.0
    """Peak TFLOP/s per device for MFU; 0: from the GPU model, or a matmul probe on CPU."""
    early_stopping_patience: int = 0
    """Stop when the task's target (val_loss, dev_f1) has not improved for this many evaluations (0: off)."""
    kill_at_step: int = 0
    """Fault drill: rank 1 (or 0 alone) kills its own process once at this step (0: off); proves resume."""
    resume: str = "auto"
    """A rerun with checkpoints in its folder: auto resumes only when they were written by the same config,
    data and training code (else moves them aside and starts afresh); always: resume anyway; never: start afresh."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {PRECISIONS}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"trainer.launcher must be one of {LAUNCHERS}")
        if self.resume not in ("auto", "always", "never"):
            raise ValueError("trainer.resume must be auto, always or never")
        if not 0 <= self.zero_stage <= 3:
            raise ValueError("trainer.zero_stage must be 0-3")
        if self.early_stopping_patience < 0:
            raise ValueError("trainer.early_stopping_patience must be >= 0")
        if min(self.max_steps, self.global_batch, self.micro_batch, self.num_workers) < 1 or self.cpus_per_worker <= 0:
            raise ValueError("trainer steps, batches and workers must be >= 1, cpus_per_worker > 0")
        self.grad_accum(self.num_workers)  # fail at load time, not on the cluster

    def grad_accum(self, world_size: int) -> int:
        """Accumulation steps so that micro batch × accumulation × workers == global batch."""
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step:
            raise ValueError(
                f"trainer.global_batch {self.global_batch} is not a multiple of micro_batch "
                f"{self.micro_batch} × {world_size} workers = {per_step}")
        return self.global_batch // per_step


@dataclass
class MLMDataConfig:
    """What the MLM task reads: the corpus job's output, a tokenizer, and how sequences are packed."""

    corpus: str = ""
    """Output folder of the corpus job (``--corpus DIR``; jobs/pipeline.py passes it): the documents its outputs.json names."""
    tokenizer: str = ""
    """Output folder of jobs/train_tokenizer.py (``--tokenizer DIR``; jobs/pipeline.py passes it), or any
    RoBERTa-style tokenizer or model folder, or a ``models:/`` URI."""
    seq_len: int = 512
    """Tokens per packed sequence, <s> and </s> included."""
    pack_mode: str = "doc_sentences"
    """doc_sentences: sequences never cross a document; full_sentences: documents are concatenated with </s> between them (RoBERTa FULL-SENTENCES)."""
    val_fraction: float = 0.01
    """Documents held out for validation loss, chosen by a stable hash of the document key."""
    mlm_probability: float = 0.15
    """Share of tokens selected for prediction; of those 80% become <mask>, 10% random, 10% kept."""
    pack_batch_docs: int = 256
    """Documents per Ray Data batch when tokenising and packing."""
    in_memory_mb: float = 256.0
    """Packed training data up to this size (on disk) is read once into Ray's object store, and every
    epoch streams from there: on a small corpus, where an epoch is a few steps, re-reading the files
    each epoch cost more than training (3.4 s an epoch, 6.6 of 14.3 min in a 1,500-step demo run).
    Larger data is streamed from its files every epoch. 0: always stream."""

    def __post_init__(self) -> None:
        if self.pack_mode not in PACK_MODES:
            raise ValueError(f"data.pack_mode must be one of {PACK_MODES}")
        if self.seq_len < 8:
            raise ValueError("data.seq_len must be >= 8")
        if not 0 <= self.val_fraction < 1 or not 0 < self.mlm_probability < 1:
            raise ValueError("data.val_fraction must be in [0, 1) and mlm_probability in (0, 1)")


@dataclass
class PretrainConfig:
    """Masked-LM pretraining of a RoBERTa (jobs/pretrain.py)."""

    name: str = "galeno-mlm"
    """Run name: names the Ray Train run (re-submitting the same name resumes it)."""
    output: str = field(default_factory=lambda: paths.default_output("pretrain"))
    """Run folder: packed data, Ray Train storage, metrics.jsonl, the exported model/, summary.json and
    outputs.json (what NER fine-tuning, promotion and Serve read)."""
    data: MLMDataConfig = field(default_factory=MLMDataConfig)
    """Corpus, tokenizer and packing."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Loop, batch arithmetic, DeepSpeed, checkpoints and workers."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray cluster to join or start."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow run of the job and registration of the model as galeno-mlm (docs/mlflow.md)."""

    def __post_init__(self) -> None:
        if not self.model.init_from and self.model.max_position_embeddings < self.data.seq_len + 2:
            raise ValueError(
                f"model.max_position_embeddings {self.model.max_position_embeddings} < data.seq_len "
                f"{self.data.seq_len} + 2 (RoBERTa positions start after the padding id)")
        if not self.name or "/" in self.name:
            raise ValueError("name must be non-empty and contain no '/'")
