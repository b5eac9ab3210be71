"""Config files under configs/ and the launch scripts under launch/.

References: the paper's published hyperparameters (GUIDE.md), typed in here by hand; each
ablation is compared with its base config as a whole dict; the launch scripts are checked
with `bash -n` and run for their argument checks (and, for local_multiprocess.sh, end to end
with a small jax.distributed probe module).
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import typing

import pytest

from atommem_jax import config_lib
from atommem_jax.agent import env as env_lib
from atommem_jax.model import config as model_config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")
LAUNCH_DIR = os.path.join(REPO, "launch")
PAPER_CONFIGS = ("base", "qwen3_8b_a800", "qwen3_8b_tpu")
ABLATION_BASES = ("base", "tiny")
# Ablation -> {(section, field): value} it sets on top of its base, and nothing else.
ABLATIONS = {
    "no_update": {("env", "enable_update"): False},
    "no_delete": {("env", "enable_delete"): False},
    "no_scratchpad": {("env", "enable_scratchpad"): False},
    "no_store": {("env", "enable_store"): False, ("env", "enable_scratchpad"): True},
    "topk3": {("env", "top_k"): 3},
    "topk12": {("env", "top_k"): 12},
}


def _config_names() -> list[str]:
  return sorted(os.path.basename(path)[:-3] for path in glob.glob(os.path.join(CONFIG_DIR, "*.py")))


def test_every_config_file_is_covered():
  assert set(_config_names()) == (set(PAPER_CONFIGS) | set(ABLATIONS)
                                  | {"tiny", "pretrain_tiny", "pretrain_tiny_facts", "demo"})


@pytest.mark.parametrize("name", _config_names())
def test_config_loads_and_validates(name):
  config_lib.validate(config_lib.load_config_file(name))


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
@pytest.mark.parametrize("base", ABLATION_BASES)
def test_ablation_changes_exactly_its_fields(ablation, base):
  config = config_lib.load_config_file(f"{ablation}:{base}")
  config_lib.validate(config)
  expected = config_lib.load_config_file(base).to_dict()
  for (section, field), value in ABLATIONS[ablation].items():
    expected[section][field] = value
  assert config.to_dict() == expected


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_without_argument_is_the_paper_setting(ablation):
  assert (config_lib.load_config_file(ablation).to_dict()
          == config_lib.load_config_file(f"{ablation}:base").to_dict())
  assert config_lib.load_config_file(ablation).to_dict() != config_lib.base_config().to_dict()


def test_ablation_stacks_on_another_ablation():
  config = config_lib.load_config_file("topk12:no_update:tiny").to_dict()
  assert config["env"]["top_k"] == 12 and config["env"]["enable_update"] is False
  assert config["model"]["preset"] == "tiny"


def test_ablation_works_through_config_flags_from_another_directory(tmp_path):
  """`--config configs/no_store.py:tiny` as the train CLI reads it, run from elsewhere."""
  script = tmp_path / "show_config.py"
  script.write_text(textwrap.dedent("""
      import json
      from absl import app
      from ml_collections import config_flags
      CONFIG = config_flags.DEFINE_config_file("config")
      app.run(lambda _: print(json.dumps(CONFIG.value.to_dict())))
  """))
  result = subprocess.run(
      [sys.executable, str(script), "--config", os.path.join(CONFIG_DIR, "no_store.py:tiny"),
       "--config.env.top_k=2", "--config.env.enable_update=False"],
      cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
  shown = json.loads(result.stdout.strip().splitlines()[-1])
  assert shown["env"]["enable_store"] is False and shown["env"]["top_k"] == 2
  assert shown["env"]["enable_update"] is False and shown["env"]["enable_delete"] is True
  assert shown["model"]["preset"] == "tiny"


def test_load_config_file_errors_name_the_problem(tmp_path):
  with pytest.raises(config_lib.ConfigError, match=r"no_such_config.*tiny"):
    config_lib.load_config_file("no_such_config")
  (tmp_path / "broken.py").write_text("X = 1\n")
  with pytest.raises(config_lib.ConfigError, match=r"broken\.py has no get_config"):
    config_lib.load_config_file(str(tmp_path / "broken.py"))


def test_model_overrides_replace_preset_fields_and_bad_ones_name_the_field():
  config = config_lib.load_config_file("tiny")
  config.model.overrides.update(vocab_size=4096, hidden_size=96, num_hidden_layers=3)
  model = config_lib.model_config(config)
  assert (model.vocab_size, model.hidden_size, model.num_hidden_layers) == (4096, 96, 3)
  config.model.overrides.no_such_field = 3
  with pytest.raises(config_lib.ConfigError, match=r"model\.overrides.*no_such_field"):
    config_lib.validate(config)
  config = config_lib.load_config_file("tiny")
  config.model.overrides.hidden_size = 96
  config.model.hf_dir = "/some/hf/dir"
  with pytest.raises(config_lib.ConfigError, match=r"model\.overrides.*model\.hf_dir"):
    config_lib.validate(config)


def test_architecture_overrides_are_the_models_fields_and_set_from_the_command_line(tmp_path):
  """model.overrides holds one typed placeholder per Qwen3Config architecture field, so the
  train CLI's flags can set any of them on any config, with values parsed to the field's
  type; a misspelt field or a value of the wrong type stops the parse with the flag named."""
  execution = {"param_dtype", "dtype", "remat", "scan_layers", "attention", "attention_block_q",
               "attention_block_k"}
  hints = typing.get_type_hints(model_config_lib.Qwen3Config)
  fields = [f.name for f in dataclasses.fields(model_config_lib.Qwen3Config)
            if f.name not in execution]
  assert list(config_lib.ARCHITECTURE_FIELDS) == fields
  for name, kind in config_lib.ARCHITECTURE_FIELDS.items():
    assert kind in typing.get_args(hints[name]) or hints[name] is kind, name
  assert config_lib.model_overrides(config_lib.base_config()) == {}

  script = tmp_path / "show_model.py"
  script.write_text(textwrap.dedent("""
      import dataclasses, json
      from absl import app
      from ml_collections import config_flags
      from atommem_jax import config_lib
      CONFIG = config_flags.DEFINE_config_file("config")
      app.run(lambda _: print(json.dumps(dataclasses.asdict(
          config_lib.model_config(CONFIG.value)))), flags_parser=config_lib.parse_flags)
  """))
  command = [sys.executable, str(script), "--config", os.path.join(CONFIG_DIR, "tiny.py"),
             "--config.model.overrides.num_hidden_layers=3",
             "--config.model.overrides.rope_theta=10000",
             "--config.model.overrides.attention_bias=True"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join((REPO, os.environ.get("PYTHONPATH", ""))))
  result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  shown = json.loads(result.stdout.strip().splitlines()[-1])
  assert (shown["num_hidden_layers"], shown["rope_theta"], shown["attention_bias"]) == (
      3, 10000.0, True)
  assert (shown["hidden_size"], shown["vocab_size"]) == (128, 2048)  # the tiny preset's
  preset = model_config_lib.preset("tiny")
  assert (shown["num_attention_heads"], shown["rms_norm_eps"]) == (
      preset.num_attention_heads, preset.rms_norm_eps)  # unset: the preset's
  for bad, reason in (("--config.model.overrides.num_hidden_layer=3",
                        "no field 'num_hidden_layer' there. Did you mean"),
                       ("--config.model.overrides.num_hidden_layers=three", "invalid literal")):
    result = subprocess.run(command[:4] + [bad], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"flag {bad.split('=')[0]}" in result.stderr and reason in result.stderr, (
        result.stderr[-2000:])
  # An AttributeError of the config file itself is not taken for a misspelt flag.
  (tmp_path / "broken.py").write_text("def get_config():\n  return None.no_such_attribute\n")
  result = subprocess.run([sys.executable, str(script), "--config", str(tmp_path / "broken.py"),
                           "--config.no_such_attribute=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "'NoneType' object has no attribute" in result.stderr, (
      result.stderr[-2000:])


def test_load_config_file_by_path_equals_by_name():
  by_path = config_lib.load_config_file(os.path.join(CONFIG_DIR, "tiny.py"))
  assert by_path.to_dict() == config_lib.load_config_file("tiny").to_dict()


@pytest.mark.parametrize("name", ["qwen3_8b_a800", "qwen3_8b_tpu"])
def test_paper_configs_carry_the_published_hyperparameters(name):
  c = config_lib.load_config_file(name)
  # GRPO: lr 1e-6 with 20 warm-up steps, clip 0.2 / 0.28, k3 KL 0.001, 8 rollouts, token-mean,
  # advantage without std division.
  assert c.grpo.lr == 1e-6 and c.grpo.warmup_steps == 20
  assert (c.grpo.clip_low, c.grpo.clip_high) == (0.2, 0.28)
  assert (c.grpo.kl_coef, c.grpo.kl_estimator) == (0.001, "k3")
  assert c.grpo.group_size == 8
  assert c.grpo.aggregation == "token-mean" and c.grpo.normalize_std is False
  # Environment: chunk 4000 with 100 overlap, at most 40 chunks, top-k 6, 4096 retrieved.
  assert (c.env.chunk_tokens, c.env.chunk_overlap, c.env.max_chunks) == (4000, 100, 40)
  assert c.env.top_k == 6 and c.env.max_retrieved_tokens == 4096
  assert all(value for name, value in c.env.items() if name.startswith("enable_"))
  # Generation cap 4096 tokens per step.
  assert c.rollout.max_new_tokens == 4096
  # Qwen3-8B from a user-given HF directory, fp32 master weights, bf16 compute, full remat.
  assert c.model.preset == "qwen3-8b" and c.model.hf_dir
  assert (c.model.param_dtype, c.model.dtype, c.model.remat) == ("float32", "bfloat16", "full")
  assert c.data.kind == "multihop"
  # RL data: HotpotQA train only (the official run); evaluation: the three dev sets.
  assert len(c.data.train_files) == 1 and "hotpotqa_train" in c.data.train_files[0]
  for dataset in ("hotpotqa", "2wikimultihopqa", "musique"):
    assert any(dataset in path and "_dev_" in path for path in c.data.eval_files)


def test_a800_mesh_fits_one_node_and_tpu_mesh_takes_every_chip():
  a800 = config_lib.load_config_file("qwen3_8b_a800")
  assert dict(a800.mesh) == {"data": -1, "fsdp": 8, "tensor": 1, "cpu_devices": 0}
  tpu = config_lib.load_config_file("qwen3_8b_tpu")
  assert dict(tpu.mesh) == {"data": 1, "fsdp": -1, "tensor": 1, "cpu_devices": 0}
  expected = copy.deepcopy(a800.to_dict())
  expected["mesh"] = dict(tpu.mesh)
  assert tpu.to_dict() == expected  # same hyperparameters, only the mesh differs


def test_a800_mesh_builds_on_eight_devices():
  import jax  # pylint: disable=g-import-not-at-top
  mesh = config_lib.make_mesh(config_lib.load_config_file("qwen3_8b_a800"),
                              devices=jax.devices()[:8])
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}


LAUNCH_SCRIPTS = ("gpu_slurm.sh", "gpu_multinode.sh", "tpu_pod.sh", "local_multiprocess.sh")


def _run_script(name: str, *args: str, env: dict[str, str] | None = None, cwd: str = REPO,
                timeout: float = 30) -> subprocess.CompletedProcess:
  full_env = {k: v for k, v in os.environ.items()
              if k not in ("CONFIG", "WORKDIR", "SLURM_JOB_ID", "TPU_NAME", "ZONE")}
  full_env.update(env or {})
  return subprocess.run(["bash", os.path.join(LAUNCH_DIR, name), *args], env=full_env, cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)


def test_launch_dir_has_the_scripts_and_a_readme():
  assert set(LAUNCH_SCRIPTS) == {os.path.basename(p) for p in glob.glob(f"{LAUNCH_DIR}/*.sh")}
  assert os.path.isfile(os.path.join(LAUNCH_DIR, "README.md"))


@pytest.mark.parametrize("name", LAUNCH_SCRIPTS)
def test_launch_script_parses(name):
  result = subprocess.run(["bash", "-n", os.path.join(LAUNCH_DIR, name)], capture_output=True,
                          text=True, timeout=30)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, message", [
    ((), r"expected NUM_PROCESSES, CONFIG and WORKDIR, got 0"),
    (("two", "configs/tiny.py", "/tmp/w"), r"NUM_PROCESSES=two: expected a positive integer"),
    (("0", "configs/tiny.py", "/tmp/w"), r"NUM_PROCESSES=0: expected a positive integer"),
    (("2", "configs/missing.py:tiny", "/tmp/w"), r"no file configs/missing\.py"),
])
def test_local_multiprocess_argument_check_fails_clearly(args, message):
  result = _run_script("local_multiprocess.sh", *args)
  assert result.returncode == 2
  assert "usage:" in result.stderr
  assert re.search(message, result.stderr), result.stderr


@pytest.mark.parametrize("name, env, message", [
    ("gpu_slurm.sh", {}, "set CONFIG"),
    ("gpu_slurm.sh", {"CONFIG": "configs/tiny.py"}, "set WORKDIR"),
    ("gpu_slurm.sh", {"CONFIG": "configs/tiny.py", "WORKDIR": "/tmp/w"}, "not inside a Slurm job"),
    ("tpu_pod.sh", {}, "set TPU_NAME"),
    ("tpu_pod.sh", {"TPU_NAME": "t"}, "set ZONE"),
    ("tpu_pod.sh", {"TPU_NAME": "t", "ZONE": "z"}, "expected CONFIG and WORKDIR"),
    ("gpu_multinode.sh", {}, "expected HOSTFILE, CONFIG and WORKDIR"),
])
def test_launch_scripts_fail_clearly_on_missing_settings(name, env, message):
  result = _run_script(name, env=env)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr


def test_gpu_multinode_passes_arguments_intact_to_each_host(tmp_path):
  """A fake ssh runs the remote command locally: the trainer's argv arrives unchanged."""
  fake_ssh = tmp_path / "fake_ssh"
  fake_ssh.write_text(textwrap.dedent("""\
      #!/usr/bin/env bash
      FAKE_HOST="${@: -2:1}" bash -c "${@: -1}"
  """))
  fake_ssh.chmod(0o755)
  fake_python = tmp_path / "fake_python"
  fake_python.write_text(textwrap.dedent(f"""\
      #!{sys.executable}
      import json, os, sys
      process_id = sys.argv[sys.argv.index("--process_id") + 1]
      with open(os.path.join("{tmp_path}", f"argv-{{process_id}}.json"), "w") as f:
        json.dump(dict(argv=sys.argv[1:], cwd=os.getcwd(), host=os.environ["FAKE_HOST"],
                       xla=os.environ["XLA_FLAGS"]), f)
  """))
  fake_python.chmod(0o755)
  (tmp_path / "hosts").write_text("# two hosts\nnode-a\n\nnode-b  # second\n")
  result = _run_script(
      "gpu_multinode.sh", str(tmp_path / "hosts"), "configs/tiny.py", "/tmp/run dir",
      "--config.note=a b 'c'",
      env={"SSH": str(fake_ssh), "PYTHON": str(fake_python), "LOG_DIR": str(tmp_path / "logs"),
           "PORT": "4321"})
  assert result.returncode == 0, result.stderr
  for process_id, host in enumerate(("node-a", "node-b")):
    shown = json.loads((tmp_path / f"argv-{process_id}.json").read_text())
    assert shown["host"] == host
    assert shown["argv"] == [
        "-m", "atommem_jax.train", "--config", "configs/tiny.py", "--workdir", "/tmp/run dir",
        "--coordinator_address", "node-a:4321", "--num_processes", "2",
        "--process_id", str(process_id), "--config.note=a b 'c'"]
    assert shown["cwd"] == REPO
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in shown["xla"]


