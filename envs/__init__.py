"""envs: see DESIGN.md (later issues)."""
