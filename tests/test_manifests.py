"""Structural checks of the deployment files (deploy/, cluster/launcher.yaml): they parse,
and what they declare agrees with configs/cluster.yaml, pyproject.toml and the installed
Ray. No cluster, no network: a wrong resource name, GPU count, image tag, open dashboard
or missing token shows up here instead of as a pending pod."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from selfplay.config import load_config

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"
CLUSTER_CONFIG = "configs/cluster.yaml"
AUTH_SECRET = "selfplay-ray-auth"  # the Secret every manifest takes the token from
GPU = "nvidia.com/gpu"
BUILTIN_RAY_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


def load_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def load_one(path: Path) -> dict:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path}: expected one document, got {len(docs)}"
    return docs[0]


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / CLUSTER_CONFIG)


@pytest.fixture(scope="module")
def version() -> str:
    toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    return toml.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load_one(KUBERAY / "raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load_one(KUBERAY / "rayjob.yaml")


@pytest.fixture(scope="module")
def launcher() -> dict:
    return load_one(ROOT / "cluster" / "launcher.yaml")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((ROOT / "deploy" / "grafana" / "selfplay.json").read_text())


def cluster_specs(raycluster: dict, rayjob: dict) -> dict[str, dict]:
    return {"RayCluster": raycluster["spec"], "RayJob": rayjob["spec"]["rayClusterSpec"]}


def worker_groups(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def ray_resources(group: dict) -> dict[str, float]:
    """The custom resources a group's `ray start --resources` offers, read as KubeRay reads
    them (surrounding quotes stripped, then JSON)."""
    text = group.get("rayStartParams", {}).get("resources")
    return json.loads(text.strip("'\"` ")) if text else {}


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first


def all_containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def pod_specs(spec: dict) -> dict[str, dict]:
    specs = {"head": spec["headGroupSpec"]["template"]["spec"]}
    specs.update({name: g["template"]["spec"] for name, g in worker_groups(spec).items()})
    return specs


def fits(offered: dict[str, float], needed: dict[str, float]) -> int:
    """How many actors needing the custom resources `needed` fit in `offered`."""
    return int(min(offered.get(name, 0) // amount for name, amount in needed.items()))


def per_pod(group: dict, needed: dict[str, float]) -> int:
    return fits(ray_resources(group), needed)


# --- every file parses --------------------------------------------------------------------


def test_every_deployment_yaml_parses():
    paths = sorted((ROOT / "deploy").rglob("*.yaml")) + sorted((ROOT / "cluster").rglob("*.yaml"))
    assert {
        KUBERAY / n for n in ("raycluster.yaml", "rayjob.yaml", "pvc.yaml", "secret.example.yaml")
    } <= set(paths)
    assert ROOT / "cluster" / "launcher.yaml" in paths
    for path in paths:
        assert load_docs(path), f"{path}: no YAML document"


# --- KubeRay ------------------------------------------------------------------------------


def test_kuberay_kinds_and_worker_groups(raycluster, rayjob):
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    for kind, spec in cluster_specs(raycluster, rayjob).items():
        assert "headGroupSpec" in spec, kind
        assert set(worker_groups(spec)) == {"learner", "generator"}, kind


def test_worker_groups_offer_the_configs_custom_resources(raycluster, rayjob, cfg):
    from ray.autoscaler._private.kuberay.autoscaling_config import _get_custom_resources

    assert cfg.learner.resources and cfg.generator.resources, f"{CLUSTER_CONFIG} pins no node types"
    for kind, spec in cluster_specs(raycluster, rayjob).items():
        groups = worker_groups(spec)
        assert set(ray_resources(groups["learner"])) == set(cfg.learner.resources), kind
        assert set(ray_resources(groups["generator"])) == set(cfg.generator.resources), kind
        for name in ("learner", "generator"):
            params = groups[name]["rayStartParams"]
            # The Ray autoscaler parses the same string its own way (and wants integers).
            assert _get_custom_resources({}, params, name) == ray_resources(groups[name]), f"{kind} {name}"
        assert per_pod(groups["learner"], cfg.learner.resources) >= 1, kind
        assert per_pod(groups["generator"], cfg.generator.resources) >= 1, kind
        assert ray_resources(spec["headGroupSpec"]) == {}, (
            f"{kind}: the head must not attract learner or generators"
        )


def test_gpu_limits_match_the_config(raycluster, rayjob, cfg):
    learner_gpus = cfg.learner.num_gpus
    generator_gpus = cfg.generator.num_gpus * cfg.generator.tensor_parallel_size
    for kind, spec in cluster_specs(raycluster, rayjob).items():
        groups = worker_groups(spec)
        for name, gpus_per_actor, resources in (
            ("learner", learner_gpus, cfg.learner.resources),
            ("generator", generator_gpus, cfg.generator.resources),
        ):
            limits = ray_container(groups[name])["resources"]["limits"]
            expected = gpus_per_actor * per_pod(groups[name], resources)
            assert float(limits[GPU]) == expected, (
                f"{kind} {name}: {limits[GPU]} GPUs, config needs {expected}"
            )
            assert limits == ray_container(groups[name])["resources"]["requests"], f"{kind} {name}"
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
        assert GPU not in head.get("limits", {}) and GPU not in head.get("requests", {}), kind


def test_group_sizes_follow_the_autoscale_bounds(raycluster, rayjob, cfg):
    a = cfg.autoscale
    for kind, spec in cluster_specs(raycluster, rayjob).items():
        learner, generator = worker_groups(spec)["learner"], worker_groups(spec)["generator"]
        assert learner["minReplicas"] == learner["replicas"] == learner["maxReplicas"] == 1, kind
        n = per_pod(generator, cfg.generator.resources)
        assert generator["minReplicas"] <= generator["replicas"] <= generator["maxReplicas"], kind
        assert generator["replicas"] * n >= cfg.generator.num_generators, kind
        assert generator["maxReplicas"] * n >= a.max_generators, (
            f"{kind}: room for fewer than {a.max_generators} generators"
        )
        assert generator["minReplicas"] * n <= a.min_generators, (
            f"{kind}: idle pods the autoscaler may never remove"
        )
        assert spec["enableInTreeAutoscaling"] is True, kind


def test_every_container_runs_the_project_image_and_ray_version(raycluster, rayjob, version):
    image = f"selfplay:{version}-cuda"
    for kind, spec in cluster_specs(raycluster, rayjob).items():
        assert spec["rayVersion"] == ray.__version__, kind
        for group, pod in pod_specs(spec).items():
            for c in all_containers(pod):
                assert c["image"] == image, f"{kind} {group} {c['name']}: {c['image']} != {image}"
    for c in all_containers(rayjob["spec"]["submitterPodTemplate"]["spec"]):
        assert c["image"] == image, c["name"]


def assert_token_env(container: dict, where: str) -> None:
    env = {e["name"]: e for e in container.get("env", [])}
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE is not token"
    token = env.get("RAY_AUTH_TOKEN", {})
    assert "value" not in token, f"{where}: a literal token in a manifest"
    assert token.get("valueFrom", {}).get("secretKeyRef") == {"name": AUTH_SECRET, "key": "auth_token"}, where


def test_token_auth_is_on_for_every_cluster_and_container(raycluster, rayjob):
    for kind, spec in cluster_specs(raycluster, rayjob).items():
        assert spec["authOptions"] == {"mode": "token", "secretName": AUTH_SECRET}, kind
        for group, pod in pod_specs(spec).items():
            for c in all_containers(pod):
                assert_token_env(c, f"{kind} {group} {c['name']}")
    for c in all_containers(rayjob["spec"]["submitterPodTemplate"]["spec"]):
        assert_token_env(c, f"RayJob submitter {c['name']}")


def test_secret_template_names_the_secret_and_holds_no_token():
    path = KUBERAY / "secret.example.yaml"
    secret = load_one(path)
    assert (secret["kind"], secret["metadata"]["name"]) == ("Secret", AUTH_SECRET)
    placeholder = secret["stringData"]["auth_token"]
    assert not re.fullmatch(r"[0-9a-fA-F]{16,}", placeholder), "a real-looking token in the template"
    assert "REPLACE" in placeholder
    assert "openssl rand -hex 32" in path.read_text()


def test_head_is_reachable_only_inside_the_cluster(raycluster, rayjob):
    for kind, spec in cluster_specs(raycluster, rayjob).items():
        head = spec["headGroupSpec"]
        assert head["serviceType"] == "ClusterIP", kind
        assert head.get("enableIngress") is False, kind
        assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP", kind
    # The long-lived cluster's job server is for port-forward only; the RayJob's must be
    # reachable by the operator and its submitter pod through the ClusterIP Service.
    assert raycluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        for doc in load_docs(path):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Ingress", path
                if doc.get("kind") == "Service":
                    assert doc.get("spec", {}).get("type", "ClusterIP") == "ClusterIP", path


def test_every_pod_mounts_the_shared_volume(raycluster, rayjob, cfg):
    pvc = load_one(KUBERAY / "pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "checkpoints are written from several nodes"
    assert cfg.model.path.startswith("/data/"), f"{CLUSTER_CONFIG}: model.path must be on the shared volume"
    for kind, spec in cluster_specs(raycluster, rayjob).items():
        for group, pod in pod_specs(spec).items():
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            assert "/data" in mounts, f"{kind} {group}: /data not mounted"
            claim = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
            assert claim == pvc["metadata"]["name"], f"{kind} {group}"


def without_dashboard_host(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    spec["headGroupSpec"]["rayStartParams"].pop("dashboard-host")
    return spec


def test_rayjob_embeds_the_rayclusters_spec(raycluster, rayjob):
    assert without_dashboard_host(rayjob["spec"]["rayClusterSpec"]) == without_dashboard_host(
        raycluster["spec"]
    )


def test_rayjob_runs_a_named_run_on_shared_storage(rayjob):
    spec = rayjob["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["selfplay", "run", CLUSTER_CONFIG]
    assert (ROOT / argv[2]).is_file()
    assert "--name" in argv and argv[argv.index("--name") + 1], "without --name a retry starts a new run"
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert any(s.startswith("out_dir=/data/") for s in sets), "the run directory must be on the shared volume"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] in ("K8sJobMode", "SidecarMode", "HTTPMode")


def test_rayjob_is_the_job_selfplay_submit_would_make(rayjob):
    """`selfplay status|logs|stop|scale NAME` find the job by its id, the run name (KubeRay's
    default id adds 5 random characters); its stop lets the driver checkpoint (Ray's default
    waits 3 s before SIGKILL), as `selfplay submit`'s runtime env does."""
    from selfplay.jobs import runtime_env

    spec = rayjob["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert spec["jobId"] == argv[argv.index("--name") + 1]
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env == {k: v for k, v in runtime_env(".", {}, [], None)["env_vars"].items() if k in env}
    assert env["RAY_JOB_STOP_WAIT_TIME_S"] == "120"


# --- cluster launcher ---------------------------------------------------------------------


def test_launcher_matches_rays_schema(launcher):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)
    assert launcher["provider"]["type"] == "aws"


