"""The strict state-dict converter, re-exported for the converters in this folder.

It lives in `jdd.convert` (numpy only) so that jdd's own loaders use the same code.
"""

from jdd.convert import (CheckpointMismatchError, IGNORED_SUFFIXES, PREFIXES, WRAPPER_KEYS,  # noqa: F401
                         convert_state_dict, default_transform, to_state_dict, unwrap_state_dict)
