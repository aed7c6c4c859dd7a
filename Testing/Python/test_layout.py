"""The package's shape: subpackages by stage, no import cycles, nothing reaching back up the flow, the README's
architecture section and CMakeLists.txt listing exactly the modules that exist, and a wheel that works installed."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "NPCPrognosisLib"

#: Where each part of the package sits in the flow; a module may import from its own rank or below, never above.
RANKS = {
    "contract": 0, "errors": 0, "resources": 0, "processes": 0,
    "imaging": 1,
    "io": 2,
    "radiomics": 3, "survival": 3, "classification": 3,
    "deep": 4, "datasets": 4,
    "pipeline": 5, "reporting": 5,
    "slicer_support": 6,
    "cli": 7,
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(LIB.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules imported by ``path`` anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("NPCPrognosisLib"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("NPCPrognosisLib")]
        found |= {n for n in names if n in modules}
    return found


def _rank(module: str) -> int:
    parts = module.split(".")
    return RANKS[parts[1]] if len(parts) > 1 else 0


def test_every_module_belongs_to_a_known_stage():
    unknown = sorted({m.split(".")[1] for m in _modules() if "." in m} - set(RANKS))
    assert unknown == [], f"give these a rank in the flow (RANKS): {unknown}"


def test_no_import_cycles_and_no_stage_reaches_back_up_the_flow():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name, "NPCPrognosisLib"} for name, path in modules.items()}
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if _rank(b) > _rank(a))
    assert upward == [], f"imports that reach back up the flow: {upward}"
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep] if dep in stack else [node, dep]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def _readme_architecture() -> set[str]:
    """Module paths named in README.md's architecture tree (indentation gives the folders)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Architecture\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Architecture' section"
    block = re.search(r"```\n(.*?)```", section.group(1), re.S)
    assert block, "the architecture section has no code block"
    lines = block.group(1).splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("NPCPrognosisLib/")), None)
    assert start is not None, "the architecture tree has no NPCPrognosisLib/ folder"
    paths, stack = set(), []
    for line in lines[start:]:
        if not line.strip():
            continue
        indent = (len(line) - len(line.lstrip())) // 2
        if indent == 0 and stack:
            break  # the next top-level entry: the package's tree has ended
        name = line.strip().split()[0]
        stack = stack[:indent] + [name.rstrip("/")]
        if name.endswith(".py"):
            paths.add("/".join(stack))
    return paths


def test_readme_architecture_and_cmake_list_exactly_the_modules_that_exist():
    existing = {p.relative_to(ROOT).as_posix() for p in LIB.rglob("*.py")
                if "__pycache__" not in p.parts and p.name != "__init__.py"}
    documented = _readme_architecture()
    assert sorted(existing - documented) == [], "add these to README.md's architecture section"
    assert sorted(documented - existing) == [], "README.md's architecture section names modules that do not exist"
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s+(NPCPrognosisLib/\S+\.py)\s*$", cmake, re.M))
    in_init = {p.relative_to(ROOT).as_posix() for p in LIB.rglob("__init__.py")}
    assert listed == existing | in_init


