"""Offline validation of deploy/: the compose file against the Compose Specification's JSON schema, the
Kubernetes manifests against Kubernetes' JSON schemas, Dagster's instance config against Dagster's own
schema, and a check that service names, ports and environment variable names agree with what the code
reads. (No Docker engine or cluster here: nothing in deploy/ is started by these tests.)
"""

import importlib.resources
import json
import re
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
KUBE = REPO / "deploy" / "kubernetes"
CODE_DIRS = ["datamate", "datamate_resources", "datamate_assets", "operators"]
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "API_KEY", "HASH")
KUBERNETES_VERSION = "1.37.0"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def code_env_names() -> set[str]:
    """Every DATAMATE_* / AWS_* variable name spelled in the code (Settings.from_env, dg.EnvVar, messages)."""
    pattern = re.compile(r"\b((?:DATAMATE|AWS)_[A-Z0-9_]+)\b")
    names = set()
    for directory in CODE_DIRS:
        for path in (REPO / directory).rglob("*.py"):
            names |= set(pattern.findall(path.read_text(encoding="utf-8")))
    return names


def pyproject_module() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(DOCKER / "compose.yaml")


@pytest.fixture(scope="module")
def datamate_env(compose) -> dict[str, str]:
    return compose["x-datamate-env"]


def host_port(url: str, default_port: int | None = None) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"tcp://{url}")
    return parsed.hostname, parsed.port or default_port


def dockerfile_env_names() -> set[str]:
    text = (DOCKER / "Dockerfile").read_text()
    block = re.search(r"^ENV (.+?)(?:\n\n|\nRUN)", text, re.S | re.M).group(1)
    return set(re.findall(r"([A-Z][A-Z0-9_]+)=", block))


# --- docker compose -------------------------------------------------------------------------------------
def test_compose_file_matches_the_compose_specification(compose):
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(compose)


def test_compose_has_every_part_of_the_production_topology(compose):
    expected = {
        "postgres", "minio", "minio-init", "milvus-etcd", "milvus-minio", "milvus", "ray-head", "ray-worker",
        "dagster-code", "dagster-webserver", "dagster-daemon", "datamate-api", "proxy",
    }
    assert set(compose["services"]) == expected


def test_start_order_waits_for_health(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no check"
            if rule["condition"] == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", f"{dependency} is a one-shot job"
    # Long-running services say when they are ready; the one-shot bucket job and Ray workers (they join the
    # head; `ray status` on the head shows them) are the only exceptions.
    unchecked = {name for name, s in services.items() if "healthcheck" not in s}
    assert unchecked == {"minio-init", "ray-worker"}
    code_waits_for = set(services["dagster-code"]["depends_on"])
    assert {"postgres", "minio-init", "milvus", "ray-head"} <= code_waits_for


def test_only_the_authenticating_proxy_is_published(compose):
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"proxy"}
    caddyfile = (DOCKER / "Caddyfile").read_text()
    assert "basic_auth" in caddyfile and "{$DATAMATE_UI_PASSWORD_HASH}" in caddyfile


def exposed(compose: dict, service: str) -> set[int]:
    return {int(port) for port in compose["services"][service].get("expose", [])}


def test_addresses_name_services_and_ports_that_exist(compose, datamate_env):
    pg_host, pg_port = host_port(datamate_env["DAGSTER_PG_URL"].split("@", 1)[1].split("/", 1)[0])
    workspace = load_yaml(DOCKER / "workspace.yaml")["load_from"][0]["grpc_server"]
    proxy_targets = re.findall(r"reverse_proxy\s+(\S+)", (DOCKER / "Caddyfile").read_text())
    targets = {
        "DAGSTER_PG_URL": (pg_host, pg_port),
        "DATAMATE_S3_ENDPOINT_URL": host_port(datamate_env["DATAMATE_S3_ENDPOINT_URL"]),
        "DATAMATE_MILVUS_URI": host_port(datamate_env["DATAMATE_MILVUS_URI"]),
        "DATAMATE_RAY_ADDRESS": host_port(datamate_env["DATAMATE_RAY_ADDRESS"]),
        "workspace.yaml": (workspace["host"], workspace["port"]),
        **{f"Caddyfile ({target})": host_port(target) for target in proxy_targets},
    }
    for source, (host, port) in targets.items():
        assert host in compose["services"], f"{source} names unknown service {host}"
        assert port in exposed(compose, host), f"{source}: {host} does not expose {port}"


