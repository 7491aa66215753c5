"""Where this machine lacks part of the sandbox (no user namespaces in a container, say), the sandbox refuses
to run generated code unless a weaker one is allowed (issue 14). Tests that run generated code for other
reasons then use the weaker sandbox, as a project file with ``synthesis.sandbox.allow_weaker`` would; tests
of the refusal itself are marked ``fail_closed`` and see the real gate. On a machine with the full sandbox
nothing changes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from curation.synth import sandbox
from curation.synth.methods import code


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fail_closed: sees the sandbox's real refusal on a machine without namespaces")


@pytest.fixture(autouse=True)
def _weaker_sandbox_where_the_full_one_is_missing(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("fail_closed") or sandbox.sandbox_isolation()["level"] == "full":
        yield
        return
    real = sandbox.require_isolation

    def allowing(allow_weaker: bool = False) -> dict[str, Any]:
        return real(True)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sandbox, "require_isolation", allowing)
        patch.setattr(code, "require_isolation", allowing)
        yield


@pytest.fixture
def no_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """The capability probe as on a machine without user namespaces (no ``unshare``): the plan it would pick."""
    full = sandbox._plan()
    plan = sandbox._Plan(full.python, None, False, full.drop_uid, full.python_version, ("simulated: no namespaces",))
    monkeypatch.setattr(sandbox, "_plan", lambda: plan)
