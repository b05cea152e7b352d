"""The local web app, ``python -m finetune.ui`` (``make ui``): prepare a recipe in a form, preview its label audit,
launch, watch, stop, resume and compare runs, chat with them and export them, all through the commands and files the
command lines use (``finetune.run`` processes, run folders, ``finetune.serve``, ``finetune.export``)."""