def command_text(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_servers_listen_where_the_others_look(compose):
    services = compose["services"]
    ray_head = command_text(services["ray-head"])
    assert {"--port=6379", "--ray-client-server-port=10001", "--dashboard-port=8265"} <= set(ray_head.split())
    assert "--address=ray-head:6379" in command_text(services["ray-worker"])
    assert "-p 4000" in command_text(services["dagster-code"])
    assert "-p 3000" in command_text(services["dagster-webserver"])
    for name in ("dagster-webserver", "dagster-daemon"):
        assert "/opt/dagster/workspace.yaml" in command_text(services[name])
    module = pyproject_module()
    assert f"-m {module}" in command_text(services["dagster-code"])
    assert f'"-m", "{module}"' in (DOCKER / "Dockerfile").read_text()


def test_environment_names_agree_with_the_code(compose, datamate_env):
    read_by_code = code_env_names()
    # The shared env, the API service's own, and the variables handed over as compose secrets (files).
    api_env = set(compose["services"]["datamate-api"]["environment"])
    from_secrets = {secret["environment"] for secret in compose["secrets"].values() if "environment" in secret}
    set_here = {name for name in {*datamate_env, *api_env, *from_secrets} if name.startswith(("DATAMATE_", "AWS_"))}
    assert set_here <= read_by_code, f"set in compose but read by no code: {set_here - read_by_code}"
    # Every variable the code reads is set by the deployment (compose env or the image's ENV).
    assert read_by_code <= set_here | dockerfile_env_names(), read_by_code - set_here - dockerfile_env_names()
    # Dagster's instance reads its PostgreSQL URL from the variable the compose file sets.
    instance = load_yaml(REPO / "deploy" / "dagster.yaml")
    assert instance["storage"]["postgres"]["postgres_url"]["env"] in datamate_env
    assert datamate_env["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")


def test_secrets_come_only_from_the_env_file(compose):
    referenced = set()
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            # A *_FILE variable is the path of a mounted secret, not a secret.
            if any(word in key for word in SECRET_WORDS) and value and not key.endswith("_FILE"):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:-)?\}", str(value)), f"{name}.{key} is not from .env"
    text = (DOCKER / "compose.yaml").read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)\}", text))  # required: no default given
    example = dict(
        line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert referenced <= set(example), f"missing from .env.example: {referenced - set(example)}"
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "deploy/docker/.env must be git-ignored"


def test_retrieval_api_behind_the_proxy_with_keys_from_a_secret_file(compose):
    api = compose["services"]["datamate-api"]
    assert command_text(api) == "datamate serve --host 0.0.0.0 --port 8000" and 8000 in exposed(compose, "datamate-api")
    caddyfile = (DOCKER / "Caddyfile").read_text()
    api_route = re.search(r"handle /v1/\* \{\s*reverse_proxy (\S+)\s*\}", caddyfile)
    assert api_route and api_route.group(1) == "datamate-api:8000"  # before the basic_auth catch-all: own keys
    (secret,) = api["secrets"]
    assert api["environment"]["DATAMATE_API_KEYS_FILE"] == f"/run/secrets/{secret}"
    assert compose["secrets"][secret] == {"environment": "DATAMATE_API_KEYS"}
    assert "DATAMATE_API_KEYS" not in api["environment"]  # a file, not an env value of the container
    assert api["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert "/healthz" in api["healthcheck"]["test"][-1] and "/healthz" in service_paths()
    assert "datamate-api" in compose["services"]["proxy"]["depends_on"]


def service_paths() -> set[str]:
    """The routes of the retrieval service's app (built without connecting to anything)."""
    from datamate.service import Backend, create_app
    from datamate_resources.embeddings import EmbeddingsResource
    from datamate_resources.milvus import MilvusResource

    backend = Backend(MilvusResource(provider="server", uri="http://milvus:19530"), EmbeddingsResource())
    return {route.path for route in create_app(backend, []).routes}


def test_dockerfile_copies_paths_that_exist():
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources = line.split()[1:-1]
            for source in sources:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"


def test_production_instance_config_is_valid_for_dagster(tmp_path, monkeypatch):
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://user:secret@postgres:5432/dagster")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"]
    assert "pools" in config["concurrency"] and "retention" in config


# --- kubernetes -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def configmap() -> dict:
    return load_yaml(KUBE / "datamate-config.yaml")


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load_yaml(KUBE / "raycluster.yaml")


@pytest.fixture(scope="module")
def dagster_values() -> dict:
    return load_yaml(KUBE / "dagster-values.yaml")


def secret_keys() -> set[str]:
    lines = (KUBE / "secrets.env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


def helm_releases() -> dict[str, str]:
    """chart → release name, from the install commands in deploy/kubernetes/README.md."""
    text = (KUBE / "README.md").read_text()
    return {chart: release for release, chart in re.findall(r"helm upgrade --install (\S+) (\S+)", text)}


def test_configmap_and_ray_pods_match_the_kubernetes_schema(configmap, raycluster):
    kubernetes_validate.validate(configmap, KUBERNETES_VERSION, strict=True)
    spec = raycluster["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [group["template"] for group in spec["workerGroupSpecs"]]
    for index, template in enumerate(templates):
        # A RayCluster group's `template` is a PodTemplateSpec: validate it as one (KubeRay's CRD is not here).
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"group-{index}"},
                        "template": template}
        kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)


def test_raycluster_structure(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1" and raycluster["kind"] == "RayCluster"
    spec = raycluster["spec"]
    assert set(spec) <= {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                         "workerGroupSpecs"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # tasks go to workers only
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(value, str) for value in group["rayStartParams"].values())
    import ray

    assert spec["rayVersion"] == ray.__version__, "the image's Ray must be the cluster's Ray"


def test_kubernetes_addresses_and_names_agree(configmap, raycluster, dagster_values):
    env = configmap["data"]
    releases = helm_releases()
    ray_host, ray_port = host_port(env["DATAMATE_RAY_ADDRESS"])
    assert ray_host == f"{raycluster['metadata']['name']}-head-svc"  # the service KubeRay creates
    head = raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert ray_port in {port["containerPort"] for port in head["ports"]}
    assert host_port(env["DATAMATE_MILVUS_URI"]) == (releases["zilliztech/milvus"], 19530)
    assert host_port(env["DATAMATE_S3_ENDPOINT_URL"]) == (releases["minio/minio"], 9000)
    minio = load_yaml(KUBE / "minio-values.yaml")
    assert urlparse(env["DATAMATE_STORAGE_URL"]).hostname in {bucket["name"] for bucket in minio["buckets"]}
    postgres = dagster_values["postgresql"]
    assert postgres["postgresqlHost"] == releases["oci://registry-1.docker.io/bitnamicharts/postgresql"]


def test_kubernetes_env_names_agree_with_the_code(configmap, raycluster, dagster_values):
    read_by_code = code_env_names()
    assert set(configmap["data"]) <= read_by_code, set(configmap["data"]) - read_by_code
    assert secret_keys() <= read_by_code, secret_keys() - read_by_code
    assert not set(configmap["data"]) & secret_keys()
    assert not any(word in name for name in configmap["data"] for word in SECRET_WORDS)
    config_name = configmap["metadata"]["name"]
    deployment = dagster_values["dagster-user-deployments"]["deployments"][0]
    launcher = dagster_values["runLauncher"]["config"]["k8sRunLauncher"]
    for holder in (deployment, launcher):
        assert holder["envConfigMaps"] == [{"name": config_name}]
        assert holder["envSecrets"] == [{"name": "datamate-secrets"}]
    spec = raycluster["spec"]
    for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
        for container in template["spec"]["containers"]:
            assert container["envFrom"] == [{"configMapRef": {"name": config_name}},
                                            {"secretRef": {"name": "datamate-secrets"}}]
            assert container["image"] == f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    assert "kubectl create secret generic datamate-secrets" in (KUBE / "secrets.env.example").read_text()


def test_dagster_helm_values(dagster_values):
    known = {  # top-level keys of Dagster's chart used here
        "global", "generatePostgresqlPasswordSecret", "dagsterWebserver", "ingress", "dagster-user-deployments",
        "runLauncher", "postgresql", "dagsterDaemon", "concurrency", "retention", "telemetry",
    }
    assert set(dagster_values) <= known
    deployment = dagster_values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", pyproject_module()]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    assert dagster_values["runLauncher"]["type"] == "K8sRunLauncher"
    postgres = dagster_values["postgresql"]
    assert postgres["postgresqlScheme"] == "postgresql+psycopg2"
    assert "postgresqlPassword" not in postgres and not dagster_values["generatePostgresqlPasswordSecret"]
    daemon = dagster_values["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert daemon["runMonitoring"]["enabled"] and daemon["runRetries"]["enabled"]
    # The chart refuses maxConcurrentRuns in both the run coordinator and `concurrency.runs`.
    assert "maxConcurrentRuns" not in daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert dagster_values["concurrency"]["enabled"] and dagster_values["retention"]["enabled"]
    assert dagster_values["ingress"]["annotations"]["nginx.ingress.kubernetes.io/auth-type"] == "basic"


def test_kubernetes_secrets_file_is_ignored():
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/kubernetes/secrets.env"], cwd=REPO)
    assert ignored.returncode == 0


def test_retrieval_api_manifests(dagster_values, configmap):
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((KUBE / "datamate-api.yaml").read_text())}
    assert set(documents) == {"Deployment", "Service", "Ingress"}
    for document in documents.values():
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image = dagster_values["dagster-user-deployments"]["deployments"][0]["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    assert container["command"] == ["datamate", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert container["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}},
                                    {"secretRef": {"name": "datamate-secrets"}}]
    # The keys are a file from the datamate-api-keys Secret, at the path DATAMATE_API_KEYS_FILE names.
    keys_file = {e["name"]: e["value"] for e in container["env"]}["DATAMATE_API_KEYS_FILE"]
    (mount,) = container["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "datamate-api-keys" and keys_file.startswith(mount["mountPath"] + "/")
    assert "--from-file=api-keys=" in (KUBE / "README.md").read_text() and keys_file.endswith("/api-keys")
    paths = service_paths()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in paths
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in paths
    port_names = {port["name"] for port in container["ports"]}
    service = documents["Service"]["spec"]
    assert service["selector"] == documents["Deployment"]["spec"]["selector"]["matchLabels"]
    assert {port["targetPort"] for port in service["ports"]} <= port_names
    (rule,) = documents["Ingress"]["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/v1/" and path["backend"]["service"]["name"] == documents["Service"]["metadata"]["name"]
    assert not any("auth" in key for key in documents["Ingress"]["metadata"].get("annotations", {}))
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/kubernetes/api-keys.txt"], cwd=REPO)
    assert ignored.returncode == 0
