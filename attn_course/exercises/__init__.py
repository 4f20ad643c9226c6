"""Exercise definitions: one module per exercise notebook, each defining ``EXERCISE``.

``attn_course.grading.catalog`` finds them by listing this package: a new module needs no registration.
"""
