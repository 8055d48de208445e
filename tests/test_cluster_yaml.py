"""cluster.yaml passes Ray's own cluster-launcher validation and keeps the 16 × V100 invariants.

Offline and fast: `ray up` merges the provider defaults (`prepare_config`), asks AWS for the
resources of each instance type, then checks the result against ray/autoscaler/ray-schema.json
plus its own rules (`validate_config`). Both Ray functions run here as `ray up` runs them; the
AWS step (boto3 and credentials) is left out, and cluster.yaml states each node type's resources,
so that step would only add memory and accelerator-type entries, and the GPU count is checked
here. Key pair, subnets, security groups and the AMI are resolved after validation, against AWS.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
jsonschema = pytest.importorskip("jsonschema")
from ray.autoscaler._private import util as ray_autoscaler_util  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"

TOTAL_GPUS = 16  # the published recipe: 16 × V100 16 GB (bsc-bio-ehr-es model card)
GPUS_PER_INSTANCE = {"p3.16xlarge": 8}  # AWS: 8 × V100-SXM2 16 GB
NEWEST_VOLTA_CUDA = (12, 6)  # CUDA 13 dropped sm_70; PyTorch's 12.8 wheels dropped it from 2.11
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def ray_check(config: dict) -> dict:
    """What `ray up` does to a config before it talks to AWS: merge defaults, then validate."""
    prepared = ray_autoscaler_util.prepare_config(copy.deepcopy(config))
    ray_autoscaler_util.validate_config(prepared)
    return prepared


def cuda_version(tag: str) -> tuple[int, int]:
    """`cu126` -> (12, 6), `cu118` -> (11, 8), as Ray image tags and PyTorch indexes spell them."""
    digits = re.fullmatch(r"cu(\d{3})", tag)
    assert digits, f"not a CUDA tag: {tag}"
    return int(digits[1][:2]), int(digits[1][2:])


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def config(raw) -> dict:
    return copy.deepcopy(raw)


def gpu_node_types(cfg: dict) -> dict:
    return {name: t for name, t in cfg["available_node_types"].items()
            if t.get("resources", {}).get("GPU", 0) > 0}


def test_ray_accepts_the_file(raw):
    ray_autoscaler_util.validate_config(copy.deepcopy(raw))  # complete as written, before defaults
    prepared = ray_check(raw)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_no_command_list_comes_from_rays_defaults(raw):
    # Missing top-level keys are filled from ray/autoscaler/aws/defaults.yaml, whose
    # setup_commands install a Ray nightly wheel.
    assert [k for k in COMMAND_KEYS if k not in raw] == []
    merged = ray_check(raw)["worker_setup_commands"]
    assert merged == raw["setup_commands"] + raw["worker_setup_commands"]


def test_gpu_workers_add_up_to_16_v100(raw):
    gpu_types = gpu_node_types(raw)
    assert gpu_types, "no worker type offers GPUs"
    for name, node_type in gpu_types.items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in GPUS_PER_INSTANCE, f"{name}: {instance} is no known 8 × V100 instance"
        assert node_type["resources"]["GPU"] == GPUS_PER_INSTANCE[instance], name
        # Training needs all ranks at once: the autoscaler must neither add nor remove GPU nodes.
        assert node_type["min_workers"] == node_type["max_workers"], name
    assert sum(t["min_workers"] * t["resources"]["GPU"] for t in gpu_types.values()) == TOTAL_GPUS
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and raw["head_node_type"] not in gpu_types


def test_image_is_a_volta_capable_cuda_build_of_this_ray(raw):
    image = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py\d+-(cu\d+)", raw["docker"]["image"])
    assert image, raw["docker"]["image"]
    # `ray up` wants the same Ray locally as in the image: docs/cluster.md pins the client to it.
    docs = (REPO / "docs" / "cluster.md").read_text()
    client = re.search(r'pip install "ray\[default\]==([\d.]+)"', docs)
    assert client and client[1] == image[1], "docs/cluster.md installs another Ray than the image's"
    assert cuda_version(image[2]) <= NEWEST_VOLTA_CUDA


def test_torch_is_a_cuda_126_or_older_build_installed_before_the_project(raw):
    commands = raw["setup_commands"]
    torch_at = [i for i, c in enumerate(commands) if re.search(r"pip install .*\btorch==", c)]
    assert len(torch_at) == 1, commands
    torch_cmd = commands[torch_at[0]]
    index = re.search(r"--index-url https://download\.pytorch\.org/whl/(cu\d+)\b", torch_cmd)
    assert index, f"torch must come from a CUDA index, not PyPI's default build: {torch_cmd}"
    assert cuda_version(index[1]) <= NEWEST_VOLTA_CUDA
    # The cluster runs the torch version the tests run (`make install`).
    makefile = re.search(r"^TORCH_VERSION \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert makefile and re.search(r"\btorch==([\w.]+)", torch_cmd)[1] == makefile[1]
    project_at = [i for i, c in enumerate(commands) if re.search(r"pip install .*-e ", c)]
    # torch first: installed after the project, pip would take PyPI's CUDA 13 build.
    assert project_at and torch_at[0] < project_at[0]


def test_project_is_installed_with_the_train_extra(raw):
    installs = [c for c in raw["setup_commands"] if re.search(r"pip install .*-e ", c)]
    assert len(installs) == 1, raw["setup_commands"]
    extras = re.search(r"\.\[([\w,]+)\]", installs[0])
    # every extra a job imports: tracking is on by default, so a job without MLflow stops at its first line
    import tomllib

    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert extras and set(extras[1].split(",")) == declared - {"dev", "all"}, extras
    synced = raw["file_mounts"]
    assert re.search(r"cd (\S+) &&", installs[0])[1] in synced, "installs from the synced tree"


def test_head_takes_ray_job_submit(raw):
    head_start = [c for c in raw["head_start_ray_commands"] if "ray start --head" in c]
    assert len(head_start) == 1
    assert "--dashboard-host=0.0.0.0" in head_start[0].split()
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start[0].split()
    assert any("--address=$RAY_HEAD_IP:6379" in c for c in raw["worker_start_ray_commands"])


def test_shared_storage_is_mounted_in_every_container(raw):
    assert "-v /mnt/shared:/mnt/shared" in raw["docker"]["run_options"]
    assert any("/mnt/shared" in c for c in raw["initialization_commands"])


def _rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


MUTATIONS = {
    "typo in a top-level key": (
        lambda c: _rename(c, "idle_timeout_minutes", "idle_timout_minutes"),
        jsonschema.ValidationError, "idle_timout_minutes"),
    "string where Ray wants an integer": (
        lambda c: c.update(max_workers="2"), jsonschema.ValidationError, "'2'"),
    "typo in a node type": (
        lambda c: _rename(c["available_node_types"]["gpu_v100x8"], "min_workers", "min_worker"),
        jsonschema.ValidationError, "min_worker"),
    "fractional GPU count": (
        lambda c: c["available_node_types"]["gpu_v100x8"]["resources"].update(GPU=7.5),
        jsonschema.ValidationError, "7.5"),
    "typo in the docker section": (
        lambda c: _rename(c["docker"], "pull_before_run", "pull_before_runn"),
        jsonschema.ValidationError, "pull_before_runn"),
    "global max_workers below the GPU nodes' min_workers": (
        lambda c: c.update(max_workers=1), ValueError, "max_workers"),
}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=list(MUTATIONS))
def test_ray_rejects_a_broken_copy(config, mutation):
    """The validator really runs: each one-line break of the file fails the way `ray up` would."""
    break_it, error, mentions = MUTATIONS[mutation]
    break_it(config)
    with pytest.raises(error, match=re.escape(mentions)):
        ray_check(config)
