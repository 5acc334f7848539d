"""Offline checks of infra/terraform: fmt, init, validate and `terraform test` (mocked AWS provider),
plus structural checks with python-hcl2. Each validator is shown to catch an error planted in a copy.

Terraform runs with no network and no credentials: the provider comes from a local filesystem
mirror (the machine image ships hashicorp/aws 5.100.0). Without the terraform binary or a mirror,
the Terraform tests skip and say why (under CI=true they fail: the image provides both). The k8s-addons root needs the helm and kubernetes providers,
which no mirror here holds: it gets fmt, parsing and checkov (tests/test_infra_checkov.py) only.
The AWS root reads the cluster's shape from infra/k8s/base/cluster-shape.yaml, so its copies keep
the repository's layout around it.

Run: pytest tests/test_infra_terraform.py -q
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest
from conftest import unavailable

REPO = Path(__file__).resolve().parents[1]
TF_ROOTS = REPO / "infra" / "terraform"
AWS_ROOT = TF_ROOTS / "aws"
ADDONS_ROOT = TF_ROOTS / "k8s-addons"
SHAPE = REPO / "infra" / "k8s" / "base" / "cluster-shape.yaml"  # read by the AWS root (shape.tf)
TERRAFORM = shutil.which("terraform")
MIRROR_ROOTS = ["/opt", "/usr/local/share", "/usr/share", "~/.terraform.d", "~/.local/share"]


def find_mirror() -> Path | None:
    """A filesystem mirror holding hashicorp/aws: $TRM_TF_PLUGIN_MIRROR, or a usual place."""
    if env := os.environ.get("TRM_TF_PLUGIN_MIRROR"):
        return Path(env)
    for root in MIRROR_ROOTS:
        for depth in ("", "*/", "*/*/"):
            for hit in Path(root).expanduser().glob(f"{depth}registry.terraform.io/hashicorp/aws"):
                return hit.parents[2]
    return None


@pytest.fixture(scope="module")
def tf_env(tmp_path_factory) -> dict[str, str]:
    if TERRAFORM is None:
        unavailable("terraform binary not on PATH (the machine image carries it)")
    mirror = find_mirror()
    if mirror is None:
        unavailable(
            f"no filesystem mirror with hashicorp/aws under {MIRROR_ROOTS} (set TRM_TF_PLUGIN_MIRROR)"
        )
    rc = tmp_path_factory.mktemp("tf") / "terraformrc"
    rc.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/*/*"]\n  }\n'
        '  direct {\n    exclude = ["registry.terraform.io/*/*"]\n  }\n}\n'
    )
    return {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(rc),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
        "NO_COLOR": "1",
    }


def tf(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TERRAFORM, *args, "-no-color"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    return dst


def copy_aws_root(dst: Path) -> Path:
    """A copy of the AWS root at dst/infra/terraform/aws with the cluster shape it reads at
    dst/infra/k8s/base, as in the repository; returns the root's copy."""
    root = copy_root(AWS_ROOT, dst / AWS_ROOT.relative_to(REPO))
    shape = dst / SHAPE.relative_to(REPO)
    shape.parent.mkdir(parents=True)
    shutil.copy2(SHAPE, shape)
    return root


@pytest.fixture(scope="module")
def aws_root(tf_env, tmp_path_factory) -> Path:
    """A copy of the AWS root, initialised once (no backend, providers from the mirror)."""
    root = copy_aws_root(tmp_path_factory.mktemp("aws"))
    r = tf(tf_env, root, "init", "-backend=false", "-lockfile=readonly")
    assert r.returncode == 0, r.stdout + r.stderr
    return root


def copy_initialised(aws_root: Path, tmp_path: Path) -> Path:
    """A copy of the initialised root's tree (its .terraform reused by copy); returns the root."""
    tree = aws_root.parents[len(AWS_ROOT.relative_to(REPO).parts) - 1]
    shutil.copytree(tree, tmp_path / "tree", symlinks=True)
    return tmp_path / "tree" / AWS_ROOT.relative_to(REPO)


