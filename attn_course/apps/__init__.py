"""Application models: attention across fields (Part III), one module per field.

Each module builds its models from the library's attention modules (never a new copy of
attention) and holds the field's synthetic data generators; the chapters' experiments that
train and measure them live in ``attn_course.labs``.
"""
