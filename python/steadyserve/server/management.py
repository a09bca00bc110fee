"""Model management over the network: load, unload, roll back.

One owner for what both protocols check before the Runtime acts: the management
token, the request's parameters, and which calls a multi-worker server refuses.
The model control mode itself is the Runtime's to enforce. Loads and rollbacks
load sessions, warm them up and drain old versions: they run on a worker thread,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from ..errors import FailedPreconditionError, InvalidArgumentError, UnauthenticatedError

log = logging.getLogger("steadyserve.server.management")

# gRPC metadata key / HTTP header carrying "Bearer <token>".
TOKEN_HEADER = "authorization"


class Management:
    """Load, unload and rollback requests of one server, checked and run."""

    def __init__(self, runtime, token: str | None, workers: int = 1):
        self.runtime = runtime
        self._token = token
        self._workers = workers

    def authorize(self, credential: str | None) -> None:
        """Raise UnauthenticatedError unless ``credential`` ("Bearer <token>") is right."""
        if self._token is None:
            return
        if not credential:
            raise UnauthenticatedError(
                "model management needs the management token: send the header "
                "'authorization: Bearer <token>' (the server runs with --management-token)"
            )
        scheme, _, given = credential.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token.encode()
        ):
            raise UnauthenticatedError("the management token is wrong")

    async def load(self, name: str, parameters: dict, credential: str | None) -> None:
        """Triton's RepositoryModelLoad: the ``config`` parameter (JSON) replaces the
        model's config for this load; model files cannot be sent in the request."""
        self.authorize(credential)
        params = dict(parameters)
        config = params.pop("config", None)
        files = sorted(k for k in params if k.startswith("file:"))
        if files:
            raise InvalidArgumentError(
                f"load of model '{name}': steadyserve does not take model files in a load "
                f"request ({', '.join(files)}); put them in the model repository and load again"
            )
        if params:
            raise InvalidArgumentError(
                f"load of model '{name}': unknown parameters {sorted(params)} (known: config)"
            )
        if config is not None and not isinstance(config, str):
            raise InvalidArgumentError(
                f"load of model '{name}': parameter 'config' must be a string of JSON, "
                f"got {type(config).__name__}"
            )
        await asyncio.to_thread(self.runtime.load_model, name, config=config)

    async def unload(self, name: str, parameters: dict, credential: str | None) -> None:
        """Triton's RepositoryModelUnload. ``unload_dependents`` is accepted: steadyserve
        has no ensembles, so no model depends on another's being loaded."""
        self.authorize(credential)
        unknown = sorted(set(parameters) - {"unload_dependents"})
        if unknown:
            raise InvalidArgumentError(
                f"unload of model '{name}': unknown parameters {unknown} (known: unload_dependents)"
            )
        await asyncio.to_thread(self.runtime.unload_model, name)

    async def rollback(self, name: str, credential: str | None) -> dict:
        self.authorize(credential)
        if self._workers > 1:
            raise FailedPreconditionError(
                f"a rollback by command reaches one of {self._workers} workers; with "
                "--workers, roll back by restoring the previous files in the repository "
                "(poll mode reloads them in every worker)"
            )
        return await asyncio.to_thread(self.runtime.rollback, name)


def parameter_value(parameter) -> object:
    """The value of a ``ModelRepositoryParameter`` (its oneof)."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


__all__ = ["TOKEN_HEADER", "Management", "parameter_value"]
