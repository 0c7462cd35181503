"""A ctypes mirror of the parts of ``llama.h`` (and the ggml headers it includes) that llambo uses.

Only what the binding calls is mirrored, and it is mirrored exactly: struct fields in header order
with the header's types, enum values as the header defines them, and one table, :data:`FUNCTIONS`,
giving the argument and return types of every function the binding calls.
``tests/native/test_abi.py`` checks all of it against the pinned header with a C compiler.

Conventions:

* Opaque handles (``struct llama_model *``, ``llama_memory_t``, ...) are ``ctypes.c_void_p``:
  ctypes hands them back as ``int`` (``None`` for NULL) and accepts the same values back.
* ``const char *`` is ``ctypes.c_char_p`` (``bytes`` in, ``bytes | None`` out).
  ``char *`` output buffers are ``POINTER(c_char)``: pass a ``ctypes.create_string_buffer``.
* C enums are ``ctypes.c_int``; their values are the :class:`enum.IntEnum` classes below, whose
  class and member names are the header's.
* Structs are passed and returned by value where the header does so.
* A NULL callback is the callback type called with no argument, e.g. ``ggml_log_callback()``.

Nothing here loads the shared library: :func:`declare` is given one the loader has opened.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from _ctypes import _CDataType

# ---------------------------------------------------------------------------------------------
# Constants (#define in llama.h)
# ---------------------------------------------------------------------------------------------

LLAMA_DEFAULT_SEED: Final = 0xFFFFFFFF
"""Seed value that asks a sampler for a random seed."""

LLAMA_TOKEN_NULL: Final = -1
"""The "no token" value."""

# ---------------------------------------------------------------------------------------------
# Scalar typedefs and pointer types
# ---------------------------------------------------------------------------------------------

llama_token = ctypes.c_int32
llama_pos = ctypes.c_int32
llama_seq_id = ctypes.c_int32

c_enum = ctypes.c_int
"""Every C enum below is int-sized (the ABI test checks the fields that hold one)."""

# Opaque handles.
llama_model_p = ctypes.c_void_p  # struct llama_model *
llama_context_p = ctypes.c_void_p  # struct llama_context *
llama_vocab_p = ctypes.c_void_p  # const struct llama_vocab *
llama_sampler_p = ctypes.c_void_p  # struct llama_sampler *
llama_memory_t = ctypes.c_void_p  # typedef struct llama_memory_i * llama_memory_t

llama_token_p = ctypes.POINTER(llama_token)  # llama_token *
float_p = ctypes.POINTER(ctypes.c_float)  # float *
char_buffer_p = ctypes.POINTER(ctypes.c_char)  # char * (an output buffer)

# ---------------------------------------------------------------------------------------------
# Callback types
# ---------------------------------------------------------------------------------------------

ggml_log_callback = ctypes.CFUNCTYPE(None, c_enum, ctypes.c_char_p, ctypes.c_void_p)
"""``void (*)(enum ggml_log_level level, const char * text, void * user_data)`` (ggml.h)."""

llama_progress_callback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_float, ctypes.c_void_p)
"""``bool (*)(float progress, void * user_data)``: return false to abort model loading."""

ggml_abort_callback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)
"""``bool (*)(void * data)`` (ggml.h): return true to abort ``llama_decode``."""

ggml_backend_sched_eval_callback = ctypes.CFUNCTYPE(
    ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p
)
"""``bool (*)(struct ggml_tensor * t, bool ask, void * user_data)`` (ggml-backend.h)."""

# ---------------------------------------------------------------------------------------------
# Enums
# ---------------------------------------------------------------------------------------------


class ggml_log_level(IntEnum):
    """``enum ggml_log_level`` (ggml.h): the level a log callback is called with."""

    GGML_LOG_LEVEL_NONE = 0
    GGML_LOG_LEVEL_DEBUG = 1
    GGML_LOG_LEVEL_INFO = 2
    GGML_LOG_LEVEL_WARN = 3
    GGML_LOG_LEVEL_ERROR = 4
    GGML_LOG_LEVEL_CONT = 5  # continues the previous message


class ggml_type(IntEnum):
    """``enum ggml_type`` (ggml.h), only the types a KV cache can hold."""

    GGML_TYPE_F32 = 0
    GGML_TYPE_F16 = 1
    GGML_TYPE_Q4_0 = 2
    GGML_TYPE_Q4_1 = 3
    GGML_TYPE_Q5_0 = 6
    GGML_TYPE_Q5_1 = 7
    GGML_TYPE_Q8_0 = 8
    GGML_TYPE_IQ4_NL = 20
    GGML_TYPE_BF16 = 30


class llama_vocab_type(IntEnum):
    """``enum llama_vocab_type``: the tokenizer family of a model."""

    LLAMA_VOCAB_TYPE_NONE = 0
    LLAMA_VOCAB_TYPE_SPM = 1
    LLAMA_VOCAB_TYPE_BPE = 2
    LLAMA_VOCAB_TYPE_WPM = 3
    LLAMA_VOCAB_TYPE_UGM = 4
    LLAMA_VOCAB_TYPE_RWKV = 5
    LLAMA_VOCAB_TYPE_PLAMO2 = 6
    LLAMA_VOCAB_TYPE_TEST = 7


class llama_split_mode(IntEnum):
    """``enum llama_split_mode``: how a model is split across several GPUs."""

    LLAMA_SPLIT_MODE_NONE = 0
    LLAMA_SPLIT_MODE_LAYER = 1
    LLAMA_SPLIT_MODE_ROW = 2
    LLAMA_SPLIT_MODE_TENSOR = 3


class llama_load_mode(IntEnum):
    """``enum llama_load_mode``: how the weights are read (replaces ``use_mmap``/``use_mlock``)."""

    LLAMA_LOAD_MODE_AUTO = -1
    LLAMA_LOAD_MODE_NONE = 0
    LLAMA_LOAD_MODE_MMAP = 1
    LLAMA_LOAD_MODE_MLOCK = 2
    LLAMA_LOAD_MODE_MMAP_MLOCK = 3
    LLAMA_LOAD_MODE_DIRECT_IO = 4


class llama_lazy_mode(IntEnum):
    """``enum llama_lazy_mode``: on-demand reading of the tensors an architecture marks."""

    LLAMA_LAZY_MODE_OFF = 0
    LLAMA_LAZY_MODE_AUTO = 1
    LLAMA_LAZY_MODE_ON = 2


class llama_context_type(IntEnum):
    """``enum llama_context_type``."""

    LLAMA_CONTEXT_TYPE_DEFAULT = 0
    LLAMA_CONTEXT_TYPE_MTP = 1


class llama_rope_scaling_type(IntEnum):
    """``enum llama_rope_scaling_type``."""

    LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED = -1
    LLAMA_ROPE_SCALING_TYPE_NONE = 0
    LLAMA_ROPE_SCALING_TYPE_LINEAR = 1
    LLAMA_ROPE_SCALING_TYPE_YARN = 2
    LLAMA_ROPE_SCALING_TYPE_LONGROPE = 3
    LLAMA_ROPE_SCALING_TYPE_MAX_VALUE = LLAMA_ROPE_SCALING_TYPE_LONGROPE  # an alias


class llama_pooling_type(IntEnum):
    """``enum llama_pooling_type``."""

    LLAMA_POOLING_TYPE_UNSPECIFIED = -1
    LLAMA_POOLING_TYPE_NONE = 0
    LLAMA_POOLING_TYPE_MEAN = 1
    LLAMA_POOLING_TYPE_CLS = 2
    LLAMA_POOLING_TYPE_LAST = 3
    LLAMA_POOLING_TYPE_RANK = 4


class llama_attention_type(IntEnum):
    """``enum llama_attention_type``."""

    LLAMA_ATTENTION_TYPE_UNSPECIFIED = -1
    LLAMA_ATTENTION_TYPE_CAUSAL = 0
    LLAMA_ATTENTION_TYPE_NON_CAUSAL = 1


class llama_flash_attn_type(IntEnum):
    """``enum llama_flash_attn_type``: when a context uses Flash Attention."""

    LLAMA_FLASH_ATTN_TYPE_AUTO = -1
    LLAMA_FLASH_ATTN_TYPE_DISABLED = 0
    LLAMA_FLASH_ATTN_TYPE_ENABLED = 1


# ---------------------------------------------------------------------------------------------
# Structs
# ---------------------------------------------------------------------------------------------


class llama_token_data(ctypes.Structure):
    """``llama_token_data``: one candidate token."""

    _fields_ = (
        ("id", llama_token),
        ("logit", ctypes.c_float),
        ("p", ctypes.c_float),
    )


class llama_token_data_array(ctypes.Structure):
    """``llama_token_data_array``: the candidates a sampler works on."""

    _fields_ = (
        ("data", ctypes.POINTER(llama_token_data)),
        ("size", ctypes.c_size_t),
        ("selected", ctypes.c_int64),  # index into data, not a token id
        ("sorted", ctypes.c_bool),
    )


class llama_batch(ctypes.Structure):
    """``llama_batch``: the input of ``llama_decode``; every array holds ``n_tokens`` items."""

    _fields_ = (
        ("n_tokens", ctypes.c_int32),
        ("token", llama_token_p),
        ("embd", float_p),
        ("pos", ctypes.POINTER(llama_pos)),
        ("n_seq_id", ctypes.POINTER(ctypes.c_int32)),
        ("seq_id", ctypes.POINTER(ctypes.POINTER(llama_seq_id))),
        ("logits", ctypes.POINTER(ctypes.c_int8)),  # nonzero: output logits for this token
    )


class llama_model_params(ctypes.Structure):
    """``struct llama_model_params``: how a model file is loaded."""

    _fields_ = (
        ("devices", ctypes.c_void_p),  # ggml_backend_dev_t *, NULL-terminated
        ("tensor_buft_overrides", ctypes.c_void_p),  # const struct ..._buft_override *
        ("n_gpu_layers", ctypes.c_int32),  # negative: all layers
        ("split_mode", c_enum),  # llama_split_mode
        ("load_mode", c_enum),  # llama_load_mode
        ("lazy_mode", c_enum),  # llama_lazy_mode
        ("main_gpu", ctypes.c_int32),
        ("tensor_split", float_p),  # llama_max_devices() floats, or NULL
        ("progress_callback", llama_progress_callback),
        ("progress_callback_user_data", ctypes.c_void_p),
        ("kv_overrides", ctypes.c_void_p),  # const struct llama_model_kv_override *
        ("vocab_only", ctypes.c_bool),
        ("check_tensors", ctypes.c_bool),
        ("use_extra_bufts", ctypes.c_bool),
        ("no_host", ctypes.c_bool),
        ("no_alloc", ctypes.c_bool),
        ("load_mtp", ctypes.c_bool),
    )


class llama_context_params(ctypes.Structure):
    """``struct llama_context_params``: the shape and behaviour of an inference context."""

    _fields_ = (
        ("n_ctx", ctypes.c_uint32),  # 0: from the model
        ("n_batch", ctypes.c_uint32),
        ("n_ubatch", ctypes.c_uint32),
        ("n_seq_max", ctypes.c_uint32),
        ("n_rs_seq", ctypes.c_uint32),
        ("n_outputs_max", ctypes.c_uint32),
        ("n_outputs_max_per_seq", ctypes.c_uint32),
        ("n_threads", ctypes.c_int32),
        ("n_threads_batch", ctypes.c_int32),
        ("ctx_type", c_enum),  # llama_context_type
        ("rope_scaling_type", c_enum),  # llama_rope_scaling_type
        ("pooling_type", c_enum),  # llama_pooling_type
        ("attention_type", c_enum),  # llama_attention_type
        ("flash_attn_type", c_enum),  # llama_flash_attn_type
        ("rope_freq_base", ctypes.c_float),
        ("rope_freq_scale", ctypes.c_float),
        ("yarn_ext_factor", ctypes.c_float),
        ("yarn_attn_factor", ctypes.c_float),
        ("yarn_beta_fast", ctypes.c_float),
        ("yarn_beta_slow", ctypes.c_float),
        ("yarn_orig_ctx", ctypes.c_uint32),
        ("defrag_thold", ctypes.c_float),  # deprecated
        ("cb_eval", ggml_backend_sched_eval_callback),
        ("cb_eval_user_data", ctypes.c_void_p),
        ("type_k", c_enum),  # ggml_type
        ("type_v", c_enum),  # ggml_type
        ("abort_callback", ggml_abort_callback),
        ("abort_callback_data", ctypes.c_void_p),
        ("embeddings", ctypes.c_bool),
        ("offload_kqv", ctypes.c_bool),
        ("no_perf", ctypes.c_bool),
        ("op_offload", ctypes.c_bool),
        ("swa_full", ctypes.c_bool),
        ("kv_unified", ctypes.c_bool),
        ("samplers", ctypes.c_void_p),  # struct llama_sampler_seq_config *
        ("n_samplers", ctypes.c_size_t),
        ("ctx_other", ctypes.c_void_p),  # struct llama_context *
    )


class llama_sampler_chain_params(ctypes.Structure):
    """``llama_sampler_chain_params``."""

    _fields_ = (("no_perf", ctypes.c_bool),)


class llama_chat_message(ctypes.Structure):
    """``llama_chat_message``: one message given to ``llama_chat_apply_template``."""

    _fields_ = (
        ("role", ctypes.c_char_p),
        ("content", ctypes.c_char_p),
    )


class llama_perf_context_data(ctypes.Structure):
    """``struct llama_perf_context_data``: a context's timings (milliseconds) and counts."""

    _fields_ = (
        ("t_start_ms", ctypes.c_double),
        ("t_load_ms", ctypes.c_double),
        ("t_p_eval_ms", ctypes.c_double),
        ("t_eval_ms", ctypes.c_double),
        ("n_p_eval", ctypes.c_int32),
        ("n_eval", ctypes.c_int32),
        ("n_reused", ctypes.c_int32),
    )


