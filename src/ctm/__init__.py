"""Continuous Thought Machines in PyTorch."""

__version__ = "0.1.0"

from .config import CTMConfig
from .halting import ThinkOutput, think
from .inference import Prediction, Run, load_run, predict
from .losses import accuracy, certainty_loss, per_tick_cross_entropy
from .model import CTM, ContinuousThoughtMachine, CTMOutput, Tracking, certainty, normalised_entropy
from .seed import config_from_seed_state_dict, from_seed_state_dict

__all__ = [
    "CTM", "CTMConfig", "CTMOutput", "ContinuousThoughtMachine", "Tracking", "accuracy",
    "certainty", "certainty_loss", "config_from_seed_state_dict", "from_seed_state_dict", "normalised_entropy",
    "per_tick_cross_entropy", "think", "ThinkOutput", "Prediction", "Run", "load_run", "predict",
]
