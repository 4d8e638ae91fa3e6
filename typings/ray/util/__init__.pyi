from ray.util import scheduling_strategies as scheduling_strategies
from ray.util.actor_pool import ActorPool as ActorPool
