"""The cluster's shape (infra/k8s/base/cluster-shape.yaml) against everything that restates
it, and every shipped GPU sweep against the cluster it describes.

- the shape itself: the head holds its trial-driver slots (base + slots x driver memory), the
  slots never cap GPU trials, the pods fit their instance types, the spot types have the
  on-demand types' shape;
- the rendered manifests (kubectl kustomize of both overlays) carry the shape's numbers;
- the READMEs: the shape and capacity tables of infra/README.md are the ones computed here,
  and every GPU instance type the READMEs name is one of the shape's;
- every GPU sweep of sweeps/ (base.resources.use_gpu: true), loaded by the project's loader
  (SweepConfig.from_yaml) and placed by its own arithmetic
  (pipeline.training.cluster.trials_that_fit) on the default cluster at its largest: it runs,
  its trial drivers fit the head's slots and memory, and it does not leave most GPUs idle
  while it has the trials to fill them.
Planted errors show each check failing.

Print the tables: python tests/test_infra_capacity.py (or pytest -s on this file).
Run: pytest tests/test_infra_capacity.py -q
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_infra_k8s import (
    CLUSTER_MANIFEST,
    JOB_MANIFEST,
    K8S,
    copy_repo_parts,
    edit,
    kustomize,
    terraform_variable_defaults,
)

from pipeline.sweeping.config import SweepConfig, iter_sweep_files
from pipeline.training.cluster import DRIVER_RESOURCE, trials_that_fit

REPO = Path(__file__).resolve().parents[1]
SHAPE_FILE = Path("infra/k8s/base/cluster-shape.yaml")
SPOT_GROUP_FILE = K8S / "components/gpu-spot/worker-group.yaml"
README = Path("infra/README.md")
READMES = (Path("README.md"), README)
SWEEPS = Path("sweeps")
# A sweep that could fill the cluster must keep at least this share of its GPUs busy.
BUSY_SHARE = 0.5
# (GPUs, vCPUs, GiB) of the instance types the shape or the core group may name (EC2's
# instance type pages); a type missing here fails the shape check until it is added.
INSTANCE_TYPES = {
    "g5.2xlarge": (1, 8, 32),
    "g6.2xlarge": (1, 8, 32),
    "m6i.2xlarge": (0, 8, 32),
}
# What a node keeps from its pods (kubelet, system reservation, DaemonSets).
NODE_RESERVED_CPU = 1
NODE_RESERVED_GIB = 4
GIB = 2**30
_UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": GIB, "Ti": 2**40}


def quantity(value: object) -> float:
    """A Kubernetes quantity as a number: "16Gi" -> bytes, "6" -> 6 (binary suffixes only)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)?", str(value).strip())
    if not m:
        raise ValueError(f"not a quantity this check reads: {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:g} GiB"


def load_shape(root: Path = REPO) -> dict:
    return yaml.safe_load((root / SHAPE_FILE).read_text())["spec"]


# ---------------------------------------------------------------------------------------------
# The cluster the shape describes


def gpu_nodes(shape: dict) -> int:
    """GPU nodes at the most: the on-demand and the spot group full."""
    return shape["gpu_max_nodes"] + shape["gpu_spot_max_nodes"]


def total_gpus(shape: dict) -> int:
    return gpu_nodes(shape) * shape["gpu_per_node"]


def cluster_nodes(shape: dict) -> list[dict[str, float]]:
    """The default cluster at its largest, as `pipeline.training.cluster.cluster_nodes()` sees a
    KubeRay cluster (Ray resource names; memory in bytes): the head, which gives Ray no CPUs
    and offers the trial_driver slots, and every GPU pod the worker groups may start."""
    head = {
        "CPU": 0.0,
        DRIVER_RESOURCE: float(shape["trial_driver_slots"]),
        "memory": quantity(shape["head_memory"]),
    }
    pod = {
        "CPU": float(shape["gpu_pod_cpu"]),
        "GPU": float(shape["gpu_per_node"]),
        "memory": quantity(shape["gpu_pod_memory"]),
    }
    return [head] + [dict(pod) for _ in range(gpu_nodes(shape))]


def head_memory_errors(shape: dict) -> list[str]:
    """The head holds Ray, the sweep's driver and a full set of trial drivers; the slots are
    never what keeps GPU trials waiting (a multi-worker GPU trial takes at least 2 GPUs)."""
    errors = []
    base, per_slot = quantity(shape["head_base_memory"]), quantity(shape["trial_driver_memory"])
    slots = shape["trial_driver_slots"]
    need = base + slots * per_slot
    if need > quantity(shape["head_memory"]):
        errors.append(
            f"{SHAPE_FILE}: head_memory {shape['head_memory']} < head_base_memory "
            f"{shape['head_base_memory']} + trial_driver_slots {slots} x trial_driver_memory "
            f"{shape['trial_driver_memory']} = {gib(need)}"
        )
    if slots < total_gpus(shape) // 2:
        errors.append(
            f"{SHAPE_FILE}: trial_driver_slots {slots} < {total_gpus(shape)} GPUs / 2: "
            "multi-worker GPU trials would wait for a driver slot while GPUs idle"
        )
    return errors


def fit_errors(
    what: str, cpu: float, mem_gib: float, types: list[str], gpus: int | None
) -> list[str]:
    """A pod of `cpu` and `mem_gib` fits a node of each of `types`, which have `gpus` GPUs."""
    errors = []
    for t in types:
        if t not in INSTANCE_TYPES:
            errors.append(
                f"{what}: instance type {t} unknown here: add its shape to INSTANCE_TYPES"
            )
            continue
        n_gpu, n_cpu, n_gib = INSTANCE_TYPES[t]
        if gpus is not None and n_gpu != gpus:
            errors.append(f"{what}: {t} has {n_gpu} GPU(s), gpu_per_node says {gpus}")
        if cpu > n_cpu - NODE_RESERVED_CPU or mem_gib > n_gib - NODE_RESERVED_GIB:
            errors.append(
                f"{what}: a pod of {cpu:g} CPUs and {mem_gib:g} GiB does not fit {t} "
                f"({n_cpu} vCPUs, {n_gib} GiB, {NODE_RESERVED_CPU} vCPU and "
                f"{NODE_RESERVED_GIB} GiB kept by the node)"
            )
    return errors


def node_fit_errors(shape: dict, core_types: list[str]) -> list[str]:
    """GPU pods fit the GPU instance types (spot ones of the same shape); the head fits the
    core group's instance types (Terraform's core_instance_types)."""
    pod = (float(shape["gpu_pod_cpu"]), quantity(shape["gpu_pod_memory"]) / GIB)
    errors = fit_errors("GPU pod", *pod, shape["gpu_instance_types"], shape["gpu_per_node"])
    errors += fit_errors(
        "spot GPU pod", *pod, shape["gpu_spot_instance_types"], shape["gpu_per_node"]
    )
    head = (float(shape["head_cpu"]), quantity(shape["head_memory"]) / GIB)
    errors += fit_errors("Ray head", *head, core_types, None)
    shapes = {INSTANCE_TYPES.get(t) for t in shape["gpu_instance_types"]}
    for t in shape["gpu_spot_instance_types"]:
        if INSTANCE_TYPES.get(t) not in shapes:
            errors.append(f"{SHAPE_FILE}: spot type {t} is not of the on-demand types' shape")
    return errors


def core_instance_types(root: Path = REPO) -> list[str]:
    """Terraform's default core_instance_types (python-hcl2 unwraps a one-element list)."""
    types = terraform_variable_defaults(root / "infra/terraform/aws")["core_instance_types"]
    return [types] if isinstance(types, str) else list(types)


def test_the_shape_is_consistent():
    shape = load_shape()
    errors = head_memory_errors(shape) + node_fit_errors(shape, core_instance_types())
    print(f"{SHAPE_FILE}: {gpu_nodes(shape)} GPU nodes, {total_gpus(shape)} GPUs, {errors}")
    assert errors == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("head_memory", "12Gi", "head_memory 12Gi < head_base_memory"),
        ("gpu_max_nodes", 12, "trial_driver_slots 4 < 12 GPUs / 2"),
        ("gpu_pod_memory", "30Gi", "does not fit g5.2xlarge"),
        ("gpu_per_node", 4, "g5.2xlarge has 1 GPU(s), gpu_per_node says 4"),
        ("gpu_spot_instance_types", ["g5.2xlarge", "g4dn.2xlarge"], "g4dn.2xlarge unknown"),
        ("head_cpu", 8, "does not fit m6i.2xlarge"),
    ],
    ids=["head-memory", "driver-slots", "pod-memory", "gpus", "spot-type", "head-cpu"],
)
def test_shape_check_catches_planted_error(key, value, expected):
    shape = {**load_shape(), key: value}
    errors = head_memory_errors(shape) + node_fit_errors(shape, core_instance_types())
    print(f"shape planted {key}={value!r}: {errors}")
    assert any(expected in e for e in errors)


