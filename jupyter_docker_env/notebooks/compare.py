"""A notebook's recorded environment against the environments here, in words.

The one place that decides what differs (packages and versions from the two locks, the base
image, the spec's keys and requirement lines) and says it, for the notebook's toolbar, the REST
API and the command line alike. "Here" is what the environment's kernel runs: the record of its
``latest`` image, which the environment service keeps.
"""

from __future__ import annotations

from collections.abc import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..kernels.kernelspecs import kernel_name
from ..models import (
    BaseImage,
    Difference,
    Environment,
    EnvRef,
    EnvSpec,
    Lock,
    NotebookEnvComparison,
    NotebookEnvState,
    RestorePlan,
)
from .record import NotebookEnv

#: How many differences the message names; the list has them all.
NAMED = 8
NO_RECORD = (
    "This notebook carries no environment: it was not saved on a Docker environment's kernel."
)


def holds(here: NotebookEnv | None, recorded: NotebookEnv) -> bool:
    """Whether an environment's image (its record) is the recorded environment."""
    return (
        here is not None
        and here.spec_hash == recorded.spec_hash
        and (recorded.lock is None or here.lock == recorded.lock)
    )


def compare(
    path: str,
    recorded: NotebookEnv,
    records: dict[str, NotebookEnv],
    environments: list[Environment],
    plan: RestorePlan,
    recorded_spec: EnvSpec | None,
    current_files: dict[str, str] | None,
) -> NotebookEnvComparison:
    """``recorded`` (a notebook's) against ``records`` (what each environment's kernel runs)."""
    current = next((e for e in environments if e.name == recorded.env), None)
    here = records.get(recorded.env) if current is not None else None
    state: NotebookEnvState
    if holds(here, recorded):
        state = "same"
    elif here is None:
        state = "missing"
    else:
        state = "different"
    diffs = (
        differences(recorded, here, recorded_spec, current.spec, current_files)
        if current is not None and state != "same"
        else []
    )
    match = next(
        (
            e
            for e in environments
            if e.name != recorded.env and holds(records.get(e.name), recorded)
        ),
        None,
    )
    return NotebookEnvComparison(
        path=path,
        state=state,
        message=_message(state, recorded, here, current, match, diffs),
        env=recorded.env,
        kernel_name=kernel_name(recorded.env),
        spec_hash=recorded.spec_hash,
        image_id=recorded.image_id,
        registry_image=recorded.registry.pinned if recorded.registry else None,
        current=(
            EnvRef(
                current.name,
                current.kernel_name,
                current.state,
                here.spec_hash if here else None,
            )
            if current
            else None
        ),
        match=EnvRef(match.name, match.kernel_name) if match else None,
        differences=tuple(diffs),
        restore=plan,
    )


def differences(
    recorded: NotebookEnv,
    here: NotebookEnv | None,
    recorded_spec: EnvSpec | None,
    current_spec: EnvSpec | None,
    current_files: dict[str, str] | None,
) -> list[Difference]:
    """Packages and versions when both locks are known; otherwise (and for what a lock does not
    hold: variables, GPU) the specs."""
    out: list[Difference] = []
    here_lock = here.lock if here is not None else None
    if recorded.lock is not None and here_lock is not None:
        out += _lock_differences(recorded.lock, here_lock)
    changed = here is None or here.spec_hash != recorded.spec_hash
    if changed and recorded_spec is not None and current_spec is not None:
        by_lock = recorded.lock is not None and here_lock is not None
        out += _spec_differences(recorded_spec, current_spec, packages=not by_lock)
        if not by_lock:
            out += _file_differences(recorded_spec, recorded.files or {}, current_files or {})
    return out


def _lock_differences(a: Lock, b: Lock) -> list[Difference]:
    out = _base_difference(a.base, b.base)
    out += _versions("python", a.distributions(), b.distributions())
    out += _versions("apt", _split(a.apt, "="), _split(b.apt, "="))
    out += _versions("conda", _split(a.conda, "="), _split(b.conda, "="))
    return out