def test_launcher_node_types_offer_the_configs_resources(launcher, cfg):
    types = launcher["available_node_types"]
    for name, section in (("learner_gpu", cfg.learner), ("generator_gpu", cfg.generator)):
        offered = types[name]["resources"]
        assert set(offered) - BUILTIN_RAY_RESOURCES == set(section.resources), name
        gpus = section.num_gpus * getattr(section, "tensor_parallel_size", 1)
        assert offered["GPU"] == gpus * fits(offered, section.resources), name
    head = types[launcher["head_node_type"]]["resources"]
    assert not set(head) & (set(cfg.learner.resources) | set(cfg.generator.resources) | {"GPU"})


def test_launcher_worker_counts_are_consistent(launcher, cfg):
    types = launcher["available_node_types"]
    workers = {n: t for n, t in types.items() if n != launcher["head_node_type"]}
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) <= launcher["max_workers"]
    per_node = fits(types["generator_gpu"]["resources"], cfg.generator.resources)
    assert types["generator_gpu"]["max_workers"] * per_node >= cfg.autoscale.max_generators
    assert types["learner_gpu"]["min_workers"] >= 1, "the learner has nowhere to start"


def test_launcher_keeps_the_dashboard_local_and_auth_on(launcher):
    text = (ROOT / "cluster" / "launcher.yaml").read_text()
    assert "0.0.0.0" not in text
    head_starts = [c for c in launcher["head_start_ray_commands"] if "ray start" in c]
    worker_starts = [c for c in launcher["worker_start_ray_commands"] if "ray start" in c]
    assert head_starts and worker_starts
    assert all("--dashboard-host=127.0.0.1" in c for c in head_starts)
    for command in head_starts + worker_starts:
        assert re.search(r"(^|[;&\s])RAY_AUTH_MODE=token ray start", command), command
    assert any(remote.endswith("/.ray/auth_token") for remote in launcher["file_mounts"]), (
        "the token reaches no node"
    )


