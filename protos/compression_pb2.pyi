from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VariantInfo(_message.Message):
    __slots__ = ("name", "kind", "parent", "sha256", "bytes", "parameters", "macs", "quality", "p50_ms_batch1", "loaded", "memory_bytes", "recipe_json", "live", "batch_invariant")
    class QualityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MACS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    P50_MS_BATCH1_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECIPE_JSON_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    BATCH_INVARIANT_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    parent: str
    sha256: str
    bytes: int
    parameters: int
    macs: int
    quality: _containers.ScalarMap[str, float]
    p50_ms_batch1: float
    loaded: bool
    memory_bytes: int
    recipe_json: str
    live: LiveQuality
    batch_invariant: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., parent: _Optional[str] = ..., sha256: _Optional[str] = ..., bytes: _Optional[int] = ..., parameters: _Optional[int] = ..., macs: _Optional[int] = ..., quality: _Optional[_Mapping[str, float]] = ..., p50_ms_batch1: _Optional[float] = ..., loaded: _Optional[bool] = ..., memory_bytes: _Optional[int] = ..., recipe_json: _Optional[str] = ..., live: _Optional[_Union[LiveQuality, _Mapping]] = ..., batch_invariant: _Optional[bool] = ...) -> None: ...

class LiveQuality(_message.Message):
    __slots__ = ("metric", "compared", "agreeing", "mean", "lower", "upper")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    AGREEING_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    metric: str
    compared: int
    agreeing: float
    mean: float
    lower: float
    upper: float
    def __init__(self, metric: _Optional[str] = ..., compared: _Optional[int] = ..., agreeing: _Optional[float] = ..., mean: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ...) -> None: ...

class ListVariantsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListVariantsResponse(_message.Message):
    __slots__ = ("model", "default_variant", "variants")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VARIANT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    default_variant: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantInfo]
    def __init__(self, model: _Optional[str] = ..., default_variant: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantInfo, _Mapping]]] = ...) -> None: ...

class CreateVariantRequest(_message.Message):
    __slots__ = ("model", "name", "recipe", "parent", "params", "data", "runner")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    model: str
    name: str
    recipe: str
    parent: str
    params: _containers.ScalarMap[str, str]
    data: str
    runner: str
    def __init__(self, model: _Optional[str] = ..., name: _Optional[str] = ..., recipe: _Optional[str] = ..., parent: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., data: _Optional[str] = ..., runner: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "model", "variant", "state", "step", "message", "result", "started_unix", "finished_unix", "recipe", "parent", "percent", "quality")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PENDING: _ClassVar[Job.State]
        RUNNING: _ClassVar[Job.State]
        SUCCEEDED: _ClassVar[Job.State]
        FAILED: _ClassVar[Job.State]
    PENDING: Job.State
    RUNNING: Job.State
    SUCCEEDED: Job.State
    FAILED: Job.State
    class QualityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    variant: str
    state: Job.State
    step: str
    message: str
    result: VariantInfo
    started_unix: float
    finished_unix: float
    recipe: str
    parent: str
    percent: float
    quality: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., variant: _Optional[str] = ..., state: _Optional[_Union[Job.State, str]] = ..., step: _Optional[str] = ..., message: _Optional[str] = ..., result: _Optional[_Union[VariantInfo, _Mapping]] = ..., started_unix: _Optional[float] = ..., finished_unix: _Optional[float] = ..., recipe: _Optional[str] = ..., parent: _Optional[str] = ..., percent: _Optional[float] = ..., quality: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Routing(_message.Message):
    __slots__ = ("model", "policy", "variant", "weights", "sticky_parameter", "max_drop", "shadow_fraction", "chosen", "min_samples", "demoted", "changes", "arms")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    STICKY_PARAMETER_FIELD_NUMBER: _ClassVar[int]
    MAX_DROP_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DEMOTED_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    policy: str
    variant: str
    weights: _containers.ScalarMap[str, float]
    sticky_parameter: str
    max_drop: float
    shadow_fraction: float
    chosen: str
    min_samples: int
    demoted: _containers.RepeatedScalarFieldContainer[str]
    changes: _containers.RepeatedCompositeFieldContainer[RoutingChange]
    arms: _containers.RepeatedCompositeFieldContainer[ArmStats]
    def __init__(self, model: _Optional[str] = ..., policy: _Optional[str] = ..., variant: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., sticky_parameter: _Optional[str] = ..., max_drop: _Optional[float] = ..., shadow_fraction: _Optional[float] = ..., chosen: _Optional[str] = ..., min_samples: _Optional[int] = ..., demoted: _Optional[_Iterable[str]] = ..., changes: _Optional[_Iterable[_Union[RoutingChange, _Mapping]]] = ..., arms: _Optional[_Iterable[_Union[ArmStats, _Mapping]]] = ...) -> None: ...

class RoutingChange(_message.Message):
    __slots__ = ("unix", "from_variant", "to_variant", "reason")
    UNIX_FIELD_NUMBER: _ClassVar[int]
    FROM_VARIANT_FIELD_NUMBER: _ClassVar[int]
    TO_VARIANT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    unix: float
    from_variant: str
    to_variant: str
    reason: str
    def __init__(self, unix: _Optional[float] = ..., from_variant: _Optional[str] = ..., to_variant: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ArmStats(_message.Message):
    __slots__ = ("variant", "weight", "requests", "p50_ms", "p50_ms_lower", "p50_ms_upper", "live")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_LOWER_FIELD_NUMBER: _ClassVar[int]
    P50_MS_UPPER_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    variant: str
    weight: float
    requests: int
    p50_ms: float
    p50_ms_lower: float
    p50_ms_upper: float
    live: LiveQuality
    def __init__(self, variant: _Optional[str] = ..., weight: _Optional[float] = ..., requests: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p50_ms_lower: _Optional[float] = ..., p50_ms_upper: _Optional[float] = ..., live: _Optional[_Union[LiveQuality, _Mapping]] = ...) -> None: ...

class GetRoutingRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetRoutingRequest(_message.Message):
    __slots__ = ("routing",)
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    routing: Routing
    def __init__(self, routing: _Optional[_Union[Routing, _Mapping]] = ...) -> None: ...
