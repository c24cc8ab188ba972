"""Read a project spec from YAML: every problem reported at once, each with its file, line and key."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlops_assets.spec.check import Issue, check_project
from mlops_assets.spec.model import ProjectSpec


class SpecError(ValueError):
    """A spec that cannot be used: every problem, each naming the file, the line and the key path."""

    def __init__(self, source: str, issues: Sequence[Issue], lines: dict[tuple, int] | None = None) -> None:
        self.source = source
        self.issues = list(issues)
        self.lines = lines or {}
        super().__init__(self.render())

    def line_of(self, issue: Issue) -> int | None:
        path = tuple(issue.path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def render(self) -> str:
        count = len(self.issues)
        head = f"{self.source}: {count} problem{'s' if count != 1 else ''}"
        rows = []
        ordered = sorted(self.issues, key=lambda i: (self.line_of(i) is None, self.line_of(i) or 0))
        for issue in ordered:
            line = self.line_of(issue)
            where = f"line {line}, {issue.where}" if line else issue.where
            rows.append(f"  {where}: {issue.message}")
        return "\n".join([head, *rows])


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """A safe YAML loader (libyaml's when PyYAML has it) that refuses duplicate keys (PyYAML keeps the last one
    silently)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Key path -> 1-based line of every mapping key and sequence item in a composed YAML tree."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            key = (path + (key_node.value,)) if isinstance(key_node, yaml.ScalarNode) else path
            out[key] = key_node.start_mark.line + 1
            _line_map(value, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _line_map(item, path + (i,), out)
    return out


def _pydantic_issues(error: ValidationError, data: Any) -> list[Issue]:
    """Validation errors as key paths of the user's document (pydantic's internal steps dropped)."""
    issues = []
    for err in error.errors(include_url=False):
        path: list[str | int] = []
        node = data
        for part in err["loc"]:
            if isinstance(node, dict) and part in node:
                path.append(part)
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                path.append(part)
                node = node[part]
            elif (
                isinstance(part, str)
                and err["type"] in ("missing", "extra_forbidden")
                and part == err["loc"][-1]
            ):
                path.append(part)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] == "extra_forbidden":
            message = "unknown key (not part of the spec; see the JSON Schema)"
        elif err["type"] == "literal_error":
            message = f"got {err.get('input')!r}; {message[0].lower() + message[1:]}"
        elif (
            "input" in err and not isinstance(err["input"], dict | list) and repr(err["input"]) not in message
        ):
            message = f"{message} (got {err['input']!r})"
        issue = Issue(tuple(path), message)
        if issue not in issues:  # a union reports one error per member; keep distinct ones
            issues.append(issue)
    return issues


def parse_spec(
    data: Any, source: str = "<spec>", lines: dict[tuple, int] | None = None, filters: bool = True
) -> ProjectSpec:
    """Validate plain data (as read from YAML) into a :class:`ProjectSpec`, or raise :class:`SpecError`."""
    if not isinstance(data, dict):
        raise SpecError(source, [Issue((), f"a spec is a mapping of keys, got {type(data).__name__}")], lines)
    try:
        return _checked(ProjectSpec.model_validate(data), source, lines, filters)
    except ValidationError as exc:
        issues = _pydantic_issues(exc, data)
    # report the cross-reference problems too: validate again without the parts already found wrong
    pruned, removed = copy.deepcopy(data), []
    for issue in issues:
        path = issue.path[:-1] if issue.message == "required key is missing" else issue.path
        if _remove(pruned, path):
            removed.append(path)
    try:
        rest = check_project(ProjectSpec.model_validate(pruned), filters=filters)
    except ValidationError:
        rest = []
    names = {str(p[-1]) for p in removed if p}
    for issue in rest:
        reported = any(issue.path[: len(p)] == p for p in removed) or any(
            f"{n!r}" in issue.message for n in names
        )
        if not reported:
            issues.append(issue)
    raise SpecError(source, issues, lines)


def _checked(spec: ProjectSpec, source: str, lines: dict[tuple, int] | None, filters: bool) -> ProjectSpec:
    issues = check_project(spec, filters=filters)
    if issues:
        raise SpecError(source, issues, lines)
    return spec


def _remove(data: Any, path: tuple) -> bool:
    """Delete the element at ``path`` of nested dicts/lists; False when it is not there."""
    if not path:
        return False
    node = data
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        return True
    return False


def read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    """The document and its key-path line map; SpecError for a missing file or invalid YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(str(path), [Issue((), f"cannot read the spec: {exc.strerror or exc}")]) from None
    try:
        loader = _Loader(text)  # one parse: the tree gives the line map, then the document
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise SpecError(
            str(path), [Issue((), f"{where}invalid YAML: {getattr(exc, 'problem', None) or exc}")]
        ) from None
    return data, (_line_map(node) if node is not None else {})


def load_spec(path: str | Path, filters: bool = True) -> ProjectSpec:
    """Read and validate the spec file at ``path`` (every problem reported at once)."""
    path = Path(path)
    data, lines = read_yaml(path)
    return parse_spec(data, str(path), lines, filters=filters)