def test_launcher_installs_the_project_with_the_clients_ray(launcher):
    setup = "\n".join(launcher["setup_commands"])
    assert re.findall(r"ray\[[^\]]*\]==([\w.]+)", setup) == [importlib.metadata.version("ray")]
    assert "[gpu]" in setup


# --- image --------------------------------------------------------------------------------


def test_dockerfile_pins_the_installed_ray_and_installs_the_gpu_extra():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    pins = re.findall(r"^ARG RAY_VERSION=(\S+)$", text, re.M)
    assert pins == [importlib.metadata.version("ray")]
    assert re.search(r"^FROM \S+:\$\{RAY_VERSION\}-py311-\S+$", text, re.M), (
        "base image not on the pinned Ray"
    )
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert any('".[gpu]"' in line and "ray[default,serve]==${RAY_VERSION}" in line for line in installs)


def test_dockerfile_is_tagged_by_project_version_and_runs_as_non_root(version):
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"selfplay:{version}-cuda" in text
    assert f'org.opencontainers.image.version="{version}"' in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert not re.search(r"^(ENV|ARG)\s+\S*(TOKEN|SECRET|PASSWORD|KEY)", text, re.M | re.I)
    ignored = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


# --- Grafana ------------------------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers) of every named vector selector in a PromQL expression."""
    blocks: list[str] = []

    def keep(m: re.Match) -> str:
        blocks.append(m.group(1))
        return f"{{{len(blocks) - 1}}}"

    text = re.sub(r"\{([^}]*)\}", keep, expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    found = []
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\(|\{(\d+)\})?", text):
        name, follow, block = m.groups()
        if follow == "(" or name.lower() in PROMQL_KEYWORDS:
            continue
        found.append((name, blocks[int(block)] if block else ""))
    return found


def test_metric_selectors_sees_every_metric_name():
    expr = (
        'sum by (le) (rate(up{job="a", run="$run"}[5m])) / on (run) node_load1 '
        "+ histogram_quantile(0.95, rate(x_bucket[$__rate_interval] offset 1h)) * 1e3"
    )
    assert metric_selectors(expr) == [("up", 'job="a", run="$run"'), ("node_load1", ""), ("x_bucket", "")]


def test_dashboard_panels_query_prometheus(dashboard):
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    run_query = variables["run"]["query"]
    run_query = run_query["query"] if isinstance(run_query, dict) else run_query
    assert re.fullmatch(r"label_values\(ray_selfplay_\w+,\s*run\)", run_query), run_query
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        exprs = [t.get("expr", "").strip() for t in p.get("targets", [])]
        assert exprs and all(exprs), f"panel {p['title']!r} has a target without a query"


def test_dashboard_uses_only_selfplay_metrics_of_the_chosen_run(dashboard):
    names = set()
    for p in dashboard["panels"]:
        for t in p["targets"]:
            selectors = metric_selectors(t["expr"])
            assert selectors, f"{p['title']!r}: no metric in {t['expr']!r}"
            for name, matchers in selectors:
                assert name.startswith("ray_selfplay_"), f"{p['title']!r}: {name} is not a selfplay metric"
                assert re.search(r'\brun\s*=~?\s*"\$run"', matchers), (
                    f"{p['title']!r}: {name} not filtered by run"
                )
                names.add(name)
    assert len(names) >= 10
