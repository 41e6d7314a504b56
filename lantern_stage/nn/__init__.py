"""`lt.nn`: modules, parameters, initialisers and common layers, PyTorch-style.

Parameters are numpy arrays that compiled code reads and updates in place
(captures); a model is an ordinary Python object used inside staged code.
"""
from . import init  # noqa: F401
from .layers import (  # noqa: F401
    GELU, AvgPool2d, Conv2d, Dropout, Embedding, Flatten, GRUCell, Linear, LSTMCell, MaxPool2d, ReLU, Sequential,
    Sigmoid, SiLU, Tanh,
)
from .module import Module, Parameter, bind, functional_call  # noqa: F401
from .normalization import BatchNorm1d, BatchNorm2d, LayerNorm  # noqa: F401
from .transformer import MultiheadAttention, TransformerEncoderLayer  # noqa: F401
