"""dashboard: see DESIGN.md (later issues)."""
