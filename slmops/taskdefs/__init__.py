"""One module per task (the rows of :data:`slmops.tasks.TASKS`): what the stages do for that task.

See :mod:`slmops.taskdefs.base` for what a task module defines. Imported on first use, never here.
"""
