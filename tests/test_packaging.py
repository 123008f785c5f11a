"""The package a deployment installs: its names, what the core needs, and the extras' errors."""

from __future__ import annotations

import email
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FOLDERS = {"tta": "tta", "tta_streams": "streams", "tta_bench": "benchmarks"}
# what the extras install; none of it may be needed by `import tta` or `import tta_streams`
EXTRAS = ("robustbench", "matplotlib", "ray", "tabulate", "tqdm", "torchvision", "PIL", "scipy", "jsonschema")
EXTRAS += ("filelock", "corrupt_tta", "timm")
IMAGES = "torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)"


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def installed_packages(folder: str, name: str) -> set[str]:
    """Every package the folder holds (a directory with __init__.py), under its installed name."""
    root = REPO / folder
    return {".".join([name, *init.parent.relative_to(root).parts]) for init in root.rglob("__init__.py")}


def test_the_three_folders_install_under_names_of_their_own():
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert setuptools["package-dir"] == FOLDERS
    expected = set().union(*(installed_packages(folder, name) for name, folder in FOLDERS.items()))
    listed = set(setuptools["packages"])
    assert expected <= listed  # a new subpackage must be listed to be installed
    data = listed - expected  # folders of data files, installed with them
    assert data == {"tta_streams.data.fashion_mnist", "tta_bench.weights"}


def test_the_core_install_requires_torch_and_numpy_alone():
    assert {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]} == {"torch", "numpy"}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"streams", "bench", "ray", "docs", "dev"} <= set(extras)
    assert "corrupt-tta" in {requirement_name(r) for r in extras["streams"]}
    assert "tta-norm[streams]" in extras["bench"]
    assert not any(requirement_name(r) == "setuptools" for r in PYPROJECT["project"]["dependencies"])


def run_without_extras(code: str, blocked: tuple[str, ...] = EXTRAS) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where the ``blocked`` packages cannot be imported."""
    prelude = f"import sys\nfor _name in {blocked!r}:\n    sys.modules[_name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.multiprocess
def test_the_library_and_the_streams_run_without_any_extra():
    code = """
import torch
import tta, tta_streams
model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()
tta.adapt(model, "rbn")
stream = tta_streams.Stream("fmnist", corruptions=["gaussian_noise"], severities=5, n_examples=64, batch_size=32)
for x, y, _ in stream:
    model(x)
tta.attach_method(model, "tent")
print(sorted({name.split(".")[0] for name in sys.modules if sys.modules[name] is not None} & set(BLOCKED)))
""".replace("BLOCKED", repr(EXTRAS))
    result = run_without_extras(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("code", "named"),
    [
        ("import tta_bench", "pip install 'tta-norm[bench]'"),
        (
            "import tta, torch\nm = torch.nn.Sequential(torch.nn.BatchNorm1d(3))\ntta.adapt(m, 'rbn')\n"
            "tta.attach_method(m, 'rotta')",
            "pip install torchvision (or 'tta-norm[streams]')",
        ),
        (
            f"import tta_streams, torch\ntta_streams.corrupt({IMAGES}, 'jpeg_compression', 3, seed=0)",
            "pip install 'tta-norm[streams]'",
        ),
        (
            f"import tta_streams, torch\ntta_streams.corrupt({IMAGES}, 'frost', 3, seed=0)",
            "pip install 'tta-norm[streams]'",
        ),
    ],
    ids=["benchmark", "rotta", "jpeg", "frost"],
)
def test_a_missing_extra_is_one_error_naming_it(code, named):
    result = run_without_extras(code)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and named in last, result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)]
    subprocess.run(build, check=True, capture_output=True, timeout=600)
    (path,) = out.glob("*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_holds_the_three_packages_under_their_installed_names_and_no_study(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {
        "tta",
        "tta_streams",
        "tta_bench",
        wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info",
    }
    for name, folder in FOLDERS.items():
        sources = {f"{name}/{p.relative_to(REPO / folder).as_posix()}" for p in (REPO / folder).rglob("*.py")}
        assert sources <= set(names), sources - set(names)
    assert "tta_bench/weights/fmnist_resnet.pt" in names
    assert any(name.startswith("tta_streams/data/fashion_mnist/") for name in names)


@pytest.mark.slow
def test_the_wheel_requires_torch_and_numpy_alone_outside_its_extras(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(meta))
    assert metadata["Name"] == "tta-norm"
    plain = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert {requirement_name(r) for r in plain} == {"torch", "numpy"}
