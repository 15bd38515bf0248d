"""configs/cluster/, checked offline by what the real tools run: the runtime env by Ray's job
submission path (`ray job submit --runtime-env`, then its working_dir packaging), the cluster
config by Ray's autoscaler schema and `validate_config`, the RayJob by KubeRay's CRD schema
(tests/data/kuberay/SOURCE.md) and operator checks. Each check fails on a broken copy too."""

from __future__ import annotations

import copy
import functools
import gzip
import json
import re
import zipfile
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "configs" / "cluster"
FILES = ("runtime_env.yaml", "cluster.yaml", "rayjob.yaml")
CRD_SCHEMA = Path(__file__).parent / "data" / "kuberay" / "ray.io_rayjobs.schema.json.gz"
MAX_UPLOAD_BYTES = 4 * 2**20
PER_JOB_INSTALLS = ("pip", "uv", "conda", "container", "image_uri", "py_executable")
DELETE = object()


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def mutated(doc: dict, path: str | tuple, value: object) -> dict:
    """A copy of doc with the key at path (`a.b.0.c`, or a tuple) set to value, or DELETEd."""
    doc = copy.deepcopy(doc)
    parts = path if isinstance(path, tuple) else path.split(".")
    *parents, last = [int(p) if isinstance(p, str) and p.isdigit() else p for p in parts]
    node = functools.reduce(lambda parent, key: parent[key], parents, doc)
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


# --- runtime_env.yaml: what `ray job submit --working-dir . --runtime-env FILE` does -----------

def submitted_runtime_env(path: Path, working_dir: Path) -> dict:
    """The runtime env `ray job submit` builds from its --runtime-env and --working-dir options."""
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args

    return parse_runtime_env_args(runtime_env=str(path), working_dir=str(working_dir))


def check_runtime_env(env: dict) -> None:
    """Ray's parser (JobSubmissionClient.submit_job builds `RuntimeEnv(**env)`), which accepts any
    unknown key as a plugin, so also: only Ray's known fields, and nothing installed per job."""
    from ray.runtime_env import RuntimeEnv

    if unknown := set(env) - set(RuntimeEnv.known_fields):
        raise ValueError(f"not runtime env fields: {sorted(unknown)}")
    RuntimeEnv(**env)
    if installs := set(env) & set(PER_JOB_INSTALLS):
        raise ValueError(f"{sorted(installs)} would install dependencies for every job")


def test_runtime_env_passes_rays_job_submission_parser():
    env = submitted_runtime_env(CLUSTER / "runtime_env.yaml", ROOT)
    check_runtime_env(env)
    assert env["working_dir"] == str(ROOT)  # from --working-dir, not from the file
    assert {"runs/", ".venv/", ".git/", "benchmarks/", "__pycache__/"} <= set(env["excludes"])
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": "60"}
    assert "working_dir" not in load("runtime_env.yaml")


@pytest.mark.parametrize("key, value, reason", [
    ("env_vars.PYTHONUNBUFFERED", 1, r"env_vars.*Dict\[str, str\]"),
    ("excludes", "runs/", r"excludes.*List\[str\]"),
    ("exclude", ["runs/"], "not runtime env fields: .'exclude'"),
    ("pip", ["torch"], "would install dependencies for every job"),
], ids=["int-env-var", "excludes-not-a-list", "misspelt-field", "pip-section"])
def test_a_broken_runtime_env_fails(key, value, reason):
    with pytest.raises((TypeError, ValueError), match=reason):
        check_runtime_env(mutated(load("runtime_env.yaml"), key, value))


def package_as_job_submit_does(env: dict, scratch: Path, monkeypatch) -> tuple[Path, dict]:
    """Zip env's working_dir through Ray's own upload path (upload_working_dir_if_needed, then
    create_package, as JobSubmissionClient does) with only the file's excludes: no .gitignore
    and no Ray default excludes, so the list is shown to do the work on its own."""
    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    monkeypatch.setenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", "")
    uploads = []

    def upload(working_dir, excludes, is_file=False):
        uploads.append((working_dir, list(excludes)))

    uploaded = upload_working_dir_if_needed(copy.deepcopy(env), include_gitignore=False,
                                            upload_fn=upload)
    (working_dir, excludes), = uploads
    package = scratch / "working_dir.zip"
    create_package(working_dir, package, include_gitignore=False, excludes=excludes)
    return package, uploaded


def test_the_excludes_keep_the_repo_upload_small(tmp_path, monkeypatch):
    from ray.dashboard.modules.job.sdk import _validate_no_local_paths
    from ray.runtime_env import RuntimeEnv

    env = submitted_runtime_env(CLUSTER / "runtime_env.yaml", ROOT)
    package, uploaded = package_as_job_submit_does(env, tmp_path, monkeypatch)
    names = zipfile.ZipFile(package).namelist()
    assert package.stat().st_size < MAX_UPLOAD_BYTES, f"{package.stat().st_size} bytes"
    local = ("runs/", ".venv/", ".git/", "benchmarks/", "mlruns/")
    assert [n for n in names if n.startswith(local) or "__pycache__/" in n or ".pyc" in n] == []
    assert {"pyproject.toml", "pipeline/cli.py", "configs/wmt14_en_fr.yaml"} <= set(names)
    assert uploaded["working_dir"].startswith("gcs://_ray_pkg_")
    _validate_no_local_paths(RuntimeEnv(**uploaded))  # what the job server then receives


def test_every_exclude_drops_its_path_and_keeps_the_code(tmp_path, monkeypatch):
    excludes = load("runtime_env.yaml")["excludes"]
    tree = tmp_path / "checkout"
    # a path each pattern must drop: `*.pyc` -> x.pyc, `runs/` -> runs/f
    dropped = [pattern.replace("*", "x") + ("f" if pattern.endswith("/") else "")
               for pattern in excludes]
    kept = ["pyproject.toml", "pipeline/cli.py", "pipeline/runfolder.py", "configs/x.yaml",
            "docs/index.md", "tests/data/kuberay/SOURCE.md", "heat/models.py"]
    for relative in dropped + kept:
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_text("x")
    env = {"working_dir": str(tree), "excludes": excludes}
    package, _ = package_as_job_submit_does(env, tmp_path, monkeypatch)
    assert sorted(zipfile.ZipFile(package).namelist()) == sorted(kept)


# --- cluster.yaml: Ray's cluster launcher schema and checks ------------------------------------

def check_cluster_config(config: dict) -> None:
    """What `ray up` checks before touching the cloud: ray-schema.json, then prepare_config
    (defaults merged in) and validate_config. Raises ValidationError or ValueError."""
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.Draft7Validator(json.loads(schema_path.read_text())).validate(config)
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_config_passes_rays_validation():
    config = load("cluster.yaml")
    check_cluster_config(config)
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    (gpu,) = [node for node in nodes.values() if node["resources"].get("GPU")]
    assert (gpu["min_workers"], gpu["max_workers"], gpu["resources"]["GPU"]) == (0, 4, 4)
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    setup = " && ".join(config["setup_commands"])  # the CUDA torch first, then the project
    assert re.search(r"pip install torch==2\.13\.0 --index-url \S+/whl/cu128 && .*pip install -e ",
                     setup), setup
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)


@pytest.mark.parametrize("key, value, reason", [
    ("max_workers", "four", "'four' is not of type 'integer'"),
    ("provider", DELETE, "'provider' is a required property"),
    ("available_node_types.gpu_worker.node_config", DELETE, "'node_config' is a required"),
    ("head_node_type", "cpu_head", "must be one of `available_node_types`"),
    ("setup_command", [], "'setup_command' was unexpected"),
], ids=["wrong-type", "no-provider", "no-node-config", "unknown-head-type", "misspelt-key"])
def test_a_broken_cluster_config_fails(key, value, reason):
    with pytest.raises((jsonschema.ValidationError, ValueError), match=reason):
        check_cluster_config(mutated(load("cluster.yaml"), key, value))


# --- rayjob.yaml: KubeRay's RayJob CRD schema and operator checks ------------------------------

def closed(schema: object) -> object:
    """The schema refusing unknown fields where `kubectl apply` (strict field validation) does:
    objects with `properties`, no `additionalProperties`, no x-kubernetes-preserve-unknown-fields.
    jsonschema ignores the other x-kubernetes-* keys; int-or-string fields are `anyOf: [integer,
    string]` with a quantity pattern, which it checks."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: ({name: closed(sub) for name, sub in value.items()} if key == "properties"
                 else closed(value)) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema() -> dict:
    return json.loads(gzip.decompress(CRD_SCHEMA.read_bytes()))


@functools.cache
def crd_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(closed(crd_schema()))


def cel_rules_reached(doc: object, schema: dict) -> list[str]:
    """The CEL rules (x-kubernetes-validations, which jsonschema cannot run) on doc's fields."""
    rules = [rule["rule"] for rule in schema.get("x-kubernetes-validations", [])]
    if isinstance(doc, dict):
        for key, value in doc.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            rules += cel_rules_reached(value, sub) if isinstance(sub, dict) else []
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        rules += [rule for item in doc for rule in cel_rules_reached(item, schema["items"])]
    return rules


