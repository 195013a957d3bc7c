"""A Sphinx extension that writes the API reference from the results API's own OpenAPI document.

At ``builder-inited`` it builds ``e2e3d_provider.api.app.create_app().openapi()`` (no server, no connection:
the schema is made from the routes) and renders it as MyST Markdown into ``_generated/api-reference.md``,
which ``api.md`` includes: per operation its method, path, operation id, parameters, request body and
responses, then every schema with its fields. The page is generated, never copied, so it follows the code;
``tests/test_docs.py`` checks that every operation id of the live document is on the built page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx

GENERATED = "_generated"
PAGE = "api-reference.md"
METHODS = ("get", "head", "post", "put", "patch", "delete")


def _cell(text: Any) -> str:
    """One Markdown table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|") if text not in (None, "") else ""


def _label(name: str) -> str:
    return f"api-schema-{name.lower()}"


def type_of(schema: dict[str, Any]) -> str:
    """A short, readable type of a JSON schema: a link for a named schema, ``a or b`` for a union."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"{{ref}}`{name} <{_label(name)}>`"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(type_of(s) for s in schema[key])
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return type_of(schema["allOf"][0])
    if "const" in schema:
        return f"`{schema['const']!r}`".replace("'", '"')
    if "enum" in schema:
        return " \\| ".join(f'`"{v}"`' if isinstance(v, str) else f"`{v}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_of(schema['additionalProperties'])}"
    if isinstance(kind, list):
        return " or ".join(kind)
    return str(kind or "any")


def _bounds(schema: dict[str, Any]) -> str:
    parts = []
    for key, sign in (("minimum", ">="), ("maximum", "<="), ("minLength", "length >="), ("maxLength", "length <=")):
        if key in schema:
            parts.append(f"{sign} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    for sub in schema.get("anyOf", []):
        if sub.get("type") != "null":
            parts.extend(p for p in [_bounds(sub)] if p)
    return ", ".join(parts)


def _content_schema(body: dict[str, Any]) -> str:
    content = body.get("content") or {}
    return "; ".join(f"{type_of(c.get('schema', {}))} (`{media}`)" for media, c in content.items())


def render_operation(path: str, method: str, op: dict[str, Any]) -> list[str]:
    """The Markdown of one operation, with a target named after its method and path (unique, where operation
    ids need not be)."""
    op_id = op.get("operationId", "")
    target = "api-" + method + "-" + "-".join(part.strip("{}") for part in path.split("/") if part)
    lines = [f"({target.lower()})=", f"### `{method.upper()} {path}`", ""]
    lines += [f"**Operation id** `{op_id}`", ""]
    if op.get("summary"):
        lines += [f"*{op['summary']}*", ""]
    if op.get("description"):
        lines += [op["description"].strip(), ""]
    lines += ["**Authentication**: " + ("an Airflow JWT (Bearer)" if op.get("security") else "none"), ""]
    params = op.get("parameters") or []
    if params:
        lines += [
            "| parameter | in | type | required | default | bounds | description |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in params:
            s = p.get("schema", {})
            default = f"`{s['default']}`" if "default" in s else ""
            lines.append(
                f"| `{p['name']}` | {p['in']} | {_cell(type_of(s))} | {'yes' if p.get('required') else 'no'} "
                f"| {_cell(default)} | {_cell(_bounds(s))} | {_cell(p.get('description') or s.get('description'))} |"
            )
        lines.append("")
    if op.get("requestBody"):
        body = op["requestBody"]
        needed = "required" if body.get("required") else "optional"
        lines += [f"**Request body** ({needed}): {_content_schema(body)}", ""]
    lines += ["| status | description | body |", "|---|---|---|"]
    for status, response in sorted(op.get("responses", {}).items()):
        lines.append(f"| {status} | {_cell(response.get('description'))} | {_cell(_content_schema(response))} |")
    lines.append("")
    return lines


def render_schema(name: str, schema: dict[str, Any]) -> list[str]:
    """The Markdown of one component schema: its description and a table of its fields."""
    lines = [f"({_label(name)})=", f"### {name}", ""]
    if schema.get("description"):
        lines += [schema["description"].strip(), ""]
    props = schema.get("properties") or {}
    if props:
        required = set(schema.get("required", []))
        lines += ["| field | type | required | description |", "|---|---|---|---|"]
        for field, sub in props.items():
            lines.append(
                f"| `{field}` | {_cell(type_of(sub))} | {'yes' if field in required else 'no'} "
                f"| {_cell(sub.get('description'))} |"
            )
        lines.append("")
    elif "type" in schema or "anyOf" in schema:
        lines += [f"Type: {type_of(schema)}", ""]
    return lines


def render(spec: dict[str, Any]) -> str:
    """The whole reference: operations grouped by path in the document's order, then the schemas."""
    info = spec.get("info", {})
    lines = [
        f"OpenAPI {spec.get('openapi', '')}, *{info.get('title', '')}* version {info.get('version', '')}.",
        "",
        "## Operations",
        "",
    ]
    for path, item in spec.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                lines += render_operation(path, method, item[method])
    lines += ["## Schemas", ""]
    for name, schema in sorted(spec.get("components", {}).get("schemas", {}).items()):
        lines += render_schema(name, schema)
    return "\n".join(lines).rstrip() + "\n"


def api_spec() -> dict[str, Any]:
    """The results API's OpenAPI document, as the app serves it at ``/e2e3d/openapi.json``."""
    from e2e3d_provider.api.app import create_app

    return create_app().openapi()


def write_page(app: Sphinx) -> None:
    """Write the reference page before Sphinx reads the sources (only when it changed, so an incremental
    build does not rebuild it for nothing)."""
    target = Path(app.srcdir) / GENERATED / PAGE
    text = render(api_spec())
    if not target.exists() or target.read_text() != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", write_page)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
