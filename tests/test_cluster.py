"""On a real multi-node Ray cluster (cluster/local_cluster.py: a head node offering
`learner` and two worker nodes offering `generator`, all on 127.0.0.1, token auth on),
driven only through the `selfplay` CLI and Ray's HTTP endpoints, as a user would: submit a
run through the Jobs API, scale its generators 1 -> 2 -> 1 while it trains (killing
generator-1's process in between: the pool replaces it), read its metrics from Ray's
Prometheus endpoints, stop it, and resubmit it under the same name, which resumes it,
following the logs to completion. (A frozen generator, SIGSTOP, is healed the same way:
tests/test_pool.py on the protocol, `make chaos` on real processes.)

What a person sees is checked in a real headless browser (Debian's chromium and
chromium-driver, which `make test` installs): while the run trains, the Ray dashboard lists
its job and the job's named actors; after it, every plot of its report/report.html loads."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cluster import local_cluster
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

RUN = "scaled"
CONFIG = """\
name: cluster-test
games: {tictactoe: 1.0}
total_steps: 100000
log_every: 2
checkpoint_every: 10
model: {preset: 1m, max_model_len: 64}
generator: {games_per_wave: 64, max_response_tokens: 1, resources: {generator: 1}, enforce_eager: true,
            cpu_bind: nobind}  # two engines share two cores: let the OS place their threads