def _base_difference(a: BaseImage | None, b: BaseImage | None) -> list[Difference]:
    def shown(base: BaseImage | None) -> str | None:
        return f"{base.image} ({base.id[:19]})" if base else None

    if (a and a.id) == (b and b.id) and (a and a.image) == (b and b.image):
        return []
    return [Difference("base", "base image", shown(a), shown(b))]


def _versions(section: str, a: dict[str, str], b: dict[str, str]) -> list[Difference]:
    return [
        Difference(section, name, a.get(name), b.get(name))
        for name in sorted(a.keys() | b.keys())
        if a.get(name) != b.get(name)
    ]


def _split(entries: Iterable[str], sep: str) -> dict[str, str]:
    """``name=version`` (apt) or ``name=version=build`` (conda) entries by name."""
    out = {}
    for entry in entries:
        name, _, version = entry.partition(sep)
        out[name] = version
    return out


def _spec_differences(a: EnvSpec, b: EnvSpec, packages: bool) -> list[Difference]:
    out = []
    if packages:
        if a.base != b.base:
            out.append(Difference("base", "base image", a.base, b.base))
        out += _versions("pip", _requirements(a.pip), _requirements(b.pip))
        out += _versions("apt", _split(a.apt, "="), _split(b.apt, "="))
        out += _versions("conda", _conda_specs(a.conda), _conda_specs(b.conda))
    if a.gpu != b.gpu:
        out.append(Difference("spec", "gpu", str(a.gpu).lower(), str(b.gpu).lower()))
    out += _versions("spec", _prefixed("env ", a.env), _prefixed("env ", b.env))
    return out


def _file_differences(
    spec: EnvSpec, recorded: dict[str, str], current: dict[str, str]
) -> list[Difference]:
    """Requirement lines that only one side's requirements/environment file has."""
    out = []
    for name in (spec.requirements, spec.environment):
        if name is None or recorded.get(name) == current.get(name):
            continue
        mine, theirs = _lines(recorded.get(name, "")), _lines(current.get(name, ""))
        out += [Difference(name, line, "", None) for line in sorted(mine - theirs)]
        out += [Difference(name, line, None, "") for line in sorted(theirs - mine)]
    return out


def _lines(text: str) -> set[str]:
    return {s for line in text.splitlines() if (s := line.split("#", 1)[0].strip())}


def _requirements(items: Iterable[str]) -> dict[str, str]:
    out = {}
    for item in items:
        try:
            req = Requirement(item)
        except InvalidRequirement:
            out[item] = ""
            continue
        out[canonicalize_name(req.name)] = str(req)[len(req.name) :].strip() or "any version"
    return out


def _conda_specs(items: Iterable[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name = item.split("::")[-1]
        for i, char in enumerate(name):
            if char in "=<>!~":
                out[name[:i]] = name[i:]
                break
        else:
            out[name] = "any version"
    return out


def _prefixed(prefix: str, values: dict[str, str]) -> dict[str, str]:
    return {prefix + k: v for k, v in values.items()}


def _message(
    state: NotebookEnvState,
    recorded: NotebookEnv,
    here: NotebookEnv | None,
    current: Environment | None,
    match: Environment | None,
    diffs: list[Difference],
) -> str:
    saved = (
        f"This notebook was saved on environment {recorded.env} (spec {recorded.spec_hash[:12]})"
    )
    if state == "same":
        text = (
            f"This notebook's environment {recorded.env} is here, with the same spec and versions."
        )
    elif current is None:
        text = f"{saved}, which is not here."
    else:
        if here is None:
            head = f"{saved}; {recorded.env} here is not built ({current.state})"
        elif here.spec_hash == recorded.spec_hash:
            head = f"{saved}; {recorded.env} here has the same spec but other versions"
        else:
            head = f"{saved}; {recorded.env} here has another spec ({here.spec_hash[:12]})"
        named = "; ".join(d.words() for d in diffs[:NAMED])
        more = f"; and {len(diffs) - NAMED} more" if len(diffs) > NAMED else ""
        text = f"{head}: {named}{more}." if diffs else f"{head}."
    if match is not None:
        text += f" Environment {match.name} here is the notebook's (same spec and versions)."
    return text