# ---------------------------------------------------------------------------------------------
# The rendered manifests carry the shape's numbers


def wanted_fields(shape: dict) -> dict[str, tuple[str, object]]:
    """Field of a rendered Ray cluster spec -> (the shape's key, the value it must hold)."""
    want = {
        "headGroupSpec.resources.trial_driver": ("trial_driver_slots", shape["trial_driver_slots"])
    }
    groups = {"gpu": "gpu_max_nodes", "gpu-spot": "gpu_spot_max_nodes"}
    for group, key in groups.items():
        want[f"workerGroupSpecs[{group}].maxReplicas"] = (key, shape[key])
    for kind in ("requests", "limits"):
        head = f"headGroupSpec.containers[ray-head].resources.{kind}"
        want[f"{head}.cpu"] = ("head_cpu", shape["head_cpu"])
        want[f"{head}.memory"] = ("head_memory", shape["head_memory"])
        for group in groups:
            pod = f"workerGroupSpecs[{group}].containers[ray-worker].resources.{kind}"
            want[f"{pod}.cpu"] = ("gpu_pod_cpu", shape["gpu_pod_cpu"])
            want[f"{pod}.memory"] = ("gpu_pod_memory", shape["gpu_pod_memory"])
            want[f"{pod}.nvidia.com/gpu"] = ("gpu_per_node", shape["gpu_per_node"])
    return want


