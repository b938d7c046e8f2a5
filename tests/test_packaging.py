"""A plain (non-editable) install carries the gin configs and the data package."""

import glob
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(out), REPO], check=True)
    return glob.glob(str(out / "t5x_lite-*.whl"))[0]


def test_wheel_ships_configs_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("t5x_lite/gin/quickstart.gin", "t5x_lite/gin/runs/pretrain.gin",
                 "t5x_lite/gin/models/decoder/7b.gin",
                 "t5x_lite/gin/experiments/shakespeare_char.gin",
                 "t5x_lite/data/tasks.py", "t5x_lite/data/embedded_corpus/embedded_corpus.py"):
        assert path in names, path


def test_installed_copy_finds_its_configs_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(site), wheel], check=True)
    probe = ("import gin, t5x_lite; from t5x_lite.config import configurables, gin_config; "
             "configurables.register_configurables(); "
             "gin_config.parse(['quickstart.gin'], []); "
             "print(t5x_lite.__file__); print(gin_config.installed_gin_dir()); "
             "print(gin.query_parameter('DecoderConfig.num_layers'))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True)
    package_file, gin_dir, num_layers = result.stdout.strip().splitlines()[-3:]
    assert package_file.startswith(str(site)) and gin_dir.startswith(str(site))
    assert num_layers == "4"