def planted(aws_root: Path, tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of the initialised root with one edit."""
    root = copy_initialised(aws_root, tmp_path)
    text = (root / file).read_text()
    assert old in text, f"planting failed: {old!r} not in {file}"
    (root / file).write_text(text.replace(old, new, 1))
    return root


def last_line(r: subprocess.CompletedProcess) -> str:
    """terraform's closing summary ("Success! 10 passed, 0 failed."), else its last line."""
    out = r.stdout + r.stderr
    if m := re.search(r"^(Success|Failure)! .*$", out, flags=re.M):
        return m.group(0)
    lines = [line for line in out.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------
# fmt


def test_fmt_check(tf_env):
    r = tf(tf_env, TF_ROOTS, "fmt", "-check", "-recursive", "-diff")
    files = len(list(TF_ROOTS.rglob("*.tf"))) + len(list(TF_ROOTS.rglob("*.tftest.hcl")))
    print(f"terraform fmt -check -recursive infra/terraform: {files} files, rc={r.returncode}")
    assert r.returncode == 0, r.stdout + r.stderr


def test_fmt_catches_planted_error(tf_env, tmp_path):
    root = copy_root(AWS_ROOT, tmp_path / "aws")
    text = (root / "s3.tf").read_text()
    (root / "s3.tf").write_text(
        text.replace("  bucket        = local.bucket_name", "bucket=local.bucket_name", 1)
    )
    r = tf(tf_env, root, "fmt", "-check")
    print(f"terraform fmt planted misformat: rc={r.returncode} {r.stdout.strip()}")
    assert r.returncode != 0 and "s3.tf" in r.stdout


# ---------------------------------------------------------------------------------------------
# validate


def test_validate(tf_env, aws_root):
    r = tf(tf_env, aws_root, "validate")
    print(f"terraform validate (aws): {last_line(r)}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "The configuration is valid" in r.stdout


def test_validate_catches_planted_error(tf_env, aws_root, tmp_path):
    root = planted(
        aws_root,
        tmp_path,
        "s3.tf",
        "kms_master_key_id = aws_kms_key.this.arn",
        "kms_master_key_id = aws_kms_key.data.arn",
    )
    r = tf(tf_env, root, "validate")
    error = next((line.strip() for line in r.stderr.splitlines() if "Error:" in line), "")
    print(f"terraform validate planted undeclared reference: rc={r.returncode} {error}")
    assert r.returncode != 0 and "Reference to undeclared resource" in r.stderr


# ---------------------------------------------------------------------------------------------
# terraform test (mock_provider "aws")


def run_blocks() -> int:
    return sum(
        len(re.findall(r'^run "', p.read_text(), flags=re.M))
        for p in (AWS_ROOT / "tests").glob("*.tftest.hcl")
    )


def test_terraform_test(tf_env, aws_root):
    r = tf(tf_env, aws_root, "test")
    print(f"terraform test (aws): {last_line(r)}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Success! {run_blocks()} passed, 0 failed." in r.stdout


PLANTED_FOR_TERRAFORM_TEST = [
    # (file, old, new, the assertion message that must catch it)
    (
        "s3.tf",
        "block_public_acls       = true",
        "block_public_acls       = false",
        "public access blocks must be on",
    ),
    ("s3.tf", 'status = "Enabled"\n  }', 'status = "Suspended"\n  }', "Versioning must be enabled"),
    (
        "mlflow_rds.tf",
        "publicly_accessible    = false",
        "publicly_accessible    = true",
        "must not be publicly accessible",
    ),
    (
        "eks.tf",
        "endpoint_public_access  = length(var.api_public_access_cidrs) > 0",
        "endpoint_public_access  = true",
        "EKS API endpoint must be private",
    ),
    (
        "nodegroups.tf",
        'http_tokens                 = "required"',
        'http_tokens                 = "optional"',
        "must require IMDSv2",
    ),
    (
        "nodegroups.tf",
        'taints         = { "nvidia.com/gpu" = "true", spot = "true" }',
        'taints         = { "nvidia.com/gpu" = "true" }',
        "Spot nodes must be tainted",
    ),
    (
        "nodegroups.tf",
        'capacity_type  = "SPOT"',
        'capacity_type  = "ON_DEMAND"',
        "The spot group buys SPOT NVIDIA nodes",
    ),
    (
        "shape.tf",
        "coalesce(var.gpu_max_nodes, local.shape.gpu_max_nodes)",
        "coalesce(var.gpu_max_nodes, 4)",
        "size, instance types and GPUs per node",
    ),
    (
        "pod_identity.tf",
        '"${aws_s3_bucket.artifacts.arn}/${local.prefixes.datasets}*",',
        '"${aws_s3_bucket.artifacts.arn}/*",',
        "The Ray role may touch datasets/ and ray-results/",
    ),
]


def test_terraform_test_catches_planted_errors(tf_env, aws_root, tmp_path):
    """Errors planted in one copy, one `terraform test` run: each fails its own assertion."""
    root = copy_initialised(aws_root, tmp_path)
    for file, old, new, _ in PLANTED_FOR_TERRAFORM_TEST:
        text = (root / file).read_text()
        assert old in text, f"planting failed: {old!r} not in {file}"
        (root / file).write_text(text.replace(old, new, 1))
    r = tf(tf_env, root, "test")
    out = r.stdout + r.stderr
    caught = [(f, m) for f, _, _, m in PLANTED_FOR_TERRAFORM_TEST if m in out]
    print(f"terraform test with {len(PLANTED_FOR_TERRAFORM_TEST)} planted errors: {last_line(r)}")
    for file, message in caught:
        print(f"  caught in {file}: {message}")
    assert r.returncode != 0
    assert len(caught) == len(PLANTED_FOR_TERRAFORM_TEST), out


# ---------------------------------------------------------------------------------------------
# Structure (python-hcl2): both roots, including the one that cannot be initialised offline


def parse_root(root: Path) -> dict[str, list]:
    merged: dict[str, list] = {}
    for tf_file in sorted(root.glob("*.tf")):
        with tf_file.open() as f:
            for key, blocks in hcl2.load(f).items():
                merged.setdefault(key, []).extend(blocks)
    return merged


def one(value):
    """python-hcl2 4.x wraps every attribute value in a one-element list."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def structure_errors(root: Path) -> list[str]:
    """Conventions both roots keep: pinned providers, typed and described variables, no keys."""
    errors = []
    tree = parse_root(root)
    terraform = [one(b) for b in tree.get("terraform", [])]
    if not any("required_version" in b for b in terraform):
        errors.append(f"{root.name}: no required_version")
    providers = {
        k: one(v)
        for b in terraform
        for rp in b.get("required_providers", [])
        for k, v in rp.items()
    }
    for name, spec in providers.items():
        if not (isinstance(spec, dict) and spec.get("source") and spec.get("version")):
            errors.append(f"{root.name}: provider {name} is not pinned to a source and version")
    if not any("backend" in b for b in terraform):
        errors.append(f"{root.name}: no backend block (state would stay local)")
    for block in tree.get("variable", []):
        for name, body in block.items():
            for key in ("type", "description"):
                if key not in body:
                    errors.append(f"{root.name}: variable {name} has no {key}")
    for block in tree.get("provider", []):
        for name, body in block.items():
            for key in ("access_key", "secret_key", "token", "profile"):
                if key in body:
                    errors.append(f"{root.name}: provider {name} sets {key}")
    for block in tree.get("resource", []):
        for kind in block:
            if kind in {"aws_iam_access_key", "aws_iam_user", "aws_iam_user_login_profile"}:
                errors.append(f"{root.name}: {kind} creates long-lived credentials")
            if kind in {"kubernetes_service", "kubernetes_service_v1"}:
                for name, body in block[kind].items():
                    kind_type = one(one(body["spec"]).get("type", "ClusterIP"))
                    if kind_type != "ClusterIP":
                        errors.append(f"{root.name}: {kind}.{name} is of type {kind_type}")
    return errors


@pytest.mark.parametrize("root", [AWS_ROOT, ADDONS_ROOT], ids=lambda p: p.name)
def test_structure(root):
    errors = structure_errors(root)
    print(
        f"hcl2 structure ({root.name}): {len(list(root.glob('*.tf')))} files, {len(errors)} error(s)"
    )
    assert errors == []


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        (
            "variables.tf",
            '  description = "AWS region of the cluster."\n',
            "",
            "has no description",
        ),
        (
            "mlflow.tf",
            'type     = "ClusterIP"',
            'type     = "LoadBalancer"',
            "of type LoadBalancer",
        ),
        ("versions.tf", '      version = "~> 2.36"\n', "", "not pinned"),
    ],
    ids=["undescribed-variable", "loadbalancer", "unpinned-provider"],
)
def test_structure_catches_planted_error(tmp_path, file, old, new, message):
    root = copy_root(ADDONS_ROOT, tmp_path / "k8s-addons")
    text = (root / file).read_text()
    assert old in text
    (root / file).write_text(text.replace(old, new, 1))
    errors = structure_errors(root)
    print(f"hcl2 structure planted in {file}: {errors}")
    assert any(message in e for e in errors)


def test_aws_root_uses_only_the_aws_provider_and_commits_its_lock():
    """The AWS root must validate with nothing but the aws provider (what the mirror holds)."""
    tree = parse_root(AWS_ROOT)
    providers = {k for b in tree["terraform"] for rp in one(b)["required_providers"] for k in rp}
    assert providers == {"aws"}
    assert "module" not in tree, "registry modules cannot be scanned or initialised offline"
    lock = (AWS_ROOT / ".terraform.lock.hcl").read_text()
    version = re.search(
        r'provider "registry.terraform.io/hashicorp/aws" \{\s+version\s+= "(5\.\d+\.\d+)"', lock
    )
    assert version, "lock file pins a 5.x aws provider"


def test_kuberay_chart_matches_crd_schemas():
    """The operator chart is the KubeRay release whose CRDs the manifests are validated against."""
    readme = REPO / "infra" / "schemas" / "kuberay" / "README.md"
    if not readme.exists():
        pytest.fail(f"{readme} not found: it is part of the repository")
    tag = re.search(r"tag \*\*v(\d+\.\d+\.\d+)\*\*", readme.read_text()).group(1)
    defaults = {
        name: one(body.get("default"))
        for b in parse_root(ADDONS_ROOT)["variable"]
        for name, body in b.items()
    }
    assert defaults["kuberay_version"] == tag
