"""The Kubeflow pipeline and its RayJob launcher: compiles to the committed YAML, waits correctly, fails clearly."""

from __future__ import annotations

import shlex
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from jobs.cli import SUBCOMMANDS
from tests.infra.test_kuberay import KUBERAY

REPO = Path(__file__).resolve().parents[2]
KUBEFLOW = REPO / "infra" / "kubeflow"
sys.path.insert(0, str(KUBEFLOW))

import pipeline  # noqa: E402
import rayjob_launcher as rl  # noqa: E402
import recurring_run  # noqa: E402


class FakeClock:
    """``clock``/``sleep`` pair for wait_for_rayjob: sleeping advances the clock, nothing really waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def statuses(*items):
    """A get_status callable returning ``items`` in turn (an Exception item is raised), then the last forever."""
    queue = list(items)

    def get_status():
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return get_status


def wait(get_status, fake: FakeClock, **kwargs):
    logs: list[str] = []
    kwargs.setdefault("timeout_s", 100)
    kwargs.setdefault("poll_s", 10)
    result = rl.wait_for_rayjob(get_status, name="job-a", sleep=fake.sleep, clock=fake.clock, log=logs.append, **kwargs)
    return result, logs


# ---------------------------------------------------------------- waiting
def test_wait_returns_on_success_and_logs_each_change_once():
    fake = FakeClock()
    get = statuses(
        {},
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
    )
    final, logs = wait(get, fake)
    assert final["jobStatus"] == "SUCCEEDED"
    assert fake.sleeps == [10, 10, 10, 10]
    assert len(logs) == 4 and "jobStatus=SUCCEEDED" in logs[-1]


@pytest.mark.parametrize(
    "status, words",
    [
        (
            {"jobStatus": "FAILED", "jobDeploymentStatus": "Complete", "message": "exit 2"},
            ["jobStatus=FAILED", "exit 2"],
        ),
        ({"jobStatus": "STOPPED", "jobDeploymentStatus": "Complete"}, ["jobStatus=STOPPED"]),
        (
            {"jobStatus": "RUNNING", "jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"},
            ["jobDeploymentStatus=Failed", "reason=DeadlineExceeded"],
        ),
    ],
)
def test_wait_raises_a_clear_failure(status, words):
    fake = FakeClock()
    with pytest.raises(RuntimeError, match="rayjob job-a failed") as info:
        wait(statuses({"jobStatus": "RUNNING"}, status), fake)
    for word in words + ["kubectl describe rayjob job-a"]:
        assert word in str(info.value)


def test_wait_times_out_with_the_last_status():
    fake = FakeClock()
    with pytest.raises(TimeoutError, match=r"job-a did not finish within 25s \(last jobStatus=RUNNING"):
        wait(statuses({"jobStatus": "RUNNING"}), fake, timeout_s=25)
    assert fake.sleeps == [10, 10, 5] and fake.now == 25


def test_wait_tolerates_a_few_status_read_errors():
    fake = FakeClock()
    final, logs = wait(statuses(OSError("api down"), OSError("api down"), {"jobStatus": "SUCCEEDED"}), fake)
    assert final["jobStatus"] == "SUCCEEDED" and sum("read failed" in line for line in logs) == 2
    with pytest.raises(OSError, match="api down"):
        wait(statuses(OSError("api down")), FakeClock(), max_errors=2)
    with pytest.raises(ValueError, match="must be > 0"):
        wait(statuses({}), FakeClock(), timeout_s=0)


def test_outcome_table():
    assert rl.rayjob_outcome({}) is None
    assert rl.rayjob_outcome({"jobStatus": "PENDING", "jobDeploymentStatus": "Initializing"}) is None
    assert rl.rayjob_outcome({"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}) == "SUCCEEDED"
    assert rl.rayjob_outcome({"jobDeploymentStatus": "Failed"}) == "FAILED"


# ---------------------------------------------------------------- building the RayJob
def test_rayjob_from_template_sets_name_entrypoint_image(validators):
    template = yaml.safe_load((KUBERAY / "rayjob-synthesize.yaml").read_text())
    template["metadata"]["namespace"] = "elsewhere"
    overrides = rl.expand_overrides(
        ["out=${version_uri}", "train_sources=[{kind: synthetic, uri: '${version_uri}'}]"],
        {"version_uri": "s3://b/d/versions/v1"},
    )
    body = rl.rayjob_from_template(
        template,
        name="fastgen-synthesize-v1",
        command="synthesize",
        config="synthesize-gpu.yaml",
        overrides=overrides,
        image="registry.local/fastgen:9",
    )
    assert body["metadata"]["name"] == "fastgen-synthesize-v1" and "namespace" not in body["metadata"]
    assert shlex.split(body["spec"]["entrypoint"]) == [
        "fastgen",
        "synthesize",
        "--config",
        "/configs/synthesize-gpu.yaml",
        "--set",
        "out=s3://b/d/versions/v1",
        "--set",
        "train_sources=[{kind: synthetic, uri: 's3://b/d/versions/v1'}]",
    ]
    text = yaml.safe_dump(body)
    assert "fastgen:0.1.0" not in text and text.count("registry.local/fastgen:9") == 3  # submitter, head, worker
    assert template["metadata"]["name"] == "fastgen-synthesize"  # the template is not modified
    validators["RayJob"].validate(body)
    with pytest.raises(ValueError, match="expected RayJob"):
        rl.rayjob_from_template({"kind": "RayCluster"}, name="x", command="c", config="c", overrides=[])
    with pytest.raises(ValueError, match="key.path=value"):
        rl.rayjob_from_template(template, name="x", command="c", config="c", overrides=["novalue"])
    with pytest.raises(ValueError, match=r"unknown or malformed placeholder.*known: \['version_uri'\]"):
        rl.expand_overrides(["out=${work_uri}"], {"version_uri": "x"})


# ---------------------------------------------------------------- the compiled pipeline
@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    path = pipeline.compile_pipeline(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")
    text = path.read_text()
    assert text == (KUBEFLOW / "pipeline.yaml").read_text(), (
        "infra/kubeflow/pipeline.yaml is stale: run `python infra/kubeflow/pipeline.py`"
    )
    return yaml.safe_load(text)


def test_committed_pipeline_is_a_fresh_compile(compiled):
    assert compiled["pipelineInfo"]["name"] == "fastgen-refresh"


def test_pipeline_runs_the_steps_in_order(compiled):
    tasks = compiled["root"]["dag"]["tasks"]
    by_name = {t["taskInfo"]["name"]: key for key, t in tasks.items()}
    order = ["version id", "train", "masks", "manifest", "synthesize", "evaluate", "publish"]
    assert sorted(by_name) == sorted(order)
    for before, after in pairwise(order):
        assert by_name[before] in tasks[by_name[after]]["dependentTasks"], f"{after} must wait for {before}"
    for key in tasks.values():
        assert key["cachingOptions"] == {} or key["cachingOptions"].get("enableCache") is not True
    images = {e["container"]["image"] for e in compiled["deploymentSpec"]["executors"].values()}
    assert images == {pipeline.IMAGE}


def test_pipeline_steps_name_existing_commands_and_templates(compiled):
    """Each Ray step names a template under infra/kuberay and a fastgen subcommand (checked against jobs.cli)."""
    commands = {name.replace("_", "-") for name in SUBCOMMANDS}
    tasks = compiled["root"]["dag"]["tasks"]
    for task in tasks.values():
        params = task.get("inputs", {}).get("parameters", {})
        if "command" not in params:
            continue
        command = params["command"]["runtimeValue"]["constant"]
        manifest = params["manifest"]["runtimeValue"]["constant"]
        assert manifest == pipeline.template(command), f"{command}: embedded template differs from the manifest"
        assert command in commands, f"pipeline step `fastgen {command}` does not exist (have {sorted(commands)})"
    defaults = compiled["root"]["inputDefinitions"]["parameters"]
    configs = {k: v["defaultValue"] for k, v in defaults.items() if k.endswith("_config")}
    assert len(configs) == 5
    for key, name in configs.items():
        assert (REPO / "jobs" / "configs" / name).is_file(), f"pipeline default {key}={name}: no jobs/configs/{name}"


def test_component_source_is_self_contained(compiled):
    """The shipped component source defines every helper it calls (kfp's additional_funcs)."""
    executor = compiled["deploymentSpec"]["executors"]["exec-rayjob-step"]["container"]
    source = executor["command"][-1]
    namespace: dict = {}
    exec(compile(source, "ephemeral_component.py", "exec"), namespace)  # noqa: S102  (our own generated source)
    for name in ("rayjob_outcome", "wait_for_rayjob", "expand_overrides", "rayjob_from_template", "run_rayjob"):
        assert callable(namespace[name])
    fake = FakeClock()
    final = namespace["wait_for_rayjob"](
        statuses({"jobStatus": "SUCCEEDED"}), name="x", timeout_s=5, sleep=fake.sleep, clock=fake.clock, log=print
    )
    assert final == {"jobStatus": "SUCCEEDED"}


# ---------------------------------------------------------------- RBAC, CronJob, recurring run
def test_rbac_grants_only_rayjob_rights():
    docs = {d["kind"]: d for d in yaml.safe_load_all((KUBEFLOW / "rbac.yaml").read_text())}
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding"}
    (rule,) = docs["Role"]["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    assert set(rule["verbs"]) == {"create", "get", "list", "watch", "delete"}
    binding = docs["RoleBinding"]
    assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == docs["ServiceAccount"]["metadata"]["name"]


def test_cronjob_submits_refresh_to_the_cluster():
    cron = yaml.safe_load((KUBEFLOW / "cronjob.yaml").read_text())
    assert cron["apiVersion"] == "batch/v1" and cron["kind"] == "CronJob"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and len(cron["spec"]["schedule"].split()) == 5
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    argv = container["command"]
    cluster = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())["metadata"]["name"]
    assert argv[:5] == ["ray", "job", "submit", "--address", f"http://{cluster}-head-svc:8265"]
    fastgen = argv[argv.index("--") + 1 :]
    assert fastgen[0] == "fastgen" and fastgen[2] == "--config"
    assert (REPO / "jobs" / "configs" / Path(fastgen[3]).name).is_file(), f"missing config {fastgen[3]}"
    assert fastgen[1] in {n.replace("_", "-") for n in SUBCOMMANDS}, f"`fastgen {fastgen[1]}` does not exist"


def test_recurring_run_params():
    assert recurring_run.parse_params(["keep=5", "dataset_name=tiles", 'min_metrics={"a.b": 0.9}']) == {
        "keep": 5,
        "dataset_name": "tiles",
        "min_metrics": {"a.b": 0.9},
    }
    with pytest.raises(ValueError, match="key=value"):
        recurring_run.parse_params(["oops"])
