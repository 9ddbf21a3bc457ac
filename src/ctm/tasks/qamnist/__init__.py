"""QAMNIST: arithmetic over MNIST digits seen one at a time, answered after the question; the questions, the
loss and the task."""

from .data import MAX_DIGITS, N_TOKENS, OPERATORS, Question, QuestionStream, evaluate_question, schedule
from .loss import qamnist_loss
from .task import QAMNISTResult, QAMNISTTask

__all__ = ["MAX_DIGITS", "N_TOKENS", "OPERATORS", "QAMNISTResult", "QAMNISTTask", "Question", "QuestionStream",
           "evaluate_question", "qamnist_loss", "schedule"]
