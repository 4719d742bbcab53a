"""``meshkit kind up`` / ``down``: a local kind cluster running meshkit, as library functions.

`up` checks the tools (and says exactly what is missing and how to get it), creates the kind
cluster unless it exists, builds the image from ``operator/Dockerfile``, loads it into the
cluster, applies ``operator/deploy/base`` (and the Bookinfo demo overlay), and waits for the
rollouts, reporting progress line by line. `down` deletes the cluster. The steps are plain
data (`up_steps`, `down_steps`) so they can be read, printed and tested without Docker.

The CLI (`meshkit.cli`) calls `up(KindOptions(...), progress=...)` and `down(...)`; both raise
`KindError` with a message meant for the user.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshkit.k8s import names

Progress = Callable[[str], None]

TOOLS: tuple[tuple[str, str], ...] = (
    ("docker", "install Docker Engine: https://docs.docker.com/engine/install/"),
    ("kind", "install kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"),
    ("kubectl", "install kubectl: https://kubernetes.io/docs/tasks/tools/"),
)
DEPLOYMENTS = ("meshkit-control", "meshkit-operator")


class KindError(RuntimeError):
    """``meshkit kind`` cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class KindOptions:
    cluster: str = "meshkit"
    # the repository checkout holding operator/ (default: found upwards from the working directory)
    root: Path | None = None
    demo: bool = True  # also deploy Bookinfo (operator/deploy/overlays/demo)
    wait_timeout_s: int = 300

    @property
    def context(self) -> str:
        return f"kind-{self.cluster}"


@dataclass(frozen=True, slots=True)
class Step:
    title: str
    argv: tuple[str, ...]
    timeout_s: int = 600


def find_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) with ``operator/Dockerfile``."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "operator" / "Dockerfile").is_file():
            return candidate
    raise KindError(
        f"no meshkit checkout found at or above {here} (looked for operator/Dockerfile); "
        "run from the repository, or pass its path"
    )


def missing_prerequisites(path: str | None = None) -> list[str]:
    """One sentence per missing tool (or unreachable Docker daemon); [] when kind can run."""
    missing = [
        f"`{tool}` is not installed: {hint}" for tool, hint in TOOLS if shutil.which(tool, path=path) is None
    ]
    docker = shutil.which("docker", path=path)
    if docker is not None:
        try:
            result = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                                    capture_output=True, text=True, timeout=20, check=False)
            reachable, detail = result.returncode == 0, (result.stderr or result.stdout).strip()
        except (OSError, subprocess.TimeoutExpired) as error:
            reachable, detail = False, str(error)
        if not reachable:
            first = detail.splitlines()[0] if detail else "no output"
            missing.append(
                f"the Docker daemon is not reachable (`docker info` failed: {first}); start Docker"
            )
    return missing


def up_steps(options: KindOptions, root: Path, cluster_exists: bool) -> list[Step]:
    kubectl = ("kubectl", "--context", options.context)
    wait = f"--timeout={options.wait_timeout_s}s"
    steps: list[Step] = []
    if not cluster_exists:
        steps.append(Step(f"create kind cluster {options.cluster}",
                          ("kind", "create", "cluster", "--name", options.cluster, "--wait", "120s")))
    steps += [
        Step(f"build image {names.DEFAULT_IMAGE}",
             ("docker", "build", "-f", str(root / "operator" / "Dockerfile"), "-t", names.DEFAULT_IMAGE,
              str(root)), timeout_s=1800),
        Step("load the image into the cluster", load_image_argv(options.cluster)),
        Step("apply operator/deploy/base",
             (*kubectl, "apply", "-k", str(root / "operator" / "deploy" / "base"))),
        # the tag stays meshkit:dev: pods made before this build keep the old image until replaced
        Step("restart meshkit's deployments on the image just loaded",
             (*kubectl, "-n", names.SYSTEM_NAMESPACE, "rollout", "restart",
              *(f"deployment/{d}" for d in DEPLOYMENTS))),
    ]
    steps += [
        Step(f"wait for {deployment}",
             (*kubectl, "-n", names.SYSTEM_NAMESPACE, "rollout", "status", f"deployment/{deployment}", wait),
             timeout_s=options.wait_timeout_s + 30)
        for deployment in DEPLOYMENTS
    ]
    if options.demo:
        steps += [
            Step("apply the Bookinfo demo (operator/deploy/overlays/demo)",
                 (*kubectl, "apply", "-k", str(root / "operator" / "deploy" / "overlays" / "demo"))),
            Step("wait for Bookinfo", (*kubectl, "-n", "bookinfo", "wait", "--for=condition=Available",
                                       "deployment", "--all", wait), timeout_s=options.wait_timeout_s + 30),
        ]
    return steps


