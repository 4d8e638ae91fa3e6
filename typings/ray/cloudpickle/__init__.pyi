import pickle
from typing import Any

def dumps(obj: Any, protocol: int | None = None) -> bytes: ...

class CloudPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any: ...

Pickler = CloudPickler
def register_pickle_by_value(module: Any) -> None: ...
