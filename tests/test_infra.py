"""Every file under infra/ is parsed and checked here (or run: infra/ci/submit-sweep.sh in
tests/test_cluster.py): required fields, pinned image tags, resource requests, versions that agree
with the package's pins, and entrypoints / config files that the logoscan CLI accepts."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
RAY_VERSION = ray.__version__

CHECKED = {  # file → the test that checks it
    "Dockerfile": "test_dockerfile_pins_ray_and_downloads_no_weights",
    "kuberay/rayjob-nightly-sweep.yaml": "test_rayjobs",
    "kuberay/rayjob-train.yaml": "test_rayjobs",
    "milvus/values.yaml": "test_milvus_helm_values",
    "milvus/docker-compose.yml": "test_milvus_compose",
    "monitoring/podmonitor.yaml": "test_podmonitor_scrapes_the_rayjob_metrics_port",
    "ci/nightly-sweep.yml": "test_ci_workflow_builds_and_submits",
    "ci/submit-sweep.sh": "test_submit_script_usage (and test_cluster.py runs it)",
}


def _yaml(rel: str):
    return yaml.safe_load((INFRA / rel).read_text())


def _pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest") and not tag.startswith("$")


def test_every_infra_file_is_checked():
    files = {p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*") if p.is_file()}
    assert files == set(CHECKED), f"unchecked: {files - set(CHECKED)}; missing: {set(CHECKED) - files}"


def test_ray_pin_agrees():
    pins = re.findall(r'"ray\[[^]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pins == [RAY_VERSION]


def test_dockerfile_pins_ray_and_downloads_no_weights():
    text = (INFRA / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M)
    assert froms[0][0] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    assert {name for _, name in froms} == {"sweep", "train"}
    for image, _ in froms:
        assert image == "sweep" or _pinned(image)
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path
    code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    for banned in ("curl ", "wget ", "huggingface", "from_pretrained", "hf_hub", "torch.hub"):
        assert banned not in code, banned


def _containers(spec: dict):
    yield "head", spec["headGroupSpec"]["template"]["spec"]["containers"]
    for g in spec["workerGroupSpecs"]:
        yield g["groupName"], g["template"]["spec"]["containers"]


def _logoscan_args(entrypoint: str) -> list[list[str]]:
    """The `python -m logoscan …` commands of a shell entrypoint, $(…) filled in."""
    cmd = re.sub(r"\$\(date[^)]*\)", "2026-11-23", entrypoint)
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    out, words = [], []
    for tok in [*lex, "&&"]:
        if tok in ("&&", ";", "||"):
            if words[:3] == ["python", "-m", "logoscan"]:
                out.append(words[3:])
            words = []
        else:
            words.append(tok)
    return out


def _repo_path(path: str) -> str:
    return str(ROOT / path.removeprefix("/app/"))


@pytest.mark.parametrize("rel", ["kuberay/rayjob-nightly-sweep.yaml", "kuberay/rayjob-train.yaml"])
def test_rayjobs(rel):
    from logoscan import config_io
    from logoscan.cli import _scan_config, parser
    doc = _yaml(rel)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and 0 < spec["activeDeadlineSeconds"] <= 6 * 3600
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION
    assert cluster["enableInTreeAutoscaling"] is True
    gpu_groups = []
    for g in cluster["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g["groupName"]
        res = g["template"]["spec"]["containers"][0]["resources"]
        if "nvidia.com/gpu" in res["requests"]:
            assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"]
            gpu_groups.append(g["groupName"])
    assert gpu_groups, "a GPU worker group"
    auth = set()
    for group, containers in _containers(cluster):
        for c in containers:
            assert _pinned(c["image"]), (group, c["image"])
            assert c["image"].rsplit(":", 1)[1] == "0.1.0"  # one tag per manifest, the package version
            req = c["resources"]["requests"]
            assert "cpu" in req and "memory" in req, group
            auth.add(next((e["value"] for e in c.get("env", []) if e["name"] == "RAY_AUTH_MODE"), None))
    assert auth == {"disabled"}, "RAY_AUTH_MODE must be the same on every node"
    commands = _logoscan_args(spec["entrypoint"])
    assert commands, spec["entrypoint"]
    for args in commands:
        a = parser().parse_args(args)
        a.config = _repo_path(a.config)
        if a.cmd == "scan":
            cfg = _scan_config(a)
            assert cfg.engine == "ray" and cfg.store.incremental and cfg.run_id.startswith("nightly-")
        else:
            from logoscan.train.embedder import EmbedderTrainConfig
            cfg = config_io.load(EmbedderTrainConfig, a.config, a.set)
            assert cfg.out == "/tmp/embedder"
    if "copy_dir" in spec["entrypoint"]:
        from logoscan.storage import copy_dir
        assert callable(copy_dir)


def test_copy_dir_uploads_an_artifact_folder(tmp_path, s3):
    from logoscan.storage import copy_dir
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "config.json").write_text("{}")
    (tmp_path / "a" / "sub" / "model.safetensors").write_bytes(b"x" * 10)
    s3.create_bucket(Bucket="infra-copy-dir")
    out = copy_dir(str(tmp_path / "a"), "s3://infra-copy-dir/logoscan/embedder-x")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="infra-copy-dir")["Contents"])
    assert keys == ["logoscan/embedder-x/config.json", "logoscan/embedder-x/sub/model.safetensors"] and len(out) == 2


def test_milvus_helm_values():
    v = _yaml("milvus/values.yaml")
    assert v["cluster"]["enabled"] is True
    assert re.fullmatch(r"v2\.\d+\.\d+", v["image"]["all"]["tag"])
    assert v["queryNode"]["replicas"] >= 2
    for name, comp in v.items():
        if isinstance(comp, dict) and "replicas" in comp:
            req = comp["resources"]["requests"]
            assert "cpu" in req and "memory" in req, name
    assert v["externalS3"]["useIAM"] is True
    text = (INFRA / "milvus/values.yaml").read_text()
    assert not re.search(r"(accessKey|secretKey|password)\s*:\s*\S", text), "no credentials in values"


def test_milvus_compose():
    c = _yaml("milvus/docker-compose.yml")
    assert set(c["services"]) == {"etcd", "minio", "standalone"}
    for name, s in c["services"].items():
        assert _pinned(s["image"]), s["image"]
        assert s["healthcheck"]["test"], name
        assert s["deploy"]["resources"]["reservations"], name
    m = c["services"]["standalone"]
    assert any(p.endswith(":19530") for p in m["ports"])
    assert all(p.startswith("127.0.0.1:") for p in m["ports"]), "published on loopback only"
    assert m["depends_on"] == {"etcd": {"condition": "service_healthy"}, "minio": {"condition": "service_healthy"}}


def test_podmonitor_scrapes_the_rayjob_metrics_port():
    pm = _yaml("monitoring/podmonitor.yaml")
    assert (pm["apiVersion"], pm["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    job = _yaml("kuberay/rayjob-nightly-sweep.yaml")["spec"]["rayClusterSpec"]
    for group, containers in _containers(job):
        named = {p["name"]: p["containerPort"] for p in containers[0].get("ports", [])}
        params = (job["headGroupSpec"] if group == "head" else
                  next(g for g in job["workerGroupSpecs"] if g["groupName"] == group))["rayStartParams"]
        assert named.get(port) == int(params["metrics-export-port"]), group


def test_ci_workflow_builds_and_submits():
    wf = _yaml("ci/nightly-sweep.yml")
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on["schedule"][0]["cron"] and "workflow_dispatch" in on
    assert wf["env"]["RAY_VERSION"] == RAY_VERSION
    jobs = wf["jobs"]
    assert jobs["sweep"]["needs"] == "build"
    steps = [s for j in jobs.values() for s in j["steps"]]
    for s in steps:
        if "uses" in s:
            assert re.search(r"@(v\d+|[0-9a-f]{40})$", s["uses"]), s["uses"]
    build = "\n".join(s.get("run", "") for s in jobs["build"]["steps"])
    assert "docker build -f infra/Dockerfile --target sweep" in build and "docker push" in build
    submit = "\n".join(s.get("run", "") for s in jobs["sweep"]["steps"])
    assert "infra/ci/submit-sweep.sh /app/jobs/configs/nightly.yaml" in submit
    assert (ROOT / "jobs/configs/nightly.yaml").exists()
    assert 'ray[default]==${RAY_VERSION}' in submit
    assert all(j["timeout-minutes"] for j in jobs.values())


def test_submit_script_usage():
    sh = INFRA / "ci/submit-sweep.sh"
    assert subprocess.run(["bash", "-n", str(sh)]).returncode == 0
    r = subprocess.run(["bash", str(sh)], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr
