"""Cluster configs, checked offline and without starting Ray.

- every `ray up` file in cluster/ validates against the ray-schema.json of the installed Ray, and
  Ray's own preparation (defaults merged, node types checked) accepts it, as `ray up` would before
  touching a cloud; a misspelt top-level key is reported;
- the KubeRay manifests carry `apiVersion: ray.io/v1` and what the operator needs, and their Serve
  config validates with Ray's ServeDeploySchema (plus a key check, since the schema lets unknown
  keys through);
- every `raygan ...` command quoted in cluster/ and docs/ parses with the real CLI parser, and its
  key=value overrides are real config keys.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = sorted((REPO / "cluster").glob("*.yaml"))
DOCS = sorted((REPO / "docs").glob("*.md"))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


RAY_UP = [p for p in CLUSTER if "provider" in _load(p)]
KUBERAY = [p for p in CLUSTER if str(_load(p).get("apiVersion", "")).startswith("ray.io/")]


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# -- ray up -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads(
        (Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text()
    )


def schema_errors(config: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(config)
    )


def test_ray_up_files_are_found():
    assert {p.name for p in RAY_UP} >= {"aws-gpu.yaml", "gcp-gpu.yaml"}


@pytest.mark.parametrize("path", RAY_UP, ids=_ids(RAY_UP))
def test_ray_up_file_validates(path, ray_schema):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(path)
    assert schema_errors(config, ray_schema) == []
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before any cloud call
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("path", RAY_UP, ids=_ids(RAY_UP))
def test_ray_up_file_has_a_cpu_head_and_gpu_workers(path):
    config = _load(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must not take training or replicas"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpus = sorted(t["resources"].get("GPU", 0) for t in workers.values())
    assert gpus[0] >= 1 and gpus[-1] > 1, f"want a 1-GPU and a multi-GPU worker type, got {gpus}"
    for name, t in workers.items():
        assert {"min_workers", "max_workers"} <= t.keys(), name
        assert t["min_workers"] <= t["max_workers"], name
    assert sum(t["min_workers"] for t in workers.values()) >= 2, "a 2-node run needs 2 workers"
    setup = "\n".join(config["setup_commands"])
    assert "torch==" in setup and "-e ~/raygan" in setup
    assert "~/raygan" in config["file_mounts"]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(max_worker=c.pop("max_workers")), "max_worker"),
        (lambda c: c.update(head_node=c.pop("head_node_type")), "head_node"),
        (lambda c: c["available_node_types"]["gpu_1x"].update(min_worker=1), "min_worker"),
    ],
    ids=["top-level max_worker", "top-level head_node", "node type min_worker"],
)
def test_a_misspelt_key_is_reported(ray_schema, mutate, expected):
    config = _load(REPO / "cluster" / "aws-gpu.yaml")
    mutate(config)
    errors = schema_errors(config, ray_schema)
    assert any(f"'{expected}'" in e for e in errors), errors


# -- KubeRay ------------------------------------------------------------------------------------
RAYJOB_SPEC = {
    "entrypoint", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources",
    "runtimeEnvYAML", "jobId", "metadata", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "clusterSelector",
    "submitterPodTemplate", "submitterConfig", "submissionMode", "managedBy", "suspend",
    "deletionStrategy",
}  # fmt: skip
RAYSERVICE_SPEC = {
    "serveConfigV2", "rayClusterConfig", "serveService", "upgradeStrategy",
    "excludeHeadPodFromServeSvc", "rayClusterDeletionDelaySeconds", "managedBy",
    "serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold",
}  # fmt: skip
RAYCLUSTER_SPEC = {
    "rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
    "autoscalerOptions", "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions",
    "managedBy", "upgradeStrategy", "authOptions",
}  # fmt: skip


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"][
        "rayClusterSpec" if manifest["kind"] == "RayJob" else "rayClusterConfig"
    ]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_kuberay_manifests_are_found():
    assert {p.name for p in KUBERAY} == {"kuberay-rayjob.yaml", "kuberay-rayservice.yaml"}


@pytest.mark.parametrize("path", KUBERAY, ids=_ids(KUBERAY))
def test_kuberay_manifest_has_the_required_fields(path):
    import ray

    manifest = _load(path)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] in ("RayJob", "RayService")
    assert manifest["metadata"]["name"]
    known = RAYJOB_SPEC if manifest["kind"] == "RayJob" else RAYSERVICE_SPEC
    assert set(manifest["spec"]) <= known, set(manifest["spec"]) - known
    cluster = _cluster_spec(manifest)
    assert set(cluster) <= RAYCLUSTER_SPEC, set(cluster) - RAYCLUSTER_SPEC
    assert cluster["rayVersion"] == ray.__version__, "the image's Ray must be the one we test"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "the head must not take work"
    assert all(c["name"] and c["image"] for c in _containers(head))
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and _containers(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in _containers(group):
            assert container["name"] and container["image"]
            assert container["resources"]["limits"], "Ray reads the pod's CPUs and GPUs from limits"


def test_rayjob_trains_on_as_many_gpus_as_it_asks_for():
    from raygan.core.config import Config, apply_overrides

    manifest = _load(REPO / "cluster" / "kuberay-rayjob.yaml")
    args = _parse(manifest["spec"]["entrypoint"])
    assert args.command == "train"
    trainer = apply_overrides(Config(), args.overrides).placement
    gpus = sum(
        group["replicas"] * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        for group in _cluster_spec(manifest)["workerGroupSpecs"]
        for c in _containers(group)
    )
    assert trainer.use_gpu and trainer.num_workers == gpus


def serve_key_errors(config: dict) -> list[str]:
    """Keys ServeDeploySchema would let through (it accepts unknown keys for forward
    compatibility), at the top, in an application, or in a deployment."""
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    def unknown(data: dict, schema, where: str) -> list[str]:
        return [f"{where}: unknown key {k!r}" for k in sorted(set(data) - set(schema.model_fields))]

    errors = unknown(config, ServeDeploySchema, "(top)")
    for app in config.get("applications", []):
        errors += unknown(app, ServeApplicationSchema, f"application {app.get('name')}")
        for dep in app.get("deployments", []):
            errors += unknown(dep, DeploymentSchema, f"deployment {dep.get('name')}")
    return errors


def serve_args_fields() -> set[str]:
    """raygan.serve.app.ServeArgs' fields, read from the source (importing Serve costs seconds)."""
    tree = ast.parse((REPO / "raygan" / "serve" / "app.py").read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ServeArgs"]
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)} - {"model_config"}


