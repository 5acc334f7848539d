"""A trained model back from its checkpoint, for evaluation and test-time sweeps.

    with contextlib.ExitStack() as stack:
        r = restore("runs/tiny", stack)            # a run directory: its newest complete checkpoint
        r = restore("s3://b/runs/tiny/checkpoint_00000400", stack)   # or one checkpoint
        r.model, r.config, r.step, r.checkpoint, r.mlflow_run_id

`uri` is a checkpoint directory (it holds `trainer.pt`), a run directory holding
`checkpoint_*` directories, or a training sweep's directory (`<storage>/<sweep name>`, holding
`summary.json`): its best trial's best checkpoint (`best.checkpoint`); local or s3://. A run directory's checkpoints are tried newest
first; a damaged or half-written one is named and skipped (`pipeline.checkpoints.store.verify`). The
model carries the weights evaluation uses in training (the EMA averages when the run kept them),
evaluates in the slices training used (`resources.batch_chunk`) and is in eval mode. An s3:// checkpoint is downloaded into a temporary directory that `stack`
removes on exit. `check_fits(r, meta, uri)` says whether a dataset is in the model's encoding.
`load_model(tracking_uri, run_id)` builds the model an MLflow run logged (`log_model`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.checkpoints import store as ckpt
from pipeline.checkpoints.directory import CheckpointStore, Stored, filesystem, newest_complete
from pipeline.config.run import ConfigError, RunConfig
from pipeline.data.storage import absolute
from pipeline.training.state import batch_chunk
from trm import TRM, TRMConfig
from trm.optim import EMA


@dataclass
class Restored:
    model: TRM
    """Eval mode, on the requested device, EMA weights where the run kept an EMA."""
    config: RunConfig
    """The run config the checkpoint was trained with."""
    model_config: TRMConfig
    """The resolved model config (dataset fields filled in)."""
    step: int
    """Training steps taken when the checkpoint was written."""
    checkpoint: str
    """URI of the checkpoint directory that was loaded."""
    mlflow_run_id: str
    """The training run's MLflow run id ('' when it was not tracked)."""


def restore(
    uri: str,
    stack: contextlib.ExitStack,
    *,
    device: torch.device | str = "cpu",
    say: Callable[[str], None] = print,
) -> Restored:
    """The model of the newest complete checkpoint at `uri` (see the module docstring);
    `ckpt.CheckpointError` naming `uri` when there is none."""
    uri = sweep_best(uri, say)
    candidates = list(_candidates(uri))
    if not candidates:
        raise ckpt.CheckpointError(
            f"{uri!r} is neither a checkpoint directory (with {ckpt.TRAINER_FILE}) nor a run "
            f"directory holding checkpoint_* directories"
        )
    chosen = newest_complete(candidates, stack, say)
    assert chosen is not None  # candidates is not empty: a complete one or CheckpointError
    state = ckpt.load(chosen[1], ckpt.TRAINER_FILE)
    mcfg = TRMConfig.from_dict(state["model_config"])
    model = TRM(mcfg)
    model.load_state_dict(EMA.fold(state["model"], state.get("ema")))
    config = RunConfig.from_dict(state["config"])
    # the slices training evaluated in on this kind of device: the same arithmetic
    model.batch_chunk = batch_chunk(config.resources.batch_chunk, mcfg, torch.device(device))
    return Restored(
        model=model.to(device).eval(),
        config=config,
        model_config=mcfg,
        step=int(state["step"]),
        checkpoint=chosen[0],
        mlflow_run_id=state.get("mlflow_run_id", ""),
    )


def sweep_best(uri: str, say: Callable[[str], None] = print) -> str:
    """The best checkpoint of the training sweep whose directory is `uri` (its summary.json
    `best.checkpoint`), else `uri` itself."""
    import json

    from pipeline.data.storage import open_storage

    store = open_storage(uri)
    if not store.exists(SWEEP_SUMMARY):
        return uri
    best = json.loads(store.read_bytes(SWEEP_SUMMARY)).get("best") or {}
    if not best.get("checkpoint"):
        raise ckpt.CheckpointError(f"{uri!r} is a sweep whose summary names no best checkpoint")
    say(f"{uri} is a sweep: its best checkpoint is {best['checkpoint']} "
        f"({best.get('metric')} {best.get('value')} at step {best.get('step')})")  # fmt: skip
    return str(best["checkpoint"])


SWEEP_SUMMARY = "summary.json"
"""What a finished training sweep leaves in its directory (`pipeline.sweeping.report`)."""


def check_fits(r: Restored, meta: Any, uri: str) -> None:
    """`ConfigError` naming both when the dataset at `uri` is not in the model's encoding."""
    m = r.model_config
    if (
        m.seq_len != meta.seq_len
        or m.vocab_size != meta.vocab_size
        or m.num_puzzle_identifiers < meta.num_puzzle_identifiers
    ):
        raise ConfigError(
            f"the model of {r.checkpoint} (seq_len {m.seq_len}, vocab_size {m.vocab_size}, "
            f"{m.num_puzzle_identifiers} puzzle identifiers) does not fit the {meta.task} "
            f"dataset at {uri} (seq_len {meta.seq_len}, vocab_size {meta.vocab_size}, "
            f"{meta.num_puzzle_identifiers} puzzle identifiers)"
        )


def _candidates(uri: str) -> Iterator[tuple[str, Any]]:
    """(name, context giving a local directory), newest first: `uri` itself when it is a
    checkpoint, else the checkpoints inside it."""
    import pyarrow.fs as pafs

    uri = uri.rstrip("/")
    fs, path = filesystem(uri)
    trainer = fs.get_file_info(f"{path}/{ckpt.TRAINER_FILE}")
    if trainer.type == pafs.FileType.File:
        yield (uri if "://" in uri else absolute(uri)), Stored(fs, path).opener()
        return
    yield from CheckpointStore(uri if "://" in uri else absolute(uri)).candidates()


def load_model(uri: str, run_id: str, which: str = "best") -> TRM:
    """The TRM that MLflow run `run_id` logged as `which` ('best' or 'final': the weights it
    evaluated with), on the CPU, in eval mode:

    model = load_model("http://mlflow:5000", run_id)
    """
    from pipeline.tracking.tracker import logged_model

    d = logged_model(uri, run_id, which)
    model = TRM(TRMConfig.from_dict(d["model_config"]))
    model.load_state_dict(d["state_dict"])
    return model.eval()