_PROBE = """
import argparse, json, os, sys
parser = argparse.ArgumentParser()
for flag in ("--config", "--workdir", "--coordinator_address"):
  parser.add_argument(flag)
parser.add_argument("--num_processes", type=int)
parser.add_argument("--process_id", type=int)
parser.add_argument("--fail", action="store_true")
args = parser.parse_args()
if args.fail and args.process_id == 1:
  sys.exit("process 1 fails on purpose")
import jax
jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
with open(os.path.join(args.workdir, f"{args.process_id}.json"), "w") as f:
  json.dump(dict(process_count=jax.process_count(), process_index=jax.process_index(),
                 device_count=jax.device_count(),
                 local_device_count=jax.local_device_count()), f)
"""


@pytest.mark.multiprocess
def test_local_multiprocess_joins_processes_into_one_jax_cluster(tmp_path):
  (tmp_path / "dist_probe.py").write_text(_PROBE)
  workdir = tmp_path / "run"
  workdir.mkdir()
  env = {"MODULE": "dist_probe", "PYTHONPATH": str(tmp_path), "DEVICES_PER_PROCESS": "2",
         "PYTHON": sys.executable, "LOG_DIR": str(tmp_path / "logs")}
  result = _run_script("local_multiprocess.sh", "2", "configs/tiny.py", str(workdir), env=env,
                       timeout=120)
  assert result.returncode == 0, result.stderr
  for process_id in range(2):
    shown = json.loads((workdir / f"{process_id}.json").read_text())
    assert shown == dict(process_count=2, process_index=process_id, device_count=4,
                         local_device_count=2)


