"""The Hugging Face side of frugal's interop tests, run with the project venv's python.

  load DIR      load DIR with transformers (no remote code), score the tokens and logits frugal
                wrote to DIR/../frugal.safetensors, print the comparison as JSON
  build FAMILY DIR
                build a tiny random FAMILY model with transformers, save it to DIR, and write its
                logits and loss on fixed tokens to DIR/../reference.safetensors
  tokenize DIR TEXT
                print the ids AutoTokenizer gives TEXT with DIR's tokenizer, as JSON
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from safetensors.torch import load_file, save_file
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def loss_of(logits, tokens):
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1)).item()


def load(d):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    ours = load_file(os.path.join(os.path.dirname(d.rstrip("/")), "frugal.safetensors"))
    tokens = ours["tokens"].long()
    with torch.no_grad():
        logits = model(tokens).logits.float()
    print(json.dumps({
        "architecture": type(model).__name__,
        "max_abs_diff": (logits - ours["logits"]).abs().max().item(),
        "loss": loss_of(logits, tokens),
        "frugal_loss": loss_of(ours["logits"], tokens),
    }))


def build(family, d):
    torch.manual_seed(0)
    common = dict(vocab_size=300, bos_token_id=256, eos_token_id=256, tie_word_embeddings=True)
    if family == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, n_inner=80,
                                         activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                                         attn_pdrop=0.0, **common)
    elif family == "gpt_neox":
        config = transformers.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                            intermediate_size=80, max_position_embeddings=64, hidden_act="gelu",
                                            use_parallel_residual=False, rotary_pct=1.0,
                                            attention_dropout=0.0, hidden_dropout=0.0, **common)
        config.tie_word_embeddings = False
    else:
        raise SystemExit(f"unknown family {family}")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # random, not the near-zero initialisation: every weight and bias matters to the logits
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.eval()
    model.save_pretrained(d)
    tokens = torch.randint(0, config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(tokens).logits.float().contiguous()
    save_file({"tokens": tokens.to(torch.int64), "logits": logits,
               "loss": torch.tensor([loss_of(logits, tokens)], dtype=torch.float64)},
              os.path.join(os.path.dirname(d.rstrip("/")), "reference.safetensors"))


def tokenize(d, text):
    tok = AutoTokenizer.from_pretrained(d)
    print(json.dumps({"ids": tok(text)["input_ids"], "eos": tok.eos_token_id, "class": type(tok).__name__}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "load":
        load(sys.argv[2])
    elif mode == "build":
        build(sys.argv[2], sys.argv[3])
    elif mode == "tokenize":
        tokenize(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")
