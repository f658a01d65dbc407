"""What users read: one job's plan and closing figures on the console (console.py), a sweep's table
(table.py) and its HTML report with plots (page.py; `python -m pipeline.report` rebuilds it)."""
