"""The traffic simulator behind ``calops simulate``.

Open-loop requests on an absolute schedule, delayed ground truth, optional drift, live
progress and a summary. ``run.simulate`` is the one entry point the command calls.
"""
