"""Typed errors raised by cacc.

Every error carries the *thing* it is about (a node, a pass, a file) so that a user
can find the problem without a stack trace. The hierarchy is small on purpose::

    CompilerError
    ├── FrontendError          the model could not be imported
    │   └── UnsupportedOpError all unsupported ops, reported at once
    ├── VerificationError      the IR broke an invariant
    ├── InterpreterError       the reference interpreter failed on a node
    ├── PassError              a pass failed or changed the model's numerics
    ├── BackendError           lowering / building / running on a target failed
    ├── InputSignatureError    a compiled model was called with the wrong inputs
    └── SerializationError     a saved model could not be read or written
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class CompilerError(Exception):
    """Base class of every error cacc raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        pass_name: str | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.node = node
        self.pass_name = pass_name
        self.path = path
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.pass_name:
            where.append(f"pass '{self.pass_name}'")
        if self.node:
            where.append(f"node '{self.node}'")
        if self.path:
            where.append(f"file '{self.path}'")
        return f"{self.message} [{', '.join(where)}]" if where else self.message


class FrontendError(CompilerError):
    """The model could not be imported into the IR."""


@dataclass(frozen=True)
class UnsupportedOp:
    """One unsupported operator type and the nodes that use it."""

    op_type: str
    domain: str
    nodes: tuple[str, ...]

    def __str__(self) -> str:
        qualified = f"{self.domain}::{self.op_type}" if self.domain else self.op_type
        shown = ", ".join(self.nodes[:5])
        more = f" and {len(self.nodes) - 5} more" if len(self.nodes) > 5 else ""
        return f"{qualified} (nodes: {shown}{more})"


class UnsupportedOpError(FrontendError):
    """The model uses operators cacc does not support; lists all of them at once."""

    def __init__(self, ops: Sequence[UnsupportedOp], *, path: str | None = None) -> None:
        self.ops = list(ops)
        lines = "\n".join(f"  - {op}" for op in self.ops)
        super().__init__(f"{len(self.ops)} unsupported operator type(s):\n{lines}", path=path)


class VerificationError(CompilerError):
    """The IR violates an invariant; ``problems`` lists every violation found."""

    def __init__(self, problems: Sequence[str], *, pass_name: str | None = None) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"IR verification failed ({len(self.problems)} problem(s)):\n{lines}", pass_name=pass_name)


class InterpreterError(CompilerError):
    """The reference interpreter could not execute a node."""


class PassError(CompilerError):
    """A pass failed, or broke the model (verifier or numerics check after it)."""


class NumericsError(PassError):
    """A pass changed the model's outputs beyond the allowed tolerance."""


class BackendError(CompilerError):
    """Lowering, building or running the model on a target failed."""


class InputSignatureError(CompilerError, ValueError):
    """A compiled model was called with inputs that do not match its signature."""


class SerializationError(CompilerError):
    """A saved model is missing, truncated, corrupt or of an unknown format."""