def test_lint_with_the_projects_own_configuration():
    """ruff with pyproject.toml's rules: line length, sorted imports, `from __future__ import annotations` and
    builtin generics in every core module, no unused names."""
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff not installed (it is in the test extra)")
    out = subprocess.run([str(ruff), "check", "--no-cache", "NPCPrognosis.py", "NPCPrognosisLib", "Testing", "bench"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_one_definition_of_each_contract_constant():
    """Label values, sequences and endpoints are spelled out once, in contract.py."""
    patterns = {
        "labels": re.compile(r"""["']gtvp["']\s*:\s*\(?1"""),
        "sequences": re.compile(r"""[(\[]\s*["']t1["'],\s*["']t2["'],\s*["']t1c["']\s*[)\]]"""),
        "endpoints": re.compile(r"""\(\s*["']dmfs["'],\s*["']os["'],\s*["']pfs["']\s*\)"""),
    }
    offenders = []
    for path in [ROOT / "NPCPrognosis.py", *sorted(LIB.rglob("*.py"))]:
        if path.name == "contract.py" or "__pycache__" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(ROOT)}: {what}" for what, pattern in patterns.items() if pattern.search(text)]
    assert offenders == [], offenders


@pytest.mark.slow
def test_wheel_installs_outside_the_source_tree_and_finds_its_package_data(tmp_path):
    """``pip install`` of the built wheel (not editable) into a fresh environment outside the source tree: the
    radiomics parameter files, the demo bundle with its network and the sample patient are found, and a fully
    automatic prediction of the sample patient runs from a folder that holds no project file."""
    # from a clean copy: setuptools reuses a build/ folder and would pack modules that no longer exist
    source = tmp_path / "source"
    shutil.copytree(LIB, source / LIB.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(wheels), str(source)], check=True, cwd=tmp_path)
    wheel = next(wheels.glob("npc_prognosis-*.whl"))
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)  # ensurepip: offline, from the standard library
    python = env_dir / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([str(python), "-c", purelib], text=True).strip())
    # The dependencies come from this test's environment (appended to sys.path, so its editable install of the
    # project is never activated: .pth files are only read in real site directories).
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz_dependencies.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                   check=True, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    probe = ("import NPCPrognosisLib, NPCPrognosisLib.resources as r; "
             "print(NPCPrognosisLib.__file__); "
             "print(r.RADIOMICS_PARAMS.is_file(), r.RADIOMICS_FAST_PARAMS.is_file(), "
             "(r.DEMO_BUNDLE / 'bundle.json').is_file(), (r.DEMO_NETWORK / 'network.safetensors').is_file(), "
             "(r.SAMPLE_CASE / 'clinical.json').is_file())")
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=work,
                         env=clean_env).stdout.splitlines()
    assert Path(out[0]).is_relative_to(site), f"imported from {out[0]}, not the installed wheel"
    assert out[1] == "True True True True True"
    sample = subprocess.check_output([str(python), "-c", "from NPCPrognosisLib.resources import SAMPLE_CASE as s, "
                                      "DEMO_BUNDLE as b; print(s); print(b)"], text=True, cwd=work,
                                     env=clean_env).split()
    case, bundle = Path(sample[0]), sample[1]
    images = [arg for key in ("t1", "t2", "t1c") for arg in (f"--{key}", str(case / f"{case.name}_{key}.nii.gz"))]
    run = subprocess.run([str(env_dir / "bin" / "npc-prognosis"), "--quiet", "predict", "--bundle", bundle, *images,
                          "--tta", "0", "--patient-id", "S", "--clinical", "age=50", "sex=M", "t_stage=T2",
                          "n_stage=N1", "rene=0", "ldh=180", "--out", str(work / "out")],
                         capture_output=True, text=True, encoding="utf-8", cwd=work, env=clean_env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (work / "out" / "prediction.json").is_file()
    assert "automatic contours" in run.stdout
    # extract with the default (shipped) radiomics parameter file
    clinical = json.loads((case / "clinical.json").read_text(encoding="utf-8"))
    row = {"patient_id": "S", **{key: str(case / f"{case.name}_{key}.nii.gz") for key in ("t1", "t2", "t1c", "mask")},
           **{k: v for k, v in clinical.items() if k != "patient_id"}}
    values = ["" if v is None else str(v) for v in row.values()]
    (work / "manifest.csv").write_text(",".join(row) + "\n" + ",".join(values) + "\n")
    cli = str(env_dir / "bin" / "npc-prognosis")
    run = subprocess.run([cli, "--quiet", "extract", "--manifest", "manifest.csv", "--out", "features.csv"],
                         capture_output=True, text=True, encoding="utf-8", cwd=work, env=clean_env)
    assert run.returncode == 0, run.stderr[-2000:]
    meta = json.loads((work / "features.meta.json").read_text(encoding="utf-8"))
    assert meta["params_file"] == "NPCPrognosis.yaml" and "Wavelet" in meta["settings"]["imageType"]
