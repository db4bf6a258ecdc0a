"""Where an interrupted epoch stands: :class:`~advtrain.io.run_state.EpochProgress` (a checkpoint record)."""

from advtrain.io.run_state import EpochProgress

__all__ = ["EpochProgress"]