# ---------------------------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------------------------


class Signature(NamedTuple):
    """The C signature of one function, in ctypes terms (``restype`` None: ``void``)."""

    restype: type[_CDataType] | None
    argtypes: tuple[type[_CDataType], ...]


def _fn(restype: type[_CDataType] | None, *argtypes: type[_CDataType]) -> Signature:
    return Signature(restype, argtypes)


_void = None
_bool = ctypes.c_bool
_int32 = ctypes.c_int32
_uint32 = ctypes.c_uint32
_uint64 = ctypes.c_uint64
_size = ctypes.c_size_t
_float = ctypes.c_float
_str = ctypes.c_char_p

FUNCTIONS: Final[Mapping[str, Signature]] = MappingProxyType(
    {
        # Backend, logging, system
        "llama_backend_init": _fn(_void),
        "llama_backend_free": _fn(_void),
        "llama_log_set": _fn(_void, ggml_log_callback, ctypes.c_void_p),
        "llama_print_system_info": _fn(_str),
        "llama_supports_gpu_offload": _fn(_bool),
        "llama_supports_mmap": _fn(_bool),
        "llama_supports_mlock": _fn(_bool),
        "llama_max_devices": _fn(_size),
        "llama_time_us": _fn(ctypes.c_int64),
        # Default parameters
        "llama_model_default_params": _fn(llama_model_params),
        "llama_context_default_params": _fn(llama_context_params),
        "llama_sampler_chain_default_params": _fn(llama_sampler_chain_params),
        # Model and context lifetime
        "llama_model_load_from_file": _fn(llama_model_p, _str, llama_model_params),
        "llama_model_free": _fn(_void, llama_model_p),
        "llama_init_from_model": _fn(llama_context_p, llama_model_p, llama_context_params),
        "llama_free": _fn(_void, llama_context_p),
        # Model facts and metadata
        "llama_model_get_vocab": _fn(llama_vocab_p, llama_model_p),
        "llama_model_desc": _fn(_int32, llama_model_p, char_buffer_p, _size),
        "llama_model_size": _fn(_uint64, llama_model_p),
        "llama_model_n_params": _fn(_uint64, llama_model_p),
        "llama_model_n_ctx_train": _fn(_int32, llama_model_p),
        "llama_model_n_embd": _fn(_int32, llama_model_p),
        "llama_model_n_layer": _fn(_int32, llama_model_p),
        "llama_model_n_head": _fn(_int32, llama_model_p),
        "llama_model_n_head_kv": _fn(_int32, llama_model_p),
        "llama_model_n_swa": _fn(_int32, llama_model_p),
        "llama_model_has_encoder": _fn(_bool, llama_model_p),
        "llama_model_chat_template": _fn(_str, llama_model_p, _str),
        "llama_model_meta_count": _fn(_int32, llama_model_p),
        "llama_model_meta_key_by_index": _fn(_int32, llama_model_p, _int32, char_buffer_p, _size),
        "llama_model_meta_val_str_by_index": _fn(_int32, llama_model_p, _int32, char_buffer_p, _size),
        "llama_model_meta_val_str": _fn(_int32, llama_model_p, _str, char_buffer_p, _size),
        # Vocabulary
        "llama_vocab_type": _fn(c_enum, llama_vocab_p),
        "llama_vocab_n_tokens": _fn(_int32, llama_vocab_p),
        "llama_vocab_bos": _fn(llama_token, llama_vocab_p),
        "llama_vocab_eos": _fn(llama_token, llama_vocab_p),
        "llama_vocab_eot": _fn(llama_token, llama_vocab_p),
        "llama_vocab_is_eog": _fn(_bool, llama_vocab_p, llama_token),
        "llama_vocab_is_control": _fn(_bool, llama_vocab_p, llama_token),
        "llama_vocab_get_add_bos": _fn(_bool, llama_vocab_p),
        "llama_vocab_get_add_eos": _fn(_bool, llama_vocab_p),
        "llama_vocab_get_text": _fn(_str, llama_vocab_p, llama_token),
        # Tokenization and chat templates
        "llama_tokenize": _fn(_int32, llama_vocab_p, _str, _int32, llama_token_p, _int32, _bool, _bool),
        "llama_token_to_piece": _fn(_int32, llama_vocab_p, llama_token, char_buffer_p, _int32, _int32, _bool),
        "llama_detokenize": _fn(
            _int32, llama_vocab_p, llama_token_p, _int32, char_buffer_p, _int32, _bool, _bool
        ),
        "llama_chat_apply_template": _fn(
            _int32,
            _str,
            ctypes.POINTER(llama_chat_message),
            _size,
            _bool,
            char_buffer_p,
            _int32,
        ),
        # Context
        "llama_n_ctx": _fn(_uint32, llama_context_p),
        "llama_n_batch": _fn(_uint32, llama_context_p),
        "llama_n_ubatch": _fn(_uint32, llama_context_p),
        "llama_set_n_threads": _fn(_void, llama_context_p, _int32, _int32),
        "llama_get_memory": _fn(llama_memory_t, llama_context_p),
        "llama_memory_clear": _fn(_void, llama_memory_t, _bool),
        "llama_memory_seq_rm": _fn(_bool, llama_memory_t, llama_seq_id, llama_pos, llama_pos),
        # Batches and decoding
        "llama_batch_init": _fn(llama_batch, _int32, _int32, _int32),
        "llama_batch_free": _fn(_void, llama_batch),
        "llama_batch_get_one": _fn(llama_batch, llama_token_p, _int32),
        "llama_decode": _fn(_int32, llama_context_p, llama_batch),
        "llama_synchronize": _fn(_void, llama_context_p),
        "llama_get_logits_ith": _fn(float_p, llama_context_p, _int32),
        # Sampling
        "llama_sampler_chain_init": _fn(llama_sampler_p, llama_sampler_chain_params),
        "llama_sampler_chain_add": _fn(_void, llama_sampler_p, llama_sampler_p),
        "llama_sampler_init_greedy": _fn(llama_sampler_p),
        "llama_sampler_init_dist": _fn(llama_sampler_p, _uint32),
        "llama_sampler_init_top_k": _fn(llama_sampler_p, _int32),
        "llama_sampler_init_top_p": _fn(llama_sampler_p, _float, _size),
        "llama_sampler_init_min_p": _fn(llama_sampler_p, _float, _size),
        "llama_sampler_init_temp": _fn(llama_sampler_p, _float),
        # (n_vocab, penalty_last_n, penalty_repeat, penalty_freq, penalty_present)
        "llama_sampler_init_penalties": _fn(llama_sampler_p, _int32, _int32, _float, _float, _float),
        "llama_sampler_sample": _fn(llama_token, llama_sampler_p, llama_context_p, _int32),
        "llama_sampler_accept": _fn(_void, llama_sampler_p, llama_token),
        "llama_sampler_reset": _fn(_void, llama_sampler_p),
        "llama_sampler_free": _fn(_void, llama_sampler_p),
        # Performance counters
        "llama_perf_context": _fn(llama_perf_context_data, llama_context_p),
        "llama_perf_context_reset": _fn(_void, llama_context_p),
    }
)
"""Every llama.h function the binding calls: name to signature."""


