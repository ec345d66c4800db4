"""The Hugging Face side of frugal's interop tests, run with the project venv's python.

  load DIR      load DIR with transformers (no remote code), score the tokens and logits frugal
                wrote to DIR/../frugal.safetensors, print the comparison as JSON
  build FAMILY DIR
                build a tiny random FAMILY model with transformers, save it to DIR, and write its
                logits and loss on fixed tokens to DIR/../reference.safetensors
  tokenize DIR TEXT
                print the ids AutoTokenizer gives TEXT with DIR's tokenizer, as JSON
  evaluate DIR VALIDATION LASTWORD CHOICES
                an evaluation of DIR's model written here, from the rules frugal documents:
                the mean loss over VALIDATION's targets (a safetensors file of inputs_i and
                targets_i batches), and the accuracy on a LastWord and a MultipleChoice JSONL set
                tokenized with AutoTokenizer; printed as JSON
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
    elif family == "llama":
        config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                                          intermediate_size=48, max_position_embeddings=64, rms_norm_eps=1e-6,
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                          attention_bias=True, mlp_bias=True, **common)
    elif family == "ernie4_5_moe":
        config = transformers.Ernie4_5_MoeConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                                                 intermediate_size=48, max_position_embeddings=64, rms_norm_eps=1e-6,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                                 use_bias=False, moe_num_experts=6, moe_k=2, moe_intermediate_size=16,
                                                 moe_num_shared_experts=2, moe_layer_start_index=0, moe_layer_end_index=2,
                                                 moe_layer_interval=2, **common)
        config.tie_word_embeddings = False
    else:
        raise SystemExit(f"unknown family {family}")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # random, not the near-zero initialisation: every weight and bias matters to the logits
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.2)
        # a router selection bias frugal's router has not
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if "e_score_correction_bias" in name:
                t.zero_()
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


def evaluate(d, validation, last_word_path, choices_path):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(d)
    eos = tok.eos_token_id
    context = model.config.max_position_embeddings if hasattr(model.config, "max_position_embeddings") else model.config.n_positions
    batches = load_file(validation)
    nats, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(batches) // 2):
            inputs, targets = batches[f"inputs_{i}"].long(), batches[f"targets_{i}"].long()
            logp = torch.log_softmax(model(inputs).logits.float(), dim=-1)
            nats -= logp.gather(2, targets.unsqueeze(-1)).double().sum().item()
            count += targets.numel()

    def score(ctx, cont):
        """log p(cont | ctx), and whether greedy decoding gives cont, ctx cut from the left."""
        longest = context + 1
        keep = max(min(len(ctx), longest - len(cont)), 1)
        seq = (ctx[len(ctx) - keep:] + cont)[-longest:]
        x = torch.tensor([seq])
        with torch.no_grad():
            logp = torch.log_softmax(model(x[:, :-1]).logits.float(), dim=-1)[0]
        k = len(cont)
        rows = logp[len(seq) - 1 - k:]
        wanted = torch.tensor(seq[len(seq) - k:])
        picked = rows.gather(1, wanted.unsqueeze(-1)).double().sum().item()
        greedy = bool((rows.argmax(-1) == wanted).all())
        return picked, greedy

    hits, n = 0, 0
    for line in open(last_word_path):
        if not line.strip():
            continue
        text = json.loads(line)["text"].rstrip()
        cut = text.rfind(" ")
        if cut < 0:
            continue
        ctx = [eos] + tok(text[:cut])["input_ids"]
        word = tok(text[cut:])["input_ids"]
        if not word or len(word) >= context:
            continue
        hits += score(ctx, word)[1]
        n += 1
    last_word = hits / n if n else 0.0

    hits, m = 0, 0
    for line in open(choices_path):
        if not line.strip():
            continue
        ex = json.loads(line)
        ctx = [eos] + tok(ex["context"])["input_ids"]
        best, best_j = float("-inf"), None
        for j, choice in enumerate(ex["choices"]):
            ids = tok(choice)["input_ids"][: context - 1]
            if not ids:
                continue
            per_byte = score(ctx, ids)[0] / max(len(choice.encode()), 1)
            if per_byte > best:
                best, best_j = per_byte, j
        hits += best_j == ex["label"]
        m += 1
    print(json.dumps({"validation_loss": nats / count, "tokens": count, "last_word": last_word, "last_word_examples": n,
                      "multiple_choice": hits / m if m else 0.0, "multiple_choice_examples": m}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "load":
        load(sys.argv[2])
    elif mode == "build":
        build(sys.argv[2], sys.argv[3])
    elif mode == "tokenize":
        tokenize(sys.argv[2], sys.argv[3])
    elif mode == "evaluate":
        evaluate(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        raise SystemExit(f"unknown mode {mode}")
