"""AWS access the way cluster pods get it (EKS Pod Identity), with no static key anywhere.

A pod sees `AWS_CONTAINER_CREDENTIALS_FULL_URI` (the node's Pod Identity agent) and
`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (its service-account token); the agent answers the token
with temporary credentials of the role bound to the service account. Here a stand-in agent on
loopback serves credentials of a role assumed through STS on a moto server that enforces IAM
authentication (`INITIAL_NO_AUTH_ACTION_COUNT`: only the setup calls go unsigned), and every
static AWS key is removed from the environment. boto3 (datasets) and pyarrow (Ray Train's
`storage_path`) must both find the credentials through the agent.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import free_port, moto_process

from pipeline.config.run import ConfigError
from pipeline.data import ShardStream, StorageError, build_sudoku, open_storage, verify_dataset
from pipeline.training.preflight import check_storage_writable

pytestmark = pytest.mark.server  # its own moto server (the `pod` fixture)

STATIC_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
               "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
               "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")  # fmt: skip
SETUP_CALLS = 6  # the unsigned calls of `_setup_account`, in order
TOKEN = "service-account-token-" + uuid.uuid4().hex


class _Agent(BaseHTTPRequestHandler):
    """GET /v1/credentials with `Authorization: <token>` -> the role's credentials JSON."""

    def do_GET(self):
        agent = self.server
        agent.requests += 1
        if self.path != "/v1/credentials":
            return self._answer(404, {"Code": "NotFound", "Message": self.path})
        if self.headers.get("Authorization") != TOKEN:
            return self._answer(401, {"Code": "AccessDenied",
                                      "Message": "service account token not accepted"})  # fmt: skip
        return self._answer(200, agent.credentials)

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # quiet
        pass


