"""`parley export SOURCE --format gguf --quant f16|q8_0|q4_0 --out FILE.gguf`: one file for llama.cpp,
Ollama and LM Studio, and an Ollama `Modelfile` beside it.

Built on the `gguf` package the ggml project publishes: its writer, its map from transformers'
tensor names to llama.cpp's (`TensorNameMap`) and its quantizers. What llama.cpp expects beyond the
names (the layout its converter, convert_hf_to_gguf.py, writes):

- Llama-style models (SmolLM2): q_proj/k_proj rows are permuted from transformers' rotate-half
  order back to the interleaved pairs llama.cpp's rope rotates; a tied output layer is not written
  (llama.cpp reads the embedding); rope/attention sizes under `llama.*`.
- GPT-2: its Conv1D weights are stored (in, out) and are transposed to (out, in); the output
  layer is written even when tied, as the converter does.
- The tokenizer: byte-level BPE only (`tokenizer.ggml.model = "gpt2"`) with its tokens, token types
  (special added tokens are CONTROL, other added tokens USER_DEFINED), merges, BOS/EOS/UNK/pad ids
  and whether BOS/EOS are added; `tokenizer.ggml.pre` names llama.cpp's pre-tokenizer matching the
  tokenizer's own (GPT-2's regex: "gpt-2"; single digits split first, as SmolLM2's: "smollm").
- `tokenizer.chat_template` is the template the model was trained with; `general.sampling.*` are
  Parley's generation defaults (engine.SamplingParams).

Quantization: 1-D tensors (norms, biases) and GPT-2's position table stay f32, as llama.cpp keeps
them; every other weight takes the chosen type. q4_0 keeps the token embedding / output layer at
q8_0, the way llama.cpp's own quantizer keeps the output layer at a higher precision (its Q6_K is
not one the `gguf` package can write). q8_0 and q4_0 quantize rows in blocks of 32 values, so a
weight whose rows are not a multiple of 32 is refused with the tensor's name before anything is written.

The Modelfile's TEMPLATE is derived from the jinja template by rendering it with marker messages
and checked against it on sample conversations; a template that is not "open + content + close"
per message (so no Go template can express it) gets no TEMPLATE line, and Ollama then picks one from
the file's tokenizer.chat_template. Known limits: other architectures, other tokenizer kinds
(sentencepiece, WordPiece), rope scaling and attention/MLP biases in Llama-style models are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parley.errors import ConfigError
from parley.files import atomic_file, write_atomic
from parley.train.modelfile import modelfile

QUANTS = ("f16", "q8_0", "q4_0")
ARCHITECTURES = ("llama", "gpt2")  # transformers' model_type; llama.cpp calls them the same
# llama.cpp's pre-tokenizer names, by the transformers pre-tokenizer they match (see _pre_tokenizer)
PRE_TOKENIZERS = {"ByteLevel": "gpt-2", "Digits+ByteLevel": "smollm"}


@dataclass
class Tensor:
    name: str  # llama.cpp's name, e.g. blk.0.attn_q.weight
    data: np.ndarray  # float32, (out, in) for weights
    qtype: object  # gguf.GGMLQuantizationType


def export_gguf(loaded, out: Path, quant: str) -> Path:
    """Write `loaded` (a parley.models.Loaded over a plain, merged model) to `out` and a Modelfile
    beside it. Everything is checked before the first byte is written; the .gguf appears whole or not at all."""
    import gguf

    out = check_request(out, quant)
    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.model.config
    if config.model_type not in ARCHITECTURES:
        raise ConfigError(f"GGUF export supports {' and '.join(ARCHITECTURES)} models; "
                          f"this one is {config.model_type!r}: use --format hf")
    tensors = _tensors(model, quant)
    vocab = _vocab(tokenizer, config.vocab_size)
    text = modelfile(loaded, out.name)

    writer = gguf.GGUFWriter(None, config.model_type)
    spec = Path(loaded.spec)
    writer.add_name(spec.parent.name if spec.name == "final" else spec.name)  # a run's name, not "final"
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                          "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    (_llama_hparams if config.model_type == "llama" else _gpt2_hparams)(writer, config)
    _add_vocab(writer, vocab)
    writer.add_chat_template(loaded.template)
    _add_sampling_defaults(writer)
    for t in tensors:
        if t.qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(t.name, t.data)
        elif t.qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(t.name, t.data.astype(np.float16))
        else:
            writer.add_tensor(t.name, gguf.quants.quantize(t.data, t.qtype), raw_dtype=t.qtype)

    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(writer, out)
    write_atomic(out.parent / "Modelfile", text)
    return out


def check_request(out: Path, quant: str) -> Path:
    """The cheap checks, which callers run before loading a model; returns `out` expanded."""
    if quant not in QUANTS:
        raise ConfigError(f"--quant {quant!r} is not one of {', '.join(QUANTS)}")
    out = Path(out).expanduser()
    if out.suffix != ".gguf":
        raise ConfigError(f"--out {out} must name a .gguf file")
    return out


def _write_atomically(writer, out: Path) -> None:
    """GGUFWriter streams numpy arrays into a file it opens itself: give it files.atomic_file's name."""
    with atomic_file(out) as tmp:
        try:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()