def _rayservice_serve_config() -> dict:
    return yaml.safe_load(
        _load(REPO / "cluster" / "kuberay-rayservice.yaml")["spec"]["serveConfigV2"]
    )


def test_rayservice_serve_config_validates():
    from ray.serve.schema import ServeDeploySchema

    config = _rayservice_serve_config()
    ServeDeploySchema.model_validate(config)
    assert serve_key_errors(config) == []
    [app] = config["applications"]
    assert app["import_path"] == "raygan.serve.app:app_builder"
    assert "checkpoint" in app["args"] and set(app["args"]) <= serve_args_fields()


@pytest.mark.parametrize("import_path", ["raygan.serve.app:app_builder", "raygan.serve:app_builder"])
def test_serve_import_paths_resolve_to_the_builder(import_path):
    """The shipped path, and the one Serve configs used before raygan.serve became a package."""
    from ray._common.utils import import_attr

    from raygan.serve.app import app_builder

    assert import_attr(import_path) is app_builder


def test_a_misspelt_serve_key_is_reported():
    config = _rayservice_serve_config()
    app = config["applications"][0]
    app["deployments"][0]["max_ongoing_request"] = app["deployments"][0].pop("max_ongoing_requests")
    assert serve_key_errors(config) == [
        "deployment GeneratorServer: unknown key 'max_ongoing_request'"
    ]


# -- raygan commands quoted in cluster/ and docs/ -------------------------------------------------
COMMAND_PATTERNS = (
    re.compile(r"^\s*(?:[-$>]\s+)?(raygan\s.*)$"),  # a command line (in YAML: a list item)
    re.compile(r"\s--\s+(raygan\s.*)$"),  # ray job submit ... -- raygan ...
    re.compile(r"entrypoint:\s*(raygan\s.*)$"),  # a RayJob
    re.compile(r"""(['"])(raygan\s.*?)\1"""),  # ray exec CLUSTER 'raygan ...'
)
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "(", ")"}


def _code_lines(path: Path) -> list[str]:
    """Lines inside fenced code blocks of a Markdown file; every line of a YAML file. Lines
    continued with a backslash are joined."""
    text = path.read_text().replace("\\\n", " ")
    if path.suffix != ".md":
        return text.splitlines()
    lines, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def quoted_commands(path: Path) -> list[str]:
    commands = []
    for line in _code_lines(path):
        for pattern in COMMAND_PATTERNS:
            commands += [m.groups()[-1] for m in pattern.finditer(line)]
    return list(dict.fromkeys(commands))


def _words(command: str) -> list[str]:
    """The command's words up to the first shell operator or comment."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if word in SHELL_OPERATORS:
            break
        words.append(word)
    return words


def _parse(command: str):
    from raygan.cli import build_parser

    words = _words(command)
    assert words[0] == "raygan", command
    try:
        return build_parser().parse_args(words[1:])
    except SystemExit:
        pytest.fail(f"does not parse: {command}")


QUOTING = CLUSTER + DOCS


@pytest.mark.parametrize("path", QUOTING, ids=_ids(QUOTING))
def test_quoted_raygan_commands_parse(path, capsys):
    from raygan.core.config import Config, apply_overrides
    from raygan.core.errors import RayganError

    failures = []
    for command in quoted_commands(path):
        try:
            args = _parse(command)
        except pytest.fail.Exception:
            failures.append(f"{command}\n    {capsys.readouterr().err.strip().splitlines()[-1]}")
            continue
        try:
            apply_overrides(Config(), getattr(args, "overrides", []))  # key=value: real keys
        except RayganError as exc:
            failures.append(f"{command}\n    {exc}")
        for name in ("space", "config"):
            value = getattr(args, name, None)
            if value and "://" not in value and not (REPO / value).is_file():
                failures.append(f"{command}\n    --{name} {value}: no such file in the repo")
    assert not failures, "\n".join(failures)


def test_the_guide_quotes_the_whole_path():
    commands = quoted_commands(REPO / "docs" / "cluster.md")
    used = {_words(c)[1] for c in commands}
    assert used >= {"prepare", "train", "tune", "generate"}, used
    assert any("use_gpu=true" in c and "num_workers=2" in c for c in commands)
    assert quoted_commands(REPO / "cluster" / "kuberay-rayjob.yaml")


def test_the_command_extraction_catches_a_bad_flag(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text("```bash\nray job submit -- raygan train --data d --ot runs/a\n```\n")
    [command] = quoted_commands(bad)
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _parse(command)


def test_files_the_guide_names_exist():
    text = (REPO / "docs" / "cluster.md").read_text()
    named = set(re.findall(r"\b((?:cluster|scripts|tune_spaces|docs|tests)/[\w.-]+\.\w+)", text))
    assert named, "the guide should point at the repo's files"
    assert sorted(p for p in named if not (REPO / p).is_file()) == []


def test_readme_links_the_guide():
    assert "docs/cluster.md" in (REPO / "README.md").read_text()
