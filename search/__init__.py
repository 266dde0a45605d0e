"""search: see DESIGN.md (later issues)."""
