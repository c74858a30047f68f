"""The toka.dev API: models, conditions and the capability grammar. Pure: no I/O."""