@pytest.mark.multiprocess
def test_local_multiprocess_stops_the_others_when_one_fails(tmp_path):
  """Process 1 dies before joining; process 0 would wait minutes for it, but is stopped."""
  (tmp_path / "dist_probe.py").write_text(_PROBE)
  env = {"MODULE": "dist_probe", "PYTHONPATH": str(tmp_path), "DEVICES_PER_PROCESS": "1",
         "PYTHON": sys.executable, "LOG_DIR": str(tmp_path / "logs")}
  result = _run_script("local_multiprocess.sh", "2", "configs/tiny.py", str(tmp_path), "--fail",
                       env=env, timeout=60)
  assert result.returncode == 1
  assert "a process failed" in result.stderr
  assert "process 1 fails on purpose" in result.stderr


# (section, dataclass, its fields that the section does not hold: the view derives them).
SCHEMAS = (("env", env_lib.EnvConfig, ()),
           ("sft", config_lib.OptimizerConfig, ("total_steps",)),
           ("grpo", config_lib.OptimizerConfig, ("total_steps",)),
           ("grpo", config_lib.GRPOConfig, ("temperature",)))


@pytest.mark.parametrize("section, kind, derived", SCHEMAS)
def test_sections_hold_their_dataclass_fields_under_the_same_names(section, kind, derived):
  """Each field a dataclass reads from the config is a key of its section, with the
  dataclass's default where the section is filled from it (env, grpo: the paper's values
  are the defaults), and a value set in the section reaches the typed view unchanged."""
  c = config_lib.base_config()
  names = [field.name for field in dataclasses.fields(kind) if field.name not in derived]
  assert set(names) <= set(c[section])
  if section == "env":
    assert set(c.env) == set(names)
  if section != "sft":
    defaults = kind()
    assert {name: c[section][name] for name in names} == {
        name: getattr(defaults, name) for name in names}
  views = {"env": lambda: config_lib.env_config(c),
           "grpo": lambda: config_lib.grpo_config(c) if kind is config_lib.GRPOConfig
                   else config_lib.optimizer_config(c, "grpo"),
           "sft": lambda: config_lib.optimizer_config(c, "sft")}
  changed = {}
  for name in names:  # a distinct valid value for every field
    value = c[section][name]
    if isinstance(value, bool):
      changed[name] = not value
    elif isinstance(value, (int, float)) and name not in ("b1", "b2", "min_lr_ratio",
                                                          "clip_low"):
      changed[name] = value + (3 if isinstance(value, int) else 1.5)
  for name, value in changed.items():
    c[section][name] = value
  view = views[section]()
  assert {name: getattr(view, name) for name in changed} == changed


