"""`lt.nn`: modules, parameters, initialisers and common layers, PyTorch-style.

Parameters are numpy arrays that compiled code reads and updates in place
(captures); a model is an ordinary Python object used inside staged code.
"""
from . import init  # noqa: F401
from .layers import (  # noqa: F401
    AvgPool2d, Conv2d, Dropout, Embedding, Flatten, Linear, LSTMCell, MaxPool2d, ReLU, Sequential, Sigmoid, Tanh,
)
from .module import Module, Parameter, bind, functional_call  # noqa: F401
