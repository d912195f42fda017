"""The demo command refuses bad arguments before it touches the database or starts any process."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError


@pytest.mark.parametrize("args, message", [
    (["--local-epochs", "0"], "--local-epochs must be between 1 and 100 (a study's limit), got 0"),
    (["--local-epochs", "101"], "--local-epochs must be between 1 and 100 (a study's limit), got 101"),
    (["--rounds", "0"], "--rounds must be between 1 and 1000, got 0"),
    (["--rounds", "1001"], "--rounds must be between 1 and 1000, got 1001"),
    (["--epsilon", "0"], "--epsilon: privacy epsilon must be a number in (0.0, 100.0], got 0.0"),
    (["--epsilon", "1000"], "--epsilon: privacy epsilon must be a number in (0.0, 100.0], got 1000.0"),
    (["--timeout", "0"], "--timeout must be a positive number of seconds, got 0"),
])
def test_demo_rejects_out_of_range_arguments(tmp_path, args, message):
    out = tmp_path / "demo-output"
    with pytest.raises(CommandError) as exc:
        call_command("demo", *args, "--out", str(out))
    assert str(exc.value) == message
    assert not out.exists()  # refused before anything was written
