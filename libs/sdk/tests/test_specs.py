"""Azure ML CLI v2 YAML -> Sluice specs: schemas, defaults, paths, overrides, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from sluice.common.resources import (
    ArtifactRef,
    AuthMode,
    ComputeKind,
    EnvironmentSpec,
    OutputAction,
)
from sluice.sdk.specs import (
    SpecError,
    apply_sets,
    load_batch_deployment,
    load_local_deployment,
    load_online_deployment,
    load_online_endpoint,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def fake_upload(path: Path) -> ArtifactRef:
    """Stands in for the registry upload: records the resolved path as the name."""
    return ArtifactRef(digest="sha256:" + "0" * 64, name=str(path), is_directory=path.is_dir())


def write(tmp_path: Path, text: str, name: str = "spec.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_endpoint_yaml_with_schema_and_aad_token(tmp_path: Path) -> None:
    spec = load_online_endpoint(
        write(
            tmp_path,
            "$schema: https://azuremlschemas.azureedge.net/latest/kubernetesOnlineEndpoint.schema.json\n"
            "name: k8s-ep\nauth_mode: aad_token\ncompute: azureml:my-cluster\n",
        )
    ).spec
    assert spec.auth_mode is AuthMode.aml_token
    assert spec.kind is ComputeKind.kubernetes and spec.compute == "my-cluster"


@pytest.mark.parametrize(
    ("written", "mode"),
    [("Key", AuthMode.key), ("KEY", AuthMode.key), ("AML_Token", AuthMode.aml_token)],
)
def test_auth_mode_is_read_without_regard_to_case(
    tmp_path: Path, written: str, mode: AuthMode
) -> None:
    """Azure's Kubernetes endpoint sample writes `auth_mode: Key`."""
    spec = load_online_endpoint(write(tmp_path, f"name: ep\nauth_mode: {written}\n")).spec
    assert spec.auth_mode is mode


def test_unknown_auth_mode_is_still_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="auth_mode"):
        load_online_endpoint(write(tmp_path, "name: ep\nauth_mode: password\n"))