learner: {batch_size: 64, lr: 1.0e-3, resources: {learner: 1}, broadcast_every: 2}
buffer: {min_size: 64, max_staleness: 2, spi_tolerance: 512}
eval: {games: 2, every_steps: 1000, opponents: [random, minimax]}
verifier: {num_cpus: 0}
"""
GRAFANA = Path(__file__).parent.parent / "deploy" / "grafana" / "selfplay.json"


def cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "selfplay.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"selfplay {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def scaling_events(run_dir: Path) -> list[dict]:
    path = run_dir / "scaling.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def generator_events(run_dir: Path, name: str) -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("reason")) for e in scaling_events(run_dir) if e.get("generator") == name]


def actor_pid(state: dict, name: str) -> int:
    """The process of the live actor `name`, from Ray's state API (a fault injector's view,
    not a user's)."""
    token = Path(state["token_path"]).read_text().strip()
    query = f"filter_keys=name&filter_predicates=%3D&filter_values={name}&detail=true&limit=100"
    request = urllib.request.Request(
        f"{state['dashboard_url']}/api/v0/actors?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        actors = json.load(r)["data"]["result"]["result"]
    (alive,) = [a for a in actors if a["state"] == "ALIVE"]
    return alive["pid"]


def pool_gauge(text: str) -> list[float]:
    return [
        float(v)
        for v in re.findall(
            rf'^ray_selfplay_controller_generators\{{[^}}]*run="{RUN}"[^}}]*\}} (\S+)', text, re.M
        )
    ]


def scrape(state: dict) -> str:
    """Every node's Prometheus metrics endpoint, concatenated."""
    texts = []
    for node in state["nodes"]:
        with urllib.request.urlopen(f"http://127.0.0.1:{node['metrics_port']}/metrics", timeout=10) as r:
            texts.append(r.read().decode())
    return "\n".join(texts)


# ----------------------------------------------------------------------------------------
# What a person sees, in a real headless Chromium. Selenium (PyPI) is given Debian's
# chromium and chromedriver by path, so Selenium Manager never downloads a browser.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"  # `make test` installs both (apt) when this is absent
NAMED_ACTORS = ("learner", "generator-0", "buffer", "verifier", "controller")
PAGE_WAIT_S = 60  # pages render while the run's engines keep both cores busy
ACTOR_WAIT_S = 20  # the Name filter works on loaded rows; the table itself refreshes every few s
TABLES_JS = """return [...document.querySelectorAll('table')].map(
    t => [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim())))"""


@contextlib.contextmanager
def headless_chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # no sandbox: CI runs the suite as root
        "--disable-dev-shm-usage",
        "--window-size=1600,1200",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def rendered_rows(browser) -> list[dict[str, str]]:
    """Every row of every table on the page as {column header: the cell's rendered text}."""
    rows = []
    for table in browser.execute_script(TABLES_JS):
        if table:
            header, *body = table
            rows += [dict(zip(header, cells)) for cells in body if len(cells) == len(header)]
    return rows


def what_the_dashboard_shows(dashboard_url: str, token: str, run: str) -> dict:
    """Open the Ray dashboard in headless Chromium as a person would, and write down what it
    shows: the Jobs page's row for `run`, then, on that job's Actors page, the row of each
    named actor (found by typing its name in the table's Name filter).

    Login (Ray 2.60 token authentication; dashboard/http_server_head.py and the web UI's
    App.tsx and authentication/): the page itself is public, its API calls answer 401, on
    which the UI opens its "Authentication Token Required" dialog. The token typed there is
    POSTed to /api/authenticate as `Authorization: Bearer TOKEN`, and the server answers with
    an HttpOnly cookie (`ray-authentication-token`) that the browser sends from then on. So
    the token is typed into that dialog, as the dialog tells a user to.

    A browser failure does not raise here: what could not be seen stays None and the error
    is kept, so the browser tests report it without taking the cluster tests down with them."""
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    seen = {"logged_in": False, "jobs": [], "job": None, "actor_rows": [], "actors": {}, "error": None}
    stage = "starting headless Chromium"
    try:
        with headless_chromium() as browser:
            wait = WebDriverWait(browser, PAGE_WAIT_S)
            stage = "logging in through the token dialog"
            browser.get(f"{dashboard_url}/#/jobs")
            token_field = wait.until(
                shown.visibility_of_element_located(
                    (By.XPATH, "//label[text()='Authentication Token']/following::input[1]")
                )
            )
            token_field.send_keys(token, Keys.ENTER)
            wait.until(shown.invisibility_of_element_located((By.ID, "token-auth-dialog-title")))
            seen["logged_in"] = True
            stage = f"looking for Submission ID {run!r} on the Jobs page"

            def job_row(page):
                rows = [r for r in rendered_rows(page) if "Submission ID" in r]
                seen["jobs"] = [(r["Submission ID"], r["Status"]) for r in rows]
                return next((r for r in rows if r["Submission ID"] == run), None)

            job = seen["job"] = wait.until(job_row)
            stage = "opening the job's Actors page"
            browser.find_element(By.LINK_TEXT, job["Job ID"]).click()  # the job's own page...
            wait.until(
                shown.element_to_be_clickable(  # ...and its Actors tab
                    (By.CSS_SELECTOR, f"a[href$='/jobs/{job['Job ID']}/actors']")
                )
            ).click()
            wait.until(lambda b: [r for r in rendered_rows(b) if "Name" in r])
            name_filter = browser.find_element(By.XPATH, "//label[text()='Name']/following::input[1]")
            stage = "filtering the job's actors by name"
            for name in NAMED_ACTORS:
                name_filter.send_keys(Keys.CONTROL, "a")
                name_filter.send_keys(Keys.BACKSPACE, name)
                seen["actors"][name] = None

                def alive_row(page, name=name):  # the table refreshes itself; the last row seen is kept
                    row = seen["actors"][name] = next(
                        (r for r in rendered_rows(page) if r.get("Name") == name), seen["actors"][name]
                    )
                    return row is not None and row["State"] == "ALIVE"

                with contextlib.suppress(TimeoutException):
                    WebDriverWait(browser, ACTOR_WAIT_S).until(alive_row)
            name_filter.send_keys(Keys.CONTROL, "a")
            name_filter.send_keys(Keys.BACKSPACE)
            seen["actor_rows"] = [(r["Name"], r["State"]) for r in rendered_rows(browser) if "Name" in r]
    except (OSError, WebDriverException) as err:  # timeouts included; reported by the browser tests
        seen["error"] = f"while {stage}: {type(err).__name__} {str(err).strip()[:500]}"
    return seen


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("cluster")
    state = local_cluster.up(state_dir, workers=2, cpus_per_node=2)
    env = {**os.environ, **local_cluster.auth_env(state), "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("RAY_ADDRESS", None)
    try:
        yield state, env, {n["node_id"]: n for n in local_cluster.alive_nodes(state)}
    finally:
        local_cluster.down(state_dir, timeout=1)  # a node drains for up to 30 s: nothing here needs it


@pytest.fixture(scope="module")
def scaled_run(cluster, tmp_path_factory):
    """Submit, scale 1 -> 2 -> 1 while training, scrape metrics, stop; what each step said."""
    state, env, nodes = cluster
    work = tmp_path_factory.mktemp("run")
    (work / "run.yaml").write_text(CONFIG)
    storage = work / "runs"
    cli(env, "submit", str(work / "run.yaml"), "--name", RUN, "--storage", str(storage))
    run_dir = storage / RUN
    wait_for(
        lambda: any(e["event"] == "start" for e in scaling_events(run_dir)),
        240,
        "generator-0 playing",
        poll=0.2,
    )
    up = json.loads(cli(env, "scale", RUN, "--generators", "2").stdout)
    # a fault: generator-1's process is killed; the pool replaces it
    os.kill(actor_pid(state, "generator-1"), signal.SIGKILL)
    wait_for(
        lambda: len(generator_events(run_dir, "generator-1")) == 3, 240, "generator-1 replaced", poll=0.2
    )
    down = json.loads(cli(env, "scale", RUN, "--generators", "1").stdout)
    metrics = wait_for(
        lambda: (
            (text := scrape(state))
            and pool_gauge(text) == [1.0]
            and "ray_selfplay_learner_step_seconds_bucket" in text
            and text
        ),
        90,
        "selfplay metrics",
    )
    dashboard = what_the_dashboard_shows(
        state["dashboard_url"], Path(state["token_path"]).read_text().strip(), RUN
    )
    status_running = json.loads(cli(env, "status", RUN).stdout)["status"]
    stopped = cli(env, "stop", RUN, timeout=200).stdout
    return {
        "run_dir": run_dir,
        "up": up,
        "down": down,
        "metrics": metrics,
        "status": status_running,
        "stopped": stopped,
        "storage": storage,
        "work": work,
        "nodes": nodes,
        "dashboard": dashboard,
    }


def test_generators_scale_up_on_generator_nodes_with_the_learners_weights(scaled_run):
    up, nodes = scaled_run["up"], scaled_run["nodes"]
    assert sorted(up["generators"]) == ["generator-0", "generator-1"]
    worker_nodes = {i for i, n in nodes.items() if "generator" in n["resources_total"]}
    assert {g["node_id"] for g in up["generators"].values()} <= worker_nodes
    starts = {e["generator"]: e for e in scaling_events(scaled_run["run_dir"]) if e["event"] == "start"}
    joined = starts["generator-1"]
    assert joined["version"] > 0  # joined a run already under way...
    assert joined["generator_checksum"] == joined["checksum"]  # ...with the learner's weights then


def test_a_killed_generator_is_replaced_under_its_name_with_the_learners_weights(scaled_run):
    events = [e for e in scaling_events(scaled_run["run_dir"]) if e.get("generator") == "generator-1"]
    assert [e["event"] for e in events] == ["start", "failed", "start", "stop"]
    assert events[1]["reason"].startswith("died")
    assert events[2]["generator_checksum"] == events[2]["checksum"]  # the learner's weights then
    assert events[0]["version"] < events[2]["version"]  # ...which had moved on


def test_scaling_down_keeps_generator_0_and_retires_the_others(scaled_run):
    down = scaled_run["down"]
    assert list(down["generators"]) == ["generator-0"]
    # the killed generator-1 (its stats as last probed), then its replacement, scaled down
    assert [(r["id"], "failed" in r) for r in down["retired"]] == [
        ("generator-1", True),
        ("generator-1", False),
    ]
    assert down["retired"][-1]["sent"] > 0  # it played before it left


def test_the_learner_runs_on_the_node_type_it_is_pinned_to(scaled_run):
    summary = json.loads((scaled_run["run_dir"] / "summary.json").read_text())
    learner_node = scaled_run["nodes"][summary["placement"]["learner"]]
    assert "learner" in learner_node["resources_total"]


def test_stop_checkpoints_and_no_trajectory_is_lost_or_duplicated(scaled_run):
    assert scaled_run["status"] == "RUNNING"
    assert "STOPPED" in scaled_run["stopped"]
    summary = json.loads((scaled_run["run_dir"] / "summary.json").read_text())
    step = summary["stopped_at_step"]
    assert Path(summary["last_checkpoint"]).name == f"step_{step:07d}"
    books = summary["pool"]
    sent = {}
    for g in books["sent"]:
        sent[g["generator"]] = sent.get(g["generator"], 0) + g["sent"]
    assert set(sent) == {"generator-0", "generator-1"}
    verifier = books["verifier"]
    received = verifier["received_by"]
    assert sent["generator-0"] == received["generator-0"]  # every game handed on arrived...
    # generator-1's failed instance is counted as last probed: at most what it handed on
    assert sent["generator-1"] <= received["generator-1"]
    assert sum(received.values()) == verifier["received"]
    assert "rejected_duplicate" not in verifier  # ...once
    assert verifier["accepted"] == verifier["received"]  # and all were valid games
    assert books["buffer_inserted"] == verifier["forwarded_turns"]


def test_metrics_reach_rays_prometheus_endpoints(scaled_run):
    text = scaled_run["metrics"]
    exported = set(re.findall(r"^(ray_selfplay_\w+?)(?:\{| )", text, re.M))
    assert f'run="{RUN}"' in text
    used = set(re.findall(r"ray_selfplay_\w+", GRAFANA.read_text()))
    # The dashboard's league and rejection panels need a league run and a rejected game.
    expected = {
        m for m in used if not m.startswith(("ray_selfplay_league_", "ray_selfplay_verifier_rejected"))
    }
    assert expected - exported == set()
    assert pool_gauge(text) == [1.0]  # the pool size after scaling back down


def test_resubmitting_the_same_name_resumes_and_follows_to_completion(cluster, scaled_run):
    state, env, _ = cluster
    stopped_at = json.loads((scaled_run["run_dir"] / "summary.json").read_text())["stopped_at_step"]
    checkpoint = scaled_run["run_dir"] / "checkpoints" / f"step_{stopped_at:07d}"
    version = json.loads((checkpoint / "learner_state.json").read_text())["version"]
    target = stopped_at + 4
    out = cli(
        env,
        "submit",
        str(scaled_run["work"] / "run.yaml"),
        "--name",
        RUN,
        "--storage",
        str(scaled_run["storage"]),
        "--set",
        f"total_steps={target}",
        "--follow",
        timeout=400,
    )
    assert f"run {RUN}: SUCCEEDED" in out.stdout
    assert "run finished" in out.stdout  # the job's own output came through the log stream
    summary = json.loads((scaled_run["run_dir"] / "summary.json").read_text())
    assert summary["steps"] == target and "after" in summary
    assert "stopped_at_step" not in summary  # the first session's end, not this one's
    assert Path(summary["last_checkpoint"]).name == f"step_{target:07d}"
    starts = [e for e in scaling_events(scaled_run["run_dir"]) if e["event"] == "start"]
    assert (starts[-1]["generator"], starts[-1]["version"]) == ("generator-0", version)  # resumed weights
    logs = cli(env, "logs", RUN).stdout
    assert "run finished" in logs


# ----------------------------------------------------------------------------------------
# What a person sees (the helpers are above the fixtures); failures start with what failed.


def test_the_dashboard_lists_the_run_as_a_running_job(scaled_run):
    seen = scaled_run["dashboard"]
    assert seen["logged_in"], f"DASHBOARD NOT OPENED: {seen['error']} (`make browser` installs Chromium)"
    assert seen["job"] is not None, (
        f"JOB NOT LISTED: no row with Submission ID {RUN!r} on the dashboard's "
        f"Jobs page; rows: {seen['jobs']}; {seen['error']}"
    )
    assert seen["job"]["Status"] == "RUNNING", f"JOB NOT RUNNING on the Jobs page: {seen['job']}"


def test_the_dashboard_shows_the_runs_named_actors_alive(scaled_run):
    seen = scaled_run["dashboard"]
    assert seen["job"] is not None, f"JOB NOT LISTED, so its actors could not be looked up: {seen['error']}"
    missing = [name for name in NAMED_ACTORS if seen["actors"].get(name) is None]
    assert not missing, (
        f"ACTOR MISSING on job {seen['job']['Job ID']}'s Actors page: {missing}; "
        f"rows: {seen['actor_rows']}; {seen['error']}"
    )
    for name, row in seen["actors"].items():
        assert row["State"] == "ALIVE", f"ACTOR NOT ALIVE: {name} is {row['State']}"
        assert row["Job ID"] == seen["job"]["Job ID"], f"ACTOR OF ANOTHER JOB: {name} in job {row['Job ID']}"


def test_every_plot_in_the_runs_report_html_loads_in_a_browser(scaled_run):
    from selenium.webdriver.support.ui import WebDriverWait

    report = scaled_run["run_dir"] / "report" / "report.html"  # written by the job as it ends
    assert report.exists(), f"REPORT MISSING: {report}"
    with headless_chromium() as browser:
        browser.get(report.as_uri())
        WebDriverWait(browser, PAGE_WAIT_S).until(  # "complete": every image has loaded or failed
            lambda b: b.execute_script("return document.readyState") == "complete"
        )
        images = browser.execute_script(
            "return [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth])"
        )
    assert images, f"REPORT HAS NO IMAGES: {report}"
    broken = [src for src, width in images if not width]
    assert not broken, f"REPORT IMAGE BROKEN (did not load): {broken} of {[src for src, _ in images]}"


def test_down_ends_the_clusters_drivers_but_not_itself_or_the_shell_it_runs_from():
    """`down` kills processes whose RAY_ADDRESS names the cluster's GCS port (its jobs'
    drivers). A person who exported RAY_ADDRESS to reach the cluster runs `down` with it
    too: that process and its ancestors are not drivers (it killed itself before)."""
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:64999"}
    program = (
        "import subprocess, sys\n"
        "from cluster import local_cluster\n"
        "driver = subprocess.Popen(['sleep', '30'])\n"  # inherits the address: a driver
        "found = local_cluster._drivers('64999')\n"
        "driver.kill()\n"
        "print(driver.pid in found, any(p in found for p in (__import__('os').getpid(), __import__('os').getppid())))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_a_node_process_that_exited_is_not_running_though_not_reaped():
    """A `ray start` that died at once stays a zombie (nothing reaps it) and signal 0 still
    reaches it: `up` waited its whole timeout instead of naming the node's log."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: not local_cluster.running(child.pid), 30, "the child seen as exited", poll=0.05)
    assert local_cluster._send(child.pid, 0, group=False)  # a zombie: signal 0 reaches it
    child.wait()
    assert not local_cluster.running(child.pid) and local_cluster.running(os.getpid())


def test_down_leaves_a_process_that_took_a_recorded_nodes_pid(tmp_path):
    """After a crash or a reboot, a node's pid in cluster.json may name another process:
    `down` killed it (SIGTERM to its group, then SIGKILL). It is left, and cluster.json goes."""
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        node = {"pid": other.pid, "started": local_cluster.started(other.pid) - 100.0, "role": "head"}
        state = {"nodes": [node], "gcs_address": "127.0.0.1:64998"}
        (tmp_path / "cluster.json").write_text(json.dumps(state))
        local_cluster.down(tmp_path, timeout=0.5)
        assert other.poll() is None and not (tmp_path / "cluster.json").exists()
        node["started"] += 100.0  # the process it recorded: ended
        (tmp_path / "cluster.json").write_text(json.dumps(state))
        began = time.monotonic()
        local_cluster.down(tmp_path, timeout=5)
        assert other.wait(timeout=10) is not None
        # it went at SIGTERM: collected, not waited for as a zombie until the timeout
        assert time.monotonic() - began < 4
    finally:
        other.kill()
