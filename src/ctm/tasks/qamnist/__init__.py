"""QAMNIST: arithmetic over MNIST digits seen one at a time, answered after the question; the questions, the
loss and the task; its pictures (the thinking GIF, `ctm eval --plot`), viewer panel and `ctm predict` live in
`pictures`, `viewer` and `predict` here."""

from .data import (
    MAX_DIGITS,
    N_TOKENS,
    OPERATORS,
    Question,
    QuestionStream,
    TickPlan,
    evaluate_question,
    schedule,
    tick_plan,
)
from .loss import qamnist_loss
from .task import QAMNISTResult, QAMNISTTask

__all__ = ["MAX_DIGITS", "N_TOKENS", "OPERATORS", "QAMNISTResult", "QAMNISTTask", "Question", "QuestionStream",
           "TickPlan", "evaluate_question", "qamnist_loss", "schedule", "tick_plan"]
