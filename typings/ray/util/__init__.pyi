from ray.util import scheduling_strategies as scheduling_strategies
from ray.util.actor_pool import ActorPool as ActorPool
from collections.abc import Callable
from typing import Any

def register_serializer(cls: type, *, serializer: Callable[[Any], Any],
                        deserializer: Callable[[Any], Any]) -> None: ...
def deregister_serializer(cls: type) -> None: ...
