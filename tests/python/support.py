"""Helpers shared by the tests."""

from __future__ import annotations

from typing import Any

from conftest import wait_for


class Out:
    """Accumulates what the test printed (capsys captures every thread's prints)."""

    def __init__(self, capsys: Any) -> None:
        self.capsys = capsys
        self.text = ""

    def read(self) -> str:
        self.text += self.capsys.readouterr().out
        return self.text

    def wait(self, needle: str, timeout: float = 5.0) -> None:
        assert wait_for(lambda: needle in self.read(), timeout), f"{needle!r} was not printed; printed:\n{self.text}"

    def wait_line(self, *parts: str, timeout: float = 5.0) -> str:
        """Wait for a printed line containing every part (dict key order is not fixed)."""

        def find() -> Any:
            return next((ln for ln in self.read().splitlines() if all(p in ln for p in parts)), None)

        assert wait_for(lambda: find() is not None, timeout), f"no line with {parts!r}; printed:\n{self.text}"
        return str(find())

    def lines(self) -> list:
        return self.read().splitlines()
