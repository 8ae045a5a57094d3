"""The study file: its schema, its sections with their defaults, and the plan it implies."""