def test_views_derive_the_fields_their_section_does_not_hold():
  c = config_lib.base_config()
  c.rollout.temperature = 0.7
  c.sft.update(steps=120, warmup_steps=20)
  assert config_lib.grpo_config(c).temperature == 0.7
  assert config_lib.optimizer_config(c, "sft").total_steps == 120
  c.sft.steps = -1  # not derived yet: the decay ends one step past the warm-up
  assert config_lib.optimizer_config(c, "sft").total_steps == 21


@pytest.mark.parametrize("field, value, expected", [
    ("env.chunk_tokens", 0, ">= 1"), ("env.max_steps", -1, "0: no limit"),
    ("env.store_backend", "faiss", "one of"), ("env.initial_query", " ", "not empty"),
    ("grpo.group_size", 1, ">= 2"), ("grpo.clip_low", 1.0, "in [0, 1)"),
    ("grpo.clip_ratio_c", 0.5, "> 1"), ("grpo.kl_estimator", "k2", "one of"),
    ("grpo.aggregation", "sum", "one of"), ("sft.eps", 0.0, "> 0"),
    ("grpo.grad_clip", -1.0, ">= 0"), ("sft.weight_decay", -0.1, ">= 0"),
    ("grpo.warmup_steps", -1, ">= 0")])
def test_a_dataclass_field_error_names_the_config_field(field, value, expected):
  """The dataclass's own check runs through validate with `section.field` named."""
  c = config_lib.load_config_file("tiny")
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(c)
  assert str(error.value).startswith(f"config field {field}={value!r}: ")
  assert expected in str(error.value)


