"""One YAML loader for the files people write: the registry and the settings.

PyYAML on its own keeps the last of two equal keys and drops the first without a word, so
a site or device given twice, or a settings section written twice, would vanish. This
loader refuses duplicate keys, naming the file and both lines. It also keeps the line of
every key (a map from key paths such as ``("sites", "remberg", "devices")`` to line
numbers), so a problem found after loading, by pydantic or by a cross-check, can point at
its line. Syntax errors name the file and line without PyYAML's ``in "<unicode string>"``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["LoadedYaml", "StrictLoader", "YamlFileError", "key_path", "load_yaml"]

Path = tuple[Any, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(ValueError):
    """The file is not YAML that can be read without losing something; the message names
    the file and the line (each problem on a line of its own)."""


def key_path(loc: Sequence[Any]) -> str:
    """``("sites", "remberg", "devices")`` as ``sites.remberg.devices``."""
    return ".".join(str(p) for p in loc) or "(top level)"


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records every key given twice in one mapping instead of
    keeping the last silently. ``paths`` (mapping node id to its key path) lets the
    duplicates name where they are; ``load_yaml`` fills it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.paths: dict[int, Path] = {}
        self.duplicates: list[tuple[Path, Any, int, int]] = []  # path, key, first, again
        # The keys a mapping was written with, before merge keys (<<) are folded into it:
        # a key from a merged anchor may be overridden, a key written twice may not.
        self._own_keys: dict[int, list[yaml.Node]] = {}

    def _own(self, node: yaml.MappingNode) -> list[yaml.Node]:
        return self._own_keys.setdefault(
            id(node), [k for k, _ in node.value if k.tag != _MERGE_TAG]
        )

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        self._own(node)
        super().flatten_mapping(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node in self._own(node):
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = first_line.get(key)
                except TypeError:  # unhashable: the constructor below refuses it itself
                    continue
                if first is None:
                    first_line[key] = line
                else:
                    self.duplicates.append((self.paths.get(id(node), ()), key, first, line))
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class LoadedYaml:
    """A file's content, with the line of each key path."""

    data: Any
    source: str
    lines: dict[Path, int] = field(default_factory=dict)

    def line(self, loc: Sequence[Any]) -> int | None:
        """The line of ``loc``, or of the deepest key on the way to it that the file has:
        parts the file does not have (pydantic's union tags, a key left out) are skipped."""
        at: Path = ()
        found = self.lines.get(())
        for part in loc:
            if (*at, part) in self.lines:
                at = (*at, part)
                found = self.lines[at]
        return found

    def where(self, loc: Sequence[Any]) -> str:
        """``file:line`` for ``loc``; the file alone when it has no line for it."""
        line = self.line(loc)
        return self.source if line is None else f"{self.source}:{line}"


def _yaml_error(exc: yaml.YAMLError, source: str) -> str:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"{source}: not valid YAML: {exc}"
    mark = exc.problem_mark or exc.context_mark
    where = source if mark is None else f"{source}:{mark.line + 1}"
    parts = []
    if exc.context:
        context_mark = exc.context_mark
        on = ""
        if context_mark is not None and (mark is None or context_mark.line != mark.line):
            on = f" at line {context_mark.line + 1}"
        parts.append(f"{exc.context}{on}")
    if exc.problem:
        column = "" if exc.problem_mark is None else f" (column {exc.problem_mark.column + 1})"
        parts.append(f"{exc.problem}{column}")
    return f"{where}: not valid YAML: {', '.join(parts) or 'cannot be read'}"


def _index(node: yaml.Node, loader: StrictLoader, out: dict[Path, int]) -> None:
    """Every key path's line, and each mapping's path for the duplicate check. A node
    reached again through an alias is not walked again, so anchors cannot make this
    exponential or endless."""
    seen: set[int] = set()

    def walk(node: yaml.Node, path: Path) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            loader.paths[id(node)] = path
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = loader.construct_object(key_node)
                if not isinstance(key, Hashable):
                    continue
                out.setdefault((*path, key), key_node.start_mark.line + 1)
                walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    walk(node, ())


def load_yaml(text: str, source: str) -> LoadedYaml:
    """Parse one YAML document; raise ``YamlFileError`` for a syntax error or a duplicate
    key, naming ``source`` and the lines."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Path, int] = {}
        data = None
        if node is not None:
            _index(node, loader, lines)
            data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlFileError(_yaml_error(exc, source)) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise YamlFileError(
            "\n".join(
                f"{source}:{again}: {key_path(path) + ': ' if path else ''}duplicate key "
                f"{key!r} at lines {first} and {again}: give each key once (YAML would "
                "silently keep only the last)"
                for path, key, first, again in sorted(loader.duplicates, key=lambda d: d[3])
            )
        )
    return LoadedYaml(data, source, lines)
