"""The deployment files (deploy/: the images, the Kubernetes manifests, the KServe runtime)
checked offline, with no cluster and no image build, against the server itself:

- every manifest validates with ``kubernetes-validate --strict``: the built-in kinds pass,
  the custom resources (ServiceMonitor, ServingRuntime, InferenceService) are only unknown
  to it;
- ports, probes, the shutdown budget and the environment agree with the server's own
  defaults (``ServerSettings``), its health service and its ``serve --help``, never restated
  here;
- each container the manifests describe (the image's ENTRYPOINT, or the manifest's command,
  then its args and env) is started for real on a demo repository: it gets ready, answers
  the paths its probes and its scrape config use, drains with the grace the manifest set,
  and exits 0 on SIGTERM.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import steadyserve
from conftest import READY_LINE, START_TIMEOUT_S, start_server

# Pure pydantic: these load none of the generated protobuf code (see conftest's note).
from steadyserve.monitoring.alert_rules import STOP_WAIT_S
from steadyserve.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILES = {"": DEPLOY / "Dockerfile", "-gpu": DEPLOY / "Dockerfile.gpu"}  # by tag suffix
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the model
MIN_KUBERNETES = "1.27.0"  # gRPC probes are GA from 1.27 on
DEFAULTS = ServerSettings()
T = 10.0


# -- reading the files ----------------------------------------------------------------------


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _objects(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in _manifests() for d in _docs(p) if d["kind"] == kind]


def _builtin(doc: dict) -> bool:
    """Kubernetes' own API groups have no dot (v1, apps/v1, autoscaling/v2, policy/v1)."""
    return "." not in doc["apiVersion"].rpartition("/")[0]


def _dockerfile(path: Path) -> dict:
    """The final stage's instructions: ENTRYPOINT, CMD and VOLUME parsed as JSON,
    EXPOSE as port numbers, USER as written."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    final = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    out: dict = {"CMD": []}
    for line in lines[final + 1 :]:
        instruction, _, value = line.partition(" ")
        instruction = instruction.upper()
        if instruction in ("ENTRYPOINT", "CMD", "VOLUME"):
            out[instruction] = json.loads(value)  # the exec form: no shell in between
        elif instruction == "EXPOSE":
            out[instruction] = {int(port.split("/")[0]) for port in value.split()}
        elif instruction == "USER":
            out[instruction] = value.strip()
    return out


def _image_dockerfile(image: str) -> Path:
    """The Dockerfile that builds ``image``: steadyserve:<version>[-gpu]."""
    name, _, tag = image.rpartition(":")
    assert name == "steadyserve", f"image {image!r}: expected steadyserve:<version>[-gpu]"
    suffix = tag.removeprefix(steadyserve.__version__)
    assert tag.startswith(steadyserve.__version__) and suffix in DOCKERFILES, (
        f"image {image!r}: the tag is the package version {steadyserve.__version__}, "
        f"then one of {sorted(DOCKERFILES)}"
    )
    return DOCKERFILES[suffix]


# -- the containers the manifests describe -----------------------------------------------


def _containers() -> dict[str, tuple[dict, dict, str]]:
    """id -> (container, pod spec, where its model repository is mounted)."""
    out = {}
    for path, doc in _objects("Deployment"):
        pod = doc["spec"]["template"]["spec"]
        claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        for c in pod["containers"]:
            (models,) = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in claims]
            out[f"{path.parent.name}-{c['name']}"] = (c, pod, models)
    for path, doc in _objects("ServingRuntime"):
        name = f"{path.parent.name}-{doc['metadata']['name']}"
        (c,) = doc["spec"]["containers"]
        out[name] = (c, doc["spec"], KSERVE_MODEL_DIR)
    return out


CONTAINERS = _containers()


def _argv(container: dict) -> list[str]:
    """What the container runs, as Kubernetes composes it: ``command`` replaces the image's
    ENTRYPOINT (and its CMD); ``args`` replaces the CMD."""
    image = _dockerfile(_image_dockerfile(container["image"]))
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    return [*image["ENTRYPOINT"], *container.get("args", image["CMD"])]


def _cpus(quantity: str) -> int:
    """A CPU quantity as the Downward API gives it with divisor 1: rounded up."""
    text = str(quantity)
    return math.ceil(int(text[:-1]) / 1000 if text.endswith("m") else float(text))


def _env(container: dict) -> dict[str, str]:
    """The container's environment as the kubelet would set it (secrets left out)."""
    out = {}
    for var in container.get("env", []):
        if "value" in var:
            out[var["name"]] = str(var["value"])
            continue
        source = var["valueFrom"]
        if "resourceFieldRef" in source:
            field = source["resourceFieldRef"]
            assert field["resource"] == "limits.cpu", f"{var['name']}: {field}"
            assert field.get("containerName", container["name"]) == container["name"]
            out[var["name"]] = str(_cpus(container["resources"]["limits"]["cpu"]))
        elif "secretKeyRef" in source:
            assert source["secretKeyRef"].get("optional"), f"{var['name']}: a required secret"
        else:
            pytest.fail(f"{var['name']}: a source this test does not resolve: {source}")
    return out