def _tensors(model, quant: str) -> list[Tensor]:
    """Every weight under llama.cpp's name, in llama.cpp's layout, with the type it will be stored in."""
    import gguf
    from transformers.pytorch_utils import Conv1D

    config = model.config
    llama = config.model_type == "llama"
    if llama:
        _check_llama(config)
    else:
        _check_gpt2(config)
    arch = gguf.MODEL_ARCH.LLAMA if llama else gguf.MODEL_ARCH.GPT2
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    conv1d = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, Conv1D)}
    state = model.state_dict()
    if not llama and "lm_head.weight" not in state:  # llama.cpp's GPT-2 converter always writes the output layer
        state["lm_head.weight"] = state["transformer.wte.weight"]
    wide, block = _quant_types(quant)
    tensors = []
    for source, weight in state.items():
        found = names.get_type_and_name(source, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise ConfigError(f"GGUF export does not know where llama.cpp keeps {source}: use --format hf")
        kind, name = found
        if llama and kind == gguf.MODEL_TENSOR.OUTPUT and config.tie_word_embeddings:
            continue  # tied: llama.cpp reads the embedding as the output layer
        data = weight.detach().float().cpu().numpy()
        if source in conv1d:
            data = data.T  # Conv1D keeps (in, out); llama.cpp wants (out, in) like a Linear
        elif kind == gguf.MODEL_TENSOR.ATTN_Q:
            data = _interleave_rope(data, config.num_attention_heads)
        elif kind == gguf.MODEL_TENSOR.ATTN_K:
            data = _interleave_rope(data, config.num_key_value_heads)
        if data.ndim < 2 or kind == gguf.MODEL_TENSOR.POS_EMBD:
            qtype = gguf.GGMLQuantizationType.F32
        elif kind in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT):
            qtype = wide
        else:
            qtype = block
        _check_rows(source, data, qtype, quant)
        tensors.append(Tensor(name, np.ascontiguousarray(data, dtype=np.float32), qtype))
    return tensors


def _quant_types(quant: str):
    """(type of the embedding/output layer, type of every other weight) for `quant`."""
    import gguf

    q = gguf.GGMLQuantizationType
    return {"f16": (q.F16, q.F16), "q8_0": (q.Q8_0, q.Q8_0), "q4_0": (q.Q8_0, q.Q4_0)}[quant]


def _check_rows(source: str, data: np.ndarray, qtype, quant: str) -> None:
    import gguf

    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        raise ConfigError(f"--quant {quant} stores {qtype.name} in blocks of {block} values per row, but "
                          f"{source} has rows of {data.shape[-1]}: use --quant f16")


