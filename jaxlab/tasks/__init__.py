"""Built-in tasks. Importing this package registers them in `jaxlab.core.task.TASKS`."""

from jaxlab.tasks import classification, language_modeling
from jaxlab.tasks.classification import ClassificationTask
from jaxlab.tasks.language_modeling import LanguageModelingTask

__all__ = ['ClassificationTask', 'LanguageModelingTask', 'classification', 'language_modeling']
