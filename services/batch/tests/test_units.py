"""The batch runner's pure parts: inputs, Azure's output format, parts, overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sluice.batch.api import to_proto, to_resource
from sluice.batch.inputs import InputError, resolve
from sluice.batch.jobs import Job
from sluice.batch.output import (
    OutputError,
    merge_parts,
    output_folder,
    publish_files,
    write_part,
)
from sluice.batch.service import InvalidArgument, Overrides, apply_overrides
from sluice.batch.workspace import open_plain_file
from sluice.common.access import LOG_TAIL_HIDDEN, with_log_tail
from sluice.common.grpc_server import CALLER_READS_LOGS
from sluice.common.isolation import IsolationError
from sluice.common.resources import BatchSettings, EnvironmentSpec


async def test_folder_files_recursive_in_stable_order(tmp_path: Path) -> None:
    for name in ["b.csv", "a.csv", "sub/z.csv", "sub/deeper/c.csv", ".hidden", "aa/x.csv"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n1\n")
    files = await resolve(str(tmp_path), "", tmp_path / "scratch", [tmp_path])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a.csv",
        "aa/x.csv",
        "b.csv",
        "sub/deeper/c.csv",
        "sub/z.csv",
    ]
    got = await resolve(f"file://{tmp_path}/b.csv", "uri_file", tmp_path, [tmp_path])
    assert got == [tmp_path / "b.csv"]


async def test_local_inputs_outside_the_services_folders_are_refused(tmp_path: Path) -> None:
    """The platform reads them, not the caller: its own secrets must not be a job's input."""
    allowed, secrets = tmp_path / "datastore", tmp_path / "state"
    (allowed / "data").mkdir(parents=True)
    (allowed / "data" / "ok.csv").write_text("x\n1\n")
    secrets.mkdir()
    (secrets / "admin-token").write_text("platform-secret\n")
    for given in (str(secrets), f"file://{secrets}/admin-token", f"{allowed}/../state"):
        with pytest.raises(InputError, match="outside the folders the batch service reads"):
            await resolve(given, "", tmp_path / "scratch", [allowed])
    # A link inside an allowed folder that leads out is refused too, naming the file.
    (allowed / "data" / "token.csv").symlink_to(secrets / "admin-token")
    with pytest.raises(InputError, match=r"input file .*token\.csv is outside"):
        await resolve(str(allowed / "data"), "", tmp_path / "scratch", [allowed])
    (allowed / "data" / "token.csv").unlink()
    assert await resolve(str(allowed / "data"), "", tmp_path / "s", [allowed]) == [
        allowed / "data" / "ok.csv"
    ]