def test_deployment_paths_resolve_against_the_yaml_folder(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model/model.pkl").write_bytes(b"x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src/score.py").write_text("def init(): pass\n")
    (tmp_path / "env.yml").write_text("dependencies:\n  - pip:\n      - scikit-learn\n")
    spec = load_online_deployment(
        write(
            tmp_path,
            "name: blue\nendpoint_name: ep1\nmodel:\n  path: model\n"
            "code_configuration:\n  code: src\n  scoring_script: score.py\n"
            "environment:\n  conda_file: env.yml\n"
            "liveness_probe:\n  initial_delay: 0\n  period: 3\n"
            "scale_settings:\n  type: target_utilization\n  min_instances: 1\n  max_instances: 4\n",
        ),
        fake_upload,
    ).spec
    assert spec.model.artifact is not None
    assert spec.model.artifact.name == str(tmp_path / "model") and spec.model.artifact.is_directory
    assert spec.code_configuration.scoring_script == "score.py"
    assert "scikit-learn" in spec.environment.conda_file
    assert spec.liveness_probe.initial_delay_s == 0 and spec.liveness_probe.period_s == 3
    assert spec.readiness_probe.failure_threshold == 30
    assert spec.request_settings.request_timeout_ms == 5000
    assert spec.scale_settings.max_instances == 4


def test_registered_model_and_environment_references(tmp_path: Path) -> None:
    spec = load_online_deployment(
        write(
            tmp_path,
            "name: blue\nendpoint_name: ep1\nmodel: azureml:diabetes:3\n"
            "environment: azureml:sklearn-env:1\n",
        ),
        fake_upload,
    ).spec
    assert spec.model.registered == "diabetes:3"
    assert spec.environment.registered == "sklearn-env:1"


def test_missing_scoring_script_is_named(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    path = write(
        tmp_path,
        "name: blue\nendpoint_name: ep1\n"
        "code_configuration:\n  code: src\n  scoring_script: score.py\n",
    )
    with pytest.raises(SpecError, match=r"'score\.py' is not a file"):
        load_online_deployment(path, fake_upload)


def test_a_scoring_script_that_is_not_python_is_refused(tmp_path: Path) -> None:
    """azureml-examples' R plumber deployment names `plumber.R`: refused at load, not an
    instance that dies importing it."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "plumber.R").write_text("#* @get /score\n")
    path = write(
        tmp_path,
        "name: blue\nendpoint_name: ep1\n"
        "code_configuration:\n  code: src\n  scoring_script: plumber.R\n",
    )
    with pytest.raises(SpecError, match=r"'plumber\.R' is not a Python file"):
        load_online_deployment(path, fake_upload)


def test_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="instance_count: Input should be a valid integer"):
        load_online_deployment(
            write(tmp_path, "name: blue\nendpoint_name: ep\ninstance_count: many\n"), fake_upload
        )
    with pytest.raises(SpecError, match="endpoint_name: required field is missing"):
        load_online_deployment(write(tmp_path, "name: blue\n"), fake_upload)
    with pytest.raises(SpecError, match="line 2"):
        load_online_endpoint(write(tmp_path, "name: a\n  b: [\n"))
    with pytest.raises(SpecError, match="expected a mapping"):
        load_online_endpoint(write(tmp_path, "- just\n- a list\n"))


def test_set_overrides_nest_and_parse_scalars() -> None:
    data = apply_sets({"a": {"b": 1}}, ["a.c=2", "d=true", "e.f.g=text"])
    assert data == {"a": {"b": 1, "c": 2}, "d": True, "e": {"f": {"g": "text"}}}
    with pytest.raises(SpecError, match="use key=value"):
        apply_sets({}, ["novalue"])


def test_batch_deployment_example_and_legacy_form(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "code").mkdir()
    (tmp_path / "code/driver.py").write_text("def run(b): return b\n")
    common = (
        "name: nightly\nendpoint_name: be1\nmodel:\n  path: model\n"
        "code_configuration:\n  code: code\n  scoring_script: driver.py\n"
    )
    new = load_batch_deployment(
        write(
            tmp_path, common + "settings:\n  mini_batch_size: 5\n  output_action: summary_only\n"
        ),
        fake_upload,
    ).spec
    old = load_batch_deployment(
        write(tmp_path, common + "mini_batch_size: 5\noutput_action: summary_only\n"), fake_upload
    ).spec
    assert new.settings == old.settings
    assert new.settings.output_action is OutputAction.summary_only
    with pytest.raises(SpecError, match="both at the top level and under settings"):
        load_batch_deployment(
            write(tmp_path, common + "mini_batch_size: 5\nsettings:\n  mini_batch_size: 6\n"),
            fake_upload,
        )


def test_batch_deployment_takes_azures_other_resource_fields(tmp_path: Path) -> None:
    """Azure's schema also has settings.instance_count and resources.instance_type (seen
    in public YAML files): the count is taken, the rest said to be ignored."""
    (tmp_path / "model").mkdir()
    common = "name: nightly\nendpoint_name: be1\nmodel:\n  path: model\n"
    loaded = load_batch_deployment(
        write(
            tmp_path,
            common + "resources:\n  instance_type: Standard_DS2_v2\n  shm_size: 2g\n"
            "settings:\n  instance_count: 3\n  mini_batch_size: 4\n",
        ),
        fake_upload,
    )
    assert loaded.spec.instance_count == 3 and loaded.spec.settings.mini_batch_size == 4
    assert any("resources.instance_type does not apply" in w for w in loaded.warnings)
    assert any("resources.shm_size does not apply" in w for w in loaded.warnings)
    with pytest.raises(SpecError, match="disagree"):
        load_batch_deployment(
            write(
                tmp_path,
                common + "resources:\n  instance_count: 2\nsettings:\n  instance_count: 3\n",
            ),
            fake_upload,
        )


def test_the_shipped_examples_load(tmp_path: Path) -> None:
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("model"))
    for folder in ("online/model-1/model", "online/model-2/model", "batch/model"):
        (copy / folder).mkdir(parents=True)  # stand-ins for the trained models
    for name in ("blue-deployment.yml", "green-deployment.yml"):
        spec = load_online_deployment(copy / "online" / name, fake_upload).spec
        assert spec.endpoint_name == "my-endpoint"
        assert spec.request_settings.max_concurrent_requests_per_instance == 4
    batch = load_batch_deployment(copy / "batch/deployment.yml", fake_upload).spec
    assert batch.compute == "batch-cluster" and batch.settings.max_concurrency_per_instance == 2


MLMODEL = "flavors:\n  python_function:\n    loader_module: mlflow.lightgbm\n"
MLFLOW_CONDA = (
    "channels: [conda-forge]\ndependencies:\n- python=3.11.9\n- pip<=24.0\n"
    "- pip:\n  - mlflow==2.17.0\n  - lightgbm==4.5.0\nname: mlflow-env\n"
)


def no_code_deployment(tmp_path: Path, files: dict[str, str], extra: str = "") -> Path:
    model = tmp_path / "model"
    model.mkdir()
    for name, text in {"MLmodel": MLMODEL, **files}.items():
        (model / name).write_text(text)
    return write(tmp_path, f"name: blue\nendpoint_name: ep\nmodel:\n  path: model\n{extra}")


def test_no_code_mlflow_deployment_uses_the_models_conda_yaml(tmp_path: Path) -> None:
    path = no_code_deployment(
        tmp_path, {"conda.yaml": MLFLOW_CONDA, "requirements.txt": "ignored==1\n"}
    )
    spec = load_online_deployment(path, fake_upload).spec
    assert spec.environment.conda_file == MLFLOW_CONDA


def test_no_code_mlflow_deployment_uses_requirements_and_python_env(tmp_path: Path) -> None:
    import yaml

    path = no_code_deployment(
        tmp_path,
        {
            "requirements.txt": "# written by mlflow\nmlflow==2.17.0\nlightgbm==4.5.0\n",
            "python_env.yaml": "python: 3.11.9\nbuild_dependencies: [pip]\n"
            "dependencies: [-r requirements.txt]\n",
        },
    )
    conda = yaml.safe_load(load_online_deployment(path, fake_upload).spec.environment.conda_file)
    assert conda == {
        "dependencies": ["python=3.11.9", {"pip": ["mlflow==2.17.0", "lightgbm==4.5.0"]}]
    }


def test_an_explicit_environment_or_a_script_keeps_its_own(tmp_path: Path) -> None:
    (tmp_path / "env.yml").write_text("dependencies:\n  - pip:\n      - scikit-learn\n")
    path = no_code_deployment(
        tmp_path, {"conda.yaml": MLFLOW_CONDA}, "environment:\n  conda_file: env.yml\n"
    )
    spec = load_online_deployment(path, fake_upload).spec
    assert "scikit-learn" in spec.environment.conda_file
    assert "lightgbm" not in spec.environment.conda_file


def test_an_oversized_yaml_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    spec = tmp_path / "endpoint.yml"
    spec.write_text("name: big\ndescription: " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(SpecError, match="at most 1048576"):
        load_online_endpoint(spec)


def test_data_collector_in_azures_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: blue\nendpoint_name: ep\ndata_collector:\n  collections:\n"
        "    model_inputs: {enabled: 'True'}\n    model_outputs: {enabled: 'False'}\n"
        "    request: {enabled: true, data: {name: x, path: azureml://datastores/d/paths/p}}\n"
        "  sampling_rate: 0.25\n  rolling_rate: Minute\n"
        "  request_logging: {capture_headers: [a]}\n",
    )
    dc = load_online_deployment(path, fake_upload).spec.data_collector
    assert dc.enabled == ["model_inputs", "request"]
    assert dc.sampling_rate == 0.25 and dc.rolling_rate == "minute"
    assert (
        load_online_deployment(
            write(tmp_path, "name: b\nendpoint_name: ep\n"), fake_upload
        ).spec.data_collector.enabled
        == []
    )


def test_data_collector_fields_naming_azure_resources_are_ignored_with_a_warning(
    tmp_path: Path,
) -> None:
    """A collection's data asset and path, its client_id and request_logging's headers are
    accepted, not used, and said to be so (with where Sluice writes instead)."""
    from sluice.sdk.specs import edit_online_deployment

    path = write(
        tmp_path,
        "name: blue\nendpoint_name: ep\ndata_collector:\n  collections:\n"
        "    model_inputs:\n      enabled: 'True'\n"
        "      client_id: 6d0f3e1c-0000-4000-8000-000000000000\n"
        "      data: {name: inputs, path: azureml://datastores/mine/paths/x, version: 1}\n"
        "    model_outputs: {enabled: 'True'}\n"
        "  request_logging: {capture_headers: [x-user, x-tenant]}\n",
    )
    loaded = load_online_deployment(path, fake_upload)
    assert loaded.spec.data_collector.enabled == ["model_inputs", "model_outputs"]
    assert loaded.warnings == [
        f"{path}: data_collector.collections.model_inputs.data is ignored: Sluice writes "
        "model_inputs under <state>/datastore/workspaceblobstore/modelDataCollector/ep/blue/"
        "model_inputs (azureml://datastores/workspaceblobstore/paths/modelDataCollector/ep/"
        "blue/model_inputs; `sluice online-deployment collected` reads it)",
        f"{path}: data_collector.collections.model_inputs.client_id is ignored: the "
        "deployment's own user writes the collected files (no managed identity)",
        f"{path}: data_collector.request_logging.capture_headers is ignored: `request` "
        "records carry the method and path, no headers",
    ]
    # Nothing of it is stored: an update without a file says nothing, unless it sets one.
    kept = edit_online_deployment(loaded.spec, ["instance_count=2"])
    assert kept.warnings == []
    edited = edit_online_deployment(
        loaded.spec, ["data_collector.collections.model_outputs.data.path=azureml://x"]
    )
    assert [w.split(" is ignored")[0] for w in edited.warnings] == [
        "command line: data_collector.collections.model_outputs.data"
    ]
    plain = write(
        tmp_path,
        "name: b\nendpoint_name: ep\ndata_collector:\n  collections:\n"
        "    model_inputs: {enabled: 'True'}\n  request_logging: {}\n",
    )
    assert load_online_deployment(plain, fake_upload).warnings == []


@pytest.mark.parametrize(
    ("fragment", "error"),
    [
        ("collections: {mine: {enabled: 'True'}}", "collection 'mine' is not collected"),
        ("collections: {model_inputs: {enabled: 'yes'}}", "enabled must be 'True' or 'False'"),
        ("sampling_rate: 1.5", "sampling_rate must be between 0.0 and 1.0"),
        ("rolling_rate: week", "rolling_rate must be minute, hour or day"),
    ],
)
def test_a_bad_data_collector_is_refused(tmp_path: Path, fragment: str, error: str) -> None:
    path = write(tmp_path, f"name: b\nendpoint_name: ep\ndata_collector: {{{fragment}}}\n")
    with pytest.raises(SpecError, match=error):
        load_online_deployment(path, fake_upload)


def test_update_without_a_file_keeps_or_edits_the_data_collector() -> None:
    from sluice.common.resources import DataCollection, DataCollector, OnlineDeploymentSpec
    from sluice.sdk.specs import edit_online_deployment

    collector = DataCollector(
        collections={"model_inputs": DataCollection(enabled=True)}, sampling_rate=0.5
    )
    current = OnlineDeploymentSpec(name="blue", endpoint_name="ep", data_collector=collector)
    kept = edit_online_deployment(current, ["instance_count=2"]).spec
    assert kept.instance_count == 2 and kept.data_collector == collector
    edited = edit_online_deployment(current, ["data_collector.sampling_rate=0.1"]).spec
    assert edited.data_collector.sampling_rate == 0.1
    assert edited.data_collector.enabled == ["model_inputs"]


def test_a_link_in_the_yaml_folder_leading_out_of_it_is_refused(tmp_path: Path) -> None:
    """`model: path: model`, where `model` is a link to the user's secrets: nothing uploaded."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "credentials").write_text("aws_secret_access_key = do-not-upload\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "src").mkdir()
    (project / "src/score.py").write_text("def init(): pass\n")
    (project / "model").symlink_to(secrets)
    (project / "inside").symlink_to(project / "src")
    uploaded: list[Path] = []

    def recording_upload(path: Path) -> ArtifactRef:
        uploaded.append(path)
        return fake_upload(path)

    def deployment(model: str, code: str = "src") -> Path:
        return write(
            project,
            f"name: blue\nendpoint_name: ep1\nmodel:\n  path: {model}\n"
            f"code_configuration:\n  code: {code}\n  scoring_script: score.py\n",
        )

    with pytest.raises(SpecError, match=r"path: 'model' is a symbolic link to .*secrets"):
        load_online_deployment(deployment("model"), recording_upload)
    assert uploaded == []
    # Written out, the same folder is the YAML's explicit choice; a link that stays in the
    # folder is followed.
    spec = load_online_deployment(deployment("../secrets", code="inside"), recording_upload).spec
    assert spec.model.artifact is not None
    assert uploaded == [secrets.resolve(), (project / "src").resolve()]


def test_egress_public_network_access_is_read_in_any_case_and_kept_by_updates(
    tmp_path: Path,
) -> None:
    from sluice.sdk.specs import edit_online_deployment

    def load(line: str) -> str:
        path = write(tmp_path, f"name: b\nendpoint_name: ep\n{line}")
        return load_online_deployment(path, fake_upload).spec.egress_public_network_access

    assert load("") == "enabled"  # Azure's default
    assert load("egress_public_network_access: Disabled\n") == "disabled"
    assert load("egress_public_network_access: enabled\n") == "enabled"
    with pytest.raises(SpecError, match="egress_public_network_access must be enabled or dis"):
        load("egress_public_network_access: sometimes\n")
    path = write(tmp_path, "name: b\nendpoint_name: ep\negress_public_network_access: disabled\n")
    current = load_online_deployment(path, fake_upload).spec
    assert edit_online_deployment(current, ["instance_count=2"]).spec.egress_disabled
    edited = edit_online_deployment(current, ["egress_public_network_access=enabled"]).spec
    assert not edited.egress_disabled


def test_local_deployments_get_the_environment_the_platform_would_build(tmp_path: Path) -> None:
    """--local builds what the platform builds: the same EnvironmentSpec as a create's (inline
    conda file, an MLflow model's own); a registered environment cannot be read without the
    registry: a warning, and the CLI's own Python."""
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("model"))
    (copy / "online/model-1/model").mkdir(parents=True)
    blue = copy / "online/blue-deployment.yml"
    local = load_local_deployment(blue)
    assert local.environment == load_online_deployment(blue, fake_upload).spec.environment
    assert "scikit-learn" in local.environment.conda_file and local.warnings == []
    mlflow = no_code_deployment(tmp_path, {"conda.yaml": MLFLOW_CONDA})
    assert load_local_deployment(mlflow).environment.conda_file == MLFLOW_CONDA
    registered = load_local_deployment(blue, ["environment=azureml:my-env:1"])
    assert registered.environment == EnvironmentSpec()
    assert registered.warnings == [
        "the registered environment my-env:1 cannot be built locally; the deployment runs in "
        "this Python environment"
    ]


