"""agents: see DESIGN.md (later issues)."""
