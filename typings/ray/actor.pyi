from typing import Any, Generic, TypeVar

from ray import ObjectRef

class ActorMethod:
    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef[Any]: ...
    def options(self, **options: Any) -> ActorMethod: ...

_T = TypeVar("_T")

class ActorHandle(Generic[_T]):
    def __getattr__(self, name: str) -> ActorMethod: ...

class _ActorClassMetadata:
    modified_class: type
    class_name: str

class ActorClass:
    __ray_metadata__: _ActorClassMetadata
    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle[Any]: ...
    def options(self, **options: Any) -> ActorClass: ...
