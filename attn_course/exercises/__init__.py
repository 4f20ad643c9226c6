"""Exercise definitions: one module per exercise notebook, each defining ``EXERCISE``.

Register a new module in ``attn_course.grading.tasks.EXERCISE_MODULES``.
"""
