"""Drill 4, storage faults: the S3 endpoint goes away for a while (a fault-injecting proxy in
front of the real moto server resets every connection) while a run streams its data and while
it uploads a checkpoint. Short outages are ridden out by bounded retries with exponential
backoff and the run ends exactly as an undisturbed one; long ones stop the run with an error
naming the endpoint, after a bounded number of attempts. Either way the last complete
checkpoint stays loadable, a half-written one is never resumed from, and the run resumes once
the endpoint is back.

The streaming drills run the in-process loop (~10 s each); the checkpoint-upload drills need
Ray Train (which uploads checkpoints) and are marked slow (~1.5 min each).
"""

from __future__ import annotations

import itertools
import math
import time
import urllib.parse

import pytest
from drills import build_tiny_sudoku, record, tiny_config
from drills.proxy import FaultProxy

from pipeline.checkpoints import store as ckpt
from pipeline.data import ShardStream, StorageError
from pipeline.train import run_info
from pipeline.training.worker import LocalCheckpoints, run_in_process

ATTEMPTS, BASE_S = 4, 0.5  # TRM_S3_MAX_ATTEMPTS, TRM_S3_RETRY_BASE_S: gives up after 3.5 s
COMPARED = ("train/loss", "train/exact_accuracy", "train/lr", "eval/accuracy",
            "eval/exact_accuracy", "eval/q_halt_accuracy")  # fmt: skip