def container_fields(where: str, pod: dict) -> dict[str, object]:
    out = {}
    for c in pod["containers"]:
        for kind, values in c.get("resources", {}).items():
            for name, value in values.items():
                out[f"{where}.containers[{c['name']}].resources.{kind}.{name}"] = value
    return out


def rendered_fields(spec: dict) -> dict[str, object]:
    """The numbers the shape sets, as they are in a rendered Ray cluster spec."""
    head = spec["headGroupSpec"]
    out = {"headGroupSpec.resources.trial_driver": head.get("resources", {}).get(DRIVER_RESOURCE)}
    out |= container_fields("headGroupSpec", head["template"]["spec"])
    for group in spec["workerGroupSpecs"]:
        where = f"workerGroupSpecs[{group['groupName']}]"
        out[f"{where}.maxReplicas"] = group.get("maxReplicas")
        out |= container_fields(where, group["template"]["spec"])
    return out


def manifest_errors(root: Path = REPO) -> list[str]:
    """Every shape number in both rendered overlays equals the shape's; the message names the
    overlay, the manifest the field comes from, the field and both values."""
    shape, errors = load_shape(root), []
    for overlay, manifest in (("cluster", CLUSTER_MANIFEST), ("sweep", JOB_MANIFEST)):
        (ray,) = [d for d in kustomize(root / K8S / overlay) if d["apiVersion"] == "ray.io/v1"]
        got = rendered_fields(ray["spec"].get("rayClusterSpec", ray["spec"]))
        for field, (key, want) in wanted_fields(shape).items():
            value = got.get(field)
            if value is None or quantity(value) != quantity(want):
                source = SPOT_GROUP_FILE if "[gpu-spot]" in field else manifest
                errors.append(
                    f"{source} (overlay {overlay}): {field} = {value!r}, "
                    f"{SHAPE_FILE} {key} = {want!r}"
                )
    return errors


