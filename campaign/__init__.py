"""campaign: see DESIGN.md (later issues)."""