@pytest.fixture
def proxied(s3_server, monkeypatch):
    """(proxy, bucket): a fresh bucket on the session's moto server, reached by everything in
    this process through a fault proxy."""
    from conftest import use_s3

    s3 = use_s3(monkeypatch, s3_server)  # creates the bucket directly
    monkeypatch.setenv("TRM_S3_MAX_ATTEMPTS", str(ATTEMPTS))
    monkeypatch.setenv("TRM_S3_RETRY_BASE_S", str(BASE_S))
    port = urllib.parse.urlsplit(s3_server).port
    with FaultProxy(port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        yield proxy, s3.bucket


@pytest.fixture
def s3_data(proxied) -> str:
    uri = f"s3://{proxied[1]}/data/sudoku4"
    build_tiny_sudoku(uri)  # 6 batches of 16 an epoch: epoch 1 is opened at step 7
    return uri


def _cfg(data: str, tmp, *more: str):
    return tiny_config(data, tmp / "runs", "schedule.report_every=1", *more)


def _run(cfg, tmp, name: str, at_step=None, action=None):
    """run_in_process keeping checkpoints under tmp/runs/name; `action()` after step `at_step`'s
    report. Returns (final metrics, {step: time of its report})."""
    saver = LocalCheckpoints(tmp / "runs" / name)
    times: dict[int, float] = {}

    def report(metrics, checkpoint_dir):
        saver(metrics, checkpoint_dir)
        times[metrics["step"]] = time.monotonic()
        if metrics["step"] == at_step:
            action()

    final = run_in_process(cfg, run_info(cfg, name, str(tmp / "runs")), report=report)
    return final, times


def test_downloads_cut_mid_body_are_retried(proxied, s3_data):
    proxy, _ = proxied
    clean = list(ShardStream(s3_data, batch_size=16, shuffle=False, prefetch=0))
    # three answers to shard reads stop part-way through their body
    proxy.on_request(r"GET \S+/train/part-", lambda: proxy.cut_responses(1, after=900), times=3)
    got = list(ShardStream(s3_data, batch_size=16, shuffle=False, prefetch=0))
    assert len(got) == len(clean)
    for a, b in zip(got, clean):
        for k in b:
            assert (a[k] == b[k]).all()


def test_short_outage_while_streaming_is_ridden_out(proxied, s3_data, tmp_path):
    proxy, _ = proxied
    cfg = _cfg(s3_data, tmp_path)
    reference, ref_times = _run(cfg, tmp_path, "reference")
    final, times = _run(cfg, tmp_path, "outage", at_step=6, action=lambda: proxy.down(1.5))
    assert proxy.resets, "the outage hit no request"
    assert final["step"] == 12
    for k in COMPARED:
        assert math.isclose(final[k], reference[k], rel_tol=1e-6, abs_tol=1e-9), k
    stall = (times[7] - times[6]) - (ref_times[7] - ref_times[6])  # time spent waiting
    record("storage.stream_short_outage", runs=1, stall_s=stall, resets=len(proxy.resets))


def test_long_outage_while_streaming_stops_naming_the_endpoint_then_resumes(
    proxied, s3_data, tmp_path
):
    proxy, _ = proxied
    cfg = _cfg(s3_data, tmp_path)
    reference, _ = _run(cfg, tmp_path, "reference")
    started: list[float] = []

    def outage():
        started.append(time.monotonic())
        proxy.down(3600)

    with pytest.raises(StorageError) as e:
        _run(cfg, tmp_path, "outage", at_step=6, action=outage)
    gave_up_s = time.monotonic() - started[0]
    assert f"S3 endpoint {proxy.endpoint} unreachable" in str(e.value)
    assert f"failed {ATTEMPTS} times" in str(e.value)
    # bounded attempts with exponential backoff (0.5, 1, 2 s), then it gave up
    first = proxy.resets[:ATTEMPTS]
    gaps = [b - a for a, b in itertools.pairwise(first)]
    for gap, want in zip(gaps, (BASE_S, 2 * BASE_S, 4 * BASE_S)):
        assert want * 0.9 <= gap <= want + 5, gaps
    assert gave_up_s < 60

    # the last complete checkpoint is intact; once the endpoint is back the run resumes from it
    run_dir = tmp_path / "runs" / "outage"
    ckpt.verify(run_dir / "checkpoint_00000004")
    proxy.up()
    t = time.perf_counter()
    final = run_in_process(cfg, run_info(cfg, "outage", str(tmp_path / "runs")))
    assert final["step"] == 12
    for k in COMPARED:
        assert math.isclose(final[k], reference[k], rel_tol=1e-6, abs_tol=1e-9), k
    record("storage.stream_long_outage", runs=1, gave_up_s=gave_up_s,
           attempts=len(first), resume_s=time.perf_counter() - t)  # fmt: skip


# ---- checkpoint uploads (Ray Train writes checkpoints to S3) ----------------------------------
def _after(n: int, action):
    """An action that does nothing the first n-1 times and `action()` the n-th time."""
    calls = []

    def run():
        calls.append(1)
        if len(calls) == n:
            action()

    return run


def _outage_during_upload(proxy, checkpoint: str, seconds: float) -> list[float]:
    """Take the endpoint down for `seconds` at the 3rd upload request of `checkpoint` (part-way
    through it); returns a list that receives the moment it went down."""
    down_at: list[float] = []

    def go_down():
        down_at.append(time.monotonic())
        proxy.down(seconds)

    proxy.on_request(rf"PUT \S+/{checkpoint}/", _after(3, go_down), times=3)
    return down_at


@pytest.fixture
def ray_on_proxy(proxied):
    from drills import LocalRay

    proxy, bucket = proxied
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "TRM_S3_MAX_ATTEMPTS", "TRM_S3_RETRY_BASE_S")  # fmt: skip
    import os

    data = f"s3://{bucket}/data/sudoku4"
    build_tiny_sudoku(data)
    with LocalRay(2, {k: os.environ[k] for k in keys}) as ray_:
        yield proxy, bucket, data, ray_


def _ray_cfg(data: str, bucket: str):
    return tiny_config(data, f"s3://{bucket}/runs", "resources.num_workers=2",
                       "checkpoint.max_failures=2")  # fmt: skip


def _s3_keys(bucket: str, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3")
    return sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    )


def _complete(bucket: str, prefix: str, tmp) -> bool:
    return not _incomplete(bucket, prefix, tmp)


def _incomplete(bucket: str, prefix: str, tmp) -> str:
    """'' when the checkpoint under s3://bucket/prefix verifies (every file, every rank), else
    what is wrong with it and the keys found there."""
    import boto3

    s3 = boto3.client("s3")
    local = tmp / prefix.strip("/").replace("/", "_")
    local.mkdir(parents=True, exist_ok=True)
    for key in _s3_keys(bucket, prefix):
        if key.endswith("/"):  # a directory marker
            continue
        (local / key.rsplit("/", 1)[1]).write_bytes(
            s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        )
    try:
        ckpt.verify(local)
    except ckpt.CheckpointError as e:
        return f"{e}; keys {_s3_keys(bucket, prefix)}"
    return ""


