"""What every test shares: a test that starts a server process must say so (`e2e`), so that
`make test-fast` (`-m "not e2e and not slow"`) never starts one."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

# Every server the tests start leaves gRPC off (its default port, 8001, is one port for all of them); the
# gRPC tests give each server a port of its own.
os.environ["AE_GRPC_PORT"] = "0"


def _starts_a_server(args: Any) -> bool:
    items = args if isinstance(args, list | tuple) else [args]
    words = [word for item in items for word in str(item).split()]  # a shell's command line too
    module = any(a == "-m" and b == "service" for a, b in itertools.pairwise(words))
    return module and "--port" in words


@pytest.fixture(autouse=True)
def servers_only_in_e2e_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if any(request.node.get_closest_marker(name) for name in ("e2e", "slow")):
        yield
        return
    popen = subprocess.Popen.__init__

    def checked(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        if _starts_a_server(args):
            pytest.fail(f"{request.node.nodeid} starts a server process ({args!r}): mark it e2e")
        popen(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", checked)
    yield