@pytest.mark.parametrize("field, value", [("max_new_tokens", 0), ("temperature", 0.0),
                                          ("top_p", 1.5), ("top_k", -1)])
def test_rollout_sampling_fields_are_checked_by_the_sampler_config_naming_the_field(field, value):
  c = config_lib.load_config_file("tiny")
  c.rollout[field] = value
  with pytest.raises(config_lib.ConfigError, match=rf"config field rollout\.{field}={value}"):
    config_lib.validate(c)


def test_a_field_the_dataclass_lacks_is_refused_naming_it():
  """A config still writing the old switch name `env["update"]` is told the section's fields."""
  c = config_lib.load_config_file("tiny")
  c.env["update"] = False
  with pytest.raises(config_lib.ConfigError, match="config section env: no field update; .*"
                     "enable_update"):
    config_lib.validate(c)
  env = config_lib.env_config(config_lib.load_config_file("no_update:tiny"))
  assert env.enable_update is False and env.enable_delete is True and env.enable_store is True


def test_request_cpu_devices_sets_the_host_device_count_unless_the_environment_does(
    monkeypatch):
  c = config_lib.base_config()
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  assert not config_lib.request_cpu_devices(c)  # 0: JAX's default stays
  assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=0"
  c.mesh.cpu_devices = 2
  assert config_lib.request_cpu_devices(c)
  assert os.environ["XLA_FLAGS"].split() == ["--xla_backend_optimization_level=0",
                                             "--xla_force_host_platform_device_count=2"]
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert not config_lib.request_cpu_devices(c)  # an explicit count wins
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
  monkeypatch.delenv("XLA_FLAGS")
  assert config_lib.request_cpu_devices(c)
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  c.mesh.cpu_devices = -1
  with pytest.raises(config_lib.ConfigError, match="mesh.cpu_devices"):
    config_lib.validate(c)


