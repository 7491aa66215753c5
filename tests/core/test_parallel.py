"""map_ordered: results in input order for any worker count, and the fork server imports what a map names and
nothing another stage named (one fork server per process, so the preload test runs in a process of its own)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from curation.core.parallel import gc_paused, map_ordered, workers_for


def _square(value: int) -> int:
    return value * value


def test_results_come_back_in_input_order_whatever_the_worker_count() -> None:
    items = list(range(40))
    expected = [value * value for value in items]
    assert list(map_ordered(_square, items, 1)) == expected
    assert list(map_ordered(_square, items, 2)) == expected


@gc_paused
def _collector_state(fail: bool) -> bool:
    if fail:
        raise ValueError("the batch failed")
    return gc.isenabled()


def test_the_collector_is_paused_while_a_batch_runs_and_back_on_after() -> None:
    assert gc.isenabled()
    assert list(map_ordered(_collector_state, [False, False], 1)) == [False, False]
    assert list(map_ordered(_collector_state, [False], 2)) == [False]  # picklable, and paused in workers too
    assert gc.isenabled()
    with pytest.raises(ValueError, match="the batch failed"):
        _collector_state(True)
    assert gc.isenabled()


def test_configured_workers_are_used_and_small_inputs_stay_in_process() -> None:
    assert workers_for(10, 3) == 3
    assert workers_for(10, None) == 1


def test_a_maps_modules_are_imported_in_the_fork_server_and_not_carried_into_other_stages(tmp_path: Path) -> None:
    (tmp_path / "heavy.py").write_text("import os\nIMPORTED_IN = os.getpid()\n")
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(
            """
            import os
            import sys

            def where(_):
                heavy = sys.modules.get("heavy")  # the worker does not import it: only a preload can
                return None if heavy is None else heavy.IMPORTED_IN != os.getpid()
            """
        )
    )
    script = textwrap.dedent(
        """
        from curation.core.parallel import map_ordered
        from tasks import where

        def found(*preload):
            return sorted(set(map_ordered(where, range(4), 2, preload=["tasks", *preload])), key=str)

        if __name__ == "__main__":
            print(found("heavy"), found(), found("heavy"))
            outer = map_ordered(where, range(4), 2, preload=["tasks", "heavy"])
            first = next(outer)
            print(found(), [first, *outer])  # a pool still open keeps its server: the other map uses it
        """
    )
    (tmp_path / "main.py").write_text(script)
    result = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True
    )
    stages, nested = result.stdout.strip().splitlines()
    # Every worker of a map naming "heavy" found it imported by another process (the server it was forked
    # from); the map between them got a server of its own, without it.
    assert stages == "[True] [None] [True]", result.stderr
    assert nested == "[True] [True, True, True, True]", result.stderr


def test_a_warmed_up_fork_server_is_started_before_the_map_and_is_the_one_its_workers_come_from(tmp_path: Path) -> None:
    (tmp_path / "heavy.py").write_text(
        "import os\nIMPORTED_IN = os.getpid()\nwith open('imported', 'a') as f:\n    f.write(f'{IMPORTED_IN}\\n')\n"
    )
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(
            """
            import os
            import sys

            def where(_):
                heavy = sys.modules.get("heavy")
                return None if heavy is None else heavy.IMPORTED_IN != os.getpid()
            """
        )
    )
    script = textwrap.dedent(
        """
        import pathlib
        import time

        from curation.core import parallel
        from curation.core.parallel import map_ordered, warm_up
        from tasks import where

        marker = pathlib.Path("imported")

        def imports_of_heavy():
            return len(marker.read_text().split()) if marker.exists() else 0

        def wait_for(count):
            deadline = time.monotonic() + 60
            while imports_of_heavy() < count and time.monotonic() < deadline:
                time.sleep(0.05)
            return imports_of_heavy()

        def found(*preload):
            return sorted(set(map_ordered(where, range(4), 2, preload=["tasks", *preload])), key=str)

        if __name__ == "__main__":
            warm_up(["tasks", "heavy"], 4, 1)  # one worker runs in this process: no server
            warm_up(["tasks", "heavy"], 0, 2)  # nothing to work on: no server
            print(parallel._server_modules is None, imports_of_heavy())
            warm_up(["tasks", "heavy"], 4, 2)
            print(wait_for(1))  # imported by the server with no map running
            print(found("heavy"), imports_of_heavy())  # its workers were forked from that server
            print(found(), imports_of_heavy())  # another map's modules replace it
            warm_up(["tasks", "heavy"], 4, 2)
            print(wait_for(2), found("heavy"), imports_of_heavy())  # and warming up replaces that one
            outer = map_ordered(where, range(4), 2, preload=["tasks"])
            next(outer)
            warm_up(["tasks", "heavy"], 4, 2)  # a pool is open on the running server: it is left alone
            time.sleep(1)
            print("heavy" in parallel._server_modules, imports_of_heavy(), sorted(set(outer), key=str))
        """
    )
    (tmp_path / "main.py").write_text(script)
    result = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True
    )
    # No server for one worker or no work; a warmed server imports "heavy" before any map and its workers come from it
    # (imported once); other modules replace it, warming up replaces theirs, but never under an open pool.
    assert result.stdout.splitlines() == [
        "True 0",
        "1",
        "[True] 1",
        "[None] 1",
        "2 [True] 2",
        "False 2 [None]",
    ], result.stderr