class MissingSymbolsError(Exception):
    """The shared library lacks functions listed in :data:`FUNCTIONS`."""

    def __init__(self, symbols: list[str]) -> None:
        self.symbols: tuple[str, ...] = tuple(symbols)
        super().__init__(
            f"the llama.cpp library lacks {len(self.symbols)} function(s) llambo calls: "
            f"{', '.join(self.symbols)}; it was built from a llama.cpp version other than "
            "the one llambo pins"
        )


def missing_symbols(lib: ctypes.CDLL) -> list[str]:
    """The names in :data:`FUNCTIONS` that ``lib`` does not export, in table order."""
    missing = []
    for name in FUNCTIONS:
        try:
            getattr(lib, name)
        except AttributeError:
            missing.append(name)
    return missing


def declare(lib: ctypes.CDLL) -> None:
    """Set ``argtypes`` and ``restype`` on every function of :data:`FUNCTIONS` in ``lib``.

    Afterwards ``lib.llama_decode(ctx, batch)`` and the rest convert their arguments and results
    as the header says. Raises :class:`MissingSymbolsError`, naming every absent function at
    once, before declaring anything if ``lib`` lacks one.
    """
    missing = missing_symbols(lib)
    if missing:
        raise MissingSymbolsError(missing)
    for name, signature in FUNCTIONS.items():
        function = getattr(lib, name)
        function.argtypes = signature.argtypes
        function.restype = signature.restype