def test_stage_schedule_fields_reach_the_optimizer_and_bad_ones_name_the_field():
  from atommem_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.sft.update(steps=120, lr=1e-3, warmup_steps=20, schedule="cosine", min_lr_ratio=0.1)
  schedule = state_lib.learning_rate_schedule(config_lib.optimizer_config(c, "sft"))
  for step in (0, 10, 20, 45, 70, 119, 120):
    if step < 20:
      expected = 1e-3 * step / 20
    else:  # cosine from the peak to min_lr_ratio * peak over the 100 steps after warm-up
      expected = 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 20) / 100)))
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12)
  constant = state_lib.learning_rate_schedule(config_lib.optimizer_config(c, "grpo"))
  assert float(constant(10_000)) == pytest.approx(c.grpo.lr)

  for field, value, message in (("schedule", "exponential", "sft.schedule"),
                                ("min_lr_ratio", 1.5, "sft.min_lr_ratio")):
    bad = copy.deepcopy(c)
    bad.sft[field] = value
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.validate(bad)
  short = copy.deepcopy(c)
  short.sft.steps = 4  # a smoke run that ends inside the warm-up: only the warm-up is used
  config_lib.validate(short)
  schedule = state_lib.learning_rate_schedule(config_lib.optimizer_config(short, "sft"))
  assert [float(schedule(step)) for step in range(5)] == pytest.approx(
      [1e-3 * step / 20 for step in range(5)])


