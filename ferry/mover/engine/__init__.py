"""The engine that carries out a plan: `executor` dispatches each action to the module
that handles it; see docs/design.md for the map of the modules."""
