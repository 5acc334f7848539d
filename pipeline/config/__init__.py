"""The typed run configuration: `fields` (the strict base, bounded types, one-line errors),
`sections` (one class per config section), `run` (`RunConfig`, overrides, `describe`)."""
