"""Built-in tasks. Importing this package registers them in `jaxlab.core.task.TASKS`."""

from jaxlab.tasks import language_modeling
from jaxlab.tasks.language_modeling import LanguageModelingTask

__all__ = ['LanguageModelingTask', 'language_modeling']
