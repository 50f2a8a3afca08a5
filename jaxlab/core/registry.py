"""Name -> builder registries: how a config picks a component without the code knowing it.

A registry is a small typed dictionary with a decorator. Every pluggable piece of jaxlab
(activations, FFNs, norms, attention, tasks, training plugins) lives in one, so
`config.model.ffn = 'swiglu'` finds `jaxlab.nn.ffn.SwiGLU` by grepping for `'swiglu'`.

  >>> ACTS = Registry('activation')
  >>> @ACTS.register('square')
  ... def square(x):
  ...   return x * x
  >>> ACTS.get('square')(3)
  9
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from jaxlab.core.errors import ConfigError

T = TypeVar('T')


class RegistryError(ConfigError, KeyError):
  """A name that is not registered; the message lists the names that are."""

  def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
    return str(self.args[0])


class Registry(Generic[T]):
  """A mapping from names to components of one kind."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator registering `obj` under `name`; a name may be registered once."""

    def decorator(obj: T) -> T:
      if name in self._items and self._items[name] is not obj:
        raise ValueError(f'{self.kind} {name!r} is already registered')
      self._items[name] = obj
      return obj

    return decorator

  def get(self, name: str, field: str | None = None) -> T:
    """Returns the component named `name`; `field` names the config field in errors."""
    if name not in self._items:
      where = f'{field}: ' if field else ''
      raise RegistryError(
        f'{where}expected one of {sorted(self._items)} ({self.kind}), got {name!r}'
      )
    return self._items[name]

  def __contains__(self, name: object) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))

  def names(self) -> list[str]:
    return sorted(self._items)