def test_tags_that_are_numbers_or_booleans_are_stored_as_text(tmp_path: Path) -> None:
    """batch/deploy-models/imagenet-classifier/deployment-by-batch.yml writes
    `tags: {device_batching: 16}`; az stores every tag as a string."""
    from sluice.sdk.specs import load_batch_endpoint

    tags = "tags:\n  device_batching: 16\n  ratio: 0.5\n  gpu: true\n  team: ml\n"
    expected = {"device_batching": "16", "ratio": "0.5", "gpu": "True", "team": "ml"}
    (tmp_path / "model").mkdir()
    assert load_online_endpoint(write(tmp_path, f"name: ep\n{tags}")).spec.tags == expected
    assert load_batch_endpoint(write(tmp_path, f"name: ep\n{tags}")).spec.tags == expected
    for load in (load_online_deployment, load_batch_deployment):
        path = write(tmp_path, f"name: d\nendpoint_name: ep\nmodel:\n  path: model\n{tags}")
        assert load(path, fake_upload).spec.tags == expected
    # --set parses its value as az does (16 is a number): the same text
    spec = load_online_endpoint(None, ["tags.device_batching=16"], name="ep").spec
    assert spec.tags == {"device_batching": "16"}
    with pytest.raises(SpecError, match=r"tags\.nested: Input should be a valid string"):
        load_online_endpoint(write(tmp_path, "name: ep\ntags:\n  nested: [1, 2]\n"))


