"""A tiny registry for pluggable parts (teachers, generators, losses, students), timm style."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that no registry entry answers to."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        self.code = f"unknown_{kind.replace(' ', '_')}"
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(known) or 'none'}")

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories: ``@registry.register("name")`` then ``registry.create("name", **cfg)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            return self.add(name, factory)

        return decorator

    def add(self, name: str, factory: Callable[..., T]) -> Callable[..., T]:
        """Register ``factory`` (any callable: a function, or an entry object that carries facts beside its builder)."""
        if name in self._factories:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._factories[name] = factory
        return factory

    def remove(self, name: str) -> None:
        """Take ``name`` out again (a test's temporary entry)."""
        self.get(name)  # UnknownNameError for a name never registered
        del self._factories[name]

    def names(self) -> list[str]:
        return sorted(self._factories)

    def items(self) -> list[tuple[str, Callable[..., T]]]:
        """Every entry, in the order it was registered (a catalogue's order)."""
        return list(self._factories.items())

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def create(self, name: str, /, **cfg: object) -> T:
        return self.get(name)(**cfg)
