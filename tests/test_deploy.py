"""The deploy files, checked without Docker or a cluster: both compose files (two replicas on
Redis behind haproxy; one node on SQLite) parse, every path they mount or build from exists,
and the proxy and Prometheus name every replica; the Dockerfile builds a non-root image with
a /healthz healthcheck from files that exist; every dispatcher config shipped passes
`dispatcher check-config`; the Kubernetes manifests probe the right endpoints and outlast
the drain, keep SQLite at one replica, and their Redis overlay renders to several replicas
on a durable Redis that the HPA scales."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher import cli
from dispatcher.app import create_app
from dispatcher.config import Settings, load_settings, settings_from_dict

from . import factories
from .kit.monitoring import CONTRACT, ROOT, RULES, promtool

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"  # one replica on SQLite
K8S_REDIS = DEPLOY / "kubernetes-redis"  # the overlay of K8S on the Redis store
ENV = {
    "DISPATCHER_ADMIN_TOKEN": "t",
    "DISPATCHER_OPS_TOKEN": "t",
    "DISPATCHER_APP_TOKEN": "t",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def manifests(directory: Path) -> list[dict[str, Any]]:
    """Every object of the directory's files, examples and kustomize's own file included."""
    return [
        doc
        for path in sorted(directory.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc
    ]


def applied(directory: Path) -> list[dict[str, Any]]:
    """The objects of the files the directory's kustomization.yaml lists."""
    return [
        doc
        for name in load(directory / "kustomization.yaml")["resources"]
        if (directory / name).is_file()
        for doc in yaml.safe_load_all((directory / name).read_text(encoding="utf-8"))
        if doc
    ]


