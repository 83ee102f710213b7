"""The connection policy: embedded server and URLs, the project's own schema, pooler-safe connections, migrations."""