def load_image_argv(cluster: str, image: str = names.DEFAULT_IMAGE) -> tuple[str, ...]:
    """``kind load docker-image``, falling back to ``docker save`` + ``kind load image-archive``:
    with Docker's containerd image store the first can fail (the image is reported as not
    present locally); an archive works with both stores."""
    archive = f"/tmp/meshkit-kind-{cluster}.tar"
    load = shlex.join(["kind", "load", "docker-image", image, "--name", cluster])
    save = shlex.join(["docker", "save", image, "-o", archive])
    from_archive = shlex.join(["kind", "load", "image-archive", archive, "--name", cluster])
    fallback = f"{{ {save} && {from_archive}; status=$?; rm -f {archive}; exit $status; }}"
    return ("sh", "-c", f"{load} || {fallback}")


def down_steps(options: KindOptions) -> list[Step]:
    delete = ("kind", "delete", "cluster", "--name", options.cluster)
    return [Step(f"delete kind cluster {options.cluster}", delete)]


def cluster_exists(name: str) -> bool:
    result = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True, timeout=60,
                            check=False)
    if result.returncode != 0:
        raise KindError(f"`kind get clusters` failed: {result.stderr.strip()}")
    return name in result.stdout.split()


def up(options: KindOptions | None = None, progress: Progress = print) -> None:
    """Create (or reuse) the kind cluster and deploy meshkit into it; raise `KindError` on failure."""
    options = options or KindOptions()
    _require_tools()
    root = options.root or find_root()
    steps = up_steps(options, root, cluster_exists(options.cluster))
    run_steps(steps, progress)
    progress(f"meshkit is running in kind cluster {options.cluster} (kubectl context {options.context})")
    target = "kind" if options.cluster == KindOptions().cluster else f"kind:{options.cluster}"
    progress(f"next: meshkit --context {target} proxy-status, or meshkit.lab.connect({target!r})")


def down(options: KindOptions | None = None, progress: Progress = print) -> None:
    """Delete the kind cluster (nothing to do when it does not exist)."""
    options = options or KindOptions()
    _require_tools()
    if not cluster_exists(options.cluster):
        progress(f"kind cluster {options.cluster} does not exist: nothing to do")
        return
    run_steps(down_steps(options), progress)


def run_steps(steps: Sequence[Step], progress: Progress) -> None:
    """Run each step, streaming its output to ``progress``; stop at the first failure."""
    for number, step in enumerate(steps, start=1):
        progress(f"[{number}/{len(steps)}] {step.title}")
        started = time.monotonic()
        tail = _run_streaming(step, progress)
        if tail is not None:
            command = " ".join(step.argv)
            raise KindError(f"step {number}/{len(steps)} failed: {step.title}\n  $ {command}\n{tail}")
        progress(f"      done in {time.monotonic() - started:.0f} s")


def _run_streaming(step: Step, progress: Progress) -> str | None:
    """None on success, else the last lines of output (or why it could not run / was stopped)."""
    lines: list[str] = []
    try:
        process = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "DOCKER_CLI_HINTS": "false"})
    except OSError as error:
        return f"  cannot start {step.argv[0]}: {error}"

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            progress(f"      {line.rstrip()}")

    reader = threading.Thread(target=pump, name=f"output of {step.argv[0]}", daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=step.timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return f"  timed out after {step.timeout_s} s"
    finally:
        reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
    if code != 0:
        return "\n".join(f"  {line}" for line in lines[-15:]) or f"  exit status {code}"
    return None


def _require_tools() -> None:
    missing = missing_prerequisites()
    if missing:
        listed = "\n".join(f"  - {m}" for m in missing)
        raise KindError(f"meshkit kind needs what this machine lacks:\n{listed}")
