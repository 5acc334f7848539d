"""GCS fault tolerance and the metrics dashboard in infra/k8s, checked offline:
- the standing cluster's RayCluster keeps its GCS in a Redis that the same overlay deploys
  (address = a Service of that overlay, password = the key the Redis container reads, a
  NetworkPolicy admitting the head), shown to catch a planted error;
- every metric the Grafana dashboard plots is one Ray exports or one the pipeline exports
  (`pipeline.tracking.prometheus`), the latter read back from a real local Ray's metrics port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import unavailable
from services import free_port

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "infra" / "k8s"
DASHBOARD = K8S / "monitoring" / "trm-sweeps.dashboard.json"
# Ray's own metrics the dashboard may use (Ray's system-metrics reference).
RAY_METRICS = {
    "ray_node_gpus_utilization",
    "ray_node_gram_used",
    "ray_resources",
    "ray_cluster_active_nodes",
}
KUBECTL = shutil.which("kubectl")


def kustomize(overlay: Path) -> list[dict]:
    if KUBECTL is None:
        unavailable("kubectl not installed: kustomize builds not checked")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, check=True
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def gcs_ft_errors(docs: list[dict]) -> list[str]:
    """Why the RayCluster's GCS store is not reachable as deployed (empty when it is)."""
    ray = next(d for d in docs if d["kind"] == "RayCluster")
    ft = ray["spec"].get("gcsFaultToleranceOptions")
    if not ft:
        return ["RayCluster has no gcsFaultToleranceOptions"]
    host, _, port = ft["redisAddress"].partition(":")
    by_kind = lambda kind: {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}  # noqa: E731
    svc = by_kind("Service").get(host)
    if svc is None:
        return [f"redisAddress {ft['redisAddress']!r}: no Service {host!r} in the overlay"]
    errors = []
    if int(port) not in {p["port"] for p in svc["spec"]["ports"]}:
        errors.append(f"redisAddress port {port} is not a port of Service {host}")
    pods = [s["spec"]["template"] for s in by_kind("StatefulSet").values()]
    backing = [
        p for p in pods if svc["spec"]["selector"].items() <= p["metadata"]["labels"].items()
    ]
    if not backing:
        return [*errors, f"Service {host} selects no pod of the overlay"]
    ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    env = [e for c in backing[0]["spec"]["containers"] for e in c.get("env", [])]
    if not any(e.get("valueFrom", {}).get("secretKeyRef") == ref for e in env):
        errors.append(f"Redis does not read its password from {ref}")
    admits = [
        n
        for n in by_kind("NetworkPolicy").values()
        if n["spec"]["podSelector"].get("matchLabels", {}).items()
        <= backing[0]["metadata"]["labels"].items()
        and any(
            f.get("podSelector", {}).get("matchLabels", {}).get("ray.io/node-type") == "head"
            for rule in n["spec"].get("ingress", [])
            for f in rule.get("from", [])
        )
    ]
    if not admits:
        errors.append("no NetworkPolicy admits the Ray head to Redis")
    return errors


def test_standing_cluster_keeps_its_gcs_in_the_redis_it_deploys():
    docs = kustomize(K8S / "cluster")
    errors = gcs_ft_errors(docs)
    print(f"gcs-ft: {errors or 'ok'}")
    assert errors == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('redisAddress: "trm-redis:6379"', 'redisAddress: "trm-redis:6380"', "not a port"),
        ('redisAddress: "trm-redis:6379"', 'redisAddress: "redis:6379"', "no Service"),
        (
            "name: trm-redis\n                key: password",
            "name: trm-redis\n                key: pass",
            "does not read its password",
        ),
    ],
    ids=["port", "host", "secret-key"],
)
def test_gcs_ft_check_catches_planted_error(tmp_path, old, new, expected):
    shutil.copytree(K8S, tmp_path / "k8s")
    comp = tmp_path / "k8s" / "components" / "gcs-ft" / "kustomization.yaml"
    assert old in comp.read_text()
    comp.write_text(comp.read_text().replace(old, new, 1))
    errors = gcs_ft_errors(kustomize(tmp_path / "k8s" / "cluster"))
    print(f"gcs-ft planted {old!r} -> {new!r}: {errors}")
    assert any(expected in e for e in errors)


def dashboard_metrics() -> set[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    names = {m for e in exprs for m in re.findall(r"\b(ray_[a-z_]+)\b", e)}
    assert len(names) >= 5, exprs  # the parse reached the expressions
    return names


def test_dashboard_plots_only_ray_builtin_or_pipeline_metrics():
    ours = {m for m in dashboard_metrics() if m.startswith("ray_trm_")}
    assert dashboard_metrics() - ours <= RAY_METRICS
    assert ours == {"ray_trm_sweep_trials_total", "ray_trm_tracking_failures_total"}


@pytest.mark.timeout(240)
def test_pipeline_metrics_reach_rays_metrics_port(tmp_path):
    """The names the dashboard plots are what a real Ray exports for the pipeline's calls."""
    port = free_port()
    script = tmp_path / "export.py"
    script.write_text(
        "import ray, time\n"
        f"ray.init(address='local', num_cpus=1, include_dashboard=False, _metrics_export_port={port})\n"
        "from pipeline.tracking import prometheus as p\n"
        "@ray.remote\n"
        "def trial():\n"
        "    p.count_trial('s', 'started')\n"
        "    p.count_tracking_failure('dropped', 2)\n"
        "    time.sleep(120)\n"
        "ray.get(trial.remote())\n"
    )
    env = {**os.environ, "RAY_metrics_report_interval_ms": "500", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        ["python", str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        found: set[str] = set()
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and len(found) < 2:
            time.sleep(2)
            try:
                text = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                    .read()
                    .decode()
                )
            except OSError:
                continue
            found = {
                m
                for m in ("ray_trm_sweep_trials_total", "ray_trm_tracking_failures_total")
                if re.search(rf"^{m}{{", text, re.M)
            }
        print(f"metrics read back from Ray's port {port}: {sorted(found)}")
        assert found == {m for m in dashboard_metrics() if m.startswith("ray_trm_")}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
