"""Shared fixtures: tiny random models of every supported family, built in memory, offline."""
import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

import pytest
import torch

from emofast.models import Model

FAMILIES = ["gpt2", "gpt_neox", "gpt_neox_serial", "gpt_neo", "llama", "qwen2", "mistral",
            "gemma3_text"]
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def tiny_tokenizer():
    """Byte-level tokenizer (one token per byte) with offsets, padding and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"<pad>": len(vocab), "<eos>": len(vocab) + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(family: str, vocab: int = 258):
    from transformers import (GPT2Config, GPTNeoConfig, GPTNeoXConfig, LlamaConfig, MistralConfig,
                              Qwen2Config)

    common = dict(vocab_size=vocab, bos_token_id=vocab - 1, eos_token_id=vocab - 1,
                  pad_token_id=vocab - 2)
    if family == "gpt2":
        return GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=512, **common)
    if family.startswith("gpt_neox"):
        return GPTNeoXConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                             intermediate_size=48, max_position_embeddings=512,
                             use_parallel_residual=family == "gpt_neox", **common)
    if family == "gpt_neo":
        return GPTNeoConfig(num_layers=3, hidden_size=32, num_heads=4, max_position_embeddings=512,
                            attention_types=[[["global", "local"], 1], [["global"], 1]],
                            window_size=8, **common)
    if family.startswith("gemma"):
        return _gemma_config(family, common)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    return cls(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=48, max_position_embeddings=512, **common)


def _gemma_config(family: str, common: dict, window: int = 8):
    """Gemma 3 (sandwich norms, q/k norms, local layers of `window` tokens beside a global one,
    H * d_head != d_model as in the real 270M); "gemma2" adds soft-capping; "gemma" is Gemma 1."""
    from transformers import Gemma2Config, Gemma3TextConfig, GemmaConfig

    sizes = dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, intermediate_size=48, max_position_embeddings=512, **common)
    if family == "gemma":
        return GemmaConfig(**sizes)
    local = dict(layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                 sliding_window=window, query_pre_attn_scalar=16)
    if family == "gemma2":
        return Gemma2Config(final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                            **local, **sizes)
    return Gemma3TextConfig(**local, **sizes)


def make_tiny(family: str, seed: int = 0, **config) -> Model:
    """A tiny random model of `family`; `config` overrides its config's fields."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(family)
    for key, value in config.items():
        setattr(cfg, key, value)
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    return Model(hf, tiny_tokenizer(), name=f"tiny-{family}")


def free_port() -> int:
    """A free TCP port on loopback (rendezvous of the multi-process tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=FAMILIES)
def tiny(request) -> Model:
    return make_tiny(request.param)


@pytest.fixture
def tiny_llama() -> Model:
    return make_tiny("llama")


@pytest.fixture(scope="session")
def gpu():
    """The device of `gpu`-marked tests: CUDA when present; "cpu" (Triton through its
    interpreter, small shapes) when EMOFAST_GPU_SMOKE=1, as `bench/gpu_check.py --smoke` runs
    them; else the test is skipped."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("EMOFAST_GPU_SMOKE") == "1":
        return torch.device("cpu")
    pytest.skip("needs CUDA (or EMOFAST_GPU_SMOKE=1 for the CPU smoke run)")


@pytest.fixture(scope="session")
def smollm():
    """The real embedded SmolLM2-135M-Instruct (converted once into the emofast cache)."""
    import emofast

    return emofast.load_model("smollm2-135m-instruct", progress=False)