def test_an_update_without_a_file_changes_the_script_or_names_registered_assets() -> None:
    """deploy-moe-binary-payloads.sh: `online-deployment update -n D -e E --set
    code_configuration.scoring_script=X` keeps the stored code and runs another script of
    it (the registry checks that it is there); a registered model or environment names no
    file either. What would need a file stays refused."""
    from sluice.common.resources import (
        BatchDeploymentSpec,
        CodeConfiguration,
        ModelRef,
        OnlineDeploymentSpec,
    )
    from sluice.sdk.specs import edit_batch_deployment, edit_online_deployment

    code = ArtifactRef(digest="sha256:" + "1" * 64, name="src", is_directory=True)
    stored = dict(
        name="blue",
        endpoint_name="ep",
        model=ModelRef(registered="m:1"),
        code_configuration=CodeConfiguration(code=code, scoring_script="score.py"),
        environment=EnvironmentSpec(conda_file="dependencies: [python=3.12]\n"),
    )
    current = OnlineDeploymentSpec(**stored)
    edited = edit_online_deployment(
        current, ["code_configuration.scoring_script=score_binary.py", "instance_count=2"]
    ).spec
    assert edited.code_configuration == CodeConfiguration(
        code=code, scoring_script="score_binary.py"
    )
    assert (edited.instance_count, edited.model, edited.environment) == (
        2, current.model, current.environment
    )  # fmt: skip
    batch = edit_batch_deployment(
        BatchDeploymentSpec(**stored), ["code_configuration.scoring_script=batch.py"]
    ).spec
    assert batch.code_configuration.scoring_script == "batch.py" and batch.code_configuration.code
    named = edit_online_deployment(
        current, ["model=azureml:m:2", "environment=azureml:sklearn-env@latest"]
    ).spec
    assert named.model == ModelRef(registered="m:2")
    assert named.environment == EnvironmentSpec(registered="sklearn-env@latest")
    assert named.code_configuration == current.code_configuration
    for edit in (
        "model=./model",
        "environment.conda_file=conda.yml",
        "code_configuration.code=./src",
        "code_configuration.scoring_script=",
    ):
        with pytest.raises(SpecError, match="can only be changed with --file"):
            edit_online_deployment(current, [edit])
    no_code = current.model_copy(update={"code_configuration": CodeConfiguration()})
    with pytest.raises(SpecError, match=r"has no code_configuration\.code to run 'x\.py' from"):
        edit_online_deployment(no_code, ["code_configuration.scoring_script=x.py"])


