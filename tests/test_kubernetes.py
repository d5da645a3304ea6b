"""deploy/kubernetes (kustomize), checked without a cluster.

The manifests are parsed with `yaml.safe_load_all`; the containers' commands and
environments go through the same checks as docker-compose.yml's (tests/deploy_support.py):
parsed by the real CLIs, no password in argv, and the worker Job's command run natively
against the local PostgreSQL. `kubectl kustomize` renders the base and the gpu component
where kubectl is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from .deploy_support import (
    Container,
    check_mlflow_server,
    check_no_secret_in_argv,
    check_worker,
    create_tables_natively,
    native_worker,
    run_workers_natively,
    serve_dashboard_natively,
)
from .scaleout_support import (
    PYTHON,
    MlflowServer,
    _admin,
    check_shared_study,
    load_study,
    pg_url,  # noqa: F401  (fixture)
    study_file,
    wait_all,
)

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "deploy" / "kubernetes"
KUSTOMIZATION = yaml.safe_load((BASE / "kustomization.yaml").read_text())
SECRET_NAME = "tunetrack-postgres"
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
WORKLOADS = ("Deployment", "StatefulSet", "Job")
_REF = re.compile(r"\$\$|\$\((\w+)\)")


def _load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = [doc for name in KUSTOMIZATION["resources"] for doc in _load(BASE / name)]


def resource(kind: str, name: str, manifests: list[dict] = MANIFESTS) -> dict:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` in a command: the variable's literal value, `$$` an escaped `$`,
    an unknown name left as it is."""
    return _REF.sub(lambda m: "$" if m.group(1) is None else env.get(m.group(1), m.group(0)),
                    text)


def all_containers(workload: dict) -> list[dict]:
    """Init containers and containers: every process the pod runs."""
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(workload: dict, index: int = 0, *, init: bool = False) -> Container:
    """The workload's container (`init`: init container), env split into literals and
    secret references, its command with `$(VAR)` expanded as the kubelet does."""
    spec = pod_spec(workload)["initContainers" if init else "containers"][index]
    env, secret = {}, set()
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (SECRET_NAME, "password"), item
            secret.add(item["name"])
    return Container(name=spec["name"], image=spec["image"],
                     command=[expand(part, env) for part in spec.get("command", [])],
                     env=env, secret_env=secret,
                     ports=[p["containerPort"] for p in spec.get("ports", [])])


def test_kustomization_lists_every_manifest_and_sets_the_namespace():
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(KUSTOMIZATION["resources"]) == files
    assert KUSTOMIZATION["namespace"] == resource("Namespace", "tunetrack")["metadata"]["name"]
    (image,) = KUSTOMIZATION["images"]
    assert image["name"] == "tunetrack"  # one place to point at the pushed image
    images = {container(m).image for m in MANIFESTS if m["kind"] in ("Deployment", "Job")}
    assert images == {"tunetrack"}
    assert image["newTag"] == VERSION  # the release, pinned (and never latest)


def test_no_secret_values_are_committed():
    assert not [m for m in MANIFESTS if m["kind"] == "Secret"]
    assert "secretGenerator" not in KUSTOMIZATION  # `kubectl create secret` (docs)
    for m in MANIFESTS:
        if m["kind"] in ("Deployment", "StatefulSet", "Job"):
            check_no_secret_in_argv(container(m))


