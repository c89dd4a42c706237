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
    "# archive the files git ls-files -c lists into a new private directory "
    "(mktemp -d): /tmp/big_vl_code.XXXXXXXXXX/big_vl_code.tgz",
    "gcloud compute tpus tpu-vm scp /tmp/big_vl_code.XXXXXXXXXX/"
    "big_vl_code.tgz big-vl-v4:big_vl_code.tgz --zone=us-central2-b "
    "--worker=all",
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
                       check=True, env={**os.environ, "TMPDIR": "/tmp"})
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


@pytest.mark.parametrize("script,args,where", [
    ("launch.sh", ["--config=c.py", "--workdir=gs://b/r", "--run=x;reboot"],
     "(--run)"),
    ("launch.sh", ["--config=c.py", "--workdir=gs://b/my run$(id)"],
     "(the --workdir's last component; pass --run=RUN)"),
    ("launch.sh", ["--config=c.py", "--workdir=gs://b/r", "--run=.."],
     "(--run)"),
    ("tail.sh", ["--run=a b"], "(--run)"),
    ("tail.sh", ["--run=$(touch /tmp/x)"], "(--run)"),
    ("tail.sh", ["--run=../x"], "(--run)"),
])
def test_run_names_outside_the_safe_set_are_refused(script, args, where):
  out = subprocess.run(
      ["bash", os.path.join(ROOT, "tpu_scripts", script), *WHERE, *args,
       "--dry-run"], capture_output=True, text=True, timeout=60)
  assert out.returncode == 2, out
  assert out.stdout == ""  # Nothing was printed (or run) before the check.
  assert f"{where} may use only letters, digits and . _ -" in out.stderr


def test_safe_run_names_are_kept_and_quoted():
  lines = _dry_run("tail.sh", "--run=clip.B-16_v2")
  assert lines == [
      "gcloud compute tpus tpu-vm ssh big-vl-v4 --zone=us-central2-b "
      "--worker=0 --command='tail -n 100 -f ~/big_vl_logs/clip.B-16_v2.log'"]
  for script in ("launch.sh", "tail.sh"):
    with open(os.path.join(ROOT, "tpu_scripts", script)) as f:
      assert "~/big_vl_logs/$(printf '%q' \"$RUN_NAME\").log" in f.read()


def _fake_project(tmp_path):
  """A git clone-alike holding tpu_scripts/, a tracked and an untracked file,
  and a `gcloud` stand-in that lists the archive it is asked to copy."""
  import shutil  # pylint: disable=g-import-not-at-top
  project = tmp_path / "project"
  shutil.copytree(os.path.join(ROOT, "tpu_scripts"), project / "tpu_scripts")
  (project / "requirements.txt").write_text("jax==0.10.2\n")
  (project / "tracked.py").write_text("x = 1\n")
  (project / "gone.py").write_text("y = 1\n")
  (project / ".gitignore").write_text("ignored.txt\n")
  git = ["git", "-C", str(project), "-c", "user.email=t@t", "-c",
         "user.name=t"]
  subprocess.run([*git[:3], "init", "-q"], check=True)
  subprocess.run([*git, "add", "."], check=True)
  subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
  (project / "gone.py").unlink()  # Tracked, deleted in the working tree.
  (project / "secret_notes.txt").write_text("token\n")  # Untracked.
  (project / "ignored.txt").write_text("big\n")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(
      '#!/bin/sh\nif [ "$4" = scp ]; then echo "archive $5"; '
      'stat -c "mode %a" "$(dirname "$5")"; tar -tzf "$5" | sort | '
      'sed "s/^/member /"; fi\n')
  (bin_dir / "gcloud").chmod(0o755)
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
         "TMPDIR": str(tmp)}
  return project, env, tmp


@pytest.mark.parametrize("script,args", [
    ("setup.sh", []),
    ("launch.sh", ["--config=configs/demo.py", "--workdir=gs://b/run1"])])
def test_sync_code_uploads_tracked_files_from_a_private_dir(tmp_path, script,
                                                            args):
  project, env, tmp = _fake_project(tmp_path)
  cmd = ["bash", str(project / "tpu_scripts" / script), *WHERE, *args]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       env=env, check=True)
  lines = out.stdout.splitlines()
  archive = lines[0].removeprefix("archive ")
  assert archive.startswith(f"{tmp}/big_vl_code.")
  assert archive.endswith("/big_vl_code.tgz")
  assert archive != f"{tmp}/big_vl_code.{WHERE[0][7:]}"  # Not predictable.
  assert lines[1] == "mode 700"
  members = [l.removeprefix("member ") for l in lines[2:]]
  assert "tracked.py" in members and "tpu_scripts/lib.sh" in members
  assert "secret_notes.txt" not in members and "ignored.txt" not in members
  assert "gone.py" not in members
  assert ("1 untracked file(s) not uploaded (git ls-files -o "
          "--exclude-standard; --include-untracked uploads them)"
          in out.stderr)
  assert not os.listdir(tmp)  # The private directory is removed on exit.

  out = subprocess.run(cmd + ["--include-untracked"], capture_output=True,
                       text=True, timeout=60, env=env, check=True)
  members = [l.removeprefix("member ") for l in out.stdout.splitlines()[2:]]
  assert "secret_notes.txt" in members and "tracked.py" in members
  assert "ignored.txt" not in members
  assert "not uploaded" not in out.stderr
  assert not os.listdir(tmp)


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