def operator_errors(doc: dict) -> list[str]:
    """The RayJob operator's spec checks that apply here (KubeRay v1.7.0,
    ray-operator/controllers/ray/utils/validation.go: ValidateRayJobMetadata, ValidateRayJobSpec,
    ValidateRayClusterSpec), plus the embedded runtime env through Ray's parser."""
    spec, errors = doc["spec"], []
    name = doc["metadata"]["name"]
    if len(name) > 47 or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        errors.append(f"metadata.name {name!r}: a DNS-1035 label of at most 47 characters")
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
        errors.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if key in spec and spec[key] <= 0:
            errors.append(f"{key} must be positive")
    if spec.get("backoffLimit", 0) < 0:
        errors.append("backoffLimit must not be negative")
    cluster = spec["rayClusterSpec"]
    if cluster.get("authOptions", {}).get("mode") == "token":
        version = tuple(int(p) for p in cluster.get("rayVersion", "0").split(".")[:2])
        if version < (2, 52):
            errors.append("authOptions.mode token needs rayVersion 2.52.0 or later")
    for group in cluster.get("workerGroupSpecs", []):
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not cluster.get("enableInTreeAutoscaling") and (low is None or high is None):
            errors.append(f"worker group {group['groupName']}: set minReplicas and maxReplicas")
        elif low is not None and high is not None and not low <= group.get("replicas", low) <= high:
            errors.append(f"worker group {group['groupName']}: need min <= replicas <= max")
    errors += runtime_env_yaml_errors(spec.get("runtimeEnvYAML") or "{}")
    return errors


def runtime_env_yaml_errors(text: str) -> list[str]:
    """The RayJob's runtime env through Ray's parser. Its working_dir is a path in the image,
    which Ray checks in the submitter pod (here it only has to be absolute)."""
    try:
        env = dict(yaml.safe_load(text) or {})
        working_dir = env.pop("working_dir", "/")
        check_runtime_env(env)
    except (TypeError, ValueError, yaml.YAMLError) as error:
        return [f"runtimeEnvYAML: {error}"]
    if not (isinstance(working_dir, str) and working_dir.startswith("/")):
        return [f"runtimeEnvYAML: working_dir {working_dir!r} is not an absolute path"]
    return []


def check_rayjob(doc: dict) -> None:
    crd_validator().validate(doc)
    if errors := operator_errors(doc):
        raise ValueError("; ".join(errors))


def test_rayjob_passes_the_crd_schema_and_the_operators_checks():
    doc = load("rayjob.yaml")
    check_rayjob(doc)
    assert cel_rules_reached(doc, crd_schema()) == []  # nothing the schema check left out
    spec = doc["spec"]
    assert (doc["apiVersion"], doc["kind"], spec["submissionMode"]) == (
        "ray.io/v1", "RayJob", "K8sJobMode")
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
    assert spec["entrypoint"].startswith("heat-pipeline run configs/wmt14_en_fr.yaml ")
    assert "storage.root=s3://" in spec["entrypoint"] and "tracking.uri=http://" in spec["entrypoint"]
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}


