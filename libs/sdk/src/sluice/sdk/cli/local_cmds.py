"""The `--local` side of the online commands: the inference server on this machine."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sluice.common.environments import EnvironmentBuilder, EnvironmentError_
from sluice.common.resources import EnvironmentSpec
from sluice.common.settings import Settings
from sluice.sdk.cli.common import warn
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, err_console, render
from sluice.sdk.local import LocalDeployment, LocalRunError, LocalRunner
from sluice.sdk.specs import load_local_deployment


def runner() -> LocalRunner:
    return LocalRunner(Settings().state_dir.absolute())


def build(environment: EnvironmentSpec) -> str | None:
    """The deployment's environment, built (or found built) as the platform builds it, in
    the platform's folder of environments (shared with its provisioner): its Python, or
    None when the deployment names none (it runs in this Python environment)."""
    if environment == EnvironmentSpec():
        return None
    builder = EnvironmentBuilder(Settings().envs_folder)
    with err_console.status("Building the deployment's environment (once; then cached)…"):
        try:
            built = asyncio.run(builder.ensure(environment))
        except EnvironmentError_ as exc:
            raise CliError(f"the deployment's environment could not be built: {exc}") from None
    warn([f"environment: {w}" for w in built.warnings])
    return built.python


# Tables name Azure's keys as the platform's own tables do (`online-deployment show`).
TABLE_HEADERS = {"endpoint_name": "endpoint", "provisioning_state": "state"}


def view(dep: LocalDeployment) -> dict[str, object]:
    """A local deployment under Azure's keys, as `az ml online-deployment show --local`
    prints it (scripts poll `--query provisioning_state`); `scoring_uri` and `log` are
    Sluice's additions."""
    return {
        "endpoint_name": dep.endpoint,
        "name": dep.deployment,
        "provisioning_state": "Succeeded" if dep.alive else "Stopped",
        "scoring_uri": dep.scoring_uri,
        "log": str(dep.log_path),
    }


def _render(
    data: dict[str, object] | list[dict[str, object]],
    output: OutputFormat,
    title: str | None = None,
) -> None:
    if output is OutputFormat.table:
        rows = data if isinstance(data, list) else [data]
        data = [{TABLE_HEADERS.get(k, k): v for k, v in row.items()} for row in rows]
    render(data, output, title=title)


def create(
    file: Path | None,
    sets: list[str],
    name: str | None,
    endpoint_name: str | None,
    output: OutputFormat,
) -> None:
    files = load_local_deployment(file, sets, name=name, endpoint_name=endpoint_name)
    warn(files.warnings)
    python = build(files.environment)
    with err_console.status(f"Starting {files.name} locally (init() runs now)…"):
        try:
            dep = runner().start(
                files.endpoint_name,
                files.name,
                files.model,
                files.code,
                files.scoring_script,
                files.request_settings,
                requirements=files.conda_file,
                environment_variables=files.environment_variables,
                python=python,
            )
        except LocalRunError as exc:
            raise CliError(str(exc)) from None
    if dep.missing_requirements:
        warn(
            [
                "this Python environment lacks "
                + ", ".join(dep.missing_requirements)
                + " from the deployment's environment; install them if the script needs them"
            ]
        )
    err_console.print(f"Local deployment {dep.deployment} of {dep.endpoint} is ready.")
    _render(view(dep), output)


def invoke(endpoint: str, deployment: str | None, body: bytes) -> tuple[int, bytes]:
    try:
        response = runner().invoke(endpoint, body, deployment)
    except LocalRunError as exc:
        raise CliError(str(exc)) from None
    return response.status, response.body


def logs(endpoint: str, deployment: str, lines: int | None) -> str:
    try:
        return runner().logs(endpoint, deployment, lines)
    except LocalRunError as exc:
        raise CliError(str(exc)) from None


def delete(endpoint: str, deployment: str | None) -> None:
    stopped = runner().stop(endpoint, deployment)
    if not stopped:
        what = f"deployment {deployment} of {endpoint}" if deployment else f"endpoint {endpoint}"
        raise CliError(f"no local {what} is running (`sluice online-deployment list --local`)")
    err_console.print(f"Stopped local deployment(s) {', '.join(stopped)} of {endpoint}.")


def show_endpoint(endpoint: str, output: OutputFormat) -> None:
    """`online-endpoint show --local`: the endpoint its local deployments make up."""
    deployments = [d for d in runner().list() if d.endpoint == endpoint]
    if not deployments:
        raise CliError(f"no local endpoint {endpoint} (`sluice online-deployment list --local`)")
    _render(_endpoint_view(endpoint, deployments), output)


def list_endpoints(output: OutputFormat) -> None:
    """`online-endpoint list --local`: one row per endpoint with local deployments."""
    by_endpoint: dict[str, list[LocalDeployment]] = {}
    for dep in runner().list():
        by_endpoint.setdefault(dep.endpoint, []).append(dep)
    rows = [_endpoint_view(name, deps) for name, deps in by_endpoint.items()]
    _render(rows, output, "Local endpoints")


def _endpoint_view(endpoint: str, deployments: list[LocalDeployment]) -> dict[str, object]:
    alive = [d for d in deployments if d.alive]
    uri = (alive or deployments)[0].scoring_uri
    return {
        "name": endpoint,
        "auth_mode": "key",  # not enforced locally, as on Azure's local endpoints
        "provisioning_state": "Succeeded" if alive else "Stopped",
        "scoring_uri": uri,
        "openapi_uri": uri.removesuffix("/score") + "/swagger.json",
        "deployments": ", ".join(d.deployment for d in deployments),
    }


def show_deployment(endpoint: str, deployment: str, output: OutputFormat) -> None:
    """`online-deployment show --local`."""
    found = [d for d in runner().list() if (d.endpoint, d.deployment) == (endpoint, deployment)]
    if not found:
        raise CliError(
            f"no local deployment {deployment} of {endpoint} "
            "(`sluice online-deployment list --local`)"
        )
    _render(view(found[0]), output)


def list_(output: OutputFormat) -> None:
    _render([view(d) for d in runner().list()], output, "Local deployments")