def test_manifests_carry_the_shape():
    errors = manifest_errors()
    print(
        f"rendered overlays against {SHAPE_FILE}: {len(wanted_fields(load_shape()))} fields each, {errors}"
    )
    assert errors == []


@pytest.mark.parametrize(
    ("path", "old", "new", "expected"),
    [
        (
            K8S / "components/cluster-shape/kustomization.yaml",
            "fieldPath: spec.gpu_max_nodes",
            "fieldPath: spec.gpu_per_node",
            "workerGroupSpecs[gpu].maxReplicas = 1, infra/k8s/base/cluster-shape.yaml gpu_max_nodes = 8",
        ),
        (
            K8S / "cluster/kustomization.yaml",
            "  - ../components/gpu-spot       # before cluster-shape and cluster-env, which fill it in\n"
            "  - ../components/cluster-shape\n",
            "  - ../components/cluster-shape\n  - ../components/gpu-spot\n",
            "workerGroupSpecs[gpu-spot].containers[ray-worker].resources.limits.cpu = '0'",
        ),
        (
            K8S / "components/cluster-shape/kustomization.yaml",
            "- spec.headGroupSpec.resources.trial_driver\n",
            "- spec.headGroupSpec.rayStartParams.num-cpus\n",
            "headGroupSpec.resources.trial_driver = '0'",
        ),
    ],
    ids=["wrong-source", "component-order", "slots-not-written"],
)
def test_manifest_check_catches_planted_error(tmp_path, path, old, new, expected):
    copy_repo_parts(tmp_path, str(K8S))
    edit(tmp_path / path, old, new)
    errors = manifest_errors(tmp_path)
    print(f"manifests planted in {path}: {errors}")
    assert any(expected in e for e in errors)


# ---------------------------------------------------------------------------------------------
# Every GPU sweep on the default cluster


@dataclass(frozen=True)
class Capacity:
    """A sweep's peak demand on the default cluster."""

    sweep: str  # file name under sweeps/
    trials: int
    fits: int  # trials of it that fit the cluster at once (trials_that_fit)
    at_once: int  # trials it runs at once: its concurrency or what fits, at most its trials
    gpus_per_trial: float
    gpus_total: int
    slots_used: int  # trial_driver slots: one per running multi-worker trial
    slots_total: int
    head_need: float  # bytes of head memory: base + one driver per used slot
    head_have: float

    @property
    def gpus_used(self) -> float:
        return self.at_once * self.gpus_per_trial


def gpu_sweep_files(root: Path = REPO) -> list[Path]:
    """The sweep files of sweeps/ whose base sets resources.use_gpu: true."""
    return [
        p
        for p in iter_sweep_files(root / SWEEPS)
        if ((yaml.safe_load(p.read_text()) or {}).get("base") or {})
        .get("resources", {})
        .get("use_gpu")
        is True
    ]


@functools.cache
def load_sweep(path: Path) -> SweepConfig:
    return SweepConfig.from_yaml(path)