def test_rayjob_pods_gpus_images_and_credentials():
    cluster = load("rayjob.yaml")["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    pods = [head["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    for index, pod in enumerate(pods):
        for container in pod["spec"]["containers"]:
            resources = container["resources"]
            gpus = resources["limits"].get("nvidia.com/gpu", 0)
            assert (gpus > 0) == (index > 0), container["name"]  # GPUs on workers, not the head
            assert resources["requests"].get("nvidia.com/gpu", 0) == gpus
            assert f"ray{ray.__version__}" in container["image"], container["image"]
            assert {"secretRef": {"name": "heat-s3-credentials"}} in container["envFrom"]
            literal = [item["name"] for item in container.get("env", []) if "valueFrom" not in item
                       and re.search(r"SECRET|KEY_ID|TOKEN|PASSWORD", item["name"])]
            assert literal == [], f"{container['name']}: literal credentials {literal}"


GPU_LIMIT = ("spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0,
             "resources", "limits", "nvidia.com/gpu")


@pytest.mark.parametrize("key, value, reason", [
    ("spec.rayClusterSpec.workerGroupSpecs.0.replicas", "two", "'two' is not of type 'integer'"),
    ("spec.rayClusterSpec.headGroupSpec", DELETE, "'headGroupSpec' is a required property"),
    ("spec.rayClusterSpec.workerGroupSpecs.0.groupName", DELETE, "'groupName' is a required"),
    ("spec.shutdownAfterJobFinish", True, "'shutdownAfterJobFinish' was unexpected"),
    (GPU_LIMIT, "four", "'four' does not match"),                    # not a quantity
    ("spec.rayClusterSpec.authOptions.mode", "tokens", "'tokens' is not one of"),
    ("spec.activeDeadlineSeconds", 0, "activeDeadlineSeconds must be positive"),
    ("metadata.name", "heat_wmt14", "DNS-1035"),
    ("spec.runtimeEnvYAML", "env_vars: {PYTHONUNBUFFERED: 1}\n", r"runtimeEnvYAML: .*env_vars"),
], ids=["wrong-type", "no-head-group", "no-group-name", "misspelt-key", "bad-gpu-quantity",
        "bad-auth-mode", "zero-deadline", "bad-name", "bad-runtime-env"])
def test_a_broken_rayjob_fails(key, value, reason):
    with pytest.raises((jsonschema.ValidationError, ValueError), match=reason):
        check_rayjob(mutated(load("rayjob.yaml"), key, value))


# --- across the files ----------------------------------------------------------------------------

def test_the_excludes_and_env_vars_agree_across_the_files():
    runtime_env = load("runtime_env.yaml")
    embedded = yaml.safe_load(load("rayjob.yaml")["spec"]["runtimeEnvYAML"])
    assert embedded["excludes"] == runtime_env["excludes"]
    assert embedded["env_vars"] == runtime_env["env_vars"]
    assert load("cluster.yaml")["rsync_exclude"] == runtime_env["excludes"]


SECRET_FORMATS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                       # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b(ghp|gho|github_pat|xox[abpr]|sk)[-_][A-Za-z0-9_]{16,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}"),
    re.compile(r"(?i)name:\s*[\"']?\w*(SECRET|TOKEN|PASSWORD|ACCESS_KEY)\w*[\"']?,?\s+value:\s*\S"),
    re.compile(r"(?=[\w-]*[0-9])(?=[\w-]*[A-Za-z])\b[\w-]{32,}"),  # long, random-looking
]
SECRET_NAME = r"(?i)\b(\w*(?:SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)\w*)"
VALUE = r"\s*[\"']?([^\s\"',}]*)"
CODE_ASSIGNMENT = re.compile(SECRET_NAME + r"\s*[=:]" + VALUE)  # `KEY=v`, `key: v`
COMMENT_ASSIGNMENT = re.compile(SECRET_NAME + r"\s*=" + VALUE)  # prose says `token: ...`
NOT_A_VALUE = re.compile(r"(?i)^([$<{~/].*|\./.*|\.+|true|false|null|none|\d+)?[).;:]*$")


def secrets_in(text: str) -> list[str]:
    """Literal credentials in text: known token formats, `NAME_WITH_SECRET=value` assignments
    (and `name: value` outside comments) whose value is not a reference ($VAR, <placeholder>,
    ~/path, ./path, ...), Kubernetes env items with a literal value for a secret-looking name."""
    found = [match.group(0) for pattern in SECRET_FORMATS for match in pattern.finditer(text)]
    for line in text.splitlines():
        code, _, comment = line.partition("#")
        for part, assignment in ((code, CODE_ASSIGNMENT), (comment, COMMENT_ASSIGNMENT)):
            found += [match.group(0) for match in assignment.finditer(part)
                      if not NOT_A_VALUE.match(match.group(2))]
    return found


def unjustified_binds(text: str, window: int = 15) -> list[str]:
    """Lines binding 0.0.0.0 outside a comment with no comment, on the line or in the `window`
    lines above, that names 0.0.0.0 and says why."""
    lines = text.splitlines()
    comments = [line.partition("#")[2] for line in lines]
    why = re.compile(r"0\.0\.0\.0.*\b(because|so that|needs?|needed|required)\b")
    return [line for number, line in enumerate(lines)
            if "0.0.0.0" in line.partition("#")[0]
            and not any(why.search(comment)
                        for comment in comments[max(0, number - window):number + 1])]


@pytest.mark.parametrize("name", FILES)
def test_no_secret_and_no_unexplained_public_bind(name):
    text = (CLUSTER / name).read_text()
    assert secrets_in(text) == []
    assert unjustified_binds(text) == []


@pytest.mark.parametrize("line", [
    "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "  RAY_AUTH_TOKEN: 3f9a0c5e71b24d08a6e1c9f2b7d4e6a1",
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
    "  - {name: AWS_SECRET_ACCESS_KEY, value: hunter2hunter2}",
    "      password: hunter2",
    "# then: export RAY_AUTH_TOKEN=3f9a0c5e71b24d08",
])
def test_the_secret_scan_catches_literal_credentials(line):
    assert secrets_in(f"# a config\n{line}\n") != []


def test_the_bind_check_catches_a_bind_without_its_reason():
    text = (CLUSTER / "cluster.yaml").read_text()
    assert "--dashboard-host=0.0.0.0" in text
    stripped = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert unjustified_binds(stripped) != []
