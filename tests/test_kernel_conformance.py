"""A kernel in a container passes the Jupyter kernel protocol's conformance suite, and papermill
runs a parametrized notebook on it.

jupyter_kernel_test is what kernel authors run to prove that a kernel speaks the protocol as
frontends expect: execute with results, streams and errors, completion, inspection, history,
is_complete, display data, clear_output, kernel_info, comms. The kernel here is started from an
on-disk kernel spec through jupyter_client's own start_new_kernel, as any third-party client
starts one, so the provisioner, the container and the port relay are all in the path.
"""

from __future__ import annotations

import io
import os
import unittest
import uuid
from pathlib import Path
from typing import Any

import jupyter_kernel_test as jkt
import pytest
from jupyter_client.manager import start_new_kernel

from jupyter_docker_env.kernels import kernelspecs

from .conftest import JDE_SESSION, JDE_TEST_LABEL

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]


class DockerEnvKernel(jkt.KernelTests):
    """The suite's expectations of a Python kernel, pointed at a containerized one."""

    __test__ = False  # run below through unittest, once the kernel spec exists

    kernel_name = ""  # set by the test
    workspace = ""
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('expected')"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(4)]", "result": "[0, 1, 4, 9]"},
    ]
    code_display_data = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>x</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    code_history_pattern = "1?2*"
    # ipykernel answers a range of the current session as session 0 (IPython's convention), which
    # the suite's range check does not expect of any kernel: tail and search are checked
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    @classmethod
    def setUpClass(cls) -> None:
        cls.km, cls.kc = start_new_kernel(kernel_name=cls.kernel_name, cwd=cls.workspace)


def test_a_containerized_kernel_passes_jupyter_kernel_test(
    jde_kernel_image: str, jde_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a kernel spec on disk for an environment image, as the extension writes it, and a
    # workspace of the kernel's user
    workspace = jde_tmp / "work"
    workspace.mkdir()
    if os.geteuid() == 0:
        os.chown(workspace, 1000, 1000)
    kernels = jde_tmp / "share" / "kernels"
    env = f"conformance-{uuid.uuid4().hex[:6]}"
    config: dict[str, Any] = {"extra_labels": {JDE_TEST_LABEL: JDE_SESSION}}
    kernelspecs.write(kernels, kernelspecs.kernel_json(env, jde_kernel_image, False, config))
    monkeypatch.setenv("JUPYTER_PATH", str(kernels.parent))
    monkeypatch.setattr(DockerEnvKernel, "kernel_name", kernelspecs.kernel_name(env))
    monkeypatch.setattr(DockerEnvKernel, "workspace", str(workspace))
    # When the conformance suite runs against it
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(DockerEnvKernel)
    report = io.StringIO()
    result = unittest.TextTestRunner(stream=report, verbosity=2).run(suite)
    # Then every check passes, and none was skipped for want of a sample (but history ranges)
    assert result.wasSuccessful(), report.getvalue()
    skipped = {reason for _, reason in result.skipped}
    assert skipped <= {"History range not supported"}, report.getvalue()
    assert result.testsRun >= 12, report.getvalue()


def test_papermill_runs_a_notebook_with_parameters_on_a_containerized_kernel(
    jde_kernel_image: str, jde_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    import papermill

    # Given a kernel spec on disk and a parametrized notebook in a workspace of the kernel's user
    workspace = jde_tmp / "work"
    workspace.mkdir()
    (workspace / "data.txt").write_text("from the workspace\n")
    kernels = jde_tmp / "share" / "kernels"
    env = f"papermill-{uuid.uuid4().hex[:6]}"
    config: dict[str, Any] = {"extra_labels": {JDE_TEST_LABEL: JDE_SESSION}}
    kernelspecs.write(kernels, kernelspecs.kernel_json(env, jde_kernel_image, False, config))
    monkeypatch.setenv("JUPYTER_PATH", str(kernels.parent))
    nb = nbformat.v4.new_notebook(metadata={"language_info": {"name": "python"}})
    nb.cells = [
        nbformat.v4.new_code_cell("alpha = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os\nopen('out.txt', 'w').write(f'{alpha} {os.getuid()}')\n"
            "print(open('data.txt').read().strip(), alpha * 2)"
        ),
    ]
    nbformat.write(nb, workspace / "in.ipynb")
    if os.geteuid() == 0:
        for path in (workspace, *workspace.iterdir()):
            os.chown(path, 1000, 1000)
    # When papermill executes it on the environment's kernel with a parameter
    out = papermill.execute_notebook(
        str(workspace / "in.ipynb"),
        str(jde_tmp / "out.ipynb"),
        parameters={"alpha": 21},
        kernel_name=kernelspecs.kernel_name(env),
        cwd=str(workspace),
    )
    # Then the parameter was injected and the cells ran in the container, in the workspace
    assert out.metadata.papermill.parameters == {"alpha": 21}
    assert out.cells[2].outputs[0]["text"] == "from the workspace 42\n"
    assert (workspace / "out.txt").read_text() == "21 1000"