def test_adam_betas_reach_the_optimizer_and_bad_ones_name_the_field():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.sft.update(steps=10, lr=0.1, warmup_steps=0, weight_decay=0.0, grad_clip=0.0, b1=0.5,
               b2=0.9, schedule="constant")
  optimizer = state_lib.make_optimizer(config_lib.optimizer_config(c, "sft"))
  params = jnp.zeros(())
  opt_state = optimizer.init(params)
  m = v = 0.0
  for t, g in enumerate((1.0, -0.25, 2.0), start=1):  # Adam by hand, with these betas
    m, v = 0.5 * m + 0.5 * g, 0.9 * v + 0.1 * g * g
    expected = -0.1 * (m / (1 - 0.5**t)) / ((v / (1 - 0.9**t)) ** 0.5 + 1e-8)
    updates, opt_state = optimizer.update(jnp.asarray(g), opt_state, params)
    assert float(updates) == pytest.approx(expected, rel=1e-5)
  for section, field, value in (("sft", "b2", 1.0), ("grpo", "b1", -0.1)):
    bad = copy.deepcopy(c)
    bad[section][field] = value
    with pytest.raises(config_lib.ConfigError, match=f"{section}.{field}"):
      config_lib.validate(bad)


@pytest.mark.parametrize("field,value", [("copy_examples_per_context", -1),
                                         ("copy_span_tokens", 0),
                                         ("oracle_entry_label", "sentence"),
                                         ("oracle_decoy_share", 1.5),
                                         ("oracle_decoy_share", -0.1)])
def test_sft_copy_example_fields_are_validated_with_the_field_named(field, value):
  c = config_lib.load_config_file("tiny")
  c.sft[field] = value
  with pytest.raises(config_lib.ConfigError, match=f"sft.{field}"):
    config_lib.validate(c)


def test_attention_fields_reach_the_model_config_and_bad_ones_name_the_field():
  c = config_lib.load_config_file("tiny")
  c.model.update(attention="dense", attention_block_q=64, attention_block_k=32)
  for rollout in (False, True):
    model = config_lib.model_config(c, rollout=rollout)
    assert (model.attention, model.attention_block_q, model.attention_block_k) == (
        "dense", 64, 32)
  for field, value in (("attention", "flash"), ("attention_block_q", 0),
                       ("attention_block_k", -4)):
    bad = config_lib.load_config_file("tiny")
    bad.model[field] = value
    with pytest.raises(config_lib.ConfigError, match=f"model.{field}"):
      config_lib.validate(bad)


@pytest.mark.parametrize("field,value", [("sft.loss_chunk", -1), ("grpo.loss_chunk", -8),
                                         ("grpo.old_logprobs", "rollout")])
def test_loss_chunk_and_old_logprobs_are_validated_with_the_field_named(field, value):
  c = config_lib.base_config()
  assert (c.sft.loss_chunk, c.grpo.loss_chunk, c.grpo.old_logprobs) == (1024, 1024, "recompute")
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=field):
    config_lib.validate(c)


@pytest.mark.parametrize("flag,message", [
    ("--config.embedder=bogus", "config field embedder='bogus': unknown embedder spec"),
    ("--config.embedder=hashing:0", "DIM in 'hashing:DIM' must be a positive integer"),
    ("--config.rollout.prompt_buckets=abc", "config field rollout.prompt_buckets=('abc',)"),
    ("--config.sft.lr=nan", "config field sft.lr=nan: a finite number"),
    ("--config.grpo.lr=inf", "config field grpo.lr=inf: a finite number"),
    ("--config.sft.lr=-0.001", "config field sft.lr=-0.001: > 0"),
    ("--config.grpo.kl_coef=nan", "config field grpo.kl_coef=nan: a finite number"),
])
def test_bad_values_from_the_command_line_end_in_one_error_line(tmp_path, flag, message):
  """The train CLI refuses them before any work with one line naming the field (as it does a
  misspelt --config flag), without a traceback or the usage text."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join((REPO, os.environ.get("PYTHONPATH", ""))))
  result = subprocess.run([sys.executable, "-m", "atommem_jax.train", "--config",
                           os.path.join(CONFIG_DIR, "tiny.py"), "--workdir",
                           str(tmp_path / "run"), flag], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("atommem_jax.train: error: "), (
      result.stderr[-2000:])
  assert message in lines[0]
  assert not (tmp_path / "run").exists()