def test_postgres_statefulset_service_and_init_script():
    pg = resource("StatefulSet", "postgres")
    c = container(pg)
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert c.image == compose["services"]["postgres"]["image"]  # one pinned version for both
    assert re.fullmatch(r"postgres:15\.\d+", c.image) and c.ports == [5432]
    assert c.secret_env == {"POSTGRES_PASSWORD"}
    assert c.env["POSTGRES_DB"] == "optuna" and c.env["MLFLOW_DB"] == "mlflow"
    assert c.env["PGDATA"].startswith("/var/lib/postgresql/data/")  # not the volume root
    mounts = {m["name"]: m["mountPath"] for m in pod_spec(pg)["containers"][0]["volumeMounts"]}
    assert mounts["data"] == "/var/lib/postgresql/data"
    assert pg["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert mounts["init"] == "/docker-entrypoint-initdb.d"
    (generated,) = KUSTOMIZATION["configMapGenerator"]
    init_volume = next(v for v in pod_spec(pg)["volumes"] if v["name"] == "init")
    assert init_volume["configMap"]["name"] == generated["name"]
    # the very script docker-compose.yml mounts: one copy for both deployments
    (script,) = generated["files"]
    (init_mount,) = [v for v in compose["services"]["postgres"]["volumes"] if "initdb" in v]
    assert (BASE / script).resolve().parent == (REPO / init_mount.split(":")[0]).resolve()
    _service_reaches(resource("Service", "postgres"), pg, 5432)


def _service_reaches(service: dict, workload: dict, port: int) -> None:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == port and svc_port["targetPort"] in container(workload).ports


def test_mlflow_server_reads_its_database_from_the_environment():
    mlflow = resource("Deployment", "mlflow")
    c = container(mlflow)
    assert "--backend-store-uri" not in c.command
    params = check_mlflow_server(c, db_host="postgres", port=5000)
    assert "mlflow:5000" in params["allowed_hosts"].split(",")  # the workers' Host header
    probe = pod_spec(mlflow)["containers"][0]["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/health", 5000)
    volume = next(v for v in pod_spec(mlflow)["volumes"] if v["name"] == "artifacts")
    resource("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    _service_reaches(resource("Service", "mlflow"), mlflow, 5000)


def test_workers_are_an_indexed_job_sharing_one_study():
    job = resource("Job", "tunetrack-workers")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert pod_spec(job)["terminationGracePeriodSeconds"] >= 30
    c = container(job)
    params = check_worker(c, storage_host="postgres", tracking="http://mlflow:5000")
    assert params["device"] is None  # CPU unless the gpu component is added
    index = next(e for e in pod_spec(job)["containers"][0]["env"]
                 if e["name"] == "TUNETRACK_WORKER_INDEX")
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == INDEX_ANNOTATION  # distinct seeds
    requests = pod_spec(job)["containers"][0]["resources"]["requests"]
    assert c.env["OMP_NUM_THREADS"] == str(requests["cpu"])
    (wait,) = pod_spec(job)["initContainers"]
    code = wait["command"][-1]
    compile(code, "wait-for-mlflow", "exec")  # valid Python
    assert "http://mlflow:5000/health" in code and wait["image"] == "tunetrack"
    studies = next(v for v in pod_spec(job)["volumes"] if v["name"] == "studies")
    assert studies["configMap"]["optional"] is True  # the image's studies/ without it


def _json_patch_add(doc: dict, ops: list[dict]) -> dict:
    """RFC 6902 `add` operations (the only kind the gpu component uses)."""
    for op in ops:
        assert op["op"] == "add", op
        *parents, last = [p.replace("~1", "/").replace("~0", "~")
                          for p in op["path"].lstrip("/").split("/")]
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node.append(op["value"]) if last == "-" else node.insert(int(last), op["value"])
        else:
            node[last] = op["value"]
    return doc


def test_gpu_component_requests_one_gpu_per_worker():
    component = yaml.safe_load((BASE / "components" / "gpu" / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    (patch,) = component["patches"]
    assert patch["target"] == {"kind": "Job", "name": "tunetrack-workers"}
    job = _json_patch_add(yaml.safe_load(yaml.safe_dump(resource("Job", "tunetrack-workers"))),
                          yaml.safe_load(patch["patch"]))
    limits = pod_spec(job)["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    params = check_worker(container(job), storage_host="postgres", tracking="http://mlflow:5000")
    assert params["device"] == "cuda"


# ---- what a review asks of every workload -----------------------------------------------

# Where each container's process writes; the root file system is read-only, so each one
# must be a volume. postgres: its data, socket and lock; tunetrack's processes: temporary
# files and caches (HOME is /tmp), MLflow its artifacts. A new container must say its own.
WRITES = {"postgres": {"/var/lib/postgresql/data", "/var/run/postgresql", "/tmp"},
          "mlflow": {"/mlartifacts", "/tmp"}, "optuna-dashboard": {"/tmp"},
          "worker": {"/tmp"}, "wait-for-mlflow": set(), "create-optuna-tables": set()}


def _workloads(manifests: list[dict] = MANIFESTS) -> list[dict]:
    found = [m for m in manifests if m["kind"] in WORKLOADS]
    assert {m["metadata"]["name"] for m in found} >= {
        "postgres", "mlflow", "optuna-dashboard", "tunetrack-workers"}
    return found


def _each_container():
    """(workload name, container) for every container of every workload, init included."""
    return [(f"{w['metadata']['name']}/{c['name']}", w, c)
            for w in _workloads() for c in all_containers(w)]


def test_every_container_has_cpu_and_memory_requests_and_limits():
    for name, _, c in _each_container():
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name}: {kind}"


def test_every_pod_runs_as_non_root_without_privileges():
    for name, workload, c in _each_container():
        pod = pod_spec(workload).get("securityContext", {})
        own = c.get("securityContext", {})
        assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, name
        assert own.get("runAsUser", pod.get("runAsUser", 0)) != 0, name
        assert own.get("allowPrivilegeEscalation") is False, name
        assert own.get("readOnlyRootFilesystem") is True, name
        assert own.get("capabilities", {}).get("drop") == ["ALL"], name
        assert "add" not in own.get("capabilities", {}), name
        assert own.get("privileged", False) is False, name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert pod_spec(workload).get("automountServiceAccountToken") is False, name


def test_every_path_a_process_writes_is_a_writable_volume():
    for name, workload, c in _each_container():
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        writable = {m["mountPath"] for m in c.get("volumeMounts", [])
                    if not m.get("readOnly")
                    and (m["name"] in claims or "emptyDir" in volumes.get(m["name"], {})
                         or "persistentVolumeClaim" in volumes.get(m["name"], {}))}
        writes = WRITES[c["name"]]
        assert writes <= writable, f"{name}: {writes - writable} not writable"
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if c["image"] == "tunetrack" and writes:
            assert env.get("HOME") in writable, f"{name}: HOME on the read-only root"


def test_every_image_is_pinned():
    for name, _, c in _each_container():
        image = c["image"]
        if image == "tunetrack":  # set for all by the kustomization's images
            (pinned,) = KUSTOMIZATION["images"]
            image = f"{pinned['newName']}:{pinned['newTag']}"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: {c['image']}"


def test_every_server_has_readiness_and_liveness_probes():
    for workload in _workloads():
        if workload["kind"] == "Job":
            continue  # a batch pod ends by itself; restarts are the Job's backoff
        for c in workload["spec"]["template"]["spec"]["containers"]:
            name = f"{workload['metadata']['name']}/{c['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{name}: no {probe}"
            live = c["livenessProbe"]
            ports = {p["containerPort"] for p in c.get("ports", [])}
            for check in ("httpGet", "tcpSocket"):
                if check in live:
                    assert live[check]["port"] in ports, name


def test_worker_study_comes_from_an_environment_variable():
    job = resource("Job", "tunetrack-workers")
    raw = pod_spec(job)["containers"][0]
    assert raw["command"][2] == "$(TUNETRACK_STUDY)"
    assert raw["env"][0]["name"] == "TUNETRACK_STUDY"  # docs/scaling_out.md patches env/0
    assert not [part for part in raw["command"] if part.startswith("studies/")]
    c = container(job)
    assert check_worker(c, storage_host="postgres",
                        tracking="http://mlflow:5000")["file"] == Path(c.env["TUNETRACK_STUDY"])
    # a study from the ConfigMap: the file under its mount, relative to the image's /app
    mount = next(m for m in raw["volumeMounts"] if m["name"] == "studies")["mountPath"]
    assert mount.startswith("/app/studies/")
    custom = f"{mount.removeprefix('/app/')}/mine.yaml"
    assert expand(raw["command"][2], {**c.env, "TUNETRACK_STUDY": custom}) == custom


def test_optuna_dashboard_reads_the_workers_database():
    dash = resource("Deployment", "optuna-dashboard")
    c = container(dash)
    assert c.command[0] == "optuna-dashboard"
    assert c.command[1] == container(resource("Job", "tunetrack-workers")).env["TUNETRACK_STORAGE"]
    assert c.command[c.command.index("--host") + 1] == "0.0.0.0"  # inside the pod only
    assert c.secret_env == {"PGPASSWORD"}
    check_no_secret_in_argv(c)
    probe = pod_spec(dash)["containers"][0]["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/api/studies", 8080)  # needs the database
    service = resource("Service", "optuna-dashboard")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"  # port-forward, as mlflow
    _service_reaches(service, dash, 8080)
    (tables,) = pod_spec(dash)["initContainers"]  # the dashboard cannot start without them
    check_no_secret_in_argv(container(dash, init=True))
    assert tables["command"][-1] == c.command[1]


def test_no_service_is_exposed_outside_the_cluster():
    for m in MANIFESTS:
        if m["kind"] == "Service":
            assert m["spec"].get("type", "ClusterIP") == "ClusterIP", m["metadata"]["name"]
    assert not [m for m in MANIFESTS if m["kind"] == "Ingress"]


def _clients(server: str) -> set[str]:
    """The pod names (app.kubernetes.io/name) that the NetworkPolicies let reach `server`."""
    allowed: set[str] = set()
    for policy in (m for m in MANIFESTS if m["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        if selector.get("app.kubernetes.io/name", server) != server:
            continue
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                pods = peer["podSelector"]
                assert set(peer) == {"podSelector"}, peer  # nothing from outside the namespace
                if "matchLabels" in pods:
                    allowed.add(pods["matchLabels"]["app.kubernetes.io/name"])
                else:
                    (names,) = [e["values"] for e in pods["matchExpressions"]
                                if e["key"] == "app.kubernetes.io/name" and e["operator"] == "In"]
                    allowed |= set(names)
    return allowed


def test_network_policies_let_each_server_take_only_its_clients():
    (deny,) = [m for m in MANIFESTS if m["kind"] == "NetworkPolicy"
               and m["spec"]["podSelector"] == {} and not m["spec"].get("ingress")]
    assert deny["spec"]["policyTypes"] == ["Ingress"]
    names = {m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"][
        "app.kubernetes.io/name"] for m in _workloads()}
    worker, dashboard = names["tunetrack-workers"], names["optuna-dashboard"]
    assert _clients(names["postgres"]) == {names["mlflow"], dashboard, worker}
    assert _clients(names["mlflow"]) == {worker}
    assert _clients(dashboard) == _clients(worker) == set()  # port-forward only


def test_manifests_match_the_kubernetes_schema():
    """Every manifest against the Kubernetes OpenAPI schema (kubernetes-validate, strict:
    unknown fields fail too), as `kubectl apply` would check them."""
    kv = pytest.importorskip("kubernetes_validate")
    version = kv.latest_version()
    for m in MANIFESTS:
        try:
            kv.validate(m, version, strict=True)
        except kv.ValidationError as exc:
            raise AssertionError(f"{m['kind']}/{m['metadata']['name']}: {exc}") from exc


# ---- kubectl kustomize, where kubectl is installed --------------------------------------


def _kustomize(folder: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl")
    result = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_kubectl_kustomize_renders_the_base():
    rendered = _kustomize(BASE)
    namespaced = [d for d in rendered if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"tunetrack"}
    (init,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    assert "CREATE DATABASE" in next(iter(init["data"].values()))
    pg = resource("StatefulSet", "postgres", rendered)
    volume = next(v for v in pod_spec(pg)["volumes"] if v["name"] == "init")
    assert volume["configMap"]["name"] == init["metadata"]["name"]  # the hashed name
    assert {c["image"] for d in rendered if d["kind"] in WORKLOADS for c in all_containers(d)} == {
        f"tunetrack:{VERSION}", container(resource("StatefulSet", "postgres")).image}
    kv = pytest.importorskip("kubernetes_validate")
    for doc in rendered:  # what `kubectl apply -k` sends, generated ConfigMap included
        kv.validate(doc, kv.latest_version(), strict=True)


def test_the_documented_study_patch_chooses_the_configmap_study(tmp_path):
    """docs/scaling_out.md's overlay patch, rendered: the worker runs the ConfigMap's study."""
    docs = (REPO / "docs" / "scaling_out.md").read_text()
    (block,) = [textwrap.dedent(b) for b in re.findall(r"```yaml\n(.*?)```", docs, re.S)
                if "tunetrack-workers" in b and "op: replace" in b]
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    kustomization = yaml.safe_load(block)
    kustomization["resources"] = [os.path.relpath(BASE, overlay)]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    job = resource("Job", "tunetrack-workers", _kustomize(overlay))
    c = container(job)
    assert c.env["TUNETRACK_STUDY"] == "studies/custom/mine.yaml"
    assert c.command == ["tunetrack", "worker", "studies/custom/mine.yaml"]
    mounts = {m["mountPath"] for m in pod_spec(job)["containers"][0]["volumeMounts"]}
    assert "/app/studies/custom" in mounts


def test_kubectl_kustomize_renders_the_gpu_component(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(BASE, overlay)],
        "components": [os.path.relpath(BASE / "components" / "gpu", overlay)],
    }))
    job = resource("Job", "tunetrack-workers", _kustomize(overlay))
    assert pod_spec(job)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container(job).command[-2:] == ["--device", "cuda"]


# ---- the Job's workers (and the MLflow server), run here against PostgreSQL ---------------


@pytest.mark.postgres
def test_two_job_workers_share_one_study_natively(pg_url, tmp_path):  # noqa: F811
    job = container(resource("Job", "tunetrack-workers"))
    run_workers_natively([job, job], pg_url=pg_url, folder=tmp_path, name="k8s-two",
                         indexed=True)


@pytest.mark.postgres
def test_dashboard_command_answers_its_readiness_probe_natively(pg_url, tmp_path):  # noqa: F811
    dash = resource("Deployment", "optuna-dashboard")
    probe = pod_spec(dash)["containers"][0]["readinessProbe"]["httpGet"]
    create_tables_natively(container(dash, init=True), pg_url=pg_url, folder=tmp_path)
    serve_dashboard_natively(container(dash), pg_url=pg_url, folder=tmp_path,
                             probe_path=probe["path"])


@pytest.mark.slow
@pytest.mark.postgres
def test_manifest_mlflow_server_on_postgres_serves_the_job_workers(pg_url, tmp_path):  # noqa: F811
    """The Deployment's `mlflow server` command with its environment (backend store from
    MLFLOW_BACKEND_STORE_URI) on a PostgreSQL database, the Job's workers logging to it."""
    mlflow_db = f"{pg_url}_mlflow"  # a second database, as the init script makes
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{mlflow_db.rsplit("/", 1)[1]}"')
    manifest = container(resource("Deployment", "mlflow"))
    server = MlflowServer(tmp_path)
    argv = [a.replace("/mlartifacts", str(tmp_path / "mlartifacts")) for a in manifest.command]
    for flag, value in (("--host", "127.0.0.1"), ("--port", server.port), ("--workers", 1),
                        ("--allowed-hosts", f"127.0.0.1:{server.port}")):
        argv[argv.index(flag) + 1] = str(value)
    server.argv = [PYTHON, "-m", *argv]
    server.env = {**os.environ, **manifest.env, "MLFLOW_BACKEND_STORE_URI": mlflow_db,
                  "PGPASSWORD": "unused-with-trust-auth"}
    job = container(resource("Job", "tunetrack-workers"))
    try:
        server.start()
        study = study_file(tmp_path, "k8s-server", n_trials=4)
        procs = []
        for i in range(2):
            argv, env = native_worker(job, storage=pg_url, tracking_uri=server.uri, study=study,
                                      index=i)
            procs.append(subprocess.Popen(argv, env=env, cwd=tmp_path,
                                          stdout=(tmp_path / f"w{i}.log").open("wb"),
                                          stderr=subprocess.STDOUT, start_new_session=True))
        assert wait_all(procs, timeout_s=600) == [0, 0]
        check_shared_study(load_study("k8s-server", pg_url), 4, 2, server.uri, "k8s-server")
    finally:
        server.stop()
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{mlflow_db.rsplit("/", 1)[1]}" WITH (FORCE)')