def test_a_pipeline_batch_deployment_is_refused_by_name(tmp_path: Path) -> None:
    """cli/endpoints/batch/deploy-pipelines/*/deployment.yml: `type: pipeline` with a
    `component:`; refused as what it is, not as an enum's wrong value."""
    path = write(
        tmp_path,
        "name: hello-batch-dpl\nendpoint_name: hello-pipeline\ntype: pipeline\n"
        "component: azureml:hello_batch@latest\n"
        "settings:\n  default_compute: batch-cluster\n  continue_on_step_failure: false\n",
    )
    with pytest.raises(SpecError) as refused:
        load_batch_deployment(path, fake_upload)
    assert str(refused.value) == (
        f"{path}: pipeline batch deployments (type: pipeline) are not supported by Sluice: only "
        "model deployments run (type: model, with a model and, unless it is an MLflow model, a "
        "code_configuration)"
    )


CUSTOM_CONTAINER = (
    "name: tfserving-deployment\nendpoint_name: tfserving-endpoint\n"
    "model:\n  path: ./half_plus_two\n"
    "environment:\n  image: docker.io/tensorflow/serving:latest\n  inference_config:\n"
    "    liveness_route: {port: 8501, path: /v1/models/half_plus_two}\n"
    "    readiness_route: {port: 8501, path: /v1/models/half_plus_two}\n"
    "    scoring_route: {port: 8501, path: '/v1/models/half_plus_two:predict'}\n"
)


