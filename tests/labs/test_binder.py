"""binder/: repo2docker files are consistent; `binder/start` brings the mesh up, then execs its arguments."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

from meshkit.runtime.local import LocalMesh
from meshkit.runtime.state import StateDir
from tests.labs.conftest import LABS

ROOT = LABS.parent
BINDER = ROOT / "binder"


def _name(requirement: str) -> str:
    for sep in "<>=;[ ":
        requirement = requirement.split(sep, 1)[0]
    return requirement.strip().lower()


def test_requirements_cover_the_core_and_lab_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["lab"]}
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    listed = {_name(line) for line in lines if line.strip() and not line.startswith("#")}
    assert wanted <= listed, f"binder/requirements.txt lacks {sorted(wanted - listed)}"
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    for script in ("postBuild", "start"):
        assert os.access(BINDER / script, os.X_OK), f"binder/{script} is not executable"
    assert (BINDER / "start").read_text().rstrip().endswith('exec "$@"')


def test_start_brings_the_mesh_up_and_execs_the_command(lab_env: dict[str, str]) -> None:
    env = {**os.environ, **lab_env, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    probe = "import os, sys; print('exec ok', sys.argv[1]); sys.exit(7)"
    done = subprocess.run([str(BINDER / "start"), sys.executable, "-c", probe, "arg-passed"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 7, done.stderr  # the exit status is the command's: start exec'd it
    assert "exec ok arg-passed" in done.stdout
    assert LocalMesh(StateDir.open(lab_env["MESHKIT_HOME"])).running()


def test_readme_badge_launches_jupyterlab_on_the_labs() -> None:
    """The README's "launch binder" badge opens JupyterLab (not the classic tree) on the first lab."""
    readme = (ROOT / "README.md").read_text()
    link = re.search(r"\]\((https://mybinder\.org/v2/gh/[^)]+)\)", readme)
    assert link, "README has no Binder launch badge"
    assert link.group(1).endswith("?urlpath=lab/tree/labs/00-welcome.ipynb"), link.group(1)
    assert (ROOT / "labs" / "00-welcome.ipynb").is_file()
