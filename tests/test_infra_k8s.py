"""Offline checks of infra/k8s, infra/docker and how values flow into them.

Validators, each run on the real tree and shown to catch a planted error in a copy:
- KubeRay CRD schemas (v1.7.0, vendored in infra/schemas/kuberay) with unknown fields rejected, as the API
  server's strict field validation would; skipped with the reason when the schemas are absent;
- kubernetes-validate --strict (Kubernetes 1.32) for the core kinds;
- yamllint (infra/.yamllint.yaml; catches duplicate keys);
- kubectl kustomize for both overlays, when kubectl is installed; the rendered Ray resources, with
  the components' additions (components/gpu-spot: the spot worker group), against the CRD schemas;
- consistency: Ray version (pyproject = manifests = image), the RayJob's sweep file, the RayJob's
  cluster = the standing cluster, cluster.env = Terraform's cluster_env, service accounts and
  namespaces = Terraform's pod identities.

Run: pytest tests/test_infra_k8s.py -q
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import unavailable
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
K8S = Path("infra/k8s")
CLUSTER_MANIFEST = K8S / "cluster" / "ray-cluster.gpu.yaml"
JOB_MANIFEST = K8S / "sweep" / "ray-job.sweep.yaml"
# cluster-shape.yaml is no core kind: a local-config resource that kustomize reads, never applies
CORE_MANIFESTS = sorted(
    p
    for p in (REPO / K8S / "base").glob("*.yaml")
    if p.name not in ("kustomization.yaml", "cluster-shape.yaml")
)
SCHEMAS = REPO / "infra" / "schemas" / "kuberay"  # vendored KubeRay v1.7.0 CRDs (README there)
KUBE_VERSION = "1.32"
KUBECTL = shutil.which("kubectl")
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.load_all(path.read_text(), Loader=YAML_LOADER) if d]


def copy_repo_parts(dst: Path, *parts: str) -> Path:
    """Copy the named repository paths (files or folders) under dst, keeping their layout."""
    for part in parts:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dst / part, ignore=shutil.ignore_patterns(".terraform"))
        elif src.exists():
            (dst / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / part)
    return dst


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"planting failed: {old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


# ---------------------------------------------------------------------------------------------
# KubeRay CRDs, strict


def strict(schema: dict) -> dict:
    """A CRD's openAPIV3Schema made strict, the way the API server's strict field validation is.

    Objects that list properties and neither allow extra ones nor preserve unknown fields get
    additionalProperties: false; `nullable` becomes a null-allowing type; properties that have a
    default are not required (the server fills them in).
    """
    s = {k: v for k, v in schema.items() if k != "nullable"}
    if schema.get("nullable") and "type" in s:
        s["type"] = [s["type"], "null"]
    props = s.get("properties")
    if props is not None:
        s["properties"] = {k: strict(v) for k, v in props.items()}
        if "required" in s:
            s["required"] = [r for r in s["required"] if "default" not in props.get(r, {})]
        if (
            "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")
            and not s.get("x-kubernetes-int-or-string")
        ):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = strict(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = strict(s["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            s[key] = [strict(x) for x in s[key]]
    return s


@functools.cache
def crd_validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    """Loaded once per kind (the CRD files are megabytes of YAML)."""
    if not SCHEMAS.is_dir():
        pytest.fail(f"KubeRay CRD schemas not found at {SCHEMAS}: they are part of the repository")
    path = SCHEMAS / f"ray.io_{kind.lower()}s.yaml"
    if not path.exists():
        raise ValueError(f"no CRD schema for kind {kind!r} in {SCHEMAS}")
    crd = yaml.load(path.read_text(), Loader=YAML_LOADER)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return jsonschema.Draft7Validator(strict(v["schema"]["openAPIV3Schema"]))
    raise ValueError(f"{path.name} has no version {version!r}")


def drop_nulls(doc):
    if isinstance(doc, dict):
        return {k: drop_nulls(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [drop_nulls(v) for v in doc]
    return doc


def crd_errors(doc: dict) -> list[str]:
    group, _, version = doc["apiVersion"].partition("/")
    if group != "ray.io":
        return []
    v = crd_validator(doc["kind"], version)
    errors = v.iter_errors(drop_nulls(doc))
    return [f"{doc['kind']}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@pytest.mark.parametrize("manifest", [CLUSTER_MANIFEST, JOB_MANIFEST], ids=lambda p: p.name)
def test_kuberay_manifests_match_crd_schema_strictly(manifest):
    docs = load_all(REPO / manifest)
    assert docs and all(d["apiVersion"] == "ray.io/v1" for d in docs)
    errors = [e for d in docs for e in crd_errors(d)]
    print(f"kuberay-crd: {manifest}: {len(docs)} resource(s), {len(errors)} error(s)")
    assert errors == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("shutdownAfterJobFinishes: true", "shutdownAfterJobFinish: true", "was unexpected"),
        ("    - groupName: gpu\n", "    - name: gpu\n", "'groupName' is a required property"),
        ('num-cpus: "0"', "num-cpus: 0", "is not of type 'string'"),
        ("backoffLimit: 0", "backoffLimit: none", "is not of type 'integer'"),
    ],
    ids=["misspelled-field", "missing-groupName", "non-string-rayStartParam", "wrong-type"],
)
def test_crd_schema_catches_planted_error(old, new, expected):
    text = (REPO / JOB_MANIFEST).read_text()
    assert old in text
    doc = yaml.load(text.replace(old, new, 1), Loader=YAML_LOADER)
    errors = crd_errors(doc)
    print(f"kuberay-crd planted {old!r} -> {new!r}: {errors}")
    assert any(expected in e for e in errors)


# ---------------------------------------------------------------------------------------------
# Core kinds: kubernetes-validate --strict


def core_errors(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{doc['kind']}/{doc['metadata']['name']}: {e.message}"]
    return []


def test_core_manifests_pass_kubernetes_validate_strict():
    docs = [d for p in CORE_MANIFESTS for d in load_all(p)]
    kinds = sorted({d["kind"] for d in docs})
    assert {"Namespace", "ServiceAccount", "NetworkPolicy"} <= set(kinds)
    errors = [e for d in docs for e in core_errors(d)]
    print(
        f"kubernetes-validate --strict -k {KUBE_VERSION}: {len(docs)} resources {kinds}, {len(errors)} error(s)"
    )
    assert errors == []


def test_kubernetes_validate_catches_planted_error():
    doc = load_all(REPO / K8S / "base" / "network-policy.yaml")[0]
    doc["spec"]["policyType"] = doc["spec"].pop("policyTypes")
    errors = core_errors(doc)
    print(f"kubernetes-validate planted policyTypes -> policyType: {errors}")
    assert errors and "'policyType' was unexpected" in errors[0]


def test_no_loadbalancer_or_nodeport_services():
    docs = [d for p in (REPO / K8S).rglob("*.yaml") for d in load_all(p)]
    services = [d for d in docs if d.get("kind") == "Service"]
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    for d in docs:
        spec = d.get("spec", {})
        head = (spec.get("rayClusterSpec") or spec).get("headGroupSpec")
        if head is not None:
            assert head.get("serviceType") == "ClusterIP" and not head.get("enableIngress")


# ---------------------------------------------------------------------------------------------
# yamllint


def yamllint(*paths: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "yamllint", "-s", "-c", "infra/.yamllint.yaml", *map(str, paths)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def test_yamllint():
    r = yamllint(Path("infra"))
    files = len([p for p in (REPO / "infra").rglob("*.y*ml") if ".terraform" not in p.parts])
    print(f"yamllint -s -c infra/.yamllint.yaml infra: {files} files, rc={r.returncode}")
    assert r.returncode == 0, r.stdout + r.stderr


def test_yamllint_catches_planted_duplicate_key(tmp_path):
    copy_repo_parts(tmp_path, "infra/.yamllint.yaml", str(CLUSTER_MANIFEST))
    edit(
        tmp_path / CLUSTER_MANIFEST,
        "  rayVersion:",
        "  enableInTreeAutoscaling: false\n  rayVersion:",
    )
    r = yamllint(Path("infra"), cwd=tmp_path)
    print(f"yamllint planted duplicate key: rc={r.returncode} {r.stdout.strip()}")
    assert r.returncode != 0 and "key-duplicates" in r.stdout


# ---------------------------------------------------------------------------------------------
# kustomize


def kustomize(overlay: Path) -> list[dict]:
    if KUBECTL is None:
        unavailable("kubectl not installed: kustomize builds not checked")
    r = subprocess.run([KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed: {r.stderr.strip()}")
    return [d for d in yaml.load_all(r.stdout, Loader=YAML_LOADER) if d]


@pytest.mark.parametrize("overlay", ["cluster", "sweep"])
def test_kustomize_overlays_render_valid_resources(overlay):
    docs = kustomize(REPO / K8S / overlay)
    env = dotenv(REPO / K8S / "base" / "cluster.env")
    ray = [d for d in docs if d["apiVersion"].startswith("ray.io/")]
    assert len(ray) == 1
    images = set(re.findall(r"image: (\S+)", yaml.safe_dump(ray[0])))
    errors = crd_errors(ray[0]) + [e for d in docs if d is not ray[0] for e in core_errors(d)]
    print(
        f"kubectl kustomize infra/k8s/{overlay}: {len(docs)} resources, images {sorted(images)}, {len(errors)} error(s)"
    )
    assert errors == []
    assert images == {env["TRM_IMAGE"]}, "every Ray container runs the image named in cluster.env"
    assert all(d["metadata"].get("namespace") == "trm" for d in docs if d["kind"] != "Namespace")


def test_kustomize_catches_planted_error(tmp_path):
    copy_repo_parts(tmp_path, str(K8S))
    env = tmp_path / K8S / "base" / "cluster.env"
    env.write_text(
        "".join(
            line for line in env.read_text().splitlines(True) if not line.startswith("TRM_IMAGE=")
        )
    )
    with pytest.raises(RuntimeError, match="TRM_IMAGE") as e:
        kustomize(tmp_path / K8S / "cluster")
    print(f"kustomize planted cluster.env without TRM_IMAGE: {e.value}")


@pytest.mark.parametrize("overlay", ["cluster", "sweep"])
def test_crd_schema_checks_what_a_component_adds(tmp_path, overlay):
    """A misspelled field in the gpu-spot component's worker group fails the rendered
    RayCluster and RayJob against the CRD schema."""
    copy_repo_parts(tmp_path, str(K8S))
    edit(
        tmp_path / K8S / "components/gpu-spot/worker-group.yaml",
        "terminationGracePeriodSeconds:",
        "terminationGracePeriod:",
    )
    (ray,) = [d for d in kustomize(tmp_path / K8S / overlay) if d["apiVersion"] == "ray.io/v1"]
    errors = crd_errors(ray)
    print(f"kuberay-crd planted in components/gpu-spot ({overlay}): {errors}")
    assert any("'terminationGracePeriod' was unexpected" in e for e in errors)


# ---------------------------------------------------------------------------------------------
# Consistency between pyproject, image, manifests, Terraform and the sweep files


def dotenv(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {k: v for k, v in pairs}


def unwrap(value):
    """python-hcl2 4.x wraps every attribute value in a one-element list."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def terraform_locals(path: Path) -> dict:
    with path.open() as f:
        return {k: unwrap(v) for block in hcl2.load(f).get("locals", []) for k, v in block.items()}


