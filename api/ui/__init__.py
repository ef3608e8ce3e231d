"""The web console at ``/ui``: server-rendered pages (Jinja2 + htmx) over the public API.

Every page calls the ``/v1`` API in-process with the signed-in user's own secret, so the
console has exactly the API's permissions and rules and re-implements none of them
(docs/ui.md).
"""
