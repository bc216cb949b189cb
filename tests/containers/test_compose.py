"""docker/compose.yaml brought up for real: PostgreSQL and the MLflow server, the train service logging into them,
persistence across `down`/`up` (the second `up` with basic auth), and `down -v` leaving nothing behind.

The tests run in file order on one stack: each step builds on what the one before left.
The GPU request of the train service is dropped by .ci/compose.no-gpu.yaml: this machine has no GPU.
"""

import json
import secrets
import urllib.error
import urllib.request

import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from containers.stack import PROJECT, Compose, free_port, run

pytestmark = pytest.mark.containers

OUTPUTS = "/workspace/outputs"
TRAIN_FLAGS = [
    f"--base-model={OUTPUTS}/tiny-model",
    f"--dataset={OUTPUTS}/humaneval.json",
    "--max-steps=3",
    "--batch-size=2",
    "--gradient-accumulation=1",
    "--max-length=256",
    "--logging-steps=1",
    "--no-system-metrics",
]

LOG_A_RUN = (
    "import mlflow; mlflow.set_experiment('containers-auth'); mlflow.start_run(); "
    "mlflow.log_param('logged_by', 'train service'); mlflow.log_text('through the server', 'note.txt'); "
    "mlflow.end_run()"
)


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    stack = Compose(tmp_path_factory.mktemp("compose") / "ci.env")
    stack.configure(POSTGRES_PASSWORD=secrets.token_hex(12), MLFLOW_PORT=str(free_port()), MLFLOW_WORKERS="1")
    stack("down", "--volumes", check=False)
    yield stack
    stack("--profile", "train", "down", "--volumes", check=False)


def train(compose: Compose, output: str, experiment: str) -> None:
    flags = [*TRAIN_FLAGS, f"--output-dir={OUTPUTS}/{output}", f"--experiment-name={experiment}"]
    compose("run", "--rm", "train", "lora", *flags)


def only_run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment} is not in the server"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def service_health(compose: Compose) -> dict[str, str]:
    listed = compose("ps", "--format", "json").stdout
    services = [json.loads(line) for line in listed.splitlines() if line.strip()]
    return {service["Service"]: service["Health"] for service in services}


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_up_brings_postgres_and_the_tracking_server_up_healthy(compose):
    compose("up", "--detach", "--wait", "--wait-timeout=240", timeout=300)
    assert service_health(compose) == {"postgres": "healthy", "mlflow": "healthy"}
    assert http_status(f"{compose.url}/health") == 200


def test_train_service_logs_a_finished_lora_run_to_the_server(compose, tmp_path):
    compose("run", "--rm", "train", "make_tiny_model", f"{OUTPUTS}/tiny-model")
    compose("run", "--rm", "train", "prepare_data", "--format=humaneval", f"--output={OUTPUTS}/humaneval.json")
    train(compose, "lora", "containers")

    client = MlflowClient(compose.url)
    finished = only_run(client, "containers")
    assert finished.info.status == RunStatus.to_string(RunStatus.FINISHED)
    assert finished.data.params["base_model"] == f"{OUTPUTS}/tiny-model"
    assert finished.data.params["max_steps"] == "3"
    assert finished.data.tags["container_image"] == "peft-workbench"
    assert {"train_loss", "eval_loss", "best_eval_loss"} <= set(finished.data.metrics)
    listed = {artifact.path for artifact in client.list_artifacts(finished.info.run_id, "model")}
    assert "model/adapter_model.safetensors" in listed
    energy = client.download_artifacts(finished.info.run_id, "energy.json", str(tmp_path))
    assert json.loads(open(energy).read())["seconds"] > 0

    owners = compose("run", "--rm", "--entrypoint=stat", "train", "--format=%U %n", f"{OUTPUTS}/lora/energy.json")
    assert owners.stdout.split()[0] == "trainer", owners.stdout


def test_runs_survive_down_and_up_and_basic_auth_then_guards_them(compose, monkeypatch, tmp_path):
    """One `down` and one `up`, the second with basic auth switched on: the run logged before is still there (kept
    volumes), anonymous clients are refused, and the train service logs with the credentials compose hands it."""
    before = only_run(MlflowClient(compose.url), "containers")
    compose("down")
    assert service_health(compose) == {}
    password = secrets.token_urlsafe(16)
    compose.configure(MLFLOW_AUTH="1", MLFLOW_ADMIN_PASSWORD=password, MLFLOW_SECRET_KEY=secrets.token_hex(32))
    compose("up", "--detach", "--wait", "--wait-timeout=240", timeout=300)
    assert service_health(compose) == {"postgres": "healthy", "mlflow": "healthy"}

    assert http_status(f"{compose.url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    # The training itself was shown above; here the point is the credentials the compose file hands the service.
    compose("run", "--rm", "--entrypoint=python", "train", "-c", LOG_A_RUN)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = MlflowClient(compose.url)
    after = only_run(client, "containers")
    assert after.info.run_id == before.info.run_id
    assert after.data.metrics == before.data.metrics
    logged = only_run(client, "containers-auth")
    assert logged.info.status == RunStatus.to_string(RunStatus.FINISHED)
    assert logged.data.params["logged_by"] == "train service"
    assert client.download_artifacts(logged.info.run_id, "note.txt", str(tmp_path)).endswith("note.txt")


def test_down_with_volumes_leaves_no_container_and_no_volume(compose):
    compose("--profile", "train", "down", "--volumes")
    label = f"label=com.docker.compose.project={PROJECT}"
    assert run("podman", "ps", "--all", "--quiet", "--filter", label).stdout.strip() == ""
    assert run("podman", "volume", "ls", "--quiet", "--filter", label).stdout.strip() == ""
