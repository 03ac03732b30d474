"""A run's report, the pure parts: Markdown text and its one-file HTML page (`page`), plots drawn from plain
numbers (`plots`), the gallery's choice of held-out questions and its frame strips (`gallery`). Reading a run folder
and writing report.md / report.html is pipelines.apps.run_report."""