@pytest.mark.parametrize(
    ("given", "kind", "message"),
    [
        ("", "", "--input is required"),
        ("{tmp}/missing", "", "does not exist"),
        ("{tmp}/empty", "", "has no files"),
        ("{tmp}/empty", "uri_file", "is a folder but --input-type is uri_file"),
        ("{tmp}/data.csv", "mltable", "use uri_folder or uri_file"),
        ("azureml:sales:1", "", "resolve it first"),
        ("ftp://host/x.csv", "", "ftp:// is not supported"),
        ("s3://bucket/x.csv", "", "s3:// is not supported"),
        ("relative/path", "", "must be absolute"),
        ("http://127.0.0.1:9/x.csv", "", "127.0.0.1 is a loopback address"),
        (  # a remote folder's listing is guarded as a file is
            "http://127.0.0.1:9/data/folder",
            "uri_folder",
            "folder .listing its container. is refused: 127.0.0.1 is a loopback address",
        ),
    ],
)
async def test_bad_inputs_say_why(tmp_path: Path, given: str, kind: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.csv").write_text("x\n1\n")
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        await resolve(given.format(tmp=tmp_path), kind, tmp_path / "scratch", [tmp_path])


def test_list_rows_one_line_each_str(tmp_path: Path) -> None:
    rows = write_part(["a,1", 2, {"k": 3}], tmp_path, 0, "predictions.csv")
    assert rows == 3
    assert (tmp_path / "00000000.txt").read_text() == "a,1\n2\n{'k': 3}\n"


def test_dataframe_rows_space_separated_no_header_no_index(tmp_path: Path) -> None:
    frame = pd.DataFrame({"file": ["a.csv", "b c.csv"], "score": [0.5, 1.0]}, index=[7, 8])
    assert write_part(frame, tmp_path, 3, "predictions.csv") == 2
    assert (tmp_path / "00000003.txt").read_text() == 'a.csv 0.5\n"b c.csv" 1.0\n'


def test_parts_join_in_order_and_a_rerun_replaces(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    write_part(["two"], parts, 2, "p.csv")
    write_part(["zero"], parts, 0, "p.csv")
    write_part(["one-old"], parts, 1, "p.csv")
    write_part(["one"], parts, 1, "p.csv")  # a redelivered mini-batch
    merge_parts(parts, [0, 1, 2], tmp_path / "out" / "p.csv")
    assert (tmp_path / "out" / "p.csv").read_text() == "zero\none\ntwo\n"


def test_parts_that_are_links_are_not_followed(tmp_path: Path) -> None:
    """The parts folder is the deployment user's: a link to the platform's secrets is refused."""
    secret = tmp_path / "admin-token"
    secret.write_text("platform-secret\n")
    parts = tmp_path / "parts"
    write_part(["zero"], parts, 0, "p.csv")
    (parts / "00000001.txt").symlink_to(secret)
    with pytest.raises(OutputError, match=r"part 1 .* not a plain file"):
        merge_parts(parts, [0, 1], tmp_path / "out" / "p.csv")
    os.mkfifo(parts / "00000002.txt")  # would block the runner's read
    with pytest.raises(OutputError, match=r"part 2 .* not a plain file"):
        merge_parts(parts, [0, 2], tmp_path / "out" / "p.csv")
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path)
    with pytest.raises(OutputError, match="not a plain folder"):
        merge_parts(linked, [0], tmp_path / "out" / "p.csv")
    assert not (tmp_path / "out" / "p.csv").exists()


def test_summary_only_files_are_copied_plain_files_only(tmp_path: Path) -> None:
    """A summary_only job's own files reach its output folder; the links and FIFOs its
    workers may plant (for the runner to follow) do not."""
    staged = tmp_path / "staged"
    (staged / "sub" / "deeper").mkdir(parents=True)
    (staged / "a.csv").write_text("a\n")
    (staged / "sub" / "deeper" / "b.txt").write_text("b\n")
    secret = tmp_path / "secret"
    secret.write_text("admin token\n")
    (staged / "link.txt").symlink_to(secret)
    (staged / "linked-folder").symlink_to(tmp_path)
    os.mkfifo(staged / "fifo")  # would block the runner's read
    target = tmp_path / "out" / "score"
    assert publish_files(staged, target) == 2
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    assert copied == ["a.csv", "sub", "sub/deeper", "sub/deeper/b.txt"]
    assert (target / "sub" / "deeper" / "b.txt").read_text() == "b\n"
    assert not (target / "a.csv").stat().st_mode & 0o022
    assert publish_files(tmp_path / "none", target) == 0  # nothing written, nothing copied
    linked = tmp_path / "linked"
    linked.symlink_to(staged)
    with pytest.raises(OutputError, match="not a plain folder"):
        publish_files(linked, target)


def test_parquet_output_needs_dataframes(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    write_part(pd.DataFrame({"y": [1, 2]}), parts, 0, "out.parquet")
    write_part(pd.DataFrame({"y": [3]}), parts, 1, "out.parquet")
    merge_parts(parts, [0, 1], tmp_path / "out.parquet")
    assert pd.read_parquet(tmp_path / "out.parquet")["y"].tolist() == [1, 2, 3]
    with pytest.raises(OutputError, match="must return a pandas DataFrame"):
        write_part(["a"], parts, 2, "out.parquet")


@pytest.mark.parametrize("bad", [None, "text", 3])
def test_run_must_return_rows(tmp_path: Path, bad: object) -> None:
    with pytest.raises(OutputError, match="list or a pandas DataFrame"):
        write_part(bad, tmp_path, 0, "p.csv")


def test_overrides_apply_and_are_checked() -> None:
    base = BatchSettings()
    changed = apply_overrides(
        base, Overrides(mini_batch_size=3, max_retries=0, timeout_s=5, output_file_name="x.csv")
    )
    assert changed.mini_batch_size == 3 and changed.output_file_name == "x.csv"
    assert changed.retry_settings.max_retries == 0 and changed.retry_settings.timeout_s == 5
    assert changed.error_threshold == base.error_threshold
    with pytest.raises(InvalidArgument, match="error_threshold must be at least -1"):
        apply_overrides(base, Overrides(error_threshold=-2))
    with pytest.raises(InvalidArgument, match="plain file name"):
        apply_overrides(base, Overrides(output_file_name="../x.csv"))


def test_mini_batches_cut_by_file_count() -> None:
    job = Job(
        name="j",
        endpoint_name="e",
        deployment_name="d",
        deployment_version=1,
        input="/in",
        files=tuple(f"/in/{i}" for i in range(5)),
        output_path="/out",
        settings=BatchSettings(mini_batch_size=2, max_concurrency_per_instance=3),
        instance_count=2,
    )
    assert job.mini_batches() == [["/in/0", "/in/1"], ["/in/2", "/in/3"], ["/in/4"]]
    assert job.workers == 6


def test_mlflow_requirements_met_by_the_platform_are_left_out(tmp_path: Path) -> None:
    from importlib import metadata

    from sluice.batch.environment import model_environment
    from sluice.common.environments import resolve

    pandas = metadata.version("pandas")
    skinny = metadata.version("mlflow-skinny")
    (tmp_path / "requirements.txt").write_text(
        f"mlflow=={skinny}\npandas=={pandas}\n"
        'colorama==0.4.6; sys_platform == "win32"\n'
        "pandas-extra-thing==1.0\n# comment\n"
    )
    assert model_environment(tmp_path, resolve) == EnvironmentSpec(
        conda_file=yaml.safe_dump({"dependencies": [{"pip": ["pandas-extra-thing==1.0"]}]})
    )


def test_mlflow_conda_yaml_is_read_first_as_online(tmp_path: Path) -> None:
    """MLflow's conda.yaml wins over requirements.txt (as for online deployments). When the
    workers would run the platform's Python, met requirements are left out and the `python`
    line stays (the build warns if that Python is not the one asked for); a model whose
    Python is another one this machine has gets its whole conda file built."""
    from importlib import metadata

    from packaging.version import Version

    from sluice.batch.environment import model_environment
    from sluice.common.environments import ResolvedEnvironment, resolve
    from sluice.common.interpreters import Interpreter

    pandas = metadata.version("pandas")
    (tmp_path / "requirements.txt").write_text("only-in-requirements==1.0\n")
    conda = (
        "channels: [conda-forge]\ndependencies:\n- python=3.8.5\n- pip<=24\n"
        f"- pip:\n  - mlflow\n  - pandas=={pandas}\n  - lightgbm-not-here==4.0\n"
    )
    (tmp_path / "conda.yaml").write_text(conda)
    kept = model_environment(tmp_path, resolve)
    assert kept == EnvironmentSpec(
        conda_file=yaml.safe_dump(
            {"dependencies": ["python=3.8.5", {"pip": ["lightgbm-not-here==4.0"]}]}
        )
    )
    assert any("conda asks for python" in w for w in resolve(kept).warnings)

    def python_3_13_is_here(spec: EnvironmentSpec) -> ResolvedEnvironment:
        return ResolvedEnvironment((), Interpreter("/opt/python3.13", Version("3.13.0")))

    assert model_environment(tmp_path, python_3_13_is_here) == EnvironmentSpec(conda_file=conda)


def test_an_mlflow_models_unreadable_python_env_is_a_build_error(tmp_path: Path) -> None:
    """A malformed python_env.yaml fails the deployment (and its jobs) with a message naming
    the file, as the environment's build errors do, not with a bare YAML traceback."""
    from sluice.batch.environment import model_environment
    from sluice.common.environments import EnvironmentError_, resolve

    (tmp_path / "requirements.txt").write_text("pandas\n")
    (tmp_path / "python_env.yaml").write_text("python: [3.11\n")
    with pytest.raises(EnvironmentError_, match=r"the MLflow model's python_env\.yaml"):
        model_environment(tmp_path, resolve)


def test_each_platform_gives_jobs_workers_nats_users_of_their_own(tmp_path: Path) -> None:
    """`sluice up`: a reloaded configuration; compose and Kubernetes: the auth callout this
    service answers with its seed; an operator's NATS (URL alone): none of the platform's."""
    from sluice.batch.app import job_users
    from sluice.common.nats_auth import JobUsers
    from sluice.common.nats_callout import JobCallout, new_issuer_seed
    from sluice.common.settings import Settings

    seed = tmp_path / "seed"
    seed.write_text(new_issuer_seed() + "\n")
    assert isinstance(job_users(Settings(nats_auth_dir=tmp_path)), JobUsers)
    callout = job_users(Settings(nats_callout_seed_file=seed))
    assert isinstance(callout, JobCallout)
    assert callout.password("job-1") == JobCallout.from_file(seed).password("job-1")  # stable
    assert callout.password("job-1") != callout.password("job-2")
    assert job_users(Settings()) is None
    # The service's own credentials in its URL and no user per job: refused, not handed on.
    with pytest.raises(ValueError, match="deployment code would hold the service's credentials"):
        job_users(Settings(nats_url="nats://batch:secret@127.0.0.1:4222"))


def test_output_is_written_only_in_folders_of_the_platforms(tmp_path: Path) -> None:
    """A job's output path may name a folder a deployment's code writes (its collector's):
    the runner (root) writes there only through folders no other user owns."""
    (tmp_path / "parts").mkdir()
    write_part(["a"], tmp_path / "parts", 0, "x.csv")
    fine = tmp_path / "out" / "new" / "x.csv"
    assert merge_parts(tmp_path / "parts", [0], fine) > 0
    assert fine.read_text().strip() == "a" and [p.name for p in fine.parent.iterdir()] == ["x.csv"]
    if os.geteuid() != 0:
        return
    # A folder of another user's on the way: refused, at invoke (create=False) and at the end.
    theirs = tmp_path / "out" / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(OutputError, match="belongs to another user"):
        merge_parts(tmp_path / "parts", [0], theirs / "x.csv")
    with pytest.raises(OutputError, match="belongs to another user"):
        output_folder(theirs / "sub", create=False)
    assert list(theirs.iterdir()) == []


def test_an_input_is_copied_through_no_link_and_only_as_a_plain_file(tmp_path: Path) -> None:
    folder = tmp_path / "collected" / "sub"
    folder.mkdir(parents=True)
    (folder / "data.jsonl").write_text("{}\n")
    with open_plain_file(folder / "data.jsonl") as handle:
        assert handle.read() == b"{}\n"
    # The folder swapped for a link to somewhere else after it was resolved: refused.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "data.jsonl").write_text("admin token")
    folder.rename(tmp_path / "collected" / "moved")
    folder.symlink_to(secrets)
    with pytest.raises(IsolationError, match="not read through a link"):
        open_plain_file(folder / "data.jsonl")
    # A FIFO (which would block the runner) or a device: refused at once.
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(IsolationError, match="not a plain file"):
        open_plain_file(tmp_path / "fifo")
    with pytest.raises(IsolationError, match="not a plain file"):
        open_plain_file(Path("/dev/zero"))


def test_a_failed_jobs_log_lines_are_not_shown_to_readers() -> None:
    """A job that failed in init() carries the worker's last log lines (what scoring code
    printed): shown to callers who may read logs, left out for a reader (audit-rest
    finding 15), over gRPC and REST alike."""
    message = with_log_tail("worker-0: init() failed.", "KeyError: 'secret-token-123'")
    job = Job(
        name="j",
        endpoint_name="e",
        deployment_name="d",
        deployment_version=1,
        input="/data",
        files=(),
        output_path="/out",
        settings=BatchSettings(),
        status_message=message,
    )
    assert to_proto(job).status_message == message
    reset = CALLER_READS_LOGS.set(False)  # as BearerTokenInterceptor sets it for a reader
    try:
        for shown in (
            to_proto(job).status_message,
            to_resource(job).properties.details.status_message,
        ):
            assert shown == "worker-0: init() failed." + LOG_TAIL_HIDDEN
    finally:
        CALLER_READS_LOGS.reset(reset)
