"""CLI: a user's DeepSpeed JSON as a recipe, conf/experiment/<name>.yaml (`python -m pipeline.import`;
`import` is a keyword, so the package is only ever run, never imported by name)."""
