"""Typed schemas of every run configuration.

A YAML file or ``key=value`` override with a key that is not declared here, or a value of the wrong
type, is an error naming the key (omegaconf's structured-config checks); :func:`validate` adds the
range and choice checks.  Defaults are the ImageNet classification recipe of both papers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Union


@dataclass
class PathsConfig:
    data: str = "${oc.env:IBNNET_DATA,data}"   # root of the dataset folders
    runs: str = "${oc.env:IBNNET_RUNS,runs}"   # root of the run folders
    results: str = "${oc.env:IBNNET_RESULTS,results}"   # rendered tables and plots


@dataclass
class ModelConfig:
    name: str = "resnet50_ibn_a"                 # a registered model (`ibnnet weights list`)
    # Overrides of the named model's defaults; None keeps them.
    ibn: Optional[str] = None                    # none | a | b | c | d | ad | a2
    in_ratio: Optional[Union[float, str]] = None  # [0, 1] or "full" (every norm is IN)
    ibn_groups: Optional[List[int]] = None       # residual groups with IN, e.g. [1, 2, 3]
    norm: Optional[str] = None                   # bn | syncbn | gn | in | ln | sn | ghost_bn
    layers: Optional[List[int]] = None           # ResNets: blocks per residual group (ResNet-18: [2, 2, 2, 2])
    channels: Optional[List[int]] = None         # ResNets: the four groups' widths ([64, 128, 256, 512]; stem: 64)
    gn_groups: int = 32
    ghost_batch_size: int = 0                    # ghost_bn / sn: statistics over sub-batches of this size
    sn_momentum: float = 0.1                     # PyTorch convention (official 0.9 = 0.1 here)
    sn_using_bn: bool = True
    sn_using_moving_average: bool = True         # False: batch-average inference (trainer.batch_average_batches)
    zero_init_last: Optional[bool] = None
    drop_rate: Optional[float] = None
    pretrained: bool = False                     # the named model's official weights
    # Or weights from a file in any supported format, or "run:<experiment>/<cell>[:best][@scale]" for the last
    # checkpoint of another experiment's finished cell (e.g. fine-tuning GTA5-trained models, IBN Table 8); a run id
    # (<cell>-<hash>) instead of the cell picks one run when the cell has several (tasks/common.py).
    pretrained_file: Optional[str] = None
    channels_last: bool = False


@dataclass
class DatasetSpec:
    """One dataset split; ``name`` labels its metrics (``val/<name>/top1_err``)."""
    name: str = ""
    dataset: str = "builtin_cls"       # a name in ibnnet/data/registry.py DATASETS
    root: Optional[str] = None
    # image_folder: a split folder (e.g. ${paths.data}/imagenet/val) whose class-folder names define the
    # labels, so a styled copy missing some classes keeps the real val's label of every other class.
    classes_root: Optional[str] = None
    split: str = "train"
    domain: str = "synthetic"          # builtin datasets: synthetic | real
    num_samples: int = 0               # builtin datasets: images (0 = the dataset's default)
    fraction: float = 1.0              # keep this fraction of the split (seeded), e.g. GTA5's quarter
    appearance: str = "none"           # none | rgb+50 | r+50 | std1.5 (IBN Table 1)
    resize: Optional[List[int]] = None  # [W, H] applied before augmentation (GTA5: [1024, 563])
    seed: int = 0
    optional: bool = False             # evaluation sets: skip with a warning when the folder is missing
    # mapillary: RobustNet's evaluation geometry (height resized to it, centre square crop); None = 1536 for val, 0 = off
    eval_size: Optional[int] = None
    # imagenet_c: the corruptions and severities read, one evaluation set each, named <name>/<corruption>/<severity>,
    # plus <name> itself holding mCE etc. (ibnnet/data/datasets/robustness.py); None = the benchmark's 15 x 5
    corruptions: Optional[List[str]] = None
    severities: Optional[List[int]] = None
    scales: List[float] = field(default_factory=lambda: [1.0])  # segmentation eval: multi-scale testing
    flip: bool = False                 # segmentation eval: also average the mirrored prediction
    # segmentation eval, instead of `scales`: the image resized to s x s for each s, the class probabilities
    # upsampled (bilinear) to the label's size and averaged; the label is never resized (SN appendix E, ADE20K:
    # training images resized to 450 x 450, "multi-scale testing with input_size = {300, 400, 500, 600}")
    sizes: Optional[List[int]] = None


@dataclass
class AugmentConfig:
    # classification
    image_size: int = 224              # train crop (RandomResizedCrop) and eval crop
    eval_resize: int = 256             # eval: resize shorter side, then centre crop image_size
    # segmentation
    crop_size: List[int] = field(default_factory=lambda: [512, 1024])   # [H, W]
    scale_range: List[float] = field(default_factory=lambda: [0.5, 2.0])
    aspect_range: List[float] = field(default_factory=lambda: [0.8, 1.25])
    hflip: bool = True
    # classification training: AlexNet-style PCA lighting noise of this std (0.1 in the official SN code), 0 = off
    pca_lighting: float = 0.0


@dataclass
class DataConfig:
    train: DatasetSpec = field(default_factory=DatasetSpec)
    val: List[DatasetSpec] = field(default_factory=list)
    num_classes: int = 0               # 0 = the training dataset's own
    class_subset: int = 0              # ImageNet-style sets (train and eval): keep the first K classes (0 = all)
    # GTA5 without split.mat / lists: false (default) stops with an error saying where to get the split;
    # true uses every frame for every split (ad-hoc only: train and test overlap).
    gta5_allow_no_split: bool = False
    batch_size: int = 32               # per device (GPU / process)
    eval_batch_size: int = 0           # 0 = batch_size
    num_workers: int = 4
    # ImageNet train: read <root>-<N> made by `ibnnet data shrink imagenet` (short side N) when complete (0 = off)
    shrunk_short_side: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimConfig:
    name: str = "sgd"                  # sgd (both papers) | adamw (quick CPU runs on the built-in data)
    lr: Optional[float] = None         # absolute lr; None: base_lr * total_batch / base_batch
    base_lr: float = 0.1
    base_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_weight_decay_norm_bias: bool = False   # exempt norm weights, biases and SN control parameters
    schedule: str = "step"             # step | cosine | poly | constant
    milestones: List[float] = field(default_factory=lambda: [30.0, 60.0, 90.0])   # epochs
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    poly_power: float = 0.9
    backbone_lr_mult: float = 1.0      # segmentation: lr multiplier of the pretrained backbone


@dataclass
class SegmentationConfig:
    head: str = "fcn"                  # fcn (the authors': classifier on the backbone, bilinear up) | aspp | deeplabv2
    aux_weight: float = 0.0            # > 0: PSPNet auxiliary head on layer3, loss main + aux_weight * aux (SN: 0.4)
    output_stride: int = 8
    eval_mode: str = "whole"           # whole | slide
    slide_crop: List[int] = field(default_factory=lambda: [512, 1024])
    slide_stride: List[int] = field(default_factory=lambda: [341, 683])
    ignore_index: int = 255
    # false: validations during training are single-scale without flip; the eval sets' scales/flip are used
    # in the final evaluation only (multi-scale + flip costs 2 x len(scales) forward passes per image)
    multiscale_during_training: bool = False


@dataclass
class TrainerConfig:
    max_epochs: int = 100
    max_steps: int = -1
    limit_train_batches: Optional[Union[int, float]] = None
    limit_val_batches: Optional[Union[int, float]] = None
    accelerator: str = "auto"
    devices: Union[int, str] = 1
    # Run the devices x data.batch_size batch on fewer processes (per node) with BN/SN statistics still
    # over data.batch_size images (ghost batches): the SN paper's (8 GPUs, 2/GPU) on 1 GPU. 0 = devices.
    physical_devices: int = 0
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"         # 32-true | bf16-mixed (GPUs of compute capability >= 8.0) | 16-mixed
    compile: bool = False
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 50
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    deterministic: bool = False
    seed: int = 0
    # CPU threads of the training process (torch.set_num_threads); 0 = PyTorch's default (the cores this
    # process may use). Float sums depend on it: fix it to get bit-identical results across machines.
    num_threads: int = 0
    float32_matmul_precision: str = "high"   # on CUDA: highest | high (TF32) | medium; CPU runs are full fp32
    log_sample_indices: bool = False   # logs/samples-rank<r>.jsonl: the sample indices of every trained batch
    enable_progress_bar: bool = True
    # The metric of the first evaluation set whose best epoch is `best` (best.ckpt, metrics.json's best record).
    # None: top1_err (classification), miou (segmentation). The IBN ImageNet tables set top5_err, as the official
    # IBN-Net imagenet.py keeps model_best by its top-5 accuracy.
    best_metric: Optional[str] = None
    # SN batch-average inference: re-estimate the BN statistics from K training batches for the final
    # evaluation. None: 200 (the official SN code's ITER_COMPUTE_BATCH_AVEARGE) for a trained SN model with a
    # BN branch, else 0 (ibnnet/config/validate.py fill_defaults). An experiment cell turns it off for such a
    # model only with a stated reason (`moving_average_inference` in the experiment file).
    batch_average_batches: Optional[int] = None
    batch_average_every_eval: bool = False  # also before every validation (SN Fig. 5's curve), not only at the end


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "ibnnet"
    entity: Optional[str] = None
    mode: str = "auto"                 # auto (online with an API key, else offline) | online | offline | disabled
    tags: List[str] = field(default_factory=list)
    # A finished run's checkpoints in wandb: none, or reference (an artifact that points at the files in the run
    # folder, file:// URIs with their checksums: no copy of gigabytes is uploaded).
    checkpoints: str = "none"


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: bool = True


@dataclass
class SlurmConfig:
    """SLURM resources of one run. Nodes and tasks per node are trainer.num_nodes and trainer.devices."""
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    # --gpus-per-node. None: one GPU per process (trainer.physical_devices or devices) unless the run is on
    # trainer.accelerator=cpu; 0: CPU tasks (gloo); a number must equal the processes per node.
    gpus_per_node: Optional[int] = None
    cpus_per_task: int = 4
    mem: Optional[str] = None          # per node, e.g. "64G"
    time: str = "24:00:00"
    constraint: Optional[str] = None
    array_parallelism: int = 0         # the `%N` throttle of the job array (0 = unlimited)
    extra_sbatch: List[str] = field(default_factory=list)   # verbatim sbatch options, e.g. "--exclusive"
    setup: str = ""                    # shell lines run before training (modules, env activation)
    python: Optional[str] = None       # interpreter on the compute nodes (default: the one submitting)
    signal_seconds: int = 120          # SIGUSR1 this long before the time limit (>= checkpoint time + 30 s)
    max_requeues: int = 5              # time-limit requeues tolerated per run


@dataclass
class LauncherConfig:
    name: str = "local"                # local | slurm
    # A run holds a claim on its folder while it trains (any launcher), rewritten every heartbeat_s; a claim
    # seen unchanged for claim_timeout_s (by the reader's clock), or whose process is provably gone, is taken
    # over by another worker (ibnnet/runs/claims.py). 10 s: `ibnnet run` on a held folder knows within 10 s.
    heartbeat_s: float = 10.0
    claim_timeout_s: float = 300.0
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass
class RunConfig:
    task: str = "classification"       # classification | segmentation
    experiment: str = "default"
    scale: str = ""                    # the experiment scale this run belongs to (set by sweeps)
    run_name: str = ""                 # readable part of the run id (set by sweeps)
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    grid: Any = None                   # axis label of each grid axis, set by sweeps (for tags and tables)