def k8s(kind: str, directory: Path = K8S) -> dict[str, Any]:
    found = [doc for doc in manifests(directory) if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# --- compose ------------------------------------------------------------------------------

COMPOSE = DEPLOY / "compose.yaml"  # two replicas on Redis behind one port
COMPOSE_SQLITE = DEPLOY / "compose.sqlite.yaml"  # one node on SQLite
COMPOSE_FILES = pytest.mark.parametrize("path", [COMPOSE, COMPOSE_SQLITE], ids=lambda p: p.name)
CONFIG_TARGET = "/etc/dispatcher/dispatcher.yaml"


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source, for every volume of a service."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def dispatchers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the dispatcher image."""
    found = {n: s for n, s in compose["services"].items() if s.get("image") == "dispatcher:local"}
    assert found
    return found


def service_settings(service: dict[str, Any]) -> Settings:
    assert CONFIG_TARGET in service["command"]
    return load_settings(DEPLOY / mounts(service)[CONFIG_TARGET], env=ENV)


def test_compose_runs_the_services_of_each_variant() -> None:
    assert set(load(COMPOSE)["services"]) == {
        "redis",
        "dispatcher-1",
        "dispatcher-2",
        "lb",
        "prometheus",
        "grafana",
    }
    assert set(load(COMPOSE_SQLITE)["services"]) == {"dispatcher", "prometheus", "grafana"}


@COMPOSE_FILES
def test_every_path_compose_mounts_or_builds_from_exists(path: Path) -> None:
    compose = load(path)
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        if build := service.get("build"):
            context = (DEPLOY / build["context"]).resolve()
            assert context.is_dir(), name
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source in named:
                continue
            assert source.startswith("."), f"{name}: {source} is neither relative nor named"
            assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


@COMPOSE_FILES
def test_compose_provisions_grafana_and_prometheus(path: Path) -> None:
    compose = load(path)
    services = compose["services"]
    grafana = mounts(services["grafana"])
    datasources = [t for t in grafana if t.startswith("/etc/grafana/provisioning/datasources/")]
    providers = [t for t in grafana if t.startswith("/etc/grafana/provisioning/dashboards/")]
    assert len(datasources) == 1
    assert len(providers) == 1
    # The provider's path is where the dashboards are mounted.
    provider = load(DEPLOY / grafana[providers[0]])["providers"][0]
    dashboards = DEPLOY / grafana[provider["options"]["path"]]
    assert sorted(p.name for p in dashboards.glob("*.json")) == [
        "dispatcher-overview.json",
        "dispatcher-pools.json",
        "dispatcher-runtime.json",
    ]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    datasource = load(DEPLOY / grafana[datasources[0]])["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"

    prometheus = mounts(services["prometheus"])
    config_source = DEPLOY / prometheus["/etc/prometheus/prometheus.yml"]
    config = load(config_source)
    # Rule globs are relative to the config file, in the container and here alike.
    for pattern in config["rule_files"]:
        mounted = next(t for t in prometheus if t == "/etc/prometheus/" + pattern.split("/")[0])
        assert (DEPLOY / prometheus[mounted]).resolve() == RULES.parent
        assert list(config_source.parent.glob(pattern)) == [RULES]
    # Every replica is a target of its own (an instance in the dashboards), none twice.
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    (static,) = jobs["dispatcher"]["static_configs"]
    assert sorted(static["targets"]) == sorted(
        f"{name}:{service_settings(service).server.port}"
        for name, service in dispatchers(compose).items()
    )


@COMPOSE_FILES
def test_compose_prometheus_config_passes_promtool(path: Path) -> None:
    prometheus = mounts(load(path)["services"]["prometheus"])
    assert "SUCCESS" in promtool(
        "check", "config", DEPLOY / prometheus["/etc/prometheus/prometheus.yml"]
    )


def test_compose_variants_share_prometheus_and_grafana() -> None:
    """compose.sqlite.yaml repeats compose.yaml's monitoring; only the scrape config (and
    what Prometheus waits for) differ."""
    redis, sqlite = load(COMPOSE)["services"], load(COMPOSE_SQLITE)["services"]
    assert sqlite["grafana"] == redis["grafana"]

    def monitoring(service: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in service.items() if k != "depends_on"}
        out["volumes"] = [v for v in service["volumes"] if "/prometheus.yml:" not in v]
        return out

    assert monitoring(sqlite["prometheus"]) == monitoring(redis["prometheus"])


@COMPOSE_FILES
def test_compose_dispatcher_config_validates(path: Path) -> None:
    for name, service in dispatchers(load(path)).items():
        settings = service_settings(service)
        # Docker's default 10s stop timeout would SIGKILL a drain that may take grace_period.
        stop = int(service["stop_grace_period"].removesuffix("s"))
        assert stop > settings.server.grace_period, name
        # The token comes from the environment, which compose requires (no default secret).
        assert ":?" in service["environment"]["DISPATCHER_ADMIN_TOKEN"], name


def test_compose_sqlite_runs_one_node_on_its_volume() -> None:
    compose = load(COMPOSE_SQLITE)
    # SQLite is one file that one process owns: one replica, never scaled.
    ((_, service),) = dispatchers(compose).items()
    assert "deploy" not in service
    assert "scale" not in service
    settings = service_settings(service)
    assert settings.store.url.startswith("sqlite:////var/lib/dispatcher/")
    assert mounts(service)["/var/lib/dispatcher"] in compose["volumes"]
    assert service["ports"] == [f"127.0.0.1:8080:{settings.server.port}"]


def test_compose_replicas_share_one_durable_redis() -> None:
    compose = load(COMPOSE)
    replicas = dispatchers(compose)
    assert len(replicas) == 2
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7"
    command = " ".join(redis["command"])
    # A 2xx means "on disk" only with every write fsynced to the AOF (README).
    assert "--appendonly yes" in command
    assert "--appendfsync always" in command
    assert mounts(redis)["/data"] in compose["volumes"]
    stores = set()
    for name, service in replicas.items():
        settings = service_settings(service)
        assert settings.store.url == "redis://redis:6379/0", name
        stores.add((settings.store.url, settings.store.prefix))
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        # Clients reach the replicas through the load balancer only.
        assert "ports" not in service, name
    assert len(stores) == 1, "the replicas must share one store, or they are two dispatchers"
    # A fixed hostname per replica keeps its consumer name (hostname:pid) across restarts.
    assert len({s["hostname"] for s in replicas.values()}) == len(replicas)


def haproxy() -> dict[str, list[list[str]]]:
    """haproxy.cfg as {section header: [directive words]}, comments dropped."""
    sections: dict[str, list[list[str]]] = {}
    lines: list[list[str]] = []
    for raw in (DEPLOY / "haproxy.cfg").read_text(encoding="utf-8").splitlines():
        words = shlex.split(raw, comments=True)
        if not words:
            continue
        if not raw[0].isspace():
            lines = sections.setdefault(" ".join(words), [])
        else:
            lines.append(words)
    return sections


def test_load_balancer_names_every_replica_behind_one_port() -> None:
    compose = load(COMPOSE)
    lb = compose["services"]["lb"]
    assert lb["image"].startswith("haproxy:")
    assert mounts(lb)["/usr/local/etc/haproxy/haproxy.cfg"] == "./haproxy.cfg"
    cfg = haproxy()
    (frontend,) = [v for k, v in cfg.items() if k.startswith("frontend ")]
    (bind,) = [w[1] for w in frontend if w[0] == "bind"]
    # The one published port of the dispatcher (the replicas publish none).
    assert lb["ports"] == [f"127.0.0.1:8080:{bind.rsplit(':', 1)[1]}"]
    (backend,) = [v for k, v in cfg.items() if k.startswith("backend ")]
    servers = {w[1]: w[2] for w in backend if w[0] == "server"}
    assert servers == {
        name: f"{name}:{service_settings(service).server.port}"
        for name, service in dispatchers(compose).items()
    }
    # A replica that drains or lost Redis answers /readyz 503 and leaves the rotation.
    assert ["option", "httpchk", "GET", "/readyz"] in backend
    assert "check" in next(w for w in backend if w[0] == "default-server")
    # With none ready the client still gets a problem document with Retry-After.
    (error,) = [w for w in backend if w[:3] == ["http-error", "status", "503"]]
    assert error[error.index("content-type") + 1] == "application/problem+json"
    assert error[error.index("hdr") + 1] == "Retry-After"


# --- Dockerfile ---------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_slim_and_non_root() -> None:
    instructions = dockerfile()
    bases = [args.split()[0] for word, args in instructions if word == "FROM"]
    assert bases
    assert all(b.endswith("-slim") for b in bases), bases
    users = [args for word, args in instructions if word == "USER"]
    assert users, "no USER: the image would run as root"
    final_user = users[-1].split(":")[0]
    assert final_user not in {"root", "0"}
    # USER comes after the last FROM, so it applies to the final image.
    last_from = max(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    assert any(w == "USER" for w, _ in instructions[last_from:])


def test_dockerfile_healthcheck_probes_healthz() -> None:
    checks = [args for word, args in dockerfile() if word == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0]
    assert "CMD" in checks[0]
    assert "--interval=" in checks[0]


async def test_dockerfile_healthcheck_command_passes_and_fails(aiohttp_server: Any) -> None:
    """The HEALTHCHECK's own command, run here: exit 0 against a live /healthz, not 0 when
    nothing listens."""
    (check,) = [args for word, args in dockerfile() if word == "HEALTHCHECK"]
    argv = json.loads(check[check.index("CMD") + 3 :])
    assert argv[0] == "python"
    server = await aiohttp_server(create_app(factories.settings()))

    async def run(port: int) -> int:
        env = {**os.environ, "HEALTHCHECK_PORT": str(port)}
        proc = await asyncio.create_subprocess_exec(sys.executable, *argv[1:], env=env)
        return await proc.wait()

    assert await run(server.port) == 0
    assert await run(free_port()) != 0


def test_dockerfile_copies_files_that_exist() -> None:
    (build,) = {json.dumps(s["build"]) for s in dispatchers(load(COMPOSE)).values()}
    context = (DEPLOY / json.loads(build)["context"]).resolve()
    for word, args in dockerfile():
        if word == "COPY" and "--from=" not in args:
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (context / source).exists(), source
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for needed in ("pyproject.toml", "README.md", "dispatcher/", "console/"):
        assert f"!{needed}" in ignore


# --- Kubernetes ---------------------------------------------------------------------------


def configmap_settings(directory: Path = K8S) -> Settings:
    raw = yaml.safe_load(k8s("ConfigMap", directory)["data"]["dispatcher.yaml"])
    return settings_from_dict(raw, env=ENV)


def test_configmap_config_validates() -> None:
    assert configmap_settings().server.port == 8080


def test_deployment_probes_and_outlasts_the_drain() -> None:
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    grace = configmap_settings().server.grace_period
    pre_stop = 0.0
    if hook := container.get("lifecycle", {}).get("preStop"):
        pre_stop = float(
            re.search(r"sleep\((\d+(?:\.\d+)?)\)", " ".join(hook["exec"]["command"]))[1]
        )
    assert spec["terminationGracePeriodSeconds"] > grace + pre_stop
    requests = container["resources"]["requests"]
    assert requests["cpu"]
    assert requests["memory"]
    assert container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == configmap_settings().server.port
    # Non-root, as the image.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The tokens the config names come from the environment.
    names = {e["name"] for e in container["env"]}
    assert {t.token_env for t in configmap_settings().auth.tokens} <= names


def test_service_and_servicemonitor_select_the_pods() -> None:
    deployment = k8s("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = k8s("Service")
    # The ServiceMonitor's job label is the Service's name, which the rules select on.
    assert service["metadata"]["name"] == "dispatcher"
    assert 'up{job="dispatcher"}' in RULES.read_text(encoding="utf-8")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = k8s("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_prometheusrule_carries_the_rules() -> None:
    assert k8s("PrometheusRule")["spec"]["groups"] == load(RULES)["groups"]


def test_sqlite_deployment_runs_one_replica_on_its_claim() -> None:
    """One SQLite file, one process: never a second replica, and the old pod gone before
    the new one opens the file."""
    spec = k8s("Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"data": k8s("PersistentVolumeClaim")["metadata"]["name"]}
    (container,) = pod["containers"]
    (data,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data"]
    assert configmap_settings().store.url.startswith(f"sqlite:///{data}/")


def test_kustomization_lists_existing_files() -> None:
    resources = load(K8S / "kustomization.yaml")["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    # No autoscaler may scale the SQLite Deployment; the Redis overlay brings one.
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in manifests(K8S)}
    assert "PersistentVolumeClaim" in {d["kind"] for d in applied(K8S)}
    overlay = load(K8S_REDIS / "kustomization.yaml")
    for resource in overlay["resources"]:
        target = K8S_REDIS / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), resource
    assert (K8S_REDIS / overlay["resources"][0]).resolve() == K8S
    for patch in overlay["patches"]:
        assert (K8S_REDIS / patch["path"]).is_file(), patch


def test_redis_overlay_patches_objects_of_the_base() -> None:
    base = {(d["kind"], d["metadata"]["name"]) for d in applied(K8S)}
    for patch in load(K8S_REDIS / "kustomization.yaml")["patches"]:
        doc = load(K8S_REDIS / patch["path"])
        assert (doc["kind"], doc["metadata"]["name"]) in base, patch
    # The claim is dropped with the volume and the mount that used it.
    assert load(K8S_REDIS / "no-pvc.yaml")["$patch"] == "delete"
    deployment = load(K8S_REDIS / "deployment.yaml")["spec"]
    assert deployment["replicas"] >= 2
    assert deployment["strategy"]["type"] == "RollingUpdate"
    pod = deployment["template"]["spec"]
    assert pod["volumes"] == [{"name": "data", "$patch": "delete"}]
    (base_container,) = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    (data,) = [m["mountPath"] for m in base_container["volumeMounts"] if m["name"] == "data"]
    (container,) = pod["containers"]
    assert container["volumeMounts"] == [{"mountPath": data, "$patch": "delete"}]


def test_redis_overlay_config_names_its_redis() -> None:
    settings = configmap_settings(K8S_REDIS)
    assert settings.server == configmap_settings().server
    assert settings.auth == configmap_settings().auth
    service = next(d for d in manifests(K8S_REDIS) if d["kind"] == "Service")
    (port,) = service["spec"]["ports"]
    assert settings.store.url == f"redis://{service['metadata']['name']}:{port['port']}/0"
    # Validation refused a pool timeout at or above the lease; the margin is real.
    assert max(p.timeout for p in settings.pools.values()) < settings.store.lease


def test_redis_statefulset_is_durable_and_never_evicts() -> None:
    statefulset = k8s("StatefulSet", K8S_REDIS)
    service = k8s("Service", K8S_REDIS)
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The dispatcher's Service (and so its ServiceMonitor) does not take the Redis pod in.
    assert not k8s("Service")["spec"]["selector"].items() <= pod_labels.items()
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7"
    args = " ".join(container["args"])
    assert "--appendonly yes" in args
    assert "--appendfsync always" in args
    assert "--maxmemory-policy noeviction" in args
    # Redis refuses writes (503 at the API) before the kubelet kills it for memory.
    maxmemory = re.search(r"--maxmemory (\d+)mb", args)
    limit = re.fullmatch(r"(\d+)Gi", container["resources"]["limits"]["memory"])
    assert maxmemory
    assert limit
    assert int(maxmemory[1]) < int(limit[1]) * 1024
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    (data,) = container["volumeMounts"]
    assert data == {"name": claim["metadata"]["name"], "mountPath": "/data"}
    assert container["readinessProbe"]
    assert container["livenessProbe"]


def test_hpa_scales_on_oldest_message_age() -> None:
    hpa = k8s("HorizontalPodAutoscaler", K8S_REDIS)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == k8s("Deployment")["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == load(K8S_REDIS / "deployment.yaml")["spec"]["replicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] in {"External", "Object", "Pods"}
    name = metric[metric["type"].lower()]["metric"]["name"]
    assert name == "dispatcher_oldest_message_age_seconds"
    assert name in CONTRACT
    pool = metric[metric["type"].lower()]["metric"]["selector"]["matchLabels"]["pool"]
    assert pool in configmap_settings(K8S_REDIS).pools


@pytest.mark.allow_blocking
def test_redis_overlay_renders() -> None:
    """What `kubectl apply -k deploy/kubernetes-redis` would send: the base's objects on
    Redis, with no claim left and every mount backed by a volume."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (its kustomize renders the overlay)")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S_REDIS)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    base = [d["kind"] for d in applied(K8S) if d["kind"] != "PersistentVolumeClaim"]
    added = [d["kind"] for d in applied(K8S_REDIS)]
    assert kinds == sorted([*base, *added])
    assert {"Service", "StatefulSet", "HorizontalPodAutoscaler"} <= set(added)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    (container,) = pod["containers"]
    assert {m["name"] for m in container["volumeMounts"]} <= {v["name"] for v in pod["volumes"]}
    # Probes, resources, security and env as the base's, which the tests above check.
    (base_container,) = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    assert {**container, "volumeMounts": None} == {**base_container, "volumeMounts": None}
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    raw = yaml.safe_load(configmap["data"]["dispatcher.yaml"])
    assert settings_from_dict(raw, env=ENV) == configmap_settings(K8S_REDIS)


@pytest.mark.parametrize(
    "path",
    sorted([*K8S.glob("*.yaml"), *K8S_REDIS.glob("*.yaml")]),
    ids=lambda p: p.parent.name + "/" + p.name,
)
def test_manifests_parse_with_kind_and_name(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if path.name == "kustomization.yaml":
            continue
        assert doc["apiVersion"]
        assert doc["kind"]
        assert doc["metadata"]["name"]


# --- every shipped dispatcher config ------------------------------------------------------


def shipped_configs() -> list[Any]:
    compose = [
        pytest.param(DEPLOY / mounts(s)[CONFIG_TARGET], id=f"{path.name}:{name}")
        for path in (COMPOSE, COMPOSE_SQLITE)
        for name, s in dispatchers(load(path)).items()
    ]
    kubernetes = [
        pytest.param(directory, id=f"{directory.name}/ConfigMap") for directory in (K8S, K8S_REDIS)
    ]
    return compose + kubernetes


@pytest.mark.parametrize("source", shipped_configs())
def test_dispatcher_check_config_accepts(
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`dispatcher check-config` itself, with the environment the deployment gives."""
    if source.is_dir():
        path = tmp_path / "dispatcher.yaml"
        path.write_text(k8s("ConfigMap", source)["data"]["dispatcher.yaml"], encoding="utf-8")
    else:
        path = source
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["check-config", str(path)]) == 0, capsys.readouterr().err


def test_deploy_readme_says_how_to_run_each() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for needle in (
        "docker build -f deploy/Dockerfile",
        "docker compose up",
        "docker compose -f compose.sqlite.yaml up",
        "kubectl apply -k deploy/kubernetes",
        "kubectl apply -k deploy/kubernetes-redis",
        "hpa.yaml",
        "haproxy.cfg",
        "promtool test rules",
        "python dashboards/generate.py",
    ):
        assert needle in readme, needle
