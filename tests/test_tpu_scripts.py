"""tpu_scripts/: the exact gcloud commands of a v4-32 example (--dry-run),
and that README.md shows the same commands."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHERE = ["--name=big-vl-v4", "--zone=us-central2-b"]
SSH = ("gcloud compute tpus tpu-vm ssh big-vl-v4 --zone=us-central2-b "
       "--worker=all --command=")
SYNC = [
    "# archive the project's files into /tmp/big_vl_code_big-vl-v4.tgz",
    "gcloud compute tpus tpu-vm scp /tmp/big_vl_code_big-vl-v4.tgz "
    "big-vl-v4:big_vl_code.tgz --zone=us-central2-b --worker=all",
    SSH + "'mkdir -p ~/big_vl && tar -xzf ~/big_vl_code.tgz -C ~/big_vl'",
]
EXAMPLES = {
    ("create.sh", "--type=v4-32"): [
        "gcloud compute tpus tpu-vm create big-vl-v4 --zone=us-central2-b "
        "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base"],
    ("create.sh", "--type=v4-32", "--queued", "--spot"): [
        "gcloud compute tpus queued-resources create big-vl-v4 "
        "--zone=us-central2-b --node-id=big-vl-v4 --accelerator-type=v4-32 "
        "--runtime-version=tpu-ubuntu2204-base --spot"],
    ("setup.sh",): SYNC + [
        SSH + "'python3 -m venv ~/big_vl_venv && ~/big_vl_venv/bin/pip "
        "install -q -r ~/big_vl/requirements.txt \"jax[tpu]==0.10.2\" "
        "-e ~/big_vl'"],
    ("launch.sh", "--config=configs/clip.py:variant=B/16",
     "--workdir=gs://my-bucket/big_vl/clip_b16", "--", "--config.lr=5e-4"):
        SYNC + [
            SSH + "'mkdir -p ~/big_vl_logs && cd ~/big_vl && nohup "
            "~/big_vl_venv/bin/python -m big_vl.train "
            "--config=configs/clip.py:variant=B/16 "
            "--workdir=gs://my-bucket/big_vl/clip_b16 --distributed=yes "
            "--config.lr=5e-4 > ~/big_vl_logs/clip_b16.log 2>&1 &'"],
    ("tail.sh", "--run=clip_b16"): [
        "gcloud compute tpus tpu-vm ssh big-vl-v4 --zone=us-central2-b "
        "--worker=0 --command='tail -n 100 -f ~/big_vl_logs/clip_b16.log'"],
    ("ssh.sh",): [
        "gcloud compute tpus tpu-vm ssh big-vl-v4 --zone=us-central2-b "
        "--worker=0"],
    ("delete.sh",): [
        "gcloud compute tpus tpu-vm delete big-vl-v4 --zone=us-central2-b "
        "--quiet"],
}


def _dry_run(script, *args):
  cmd = ["bash", os.path.join(ROOT, "tpu_scripts", script), *WHERE, *args]
  if "--" in args:
    i = cmd.index("--")
    cmd.insert(i, "--dry-run")
  else:
    cmd.append("--dry-run")
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       check=True)
  return out.stdout.splitlines()


@pytest.mark.parametrize("example", list(EXAMPLES), ids=" ".join)
def test_dry_run_prints_the_gcloud_commands(example):
  assert _dry_run(*example) == EXAMPLES[example]


def test_readme_shows_the_dry_run_commands():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  for example in [("create.sh", "--type=v4-32"), ("setup.sh",),
                  ("launch.sh", "--config=configs/clip.py:variant=B/16",
                   "--workdir=gs://my-bucket/big_vl/clip_b16", "--",
                   "--config.lr=5e-4"), ("tail.sh", "--run=clip_b16"),
                  ("delete.sh",)]:
    for line in _dry_run(*example):
      if not line.startswith("#"):
        assert line in readme, line


def test_missing_or_unknown_flags_are_clear_errors():
  def run(script, *args):
    return subprocess.run(
        ["bash", os.path.join(ROOT, "tpu_scripts", script), *args],
        capture_output=True, text=True, timeout=60)
  out = run("create.sh", "--name=x", "--dry-run")
  assert out.returncode == 2 and "--zone=ZONE is required" in out.stderr
  out = run("create.sh", *WHERE, "--dry-run")
  assert out.returncode == 2 and "--type=TYPE is required" in out.stderr
  out = run("launch.sh", *WHERE, "--config=c.py", "--workdir=w", "--lr=1",
            "--dry-run")
  assert out.returncode == 2 and "trainer flags go after --" in out.stderr


def test_slurm_template_runs_the_trainer_on_every_task(tmp_path):
  # A stand-in `srun` prints what it would start.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text('#!/bin/sh\necho srun "$@"\n')
  (bin_dir / "srun").chmod(0o755)
  workdir = tmp_path / "run"
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
         "BIG_VL_PYTHON": "python3"}
  out = subprocess.run(
      ["bash", os.path.join(ROOT, "slurm", "train.sbatch"),
       "configs/demo.py:runlocal", str(workdir), "--config.lr=1e-3"],
      capture_output=True, text=True, timeout=60, env=env, check=True)
  assert out.stdout.split() == [
      "srun", f"--output={workdir}/logs/%j-%t.log", "python3", "-m",
      "big_vl.train", "--config=configs/demo.py:runlocal",
      f"--workdir={workdir}", "--distributed=yes", "--config.lr=1e-3"]
  assert (workdir / "logs").is_dir()
  with open(os.path.join(ROOT, "slurm", "train.sbatch")) as f:
    assert "#SBATCH --gpus-per-task=1" in f.read()
