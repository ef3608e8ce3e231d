"""Identity: projects, users, roles, tokens and application credentials."""