def capacity(path: Path, shape: dict) -> Capacity:
    """Trials at once = the sweep's concurrency or what fits (as pipeline/sweep.py chooses),
    capped by its trials; each multi-worker trial's driver takes a slot and head memory."""
    sweep = load_sweep(path)
    cfg = sweep.base_config()
    res = cfg.resources
    fits = trials_that_fit(cfg, True, cluster_nodes(shape))
    at_once = min(sweep.concurrency or fits, sweep.num_trials)
    drivers = at_once if res.num_workers > 1 else 0
    return Capacity(
        sweep=path.name,
        trials=sweep.num_trials,
        fits=fits,
        at_once=at_once,
        gpus_per_trial=res.num_workers * res.gpus_per_worker,
        gpus_total=total_gpus(shape),
        slots_used=drivers,
        slots_total=shape["trial_driver_slots"],
        head_need=quantity(shape["head_base_memory"])
        + drivers * quantity(shape["trial_driver_memory"]),
        head_have=quantity(shape["head_memory"]),
    )


def capacity_errors(c: Capacity) -> list[str]:
    where = f"{SWEEPS / c.sweep}"
    errors = []
    if c.fits == 0:
        errors.append(
            f"{where}: not one trial ({c.gpus_per_trial:g} GPUs) fits the default cluster "
            f"({c.gpus_total} GPUs, {SHAPE_FILE})"
        )
    elif c.at_once > c.fits:
        errors.append(f"{where}: concurrency {c.at_once}, but {c.fits} trials fit at once")
    if c.slots_used > c.slots_total:
        errors.append(f"{where}: {c.slots_used} trial drivers, the head has {c.slots_total} slots")
    if c.head_need > c.head_have:
        errors.append(
            f"{where}: {c.slots_used} trial drivers need {gib(c.head_need)} of head memory, "
            f"the head has {gib(c.head_have)}"
        )
    could_fill = c.trials * c.gpus_per_trial >= c.gpus_total
    if c.fits and could_fill and c.gpus_used < BUSY_SHARE * c.gpus_total:
        errors.append(
            f"{where}: {c.gpus_used:g} of {c.gpus_total} GPUs in use ({c.at_once} trials at once), "
            f"although its {c.trials} trials of {c.gpus_per_trial:g} GPUs could fill them"
        )
    return errors


def capacity_rows(root: Path = REPO) -> list[Capacity]:
    shape = load_shape(root)
    return [capacity(p, shape) for p in gpu_sweep_files(root)]


