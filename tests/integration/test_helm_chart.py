"""The Helm chart (infra/helm/loramill), rendered offline with Helm's own engine (the
helm-python-sdk: Helm v4 as a library, no binary, no cluster) and every manifest checked
against Kubernetes' schemas (kubernetes-validate, strict: an unknown or misplaced field
fails) or, for KEDA's and the Prometheus operator's kinds, against schemas of the fields
their documentation specifies (tests/fixtures/crd_schemas). Then what the chart promises:
a worker per class on its GPUs and queue, scaled by KEDA on a query that — run here
against the real PostgreSQL as the app role — counts exactly the work that needs it."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import psycopg
import pytest
import yaml
from helm_python import Chart, lint
from helm_python.errors import HelmError

from tests.conftest import ROOT, StackInfo, TenantHandle, make_tenant
from tests.integration.api.helpers import prometheus_samples, sample, upload_ok

CHART = ROOT / "infra" / "helm" / "loramill"
KUBERNETES = "1.30"
CRD_SCHEMAS = {
    (p.stem.split("_")[0] + "/" + p.stem.split("_")[1], p.stem.split("_")[2]):
        json.loads(p.read_text())
    for p in (ROOT / "tests" / "fixtures" / "crd_schemas").glob("*.json")}

EVERYTHING = {
    "existingSecret": "loramill-credentials",
    "config": {"LORAMILL_S3_ENDPOINT_URL": "http://minio.storage:9000",
               "LORAMILL_S3_PUBLIC_ENDPOINT_URL": "https://s3.example.com"},
    "workers": {"gpu-24gb": {"gpus": 1, "minReplicas": 0, "maxReplicas": 8,
                             "terminationGracePeriodSeconds": 900},
                "gpu-multi": {"gpus": 8, "minReplicas": 0, "maxReplicas": 2,
                              "terminationGracePeriodSeconds": 1800},
                "gpu-80gb": None},  # Helm merges maps: null removes a default class
    "serving": {"enabled": True, "engines": [{"model": "acme/llama-3-8b", "gpus": 1,
                                              "maxModelLen": 8192}]},
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                "grafanaDashboard": {"enabled": True}},
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    rendered = Chart.load(CHART).render(values, name="prod", namespace="ml")
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def check(doc: dict[str, Any]) -> None:
    """One manifest against its kind's schema: Kubernetes' own, or a CRD's."""
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is not None:
        jsonschema.validate(doc, crd)
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(doc: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if name is None or c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@pytest.fixture(scope="module")
def everything() -> list[dict[str, Any]]:
    return render(EVERYTHING)


def test_the_chart_lints_and_every_manifest_validates() -> None:
    report = lint(CHART, {"existingSecret": "s"}, strict=True, kube_version=f"v{KUBERNETES}.0")
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"]), report
    for values in ({"existingSecret": "s"}, EVERYTHING,
                   {"existingSecret": "s", "keda": {"enabled": False},
                    "api": {"autoscaling": {"enabled": False}}}):
        docs = render(values)
        assert docs
        for doc in docs:
            check(doc)  # raises with the field and the reason


def test_a_schema_check_can_fail() -> None:
    """The validators are not lenient: a misspelled field and a number where KEDA wants a
    string are refused."""
    deployment = next(d for d in render({"existingSecret": "s"}) if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        check(deployment)
    scaled = next(d for d in render({"existingSecret": "s"}) if d["kind"] == "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["targetQueryValue"] = 1
    with pytest.raises(jsonschema.ValidationError):
        check(scaled)


def test_bad_values_are_refused_with_what_is_wrong() -> None:
    with pytest.raises(HelmError, match="existingSecret"):
        render({})
    with pytest.raises(HelmError, match="additional properties 'gpu' not allowed"):
        render({"existingSecret": "s", "workers": {"gpu-24gb": {
            "gpu": 1, "minReplicas": 0, "maxReplicas": 1,
            "terminationGracePeriodSeconds": 600}}})
    # not a class name (nor a DNS label)
    with pytest.raises(HelmError, match="'GPU_BIG' does not match pattern"):
        render({"existingSecret": "s", "workers": {"GPU_BIG": {
            "minReplicas": 0, "maxReplicas": 1, "terminationGracePeriodSeconds": 600}}})
    with pytest.raises(HelmError, match="terminationGracePeriodSeconds': minimum"):
        render({"existingSecret": "s", "workers": {"gpu-24gb": {
            "minReplicas": 0, "maxReplicas": 1, "terminationGracePeriodSeconds": 5}}})


def test_each_class_gets_a_gpu_worker_scaled_to_zero_on_its_demand(
        everything: list[dict[str, Any]]) -> None:
    deployments = by_kind(everything, "Deployment")
    scaled = by_kind(everything, "ScaledObject")
    for klass, gpus in (("gpu-24gb", 1), ("gpu-multi", 8)):
        name = f"prod-loramill-worker-{klass}"
        worker = deployments[name]
        c = container(worker)
        assert c["command"][c["command"].index("-Q") + 1] == f"train-{klass}"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
        env = env_of(c)
        assert env["LORAMILL_GPU_CLASS"] == klass
        assert "LORAMILL_ADMIN_DATABASE_URL" not in env  # workers act as one tenant only
        assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 900
        assert "replicas" not in worker["spec"]  # KEDA owns the count
        so = scaled[name]
        assert so["spec"]["scaleTargetRef"]["name"] == name
        assert so["spec"]["minReplicaCount"] == 0
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "postgresql"
        assert trigger["metadata"]["query"] == f"SELECT loramill_worker_demand('{klass}')"
        # KEDA reads the connection from the target's env: it must be there, from the Secret
        source = env[trigger["metadata"]["connectionFromEnv"]]
        assert source == {"secretKeyRef": {"name": "loramill-credentials",
                                           "key": "database-url"}}
    assert json.loads(env["LORAMILL_GPU_CLASSES"]) == ["gpu-24gb", "gpu-multi"]


def test_the_api_scales_keeps_one_up_and_nothing_holds_a_secret(
        everything: list[dict[str, Any]]) -> None:
    api = by_kind(everything, "Deployment")["prod-loramill-api"]
    assert "replicas" not in api["spec"]  # the HPA owns it
    hpa = by_kind(everything, "HorizontalPodAutoscaler")["prod-loramill-api"]
    pdb = by_kind(everything, "PodDisruptionBudget")["prod-loramill-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "prod-loramill-api"
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    c = container(api)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert env_of(c)["LORAMILL_S3_PUBLIC_ENDPOINT_URL"] == "https://s3.example.com"
    assert not [d for d in everything if d["kind"] == "Secret"]
    text = yaml.safe_dump_all(everything)
    assert "postgresql://" not in text and "secret-change-me" not in text
    for doc in everything:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_migrations_run_as_a_hook_before_install_and_upgrade(
        everything: list[dict[str, Any]]) -> None:
    (job,) = by_kind(everything, "Job").values()
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert set(hooks) == {"pre-install", "pre-upgrade"}
    c = container(job)
    assert c["command"] == ["loramill-server", "migrate"]
    assert "LORAMILL_ADMIN_DATABASE_URL" in env_of(c)
    # it runs before the chart's objects exist: nothing it mounts or reads may be one
    assert "envFrom" not in c and job["spec"]["template"]["spec"].get(
        "serviceAccountName") is None


def test_the_scheduler_is_a_standby_pair(everything: list[dict[str, Any]]) -> None:
    scheduler = by_kind(everything, "Deployment")["prod-loramill-scheduler"]
    assert scheduler["spec"]["replicas"] == 2  # safe: dispatch/sweep take advisory locks
    c = container(scheduler)
    assert "-B" in c["command"] and "loramill-scheduler" in c["command"]
    assert c["image"].startswith("ghcr.io/loramill/loramill-api:")  # no torch needed


def test_serving_engines_fetch_their_model_and_the_gateway_knows_them(
        everything: list[dict[str, Any]]) -> None:
    deployments = by_kind(everything, "Deployment")
    engine = deployments["prod-loramill-engine-0"]
    pod = engine["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["command"] == ["loramill-server", "fetch-model", "acme/llama-3-8b",
                                "--link", "/models/base"]
    c = container(engine, "engine")
    assert "--model=/models/base" in c["args"]
    assert "--served-model-name=acme/llama-3-8b" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    api_env = env_of(container(deployments["prod-loramill-api"]))
    engines = json.loads(api_env["LORAMILL_SERVING_ENGINES"])
    service = by_kind(everything, "Service")["prod-loramill-engine-0"]
    assert engines == {"acme/llama-3-8b": f"http://{service['metadata']['name']}:8000"}
    # the gateway writes adapters where the engine reads them: one claim, one path
    def claim(pod: dict[str, Any]) -> str:
        return str(next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                        if v["name"] == "adapter-cache"))
    api_pod = deployments["prod-loramill-api"]["spec"]["template"]["spec"]
    assert claim(pod) == claim(api_pod)
    pvc = by_kind(everything, "PersistentVolumeClaim")[claim(pod)]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_monitoring_objects_carry_the_alerts_and_known_metrics(
        everything: list[dict[str, Any]]) -> None:
    from core.kit import metrics
    from core.ops.metrics import QueueCollector

    (rule,) = by_kind(everything, "PrometheusRule").values()
    alerts = yaml.safe_load((ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == alerts
    (monitor,) = by_kind(everything, "ServiceMonitor").values()
    wanted = monitor["spec"]["selector"]["matchLabels"]
    scraped = {n for n, s in by_kind(everything, "Service").items()
               if wanted.items() <= s["metadata"]["labels"].items()
               and any(p["name"] == "metrics" for p in s["spec"]["ports"])}
    assert {"prod-loramill-api", "prod-loramill-scheduler",
            "prod-loramill-worker-gpu-24gb"} <= scraped

    known: set[str] = set()
    for name, value in vars(metrics).items():
        if hasattr(value, "_name") and name.isupper():
            base = value._name
            known |= {base, f"{base}_total", f"{base}_bucket", f"{base}_count", f"{base}_sum"}
    known |= {f.name for f in QueueCollector(30, ["cpu"]).describe()}
    dashboard = json.loads(next(iter(by_kind(everything, "ConfigMap").values()))
                           ["data"]["loramill.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bloramill_[a-z_]+", e)}
    assert used and used <= known, used - known
    assert "loramill_worker_demand" in used


@pytest.fixture
def demand_rows(stack: StackInfo, tenant: TenantHandle) -> Iterator[dict[str, Any]]:
    """Work of a class no worker runs (so nothing moves while the test reads): two
    tenants' jobs queued, running, paused and cancelled, and exports live, stale and
    done, on a base model of that class."""
    from core.adapters.models import Adapter, AdapterExport, AdapterVersion
    from core.base_models.models import BaseModel
    from core.jobs.models import FineTuningJob
    from core.kit import ids
    from core.kit.db import admin_scope
    from core.kit.orm import utcnow

    klass = f"gpu-keda{uuid.uuid4().hex[:6]}"
    other = make_tenant(stack)
    jobs = []
    for owner in (tenant, tenant, other, tenant, other, tenant):
        response = owner.client.post("/v1/fine_tuning/jobs", json={
            "model": "loramill/tiny-llama", "training_file": upload_ok(owner.client)["id"]})
        assert response.status_code == 200, response.text
        jobs.append(response.json()["id"])
    base_id = f"test/{klass}"
    with admin_scope() as session:
        tiny = session.get(BaseModel, "loramill/tiny-llama")
        assert tiny is not None
        session.add(BaseModel(id=base_id, source_uri=tiny.source_uri,
                              architecture=tiny.architecture, params=tiny.params,
                              context_length=tiny.context_length, gpu_class=klass,
                              shape=tiny.shape, files=None))
        for job_id, status in zip(jobs, ("queued", "running", "queued", "paused",
                                         "cancelled", "cancelled"), strict=True):
            job = session.get(FineTuningJob, job_id)
            assert job is not None
            job.gpu_class, job.status = klass, status
        adapter = Adapter(id=ids.new_id("adp"), tenant_id=tenant.id, name=klass)
        session.add(adapter)
        session.flush()
        now = utcnow()
        for n, (status, age) in enumerate((("queued", 0), ("running", 0), ("queued", 2),
                                           ("succeeded", 0))):
            job_id = (jobs[0], jobs[1], jobs[3], jobs[5])[n]  # one version per job
            version = AdapterVersion(
                id=ids.new_id("adv"), tenant_id=tenant.id, adapter_id=adapter.id,
                version=n + 1, job_id=job_id, base_model=base_id, fine_tuned_model=klass,
                object_prefix=f"x/{n}/", files=[], manifest={})
            session.add(version)
            session.flush()
            session.add(AdapterExport(
                id=ids.new_id("exp"), tenant_id=tenant.id, version_id=version.id,
                format="gguf", status=status, object_prefix="x/", files=[],
                created_at=now - timedelta(hours=age)))
    try:
        # queued, running, the other tenant's queued; a live queued and a running export
        yield {"class": klass, "expected": 5}
    finally:
        with admin_scope() as session:
            session.query(Adapter).filter_by(id=adapter.id).delete()
            session.query(FineTuningJob).filter(FineTuningJob.id.in_(jobs)).update(
                {"status": "cancelled"})
            session.flush()
            session.query(BaseModel).filter_by(id=base_id).delete()
        other.client.close()


def test_kedas_query_counts_the_work_waiting_for_a_class(
        stack: StackInfo, demand_rows: dict[str, Any]) -> None:
    klass = demand_rows["class"]
    docs = render({"existingSecret": "s", "workers": {klass: {
        "gpus": 1, "minReplicas": 0, "maxReplicas": 4, "terminationGracePeriodSeconds": 600}}})
    scaled = by_kind(docs, "ScaledObject")[f"prod-loramill-worker-{klass}"]
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    # as KEDA runs it: the connection the workers have, the app role, no tenant named
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute(query).fetchone() == (demand_rows["expected"],)
        # row-level security hides every tenant's jobs from that role: only the function
        # (SECURITY DEFINER) can count them
        assert conn.execute("select count(*) from fine_tuning_jobs").fetchone() == (0,)
        assert conn.execute("SELECT loramill_worker_demand('gpu-nothing-here')"
                            ).fetchone() == (0,)
    # and the API's /metrics reports the same number, for Prometheus-based scaling
    _, found = prometheus_samples(f"{stack.api_url}/metrics")
    assert sample(found, "loramill_worker_demand", gpu_class=klass) == \
        demand_rows["expected"]


def test_the_demand_function_is_not_for_everyone(stack: StackInfo) -> None:
    """EXECUTE is the app role's, not PUBLIC's: a role created for something else cannot
    count the deployment's jobs."""
    from sqlalchemy import text

    from core.kit.db import admin_scope

    role = f"nobody_{uuid.uuid4().hex[:8]}"
    with admin_scope() as session:
        session.execute(text(f"create role {role}"))
    try:
        with psycopg.connect(stack.admin_database_url) as conn:
            conn.execute(f"set role {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT loramill_worker_demand('cpu')")
    finally:
        with admin_scope() as session:
            session.execute(text(f"drop role {role}"))


def test_the_chart_files_are_what_the_repository_ships() -> None:
    """The chart's alerts are infra/prometheus/alerts.yml itself (a link, one source)."""
    link = CHART / "files" / "alerts.yml"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "infra" / "prometheus" / "alerts.yml").resolve()
    assert Path(CHART / "files" / "dashboard.json").is_file()
