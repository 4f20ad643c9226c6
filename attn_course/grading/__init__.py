"""The graded-exercise system.

Pieces, in the order a submission meets them:

``tasks``     what a task is (a function name, a reference, input cases, a hint) and the registry
              of exercises (``attn_course.exercises``)
``compare``   runs one task's cases through *some* way of calling the learner's function and
              compares each result with the reference: the same code serves the in-notebook
              checker (``attn_course.check``) and the grader
``codec``     the value format that crosses from a grading kernel back to the grader
``sandbox``   the OS sandbox (bubblewrap) every grading kernel runs in, and what the kernel may import
``runner``    executes a submitted notebook in its own sandboxed kernel and calls its functions there
``kernel_polling``  waits for a kernel's messages in short slices (a missed wake-up costs half a second)
``report``    uploads as data, rows, totals, progress log, JSON/CSV output, shards
``build``     turns an exercise source (solution + markers) into the learner notebook
"""