def _interleave_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """transformers rotates each head's first half against its second half; llama.cpp rotates
    neighbouring pairs (0,1), (2,3)... Reorder each head's rows from [x0..x(d/2-1), y0..] to [x0, y0, x1, y1...]."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _check_llama(config) -> None:
    """Refuse what llama.cpp's `llama` architecture would compute differently from this model."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    problems = {
        f"rope scaling {rope.get('rope_type')!r}": rope.get("rope_type", "default") != "default",
        "attention biases": getattr(config, "attention_bias", False),
        "MLP biases": getattr(config, "mlp_bias", False),
        f"activation {config.hidden_act!r}": config.hidden_act != "silu",
    }
    for what, present in problems.items():
        if present:
            raise ConfigError(f"GGUF export of Llama-style models does not support {what}: use --format hf")


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _llama_hparams(writer, config) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _check_gpt2(config) -> None:
    if config.activation_function != "gelu_new":  # llama.cpp's GPT-2 uses the tanh approximation
        raise ConfigError(f"GGUF export of GPT-2 needs activation gelu_new, not {config.activation_function!r}: "
                          "use --format hf")


def _gpt2_hparams(writer, config) -> None:
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)


@dataclass
class Vocab:
    pre: str  # llama.cpp's pre-tokenizer name
    tokens: list[str]  # byte-level spelling, as in tokenizer.json
    types: list[int]  # gguf.TokenType per token
    merges: list[str]  # "left right", best first
    special: dict[str, int]  # bos/eos/unk/pad -> id
    add_bos: bool
    add_eos: bool


def _vocab(tokenizer, model_vocab: int) -> Vocab:
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or spec.get("normalizer"):
        raise ConfigError("GGUF export supports byte-level BPE tokenizers without a normalizer; this one is "
                          f"{spec['model']['type']}: use --format hf")
    pre = _pre_tokenizer(spec.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab()
    if len(vocab) > model_vocab:
        raise ConfigError(f"the tokenizer has {len(vocab)} tokens but the model only {model_vocab} embeddings")
    tokens = [f"[PAD{i}]" for i in range(model_vocab)]  # rows no token uses, as llama.cpp's converter names them
    types = [gguf.TokenType.UNUSED] * model_vocab
    added = tokenizer.added_tokens_decoder
    for token, i in vocab.items():
        tokens[i] = token
        types[i] = (gguf.TokenType.NORMAL if i not in added else
                    gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    special = {name: getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "unk", "pad")}
    plain, marked = tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"]
    add_bos = len(marked) > len(plain) and marked[0] == special["bos"]
    add_eos = len(marked) > len(plain) and marked[-1] == special["eos"]
    return Vocab(pre, tokens, [int(t) for t in types], merges,
                 {k: v for k, v in special.items() if v is not None}, add_bos, add_eos)


def _pre_tokenizer(spec: dict | None) -> str:
    """llama.cpp's name for the way this tokenizer splits text before BPE, or a refusal."""
    parts = (spec or {}).get("pretokenizers", [spec] if spec else [])
    shape = "+".join(p["type"] for p in parts)
    byte_level = parts and parts[-1]["type"] == "ByteLevel" and parts[-1].get("use_regex", True)
    digits = all(p.get("individual_digits", True) for p in parts if p["type"] == "Digits")
    if shape not in PRE_TOKENIZERS or not byte_level or not digits:
        raise ConfigError(f"GGUF export does not know llama.cpp's pre-tokenizer for {shape or 'none'} "
                          f"(supported: {', '.join(PRE_TOKENIZERS)} with the GPT-2 regex): use --format hf")
    return PRE_TOKENIZERS[shape]


def _add_vocab(writer, vocab: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
              "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for name, token_id in vocab.special.items():
        adders[name](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)


def _add_sampling_defaults(writer) -> None:
    from parley.engine import SamplingParams

    defaults = SamplingParams()
    writer.add_sampling_temp(defaults.temperature)
    writer.add_sampling_top_p(defaults.top_p)
    writer.add_sampling_top_k(defaults.top_k)
    writer.add_sampling_penalty_repeat(defaults.repetition_penalty)
