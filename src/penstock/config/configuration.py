"""``Configuration``: the keys set explicitly, validated when set, and its layers.

A ``Configuration`` holds the keys that were set explicitly, each validated and parsed when
it is set, and answers ``get(option)`` with the typed value or the option's default. It
reads the three layers, lowest precedence first: a flat ``key: value`` file
(``from_file``), ``PENSTOCK_*`` environment variables (``from_env``) and ``-D key=value``
dynamic properties (``from_dynamic_properties``); ``load`` stacks all three.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import ItemsView, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar, cast, overload

from penstock.config.options import (
    _BY_ENV_NAME,
    _BY_NAME,
    ENV_PREFIX,
    OPTIONS,
    OTHER_ENV_VARIABLES,
    ConfigOption,
    _suggestion,
    _unknown_key,
    env_var_name,
    lookup_option,
)
from penstock.errors import ConfigurationError

__all__ = [
    "Configuration",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SECRET_MASK: Final = "******"


def _drop_shadowed_aliases(pairs: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
    """Drops values given under a deprecated key when the same source sets the new key.

    Within one source the canonical key wins regardless of order, as in Flink; between
    sources (layers, successive ``set`` calls) the later one wins.
    """
    canonical_given = {key for key, _ in pairs if key in OPTIONS}
    return [
        (key, value)
        for key, value in pairs
        if key in OPTIONS or key not in _BY_NAME or _BY_NAME[key].key not in canonical_given
    ]


class Configuration:
    """Configuration keys set explicitly, each validated and parsed when it is set.

    Built from nothing, a mapping of keys to values (strings or Python values of the
    option's type) or another Configuration (copied). ``get`` returns the typed value of
    an option, or its default when the key is not set. Deprecated keys are stored under
    their canonical key.

    Raises:
        ConfigurationError: A key is unknown or a value is invalid; names both.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Configuration | Mapping[str, object] | None = None) -> None:
        self._values: dict[str, object] = {}
        if isinstance(values, Configuration):
            self._values.update(values._values)
        elif isinstance(values, Mapping):
            self._update(list(values.items()))
        elif values is not None:
            reason = "a configuration is built from a mapping of keys to values"
            raise ConfigurationError(type(values).__name__, values, reason)

    def _update(self, pairs: Sequence[tuple[str, object]], origin: str | None = None) -> None:
        for key, value in _drop_shadowed_aliases(pairs):
            if not isinstance(key, str):
                raise ConfigurationError(str(key), value, "a key must be a string")
            try:
                self.set(key, value)
            except ConfigurationError as err:
                if origin is None:
                    raise
                raise ConfigurationError(err.key, err.value, f"{err.reason} ({origin})") from None

    @overload
    def set(self, key: ConfigOption[T], value: T | str) -> None: ...

    @overload
    def set(self, key: str, value: object) -> None: ...

    def set(self, key: ConfigOption[object] | str, value: object) -> None:
        """Sets a key (canonical or deprecated, or an option) to a validated value.

        Raises:
            ConfigurationError: The key is unknown or the value invalid.
        """
        name = key.key if isinstance(key, ConfigOption) else key
        option = _BY_NAME.get(name)
        if option is None:
            raise _unknown_key(name, value)
        if name != option.key:
            logger.debug("Configuration key '%s' is deprecated; use '%s'", name, option.key)
        self._values[option.key] = option.parse(value, key=name)

    @overload
    def get(self, option: ConfigOption[T]) -> T: ...

    @overload
    def get(self, option: str) -> object: ...

    def get(self, option: ConfigOption[T] | str) -> T | object:
        """The value of ``option``, an option or a (canonical or deprecated) key.

        The value set, parsed (sizes in bytes, durations in milliseconds), else the
        option's default.

        Raises:
            ConfigurationError: ``option`` is a key that names no option.
        """
        if isinstance(option, str):
            return self.get(lookup_option(option))
        if option.key in self._values:
            # Stored values came out of this option's parser, so they have its type.
            return cast(T, self._values[option.key])
        return option.default

    def get_raw(self, key: str) -> object | None:
        """The parsed value set for ``key`` (canonical or deprecated), ``None`` if unset.

        Raises:
            ConfigurationError: The key is unknown.
        """
        return self._values.get(lookup_option(key).key)

    def contains(self, key: str | ConfigOption[object]) -> bool:
        """Whether ``key`` (canonical or deprecated) is set explicitly; unknown keys are not."""
        name = key.key if isinstance(key, ConfigOption) else key
        option = _BY_NAME.get(name)
        return option is not None and option.key in self._values

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str | ConfigOption) and self.contains(key)

    def to_dict(self) -> dict[str, object]:
        """The keys set explicitly, canonical names to parsed values (bytes, milliseconds).

        ``Configuration(config.to_dict()) == config`` holds.
        """
        return dict(self._values)

    def to_dynamic_properties(self) -> list[str]:
        """The keys set explicitly as ``key=value`` strings for ``from_dynamic_properties``.

        Secrets are written in plain text: a password passed on a command line is
        visible to other users of the host, so ship such settings another way.
        """
        return [
            f"{key}={str(value).lower() if isinstance(value, bool) else value}"
            for key, value in self._values.items()
        ]

    def items(self) -> ItemsView[str, object]:
        """A read-only view of the keys set explicitly and their parsed values."""
        return MappingProxyType(self._values).items()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __or__(self, other: Configuration | Mapping[str, object]) -> Configuration:
        """A new Configuration with the keys of both; ``other`` wins where both set one."""
        if not isinstance(other, Configuration | Mapping):
            return NotImplemented
        merged = Configuration(self)
        merged._values.update(Configuration(other)._values)
        return merged

    def __ror__(self, other: Mapping[str, object]) -> Configuration:
        if not isinstance(other, Mapping):
            return NotImplemented
        return Configuration(other) | self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Configuration):
            return NotImplemented
        return self._values == other._values

    # Mutable (``set``), so not hashable.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = {
            key: _SECRET_MASK if OPTIONS[key].secret else value
            for key, value in self._values.items()
        }
        return f"Configuration({shown!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Configuration:
        """The ``PENSTOCK_*`` variables of ``environ`` (default: ``os.environ``).

        A variable is a key upper-cased with ``.`` and ``-`` turned into ``_``, e.g.
        ``PENSTOCK_PARALLELISM_DEFAULT=4``. Variables without the prefix are ignored,
        and so are penstock's other variables (``OTHER_ENV_VARIABLES``: the cluster
        key, the Flink harness).

        Raises:
            ConfigurationError: A ``PENSTOCK_*`` variable matches no key (naming the
                variable) or holds an invalid value.
        """
        environment = os.environ if environ is None else environ
        pairs: list[tuple[str, object]] = []
        for variable, value in environment.items():
            if not variable.startswith(ENV_PREFIX) or variable in OTHER_ENV_VARIABLES:
                continue
            key = _BY_ENV_NAME.get(variable)
            if key is None:
                hint = _suggestion(
                    variable,
                    _BY_ENV_NAME,
                    lambda name: env_var_name(_BY_NAME[_BY_ENV_NAME[name]].key),
                )
                reason = f"Unknown environment variable '{variable}'{hint}"
                raise ConfigurationError(variable, value, reason)
            pairs.append((key, value))
        config = cls()
        for name, given in _drop_shadowed_aliases(pairs):
            origin = f"from environment variable {env_var_name(name)}"
            config._update([(name, given)], origin=origin)
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Configuration:
        """Reads a flat Flink-style file of ``key: value`` lines.

        Blank lines are skipped; ``#`` starts a comment at the beginning of a line or
        after whitespace (so ``#`` inside a value, as in a password, is kept). A value
        may be wrapped in single or double quotes. Nested YAML is not read: every
        setting is one line with the full dotted key. A key set twice keeps the last.

        Raises:
            ConfigurationError: A line is not ``key: value``, or its key or value is
                invalid; the error names the file and line.
            OSError: The file cannot be read.
        """
        text = Path(path).read_text(encoding="utf-8")
        config = cls()
        for number, line in enumerate(text.splitlines(), start=1):
            content = _strip_comment(line).strip()
            if not content:
                continue
            where = f"in {os.fspath(path)}, line {number}"
            key, colon, value = content.partition(":")
            key, value = key.strip(), _unquote(value.strip())
            if not colon or not key or not value:
                location = f"{os.fspath(path)}:{number}"
                reason = f"expected a 'key: value' line ({where})"
                raise ConfigurationError(location, line, reason)
            config._update([(key, value)], origin=where)
        return config

    @classmethod
    def from_dynamic_properties(cls, properties: Iterable[str]) -> Configuration:
        """Reads ``key=value`` strings, as given with ``-D`` on the command line.

        Raises:
            ConfigurationError: An item has no ``=``, or its key or value is invalid.
        """
        pairs: list[tuple[str, object]] = []
        for item in properties:
            key, equals, value = item.partition("=")
            if not equals or not key.strip():
                raise ConfigurationError(item, item, "expected a 'key=value' dynamic property")
            pairs.append((key.strip(), value.strip()))
        config = cls()
        config._update(pairs, origin="from a -D dynamic property")
        return config

    @classmethod
    def load(
        cls,
        file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        dynamic: Iterable[str] = (),
    ) -> Configuration:
        """The file, then the environment, then dynamic properties; later layers win.

        Args:
            file: A ``key: value`` file, or ``None`` for none.
            environ: The environment (``os.environ`` when ``None``).
            dynamic: ``key=value`` strings from ``-D`` flags.
        """
        base = cls() if file is None else cls.from_file(file)
        return base | cls.from_env(environ) | cls.from_dynamic_properties(dynamic)


_COMMENT: Final = re.compile(r"(^|\s)#")


def _strip_comment(line: str) -> str:
    match = _COMMENT.search(line)
    return line if match is None else line[: match.start()]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value
