"""Build output → events → an operation's progress, log and failure (no engine: the parser and
the follower on recorded output; tests/test_builds.py proves the same on the real engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_docker_env.engine import BuildEvent, Engine, _BuildKitProgress
from jupyter_docker_env.environments.images import BuildSettings, ImageBuilder
from jupyter_docker_env.operations import Operation, OperationFailed

# `docker build --progress=plain` as Docker 20.10 prints it: cached steps reported as they are
# found (out of order), and a line of the failing step that arrives after its ERROR.
PLAIN = """\
#1 [internal] load build definition from Dockerfile
#1 sha256:2173b853f73fc362ea57c127734ae96146c17c69419e3e23606c034f2da950b6
#1 transferring dockerfile: 147B done
#1 DONE 0.0s
#4 [stage-0 1/3] FROM base
#4 CACHED
#6 [stage-0 3/3] RUN apt-get install -y nope
#5 [stage-0 2/3] COPY x /x
#5 CACHED
#6 0.179   Reading package lists...
#6 0.198 E: Unable to locate package nope
#6 ERROR: executor failed running [/bin/sh -c apt-get install -y nope]: exit code: 100
#6 0.201 E: a late line
------
 > [stage-0 3/3] RUN apt-get install -y nope:
------
executor failed running [/bin/sh -c apt-get install -y nope]: exit code: 100
"""


def events_of(text: str) -> tuple[list[BuildEvent], _BuildKitProgress]:
    parser = _BuildKitProgress()
    return [e for line in text.splitlines() for e in parser.feed(line)], parser


def test_buildkit_output_becomes_the_same_events_as_the_legacy_builders() -> None:
    events, parser = events_of(PLAIN)
    assert events == [
        BuildEvent("step", "FROM base", 1, 3),
        BuildEvent("line", "---> Using cache", 1, 3),
        BuildEvent("step", "RUN apt-get install -y nope", 3, 3),
        BuildEvent("step", "COPY x /x", 2, 3),
        BuildEvent("line", "---> Using cache", 2, 3),
        BuildEvent("line", "Reading package lists...", 3, 3),
        BuildEvent("line", "E: Unable to locate package nope", 3, 3),
        BuildEvent("line", "E: a late line", 3, 3),
    ]
    # the failure is kept for the end of the output, with its step
    assert parser.error == BuildEvent(
        "error",
        "executor failed running [/bin/sh -c apt-get install -y nope]: exit code: 100",
        3,
        3,
    )


def test_a_failure_outside_the_steps_names_what_failed() -> None:
    _, parser = events_of(
        "#3 [internal] load metadata for example.org/nope:1\n"
        "#3 ERROR: failed to do request: no such host\n"
        "error: failed to solve: failed to do request: no such host\n"
    )
    assert parser.error == BuildEvent(
        "error",
        "[internal] load metadata for example.org/nope:1: failed to do request: no such host",
    )
    assert parser.summary == "failed to solve: failed to do request: no such host"


@pytest.fixture
def builder() -> ImageBuilder:
    return ImageBuilder(engine=None, settings=BuildSettings(default_base="base"))  # type: ignore[arg-type]


def test_a_failure_names_its_step_and_only_that_steps_tool_errors(builder: ImageBuilder) -> None:
    events, parser = events_of(PLAIN)
    assert parser.error is not None
    op = Operation(env="x", kind="build")
    noise = BuildEvent("line", "E: from another step", 2, 3)
    with pytest.raises(OperationFailed) as err:
        builder.follow(iter([*events[:4], noise, *events[4:], parser.error]), op)
    assert err.value.step == "Step 3/3: RUN apt-get install -y nope"
    assert str(err.value).splitlines()[1:] == [
        "E: Unable to locate package nope",
        "E: a late line",
    ]
    # and the progress never went back although step 2 came after step 3
    assert (op.step, op.total_steps) == (3, 3)
    # and each line is logged under its own step: step 3's header again after step 2's
    header = "Step 3/3 : RUN apt-get install -y nope"
    assert [i for i, line in enumerate(op.log) if line == header] == [2, 6]
    assert op.log[3:8] == [
        "Step 2/3 : COPY x /x",
        "E: from another step",
        "---> Using cache",
        header,
        "Reading package lists...",
    ]


def test_a_step_another_build_ran_at_the_same_time_is_named_by_the_summary() -> None:
    # BuildKit ran the step once for two builds; this one saw only its failure
    events, parser = events_of(
        "#4 [1/3] FROM base\n"
        "#4 CACHED\n"
        "#6 ERROR: executor failed running [/bin/sh -c apt-get install nope]: exit code: 100\n"
        "------\n"
        " > [3/3] RUN apt-get install nope:\n"
        "#6 0.198 E: Unable to locate package nope\n"
        "------\n"
        "executor failed running [/bin/sh -c apt-get install nope]: exit code: 100\n"
    )
    assert events[2:] == [
        BuildEvent("step", "RUN apt-get install nope", 3, 3),
        BuildEvent("line", "E: Unable to locate package nope", 3, 3),
    ]
    assert parser.error is not None
    assert (parser.error.step, parser.error.total) == (3, 3)


# The legacy builder's JSON stream for a failing apt step: stderr coloured write by write, a
# stdout progress line that stderr interrupts before its newline, and a last line after the error.
LEGACY = [
    {"stream": "Step 1/2 : FROM base\n"},
    {"stream": " ---> 0123456789ab\n"},
    {"stream": "Step 2/2 : RUN apt-get install -y nope\n"},
    {"stream": "Reading package lists...\nReading state information..."},
    {"stream": "\x1b[91mE\x1b[0m\x1b[91m: \x1b[0m\x1b[91mUnable to locate package nope\n\x1b[0m"},
    {"error": "The command '/bin/sh -c apt-get install -y nope' returned a non-zero code: 100"},
    {"stream": "\x1b[91mE: a late line\n\x1b[0m"},
]


class _LegacyApi:
    def build(self, **_: object) -> object:
        return iter(LEGACY)


class _LegacyClient:
    api = _LegacyApi()


def test_a_legacy_failure_keeps_the_tools_lines_however_the_engine_interleaves_them(
    builder: ImageBuilder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the legacy builder's stream of a failing apt step (as above)
    monkeypatch.setattr(Engine, "client", property(lambda self: _LegacyClient()))
    (tmp_path / "Dockerfile").write_text("FROM base\nRUN apt-get install -y nope\n")
    events = list(Engine()._build_legacy(str(tmp_path), str(tmp_path / "Dockerfile"), False, None))
    # Then the error comes last, after every line the engine sent, also one sent after it
    assert [e.kind for e in events][-1] == "error"
    assert events[-2] == BuildEvent("line", "E: a late line", 2, 2)
    # And the failure names the step and apt's own lines, one interrupted a progress line
    op = Operation(env="x", kind="build")
    with pytest.raises(OperationFailed) as err:
        builder.follow(iter(events), op)
    assert err.value.step == "Step 2/2: RUN apt-get install -y nope"
    lines = str(err.value).splitlines()
    assert "E: Unable to locate package nope" in lines
    assert "E: a late line" in lines