def _resumes(out: str) -> str:
    """The lines of the workers' output that say where a run resumed from, or what it skipped."""
    said = ("resumed from", "resuming", "skipping checkpoint", "previous complete checkpoint",
            "copying it again")  # fmt: skip
    return "\n".join(line for line in out.splitlines() if any(s in line for s in said))


def _names_endpoint(error: BaseException, proxy: FaultProxy) -> None:
    """Our errors say 'http://host:port'; pyarrow's (Ray Train's uploads) 'host port N'."""
    text = str(error)
    assert proxy.endpoint in text or f"127.0.0.1 port {proxy.port}" in text, text[-3000:]


@pytest.mark.slow
def test_short_outage_during_checkpoint_upload_is_ridden_out(ray_on_proxy, tmp_path):
    """~1.5 min: the endpoint goes away for 3 s part-way through the upload of the last
    checkpoint (step 12). The upload's retries ride the outage out: the run finishes at step 12
    with that checkpoint complete in the bucket, and the same run continued to step 16 (what a
    resumed sweep does) resumes from it."""
    from pipeline.train import run_training

    proxy, bucket, data, ray_ = ray_on_proxy
    cfg = _ray_cfg(data, bucket)
    outage = _outage_during_upload(proxy, "checkpoint_00000012", seconds=3)
    first = run_training(cfg, name="upload-short")
    assert outage, "no checkpoint upload was interrupted"
    assert first.error is None and first.metrics["step"] == 12
    problem = _incomplete(bucket, "runs/upload-short/checkpoint_00000012/", tmp_path)
    assert not problem, f"{problem}\noutage at {outage}\n{_resumes(ray_.worker_output())}"

    t = time.monotonic()
    result = run_training(cfg.with_overrides(["schedule.steps=16"]), name="upload-short")
    assert result.error is None and result.metrics["step"] == 16
    out = ray_.worker_output()
    assert "resumed from step 12 " in out and "skipping checkpoint" not in out, _resumes(out)
    record("storage.upload_short_outage", runs=1, resume_s=time.monotonic() - t)


@pytest.mark.slow
def test_long_outage_during_checkpoint_upload_stops_naming_the_endpoint_then_resumes(
    ray_on_proxy, tmp_path
):
    """~2 min: the endpoint goes away for good part-way through the step-8 checkpoint upload;
    the run stops with an error naming the endpoint. The step-4 checkpoint stays loadable and,
    once the endpoint is back, the same run resumes from it (not from the step-8 checkpoint
    Ray Train never registered) and finishes."""
    from pipeline.train import run_training

    proxy, bucket, data, ray_ = ray_on_proxy
    cfg = _ray_cfg(data, bucket)
    started = _outage_during_upload(proxy, "checkpoint_00000008", seconds=3600)
    with pytest.raises(Exception) as e:
        run_training(cfg, name="upload-long")
    failed_after_s = time.monotonic() - started[0]
    _names_endpoint(e.value, proxy)

    proxy.up()
    assert _complete(bucket, "runs/upload-long/checkpoint_00000004/", tmp_path)
    complete_8 = _complete(bucket, "runs/upload-long/checkpoint_00000008/", tmp_path)
    t = time.monotonic()
    result = run_training(cfg, name="upload-long")
    assert result.error is None and result.metrics["step"] == 12
    out = ray_.worker_output()
    # Ray Train never registered step 8 (its run snapshot could not be written; at this speed
    # not even step 4's), so the resume is from step 4 whatever part of step 8 is in the bucket
    assert "resumed from step 4 " in out and "resumed from step 8 " not in out, _resumes(out)
    record("storage.upload_long_outage", runs=1, failed_after_s=failed_after_s,
           half_written=not complete_8, resume_s=time.monotonic() - t)  # fmt: skip