def _env_name(flag: str) -> str:
    """serve --help's rule: --foo-bar comes from STEADYSERVE_FOO_BAR too."""
    return "STEADYSERVE_" + flag.removeprefix("--").upper().replace("-", "_")


def _setting(container: dict, flag: str, default, kind=str):
    """The value of a serve flag in the container: the command line's (the last one wins),
    else its STEADYSERVE_ variable's, else the server's default."""
    value = None
    argv = _argv(container)
    for i, arg in enumerate(argv):
        if arg == flag:
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    if value is None:
        value = _env(container).get(_env_name(flag))
    return default if value is None else kind(value)


def _ports(container: dict) -> tuple[int, int]:
    return (
        _setting(container, "--grpc-port", DEFAULTS.grpc_port, int),
        _setting(container, "--http-port", DEFAULTS.http_port, int),
    )


def _grace_s(container: dict) -> float:
    return _setting(container, "--grace-s", DEFAULTS.grace_s, float)


def _prestop_s(container: dict) -> float:
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    if "exec" in pre:
        command = pre["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2, f"preStop: {command}"
        return float(command[1])
    return 0.0


def _container_port(container: dict, port) -> int:
    """A probe's or a Service's port: a number, or the name of a container port."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def _http_paths(container: dict) -> set[str]:
    probes = ("startupProbe", "readinessProbe", "livenessProbe")
    return {container[p]["httpGet"]["path"] for p in probes if "httpGet" in container.get(p, {})}


def _kubernetes_validate(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


# -- schemas --------------------------------------------------------------------------------


def test_what_deploy_provides():
    kinds = {d["kind"] for p in _manifests() for d in _docs(p)}
    assert kinds == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "ServiceMonitor",
        "ServingRuntime",
        "InferenceService",
    }
    assert set(CONTAINERS) == {"cpu-steadyserve", "gpu-steadyserve", "kserve-steadyserve"}


@pytest.mark.parametrize("version", [MIN_KUBERNETES, None], ids=["oldest", "newest"])
def test_builtin_kinds_validate_strictly_and_custom_resources_are_only_unknown(version):
    files = [str(p) for p in _manifests()]
    rc, out = _kubernetes_validate(*(["-k", version] if version else []), *files)
    assert rc == 0, out  # 1: a resource did not validate; 2: a fatal error
    assert not re.search(r"^(ERROR|FATAL)", out, re.M), out
    passed = set(re.findall(r"^INFO (\S+) passed for resource (\S+) against", out, re.M))
    unknown = set(re.findall(r"^WARN (\S+) Couldn't find schema for kind (\w+)", out, re.M))
    docs = [(str(p), d) for p in _manifests() for d in _docs(p)]
    builtin = {(p, f"{d['kind'].lower()}/{d['metadata']['name']}") for p, d in docs if _builtin(d)}
    custom = {(p, d["kind"]) for p, d in docs if not _builtin(d)}
    assert passed == builtin, out
    assert unknown == custom, out
    assert {kind for _, kind in custom} == {"ServiceMonitor", "ServingRuntime", "InferenceService"}


def test_strict_validation_refuses_an_unknown_field(tmp_path):
    """The check above can fail: a misspelt field is an error with --strict."""
    ((_, deployment),) = [(p, d) for p, d in _objects("Deployment") if p.parent.name == "cpu"]
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    rc, out = _kubernetes_validate(str(path))
    assert rc == 1 and "readinesProbe" in out, out


def _kustomized(directory: Path) -> set[Path]:
    """The files a kustomization (and the ones it includes) lists; each must exist."""
    kustomization = directory / "kustomization.yaml"
    assert kustomization.is_file(), f"{directory} has no kustomization.yaml"
    (doc,) = _docs(kustomization)
    assert set(doc) <= {"apiVersion", "kind", "resources"}, "resources only: no patches"
    files = set()
    for resource in doc["resources"]:
        path = (directory / resource).resolve()
        assert path.exists(), f"{kustomization}: {resource} does not exist"
        files |= _kustomized(path) if path.is_dir() else {path}
    return files


OVERLAYS = ("cpu", "gpu", "kserve")  # kubectl apply -k deploy/kubernetes/<overlay>


def test_the_overlays_cover_every_manifest_and_each_has_one_server():
    covered = set()
    for overlay in OVERLAYS:
        files = _kustomized(K8S / overlay)
        covered |= files
        kinds = [d["kind"] for f in files for d in _docs(f)]
        assert kinds.count("Deployment") + kinds.count("ServingRuntime") == 1, (overlay, kinds)
    assert covered == {p.resolve() for p in _manifests()}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl to run kustomize")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_each_overlay(overlay):
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rendered = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(done.stdout))
    files = _kustomized(K8S / overlay)
    assert rendered == sorted((d["kind"], d["metadata"]["name"]) for f in files for d in _docs(f))


# -- agreement with the server ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES.values()), ids=lambda p: p.name)
def test_the_images_expose_the_default_ports_and_serve_the_volume(name):
    image = _dockerfile(name)
    assert image["EXPOSE"] == {DEFAULTS.grpc_port, DEFAULTS.http_port}
    assert image["USER"].partition(":")[0] == "10001"  # not root, as the pods require
    (volume,) = image["VOLUME"]
    assert image["ENTRYPOINT"][:3] == ["steadyserve", "serve", volume]


@pytest.mark.parametrize("name", sorted(DOCKERFILES.values()), ids=lambda p: p.name)
def test_the_builders_copy_what_the_repository_has(name):
    """The build context is the repository root; what the builder copies must be in it."""
    text = re.sub(r"\\\n", " ", name.read_text())
    copies = re.findall(r"^COPY +(?!--)(.+)$", text, re.M)
    assert copies, "the builder copies the sources"
    for line in copies:
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{name.name}: COPY {source}: not in the repository"


@pytest.mark.parametrize("cid", sorted(CONTAINERS))
def test_containers_run_as_the_image_user_on_a_read_only_root(cid):
    container, pod, _ = CONTAINERS[cid]
    user = _dockerfile(_image_dockerfile(container["image"]))["USER"].partition(":")[0]
    context = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert context["runAsNonRoot"] and str(context["runAsUser"]) == user
    assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"]["drop"] == ["ALL"]
    (tmp,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp]
    assert "emptyDir" in volume  # the one writable path


@pytest.mark.parametrize("cid", sorted(CONTAINERS))
def test_container_ports_are_the_ports_the_server_binds(cid):
    container, _, models = CONTAINERS[cid]
    grpc_port, http_port = _ports(container)
    if cid.startswith("kserve"):
        # Knative routes to the one port declared: gRPC (h2c).
        assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("h2c", grpc_port)]
    else:
        assert (grpc_port, http_port) == (DEFAULTS.grpc_port, DEFAULTS.http_port)
        assert {(p["name"], p["containerPort"]) for p in container["ports"]} == {
            ("grpc", grpc_port),
            ("http", http_port),
        }
    assert models in _argv(container)


def test_services_reach_the_container_ports():
    ((_, deployment), *_) = _objects("Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    for _, service in _objects("Service"):
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        for port in service["spec"]["ports"]:
            assert port["port"] == _container_port(container, port["targetPort"]), port
    (monitor,) = [d for _, d in _objects("ServiceMonitor")]
    (endpoint,) = monitor["spec"]["endpoints"]
    scraped = [
        s
        for _, s in _objects("Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        and endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    ]
    assert len(scraped) == 1, "each pod scraped once"
    assert _container_port(container, endpoint["port"]) == DEFAULTS.http_port


@pytest.mark.parametrize("cid", sorted(CONTAINERS))
def test_readiness_is_the_grpc_health_overall_service_and_liveness_the_live_path(cid):
    container, _, _ = CONTAINERS[cid]
    grpc_port, http_port = _ports(container)
    ready = container["readinessProbe"]["grpc"]
    assert ready["port"] == grpc_port
    assert ready.get("service", "") == health.OVERALL_HEALTH
    for probe in ("startupProbe", "livenessProbe"):
        if probe in container:  # KServe: Knative keeps the pod alive by its own probes
            get = container[probe]["httpGet"]
            assert get["path"] == "/v2/health/live"
            assert _container_port(container, get["port"]) == http_port


@pytest.mark.parametrize("cid", [c for c in sorted(CONTAINERS) if not c.startswith("kserve")])
def test_termination_grace_outlasts_prestop_and_drain(cid):
    """SIGKILL comes terminationGracePeriodSeconds after preStop began: after the sleep, the
    drain, and the join of an alert evaluation still under way that shutdown ends with."""
    container, pod, _ = CONTAINERS[cid]
    assert _prestop_s(container) > 0, "endpoints are removed while the server still serves"
    budget = _prestop_s(container) + STOP_WAIT_S + _grace_s(container)
    assert pod["terminationGracePeriodSeconds"] > budget


def test_environment_variables_are_serve_flags():
    done = subprocess.run(
        [sys.executable, "-m", "steadyserve", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    flags = set(re.findall(r"^ {2}(?:-\w, )?(--[a-z][a-z0-9-]*)", done.stdout, re.M))
    assert {"--grpc-port", "--grace-s", "--io-threads"} <= flags  # the help reads as expected
    documented = {_env_name(f) for f in flags - {"--help"}}
    for cid, (container, _, _) in CONTAINERS.items():
        names = {var["name"] for var in container.get("env", [])}
        assert names <= documented, (cid, names - documented)


def test_gpu_deployment_is_the_cpu_one_with_a_gpu():
    (cpu,) = [d for p, d in _objects("Deployment") if p.parent.name == "cpu"]
    (gpu,) = [d for p, d in _objects("Deployment") if p.parent.name == "gpu"]
    gpu_container = gpu["spec"]["template"]["spec"]["containers"][0]
    assert _image_dockerfile(gpu_container["image"]) == DOCKERFILES["-gpu"]
    assert int(gpu_container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for doc in (cpu, gpu):
        doc = doc["spec"]["template"]["spec"]
        doc.pop("tolerations", None)
        for field in ("image", "resources"):
            doc["containers"][0].pop(field)
    assert cpu == gpu


def test_kserve_runtime_and_inference_service_agree():
    ((_, runtime),) = _objects("ServingRuntime")
    ((_, isvc),) = _objects("InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    spec = runtime["spec"]
    assert model["runtime"] == runtime["metadata"]["name"]
    fmt = model["modelFormat"]
    assert any(
        (f["name"], f.get("version")) == (fmt["name"], fmt.get("version"))
        for f in spec["supportedModelFormats"]
    ), (fmt, spec["supportedModelFormats"])
    assert model["protocolVersion"] in spec["protocolVersions"]
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert _argv(container)[:3] == ["steadyserve", "serve", KSERVE_MODEL_DIR]
    _, http_port = _ports(container)
    assert int(spec["annotations"]["prometheus.kserve.io/port"]) == http_port


# -- the containers, run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory) -> Path:
    """A repository written by `steadyserve demo DIR`."""
    repo = tmp_path_factory.mktemp("deploy") / "models"
    done = subprocess.run(
        [sys.executable, "-m", "steadyserve", "demo", str(repo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return repo


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=T) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=T).status


def _log_events(stderr: str) -> dict[str, dict]:
    events = {}
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        events.setdefault(event.get("msg"), event)
    return events


@pytest.mark.parametrize("cid", sorted(CONTAINERS))
def test_each_container_serves_as_its_manifest_says(cid, demo_repo, tmp_path):
    container, pod, models = CONTAINERS[cid]
    argv = _argv(container)
    # The console script the images run (pyproject's [project.scripts]) is this package's
    # CLI; run it with this interpreter, on a real repository where the volume would be.
    assert argv[0] == "steadyserve" and argv.count(models) == 1, argv
    argv = [sys.executable, "-m", "steadyserve", *argv[1:]]
    argv[argv.index(models)] = str(demo_repo)
    argv += ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"]  # flags win
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEADYSERVE_")}
    env.update(_env(container), PYTHONUNBUFFERED="1")
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (lines := out_path.read_text().splitlines()):
            assert proc.poll() is None, f"exited {proc.returncode}: {err_path.read_text()}"
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        match = READY_LINE.match(lines[0])
        assert match and lines[0].startswith("steadyserve ready "), lines
        grpc_target, http = match.group(1), "http://" + match.group(2)

        paths = _http_paths(container) | {"/v2/health/ready"}
        if "annotations" in pod:  # KServe's scrape config
            paths.add(pod["annotations"]["prometheus.kserve.io/path"])
        else:
            monitors = [m for _, m in _objects("ServiceMonitor")]
            paths |= {e["path"] for m in monitors for e in m["spec"]["endpoints"]}
        for path in sorted(paths):
            status, body = _get(http + path)
            assert status == 200, (path, body)
        assert "# TYPE steadyserve_" in _get(http + "/metrics")[1]
        service = container["readinessProbe"]["grpc"].get("service", "")
        assert _health(grpc_target, service) == health_pb2.HealthCheckResponse.SERVING
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=pod.get("terminationGracePeriodSeconds", 30))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            pytest.fail("not gone within terminationGracePeriodSeconds of SIGTERM")
    assert rc == 0, err_path.read_text()[-4000:]
    # The server used what the manifest set (its variables were read, not ignored).
    events = _log_events(err_path.read_text())
    assert events["shutting down"]["grace_s"] == _grace_s(container)
    io_threads = _setting(container, "--io-threads", None, int)
    if io_threads:
        stopped = events["native frontend stopped"]["stats"]
        assert len(stopped["connections_per_thread"]) == io_threads


def test_liveness_path_answers_while_a_required_model_keeps_readiness_down(demo_repo, tmp_path):
    """Why liveness is not the gRPC "" service: that one says not ready while a required
    model does not load, and a liveness probe on it would restart the pod in a loop."""
    container, _, _ = CONTAINERS["cpu-steadyserve"]
    repo = tmp_path / "models"
    shutil.copytree(demo_repo, repo)
    broken = repo / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not onnx")
    server = start_server(repo, log_dir=tmp_path)
    try:
        live = container["livenessProbe"]["httpGet"]["path"]
        assert _get(server.http + live)[0] == 200
        assert _get(server.http + "/v2/health/ready")[0] == 503
        service = container["readinessProbe"]["grpc"].get("service", "")
        assert _health(server.grpc, service) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        assert server.stop() == 0