def test_a_custom_container_is_refused_and_with_a_script_warned(tmp_path: Path) -> None:
    """custom-container/tfserving (the image's own server on its routes, no score.py) would
    run something else here: refused. minimal/single-model gives a score.py too: Sluice's
    server runs it, with a warning that the routes are not served."""
    (tmp_path / "half_plus_two").mkdir()
    path = write(tmp_path, CUSTOM_CONTAINER)
    message = (
        f"{path}: custom containers (environment.inference_config) are not run by Sluice: "
        "it serves every deployment with its own inference server"
    )
    for load in (load_online_deployment, load_batch_deployment):
        with pytest.raises(SpecError) as refused:
            load(path, fake_upload)
        assert str(refused.value).startswith(message)
    with pytest.raises(SpecError, match=re.escape(message)):
        load_local_deployment(path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src/score.py").write_text("def init(): pass\n")
    scripted = write(
        tmp_path,
        CUSTOM_CONTAINER + "code_configuration:\n  code: src\n  scoring_script: score.py\n",
    )
    warning = (
        f"{scripted}: environment.inference_config is ignored: the container's routes are not "
        "served; Sluice's inference server runs code_configuration's scoring script at /score"
    )
    assert warning in load_online_deployment(scripted, fake_upload).warnings
    assert warning in load_local_deployment(scripted).warnings


def test_azure_only_fields_read_back_by_show_say_why_they_are_ignored() -> None:
    """`update --set public_network_access=disabled` changes nothing that Sluice enforces;
    `show` says enabled, and the warning says so rather than only 'ignored'."""
    loaded = load_online_endpoint(
        None, ["public_network_access=disabled", "identity.type=system_assigned"], name="ep"
    )
    assert loaded.warnings == [
        "command line: identity is an Azure-only field; ignored (no managed identities: "
        "deployments run as the platform's own users)",
        "command line: public_network_access is an Azure-only field; ignored (not enforced: "
        "the gateway serves every endpoint to whoever reaches it, so `show` keeps "
        "public_network_access: enabled)",
    ]
