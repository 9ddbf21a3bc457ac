"""Mazes: read a maze picture and output the route from start to goal as moves; generated or official-format
data, the official loss with its curriculum, solve rate and re-application on larger mazes."""

from .data import GeneratedMazes, MazeImages
from .loss import maze_loss
from .mazes import Maze, MazeError, generate, read_route, render, solve, walk
from .solving import chosen_moves, reapply
from .task import MazeResult, MazeTask

__all__ = ["GeneratedMazes", "Maze", "MazeError", "MazeImages", "MazeResult", "MazeTask", "chosen_moves", "generate",
           "maze_loss", "read_route", "reapply", "render", "solve", "walk"]