def capacity_table(rows: list[Capacity]) -> str:
    lines = [
        "| GPU sweep | trials | at once | GPUs used / total | driver slots used / total "
        "| head memory needed / available |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in rows:
        lines.append(
            f"| `{c.sweep}` | {c.trials} | {c.at_once} | {c.gpus_used:g} / {c.gpus_total} "
            f"| {c.slots_used} / {c.slots_total} | {gib(c.head_need)} / {gib(c.head_have)} |"
        )
    return "\n".join(lines)


@pytest.mark.parametrize("path", gpu_sweep_files(), ids=lambda p: p.name)
def test_gpu_sweep_fits_the_default_cluster(path):
    c = capacity(path, load_shape())
    errors = capacity_errors(c)
    print(
        f"capacity {c.sweep}: {c.at_once} of {c.trials} at once, {c.gpus_used:g}/{c.gpus_total} GPUs, {errors}"
    )
    assert errors == []


def test_some_sweeps_use_gpus():
    names = {p.name for p in gpu_sweep_files()}
    assert {"sudoku_extreme_ablation.yaml", "maze_hard.yaml"} <= names


def planted_sweep(tmp_path: Path, name: str, old: str, new: str) -> Path:
    path = tmp_path / name
    path.write_text((REPO / SWEEPS / name).read_text())
    edit(path, old, new)
    return path


@pytest.mark.parametrize(
    ("name", "old", "new", "shape_edit", "expected"),
    [
        (
            "sudoku_extreme_ablation.yaml",
            "concurrency: 0 ",
            "concurrency: 2 ",
            {},
            "2 of 8 GPUs in use",
        ),
        (
            "maze_hard.yaml",
            "num_workers: 4 ",
            "num_workers: 16",
            {},
            "not one trial (16 GPUs) fits",
        ),
        (
            "arc1.yaml",
            "concurrency: 0",
            "concurrency: 2",
            {"trial_driver_slots": 1},
            "2 trial drivers, the head has 1 slots",
        ),
        (
            "arc1.yaml",
            "concurrency: 0",
            "concurrency: 0",
            {"head_memory": "8Gi"},
            "need 10 GiB of head memory, the head has 8 GiB",
        ),
        (
            "act_study.yaml",
            "concurrency: 0",
            "concurrency: 20",
            {},
            "concurrency 18, but 16 trials fit",
        ),
    ],
    ids=["idle", "cannot-run", "driver-slots", "head-memory", "over-concurrency"],
)
def test_capacity_check_catches_planted_error(tmp_path, name, old, new, shape_edit, expected):
    path = planted_sweep(tmp_path, name, old, new)
    c = capacity(path, {**load_shape(), **shape_edit})
    errors = capacity_errors(c)
    print(f"capacity planted {name} {new!r} {shape_edit}: {errors}")
    assert any(expected in e for e in errors)


# ---------------------------------------------------------------------------------------------
# What the READMEs state


def shape_table(shape: dict) -> str:
    lines = ["| `cluster-shape.yaml` | default |", "| --- | --- |"]
    for key, value in shape.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        lines.append(f"| `{key}` | {shown} |")
    return "\n".join(lines)


def readme_block(text: str, name: str) -> str | None:
    """The text between <!-- NAME: begin --> and <!-- NAME: end --> lines, else None."""
    m = re.search(rf"<!-- {name}: begin -->\n(.*?)\n<!-- {name}: end -->", text, flags=re.S)
    return m.group(1) if m else None


INSTANCE_TYPE_WORD = re.compile(r"\b(?:g[4-6][a-z]*|p[3-5][a-z]*)\.\d*x?large\b")


def readme_errors(root: Path = REPO) -> list[str]:
    """infra/README.md's shape and capacity tables are the computed ones; the GPU instance
    types the READMEs name are the shape's."""
    shape, errors = load_shape(root), []
    text = (root / README).read_text()
    tables = {"cluster-shape": shape_table(shape), "capacity": capacity_table(capacity_rows(root))}
    for name, table in tables.items():
        block = readme_block(text, name)
        if block != table:
            errors.append(
                f"{README}: the {name} table between <!-- {name}: begin/end --> is\n{block}\n"
                f"and must be (python tests/test_infra_capacity.py prints it)\n{table}"
            )
    known = set(shape["gpu_instance_types"]) | set(shape["gpu_spot_instance_types"])
    for readme in READMES:
        for t in sorted(set(INSTANCE_TYPE_WORD.findall((root / readme).read_text())) - known):
            errors.append(f"{readme} names GPU instance type {t}, {SHAPE_FILE} has {sorted(known)}")
    return errors


def test_readmes_state_the_shape_and_capacity():
    errors = readme_errors()
    print(capacity_table(capacity_rows()))
    assert errors == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("| `gpu_max_nodes` | 8 |", "| `gpu_max_nodes` | 4 |", "the cluster-shape table"),
        ("| `maze_hard.yaml` | 6 | 2 |", "| `maze_hard.yaml` | 6 | 1 |", "the capacity table"),
        ("GPU node, g5.2xlarge", "GPU node, g4dn.xlarge", "names GPU instance type g4dn.xlarge"),
    ],
    ids=["shape-table", "capacity-table", "instance-type"],
)
def test_readme_check_catches_planted_error(tmp_path, old, new, expected):
    copy_repo_parts(tmp_path, "README.md", str(README), str(SHAPE_FILE), str(SWEEPS))
    edit(tmp_path / README, old, new)
    errors = readme_errors(tmp_path)
    print(f"README planted {old!r} -> {new!r}: {[e.splitlines()[0] for e in errors]}")
    assert any(expected in e for e in errors)


if __name__ == "__main__":
    print(shape_table(load_shape()), end="\n\n")
    print(capacity_table(capacity_rows()))
    sys.exit(0)