def terraform_variable_defaults(root: Path) -> dict:
    out = {}
    for tf in root.glob("*.tf"):
        with tf.open() as f:
            for block in hcl2.load(f).get("variable", []):
                for name, body in block.items():
                    out[name] = unwrap(body.get("default"))
    return out


def pinned_ray_version(root: Path) -> str:
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        if dep.name == "ray":
            (spec,) = dep.specifier
            if spec.operator != "==":
                raise ValueError(f"pyproject.toml must pin ray exactly, found {dep}")
            return spec.version
    raise ValueError("pyproject.toml does not depend on ray")


def dockerfile_args(root: Path) -> dict[str, str]:
    text = (root / "infra/docker/Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))


def consistency_errors(root: Path) -> list[str]:
    """Everything that must agree across the project's files; empty when all do."""
    errors = []
    ray_version = pinned_ray_version(root)
    cluster = load_all(root / CLUSTER_MANIFEST)[0]
    job = load_all(root / JOB_MANIFEST)[0]
    args = dockerfile_args(root)

    # One Ray (and Python) version everywhere.
    for name, spec in (("RayCluster", cluster["spec"]), ("RayJob", job["spec"]["rayClusterSpec"])):
        if spec["rayVersion"] != ray_version:
            errors.append(f"{name} rayVersion {spec['rayVersion']} != pyproject ray {ray_version}")
    if args.get("RAY_VERSION") != ray_version:
        errors.append(
            f"Dockerfile RAY_VERSION {args.get('RAY_VERSION')} != pyproject ray {ray_version}"
        )
    py = re.fullmatch(r"py3(\d+)", args.get("PYTHON_TAG", ""))
    requires = tomllib.loads((root / "pyproject.toml").read_text())["project"]["requires-python"]
    if not py or f"3.{py.group(1)}" not in SpecifierSet(requires):
        errors.append(
            f"Dockerfile PYTHON_TAG {args.get('PYTHON_TAG')} does not satisfy requires-python {requires}"
        )

    # The sweep job and the standing cluster run the same Ray cluster.
    if job["spec"]["rayClusterSpec"] != cluster["spec"]:
        errors.append(f"{JOB_MANIFEST} rayClusterSpec differs from {CLUSTER_MANIFEST} spec")

    # Terraform's cluster_env output and cluster.env carry the same keys; pods read them.
    tf_keys = set(terraform_locals(root / "infra/terraform/aws/outputs.tf")["cluster_env"])
    env = dotenv(root / K8S / "base" / "cluster.env")
    if set(env) != tf_keys:
        errors.append(
            f"cluster.env keys {sorted(env)} != Terraform cluster_env keys {sorted(tf_keys)}"
        )
    base = yaml.safe_load((root / K8S / "base" / "kustomization.yaml").read_text())
    cm_names = {g["name"] for g in base.get("configMapGenerator", [])}
    pods = [g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    pods.append(cluster["spec"]["headGroupSpec"]["template"]["spec"])
    for pod in pods:
        refs = {e["configMapRef"]["name"] for c in pod["containers"] for e in c.get("envFrom", [])}
        if not refs or not refs <= cm_names:
            errors.append(
                f"Ray containers read ConfigMaps {sorted(refs)}, kustomize generates {sorted(cm_names)}"
            )

    # Pod identities (Terraform) name the namespace and service account the pods use.
    aws = terraform_variable_defaults(root / "infra/terraform/aws")
    addons = terraform_variable_defaults(root / "infra/terraform/k8s-addons")
    if (
        base.get("namespace") != aws["ray_namespace"]
        or addons["ray_namespace"] != aws["ray_namespace"]
    ):
        errors.append(
            f"Ray namespace: kustomize {base.get('namespace')}, Terraform {aws['ray_namespace']}"
        )
    accounts = {pod["serviceAccountName"] for pod in pods}
    if accounts != {aws["ray_service_account"]}:
        errors.append(
            f"Ray pods use service accounts {sorted(accounts)}, pod identity binds {aws['ray_service_account']}"
        )
    for key in ("mlflow_namespace", "mlflow_service_account"):
        if addons[key] != aws[key]:
            errors.append(f"{key}: k8s-addons {addons[key]} != AWS root {aws[key]}")
    if f"mlflow.{aws['mlflow_namespace']}.svc" not in env.get("MLFLOW_TRACKING_URI", ""):
        errors.append(
            f"MLFLOW_TRACKING_URI {env.get('MLFLOW_TRACKING_URI')} is not the MLflow Service"
        )
    return errors


SWEEP_KUSTOMIZATION = K8S / "sweep" / "kustomization.yaml"
ENTRYPOINT = "python pipeline/sweep.py --sweep SWEEP_FILE --name SWEEP_NAME --resume auto"


def sweep_choice(root: Path) -> dict[str, str]:
    """SWEEP_FILE and SWEEP_NAME as the sweep kustomization's ConfigMap trm-sweep sets them."""
    k = yaml.safe_load((root / SWEEP_KUSTOMIZATION).read_text())
    gens = [g for g in k.get("configMapGenerator", []) if g.get("name") == "trm-sweep"]
    literals = gens[0].get("literals", []) if gens else []
    return dict(lit.split("=", 1) for lit in literals)


def entrypoint_errors(root: Path) -> list[str]:
    """The RayJob runs, with --resume auto, the sweep file and name its kustomization gives: an
    existing sweep file, and a name that is a valid sweep name and makes a valid job name."""
    job = load_all(root / JOB_MANIFEST)[0]
    errors = []
    if job["spec"]["entrypoint"] != ENTRYPOINT:
        errors.append(f"RayJob entrypoint {job['spec']['entrypoint']!r} is not {ENTRYPOINT!r}")
    if job["metadata"]["name"] != "trm-sweep-SWEEP_NAME":
        errors.append(f"RayJob name {job['metadata']['name']!r} is not trm-sweep-SWEEP_NAME")
    choice = sweep_choice(root)
    file, name = choice.get("SWEEP_FILE", ""), choice.get("SWEEP_NAME", "")
    if not re.fullmatch(r"sweeps/[\w.-]+\.yaml", file) or not (root / file).exists():
        errors.append(f"{SWEEP_KUSTOMIZATION}: SWEEP_FILE {file!r} does not exist under sweeps/")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 53:
        errors.append(
            f"{SWEEP_KUSTOMIZATION}: SWEEP_NAME {name!r} must be lower-case letters, digits and "
            "'-' (it names the RayJob trm-sweep-<name>, at most 63 characters)"
        )
    if not (root / "pipeline/sweep.py").exists():
        errors.append("RayJob entrypoint names pipeline/sweep.py, which does not exist")
    return errors


def test_rayjob_runs_an_existing_sweep_file():
    errors = entrypoint_errors(REPO)
    print(f"RayJob sweep: {sweep_choice(REPO)}: {errors}")
    assert errors == []


def test_rayjob_takes_its_sweep_from_the_kustomization(tmp_path):
    """Another sweep is two values in kustomization.yaml: the rendered job runs that file under
    that name with --resume auto, and is named after it."""
    copy_repo_parts(tmp_path, str(K8S))
    path = tmp_path / SWEEP_KUSTOMIZATION
    edit(path, "SWEEP_FILE=sweeps/sudoku_extreme_ablation.yaml", "SWEEP_FILE=sweeps/maze_hard.yaml")
    edit(path, "SWEEP_NAME=sudoku-extreme-ablation", "SWEEP_NAME=maze-2")
    docs = kustomize(tmp_path / K8S / "sweep")
    (job,) = [d for d in docs if d["kind"] == "RayJob"]
    assert job["metadata"]["name"] == "trm-sweep-maze-2"
    assert job["spec"]["entrypoint"] == (
        "python pipeline/sweep.py --sweep sweeps/maze_hard.yaml --name maze-2 --resume auto"
    )
    assert not [d for d in docs if d["metadata"]["name"] == "trm-sweep"]  # local to kustomize


def test_project_files_agree():
    errors = consistency_errors(REPO)
    print(f"consistency: ray {pinned_ray_version(REPO)}, {len(errors)} error(s)")
    assert errors == []


@pytest.mark.parametrize(
    ("path", "old", "new", "expected"),
    [
        (CLUSTER_MANIFEST, 'rayVersion: "2.', 'rayVersion: "1.', "rayVersion"),
        (
            Path("infra/docker/Dockerfile"),
            "ARG PYTHON_TAG=py311",
            "ARG PYTHON_TAG=py39",
            "PYTHON_TAG",
        ),
        (SWEEP_KUSTOMIZATION, "SWEEP_FILE=sweeps/", "SWEEP_FILE=sweeps/no_such_", "does not exist"),
        (SWEEP_KUSTOMIZATION, "SWEEP_NAME=sudoku-", "SWEEP_NAME=Sudoku_", "SWEEP_NAME"),
        (JOB_MANIFEST, "SWEEP_NAME --resume auto", "SWEEP_NAME", "RayJob entrypoint"),
        (JOB_MANIFEST, "fsGroup: 100", "fsGroup: 10", "rayClusterSpec differs"),
        (K8S / "base/cluster.env", "TRM_BUCKET=", "TRM_BUCKT=", "cluster.env keys"),
    ],
    ids=[
        "ray-version",
        "python",
        "sweep-file",
        "sweep-name",
        "no-resume-auto",
        "job-cluster-drift",
        "cluster-env-key",
    ],
)
def test_consistency_catches_planted_error(tmp_path, path, old, new, expected):
    copy_repo_parts(
        tmp_path, "pyproject.toml", "infra", "pipeline/sweep.py", str(Path("sweeps") / sweep_file())
    )
    edit(tmp_path / path, old, new)
    errors = consistency_errors(tmp_path) + entrypoint_errors(tmp_path)
    print(f"consistency planted {old!r} -> {new!r}: {errors}")
    assert any(expected in e for e in errors)


def sweep_file() -> str:
    return Path(sweep_choice(REPO)["SWEEP_FILE"]).name


def node_pools() -> dict[str, str]:
    """Node group -> its node-pool label in the AWS root: the core group's label, and each GPU
    pool of nodegroups.tf (gpu_pools), whose one resource labels every group with its name."""
    with (REPO / "infra/terraform/aws/nodegroups.tf").open() as f:
        tree = hcl2.load(f)
    groups = {n: b for r in tree["resource"] for n, b in r.get("aws_eks_node_group", {}).items()}
    assert unwrap(groups["gpu"]["labels"])["node-pool"] == "${each.key}"
    gpu_pools = {k: unwrap(v) for b in tree["locals"] for k, v in b.items()}["gpu_pools"]
    pools = {name.strip('"'): name.strip('"') for name in gpu_pools}
    return {"core": unwrap(groups["core"]["labels"])["node-pool"], **pools}


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SPOT_TOLERATION = {"key": "spot", "operator": "Exists", "effect": "NoSchedule"}


@pytest.mark.parametrize("overlay", ["cluster", "sweep"])
def test_gpu_workers_fit_their_nodes(overlay):
    """Workers land on their tainted GPU pool with requests = limits; the head runs no tasks;
    only the spot group tolerates the spot taint."""
    (ray,) = [d for d in kustomize(REPO / K8S / overlay) if d["apiVersion"].startswith("ray.io/")]
    spec = ray["spec"].get("rayClusterSpec", ray["spec"])
    pools = node_pools()
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["template"]["spec"]["nodeSelector"]["node-pool"] == pools["core"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "gpu-spot"}
    for name, group in groups.items():
        pod = group["template"]["spec"]
        assert group["minReplicas"] == 0 and group["replicas"] == 0
        assert pod["nodeSelector"]["node-pool"] == pools[name]
        assert GPU_TOLERATION in pod["tolerations"]
        assert (SPOT_TOLERATION in pod["tolerations"]) == (name == "gpu-spot")
        res = pod["containers"][0]["resources"]
        assert res["requests"] == res["limits"] and int(res["limits"]["nvidia.com/gpu"]) >= 1


def test_spot_workers_are_the_gpu_workers_made_preemptible():
    """The spot group's pod is the on-demand group's but for what spot needs: its pool, the
    spot toleration, and a grace period with a preStop `ray stop` inside the two-minute notice."""
    (ray,) = [d for d in kustomize(REPO / K8S / "cluster") if d["kind"] == "RayCluster"]
    groups = {g["groupName"]: g for g in ray["spec"]["workerGroupSpecs"]}
    gpu, spot = (copy.deepcopy(groups[n]["template"]["spec"]) for n in ("gpu", "gpu-spot"))
    hook = spot["containers"][0].pop("lifecycle")
    assert hook == {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}
    assert 0 < spot.pop("terminationGracePeriodSeconds") < 120
    assert spot.pop("tolerations") == [*gpu.pop("tolerations"), SPOT_TOLERATION]
    assert spot.pop("nodeSelector") == {"node-pool": "gpu-spot"} and gpu.pop("nodeSelector")
    assert spot == gpu


def test_rayjob_shuts_down_and_never_retries():
    spec = copy.deepcopy(load_all(REPO / JOB_MANIFEST)[0]["spec"])
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] == 0
    assert 0 < spec["ttlSecondsAfterFinished"] <= 3600
    assert 0 < spec["activeDeadlineSeconds"] <= 7 * 24 * 3600
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/app"