def _setup_account(url: str, bucket: str) -> dict:
    """Unsigned setup (the first SETUP_CALLS requests), then an STS AssumeRole signed with the
    agent user's key: the role's temporary credentials in the agent's JSON form."""
    import boto3

    kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup",
              aws_secret_access_key="setup")  # fmt: skip
    iam, s3 = boto3.client("iam", **kw), boto3.client("s3", **kw)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
             "Principal": {"AWS": "arn:aws:iam::123456789012:user/pod-identity-agent"}}]}  # fmt: skip
    role = iam.create_role(RoleName="trm-ray", AssumeRolePolicyDocument=json.dumps(trust))
    s3_access = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
                 "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}  # fmt: skip
    iam.put_role_policy(RoleName="trm-ray", PolicyName="s3", PolicyDocument=json.dumps(s3_access))
    iam.create_user(UserName="pod-identity-agent")
    assume = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
              "Resource": role["Role"]["Arn"]}]}  # fmt: skip
    iam.put_user_policy(UserName="pod-identity-agent", PolicyName="assume",
                        PolicyDocument=json.dumps(assume))  # fmt: skip
    key = iam.create_access_key(UserName="pod-identity-agent")["AccessKey"]
    s3.create_bucket(Bucket=bucket)  # the 6th and last unsigned call
    sts = boto3.client("sts", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id=key["AccessKeyId"],
                       aws_secret_access_key=key["SecretAccessKey"])  # fmt: skip
    c = sts.assume_role(RoleArn=role["Role"]["Arn"], RoleSessionName="pod")["Credentials"]
    expires = c["Expiration"].astimezone(datetime.timezone.utc)
    return {"AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
            "Token": c["SessionToken"], "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """(bucket, agent server, token file) with the environment of a pod: the agent's URI and
    token file, the moto endpoint, no static keys. Its own moto server (IAM enforcement is per
    server process)."""
    root = tmp_path_factory.mktemp("pod-identity")
    bucket = f"pod-{uuid.uuid4().hex[:10]}"
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}
    with moto_process(root / "moto.log", env=env) as url:
        agent = ThreadingHTTPServer(("127.0.0.1", free_port()), _Agent)
        agent.requests, agent.credentials = 0, _setup_account(url, bucket)
        thread = threading.Thread(target=agent.serve_forever, daemon=True)
        thread.start()
        token_file = root / "eks-pod-identity-token"
        token_file.write_text(TOKEN)
        mp = pytest.MonkeyPatch()
        for var in STATIC_KEYS:
            mp.delenv(var, raising=False)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(root / "no-credentials"))
        mp.setenv("AWS_CONFIG_FILE", str(root / "no-config"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_ENDPOINT_URL", url)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI",
                  f"http://127.0.0.1:{agent.server_port}/v1/credentials")  # fmt: skip
        mp.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
        try:
            yield bucket, agent, token_file
        finally:
            mp.undo()
            agent.shutdown()
            agent.server_close()


def test_moto_enforces_iam_and_no_static_key_is_set(pod):
    import boto3
    from botocore.exceptions import ClientError

    bucket, _, _ = pod
    assert not [v for v in STATIC_KEYS if v in os.environ]
    forged = boto3.client("s3", aws_access_key_id="AKIAFORGED0000000000",
                          aws_secret_access_key="forged")  # fmt: skip
    with pytest.raises(ClientError, match=r"InvalidAccessKeyId|AccessDenied|not valid"):
        forged.list_objects_v2(Bucket=bucket)


def test_dataset_build_and_streaming_through_pod_identity(pod):
    import boto3

    bucket, agent, _ = pod
    creds = boto3.Session().get_credentials()
    assert creds.method == "container-role" and creds.access_key.startswith("ASIA")
    before = agent.requests
    uri = f"s3://{bucket}/datasets/sudoku4"
    build_sudoku(uri, size=4, num_train=64, num_test=16, seed=0, rows_per_shard=32)
    verify_dataset(uri)
    batches = list(ShardStream(uri, "train", batch_size=16, seed=0))
    assert len(batches) == 4 and all(b["inputs"].shape == (16, 16) for b in batches)
    assert np.isin(batches[0]["inputs"], np.arange(6)).all()
    assert agent.requests > before  # the credentials came from the agent


def test_pyarrow_s3_through_pod_identity(pod):
    import pyarrow.fs as pafs

    bucket, agent, _ = pod
    before = agent.requests
    fs, path = pafs.FileSystem.from_uri(f"s3://{bucket}/pyarrow/probe.txt")
    with fs.open_output_stream(path) as f:
        f.write(b"written with pod credentials")
    with fs.open_input_stream(path) as f:
        assert f.read() == b"written with pod credentials"
    assert agent.requests > before


def test_a_wrong_token_is_refused_with_a_clear_error(pod):
    import pyarrow.fs as pafs

    bucket, agent, token_file = pod
    token_file.write_text("not-the-token")
    try:
        before = agent.requests
        with pytest.raises(StorageError, match=r"cannot get AWS credentials for s3://.*401"):
            open_storage(f"s3://{bucket}/datasets/sudoku4").read_bytes("meta.json")
        assert agent.requests > before
        # pyarrow goes on without credentials and only reports the store's refusal (moto: a
        # bare HTTP 500), so a run checks its storage through boto3 before Ray Train starts
        with pytest.raises(OSError):
            pafs.FileSystem.from_uri(f"s3://{bucket}/pyarrow/probe.txt")[0].get_file_info(
                f"{bucket}/pyarrow/probe.txt"
            )
        with pytest.raises(ConfigError, match=r"storage_path .* cannot get AWS credentials.*401"):
            check_storage_writable(f"s3://{bucket}/runs")
    finally:
        token_file.write_text(TOKEN)


@pytest.mark.slow
@pytest.mark.ray  # starts its own Ray (the pod's environment)
def test_ray_train_checkpoints_to_s3_through_pod_identity(pod, tmp_path):
    import boto3
    import ray
    from tiny_run import tiny_run

    from pipeline.train import run_training

    bucket, _, _ = pod
    data = f"s3://{bucket}/datasets/train4"
    build_sudoku(data, size=4, num_train=128, num_test=16, seed=1, min_clues=10)
    cfg = tiny_run(data, f"s3://{bucket}/runs", "name=pod", "model.puzzle_emb_ndim=0",
                   "schedule.steps=4", "schedule.log_every=2")  # fmt: skip
    os.environ["RAY_TRAIN_V2_ENABLED"] = "1"
    # its processes inherit the pod environment
    ray.init(address="local", num_cpus=2, include_dashboard=True)
    try:
        result = run_training(cfg)
    finally:
        ray.shutdown()
    assert result.error is None and result.metrics["step"] == 4
    # a fresh session: boto3's default one may hold the static keys an earlier test cached
    keys = [o["Key"] for o in boto3.Session().client("s3").list_objects_v2(
        Bucket=bucket, Prefix="runs/pod/")["Contents"]]  # fmt: skip
    assert "runs/pod/checkpoint_00000004/trainer.pt" in keys, keys
